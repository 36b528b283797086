"""Input files and the byte ranges read tasks parse.

Inputs are a file, a directory or a glob on any filesystem ``mvrec_dist.data.fs`` resolves,
listed in sorted order (the file index is the position in that list, part of the tie-break). Each
file is cut into ranges of ``read_block_bytes``; a range owns the lines that *start* inside it, so
a reader seeks to its start, skips the partial line there (unless at byte 0) and reads past its
end to the next newline. Ranges therefore cover every line exactly once, whatever the block size.

Whether ``pairs_csv`` files carry the optional click label (``user,item,timestamp,label``) is read
from each file's first line (``detect_labels``), before any read task runs: every range of a file
must parse it the same way, and one dataset holds labelled input or none. ``.csv`` files whose first line
is FRAME's header (``user,item,playing_time,duration,timestamp[,like,follow,forward]``) or, without a
header, has five or eight fields are ``plays_csv`` (``detect_format``).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow.fs as pafs

from mvrec_dist.data import fs as dfs
from mvrec_dist.data.ingest.errors import IngestError
from mvrec_dist.data.ingest.parse import MAX_FILE_BYTES, MAX_FILES
from mvrec_dist.data.ingest.validate import BOM, LABELED_CSV_HEADER, PLAYS_FIELDS, is_header, strip_terminator

__all__ = ["InputFile", "ByteRange", "list_inputs", "detect_format", "detect_labels", "plan_ranges", "read_range",
           "count_newlines", "FORMAT_SUFFIXES"]

FORMAT_SUFFIXES = {".tsv": "pairs_tsv", ".csv": "pairs_csv"}
_SCAN_BYTES = 1 << 16


@dataclass(frozen=True)
class InputFile:
    """One input file."""

    index: int
    """Position in the sorted input list."""
    path: str
    """Path inside ``filesystem``."""
    display: str
    """How messages and the manifest name the file (the local path or the URI)."""
    size: int
    """Size in bytes."""
    filesystem: pafs.FileSystem
    """Where the file lives."""


@dataclass(frozen=True)
class ByteRange:
    """The lines of ``file`` that start in ``[start, end)``."""

    file: InputFile
    start: int
    end: int


def list_inputs(spec: str) -> list[InputFile]:
    """Expand an input spec (file, directory or glob; local or URI) into sorted ``InputFile``s.

    Args:
        spec: What ``ingest.input`` says.

    Returns:
        The files, in sorted path order.

    Raises:
        IngestError: when nothing matches, a file is empty, or there are too many/too large files.
    """
    try:
        found = dfs.expand_inputs(spec, suffixes=tuple(FORMAT_SUFFIXES))
    except FileNotFoundError as exc:
        raise IngestError(f"missing input: {exc}") from None
    scheme = "" if dfs.is_local(spec) else spec.split("://", 1)[0] + "://"
    files = []
    for i, (filesystem, path, size) in enumerate(found):
        display = scheme + path.lstrip("/") if scheme else path
        if size == 0:
            raise IngestError(f"{display}: empty input (0 bytes)")
        if size >= MAX_FILE_BYTES:
            raise IngestError(f"{display}: {size} bytes; input files must be smaller than 1 TiB (split it)")
        files.append(InputFile(index=i, path=path, display=display, size=size, filesystem=filesystem))
    if len(files) > MAX_FILES:
        raise IngestError(f"{spec}: {len(files)} input files; at most {MAX_FILES} are supported")
    return files


def detect_format(files: list[InputFile], fmt: str) -> str:
    """Resolve ``ingest.format``: ``auto`` decides from the suffixes, which must agree.

    Args:
        files: The inputs.
        fmt: ``auto``, ``pairs_tsv``, ``pairs_csv`` or ``plays_csv``.

    Returns:
        ``pairs_tsv``, ``pairs_csv`` or ``plays_csv`` (a ``.csv`` whose first line is FRAME's header or,
        headerless, has 5 or 8 fields).

    Raises:
        IngestError: when ``auto`` cannot decide.
    """
    if fmt != "auto":
        return fmt
    found = {}
    for f in files:
        suffix = "." + f.path.rsplit(".", 1)[-1].lower() if "." in f.path.rsplit("/", 1)[-1] else ""
        if suffix not in FORMAT_SUFFIXES:
            raise IngestError(f"{f.display}: cannot tell the format from the suffix {suffix or '(none)'}; "
                              "name files *.tsv (user<TAB>items) or *.csv (user,item,timestamp), "
                              "or set ingest.format")
        found.setdefault(_csv_kind(f) if FORMAT_SUFFIXES[suffix] == "pairs_csv" else FORMAT_SUFFIXES[suffix],
                         f.display)
    if len(found) > 1:
        raise IngestError(f"inputs mix formats ({', '.join(f'{k}: {v}' for k, v in sorted(found.items()))}); "
                          "ingest one format at a time")
    return next(iter(found))


def _first_line(f: InputFile) -> bytes:
    """The first non-blank line of ``f`` (BOM and terminator stripped; within its first 64 KiB)."""
    with f.filesystem.open_input_file(f.path) as handle:
        head = handle.read_at(min(_SCAN_BYTES, f.size), 0).removeprefix(BOM)
    for line in head.split(b"\n"):
        line = strip_terminator(line)
        if line.strip(b" \t"):
            return line
    return b""


def _csv_kind(f: InputFile) -> str:
    """``plays_csv`` for a csv file in FRAME's layout (by its first line), else ``pairs_csv``."""
    line = _first_line(f)
    plays = is_header(line, "plays_csv") or (not is_header(line, "pairs_csv", labels=line.count(b",") == 3)
                                             and line.count(b",") + 1 in PLAYS_FIELDS)
    return "plays_csv" if plays else "pairs_csv"


def detect_labels(files: list[InputFile], fmt: str) -> bool:
    """Whether the inputs carry the per-interaction click label (``pairs_csv`` only).

    A file has it when its first line is the header ``user,item,timestamp,label``, or, without a
    header, when its first data line has four comma-separated fields. Every file must agree; a
    line of the other shape later in a file is a bad line like any other (named with its line).

    Args:
        files: The inputs.
        fmt: The resolved format.

    Returns:
        True for labelled ``pairs_csv`` input.

    Raises:
        IngestError: when some files have the label column and others do not.
    """
    if fmt != "pairs_csv":
        return False
    found: dict[bool, str] = {}
    for f in files:
        line = _first_line(f)
        if is_header(line, fmt):
            labelled = False
        else:
            labelled = is_header(line, fmt, labels=True) or line.count(b",") == 3
        found.setdefault(labelled, f.display)
    if len(found) > 1:
        header = LABELED_CSV_HEADER.decode("ascii")
        raise IngestError(f"inputs mix csv files with and without the label column ({found[True]}: "
                          f"{header}; {found[False]}: no label); give every file the column or none")
    return bool(found) and next(iter(found))


def plan_ranges(files: list[InputFile], block_bytes: int) -> list[ByteRange]:
    """Cut every file into consecutive ranges of at most ``block_bytes``.

    Args:
        files: The inputs.
        block_bytes: ``ingest.read_block_bytes``.

    Returns:
        Ranges in (file, offset) order.
    """
    return [ByteRange(file=f, start=s, end=min(s + block_bytes, f.size))
            for f in files for s in range(0, f.size, block_bytes)]


def read_range(r: ByteRange) -> tuple[int, bytes]:
    """Read the whole lines that start in ``r``.

    Args:
        r: The range.

    Returns:
        ``(offset, data)``: where the first owned line starts in the file, and the lines (the last
        one unterminated only at the end of the file). ``data`` is empty when no line starts in
        the range (a line longer than the range).
    """
    size = r.file.size
    lo = r.start - 1 if r.start > 0 else 0
    hi = min(r.end + _SCAN_BYTES, size)
    with r.file.filesystem.open_input_file(r.file.path) as f:
        buf = bytearray(f.read_at(hi - lo, lo))
        if r.start == 0:
            first = 0
        else:
            # The line starting at r.start is ours only if byte r.start - 1 ends the previous line.
            nl = buf.find(b"\n", 0, r.end - lo)
            if nl < 0 or lo + nl + 1 >= r.end:
                return r.end, b""
            first = lo + nl + 1
        search = r.end - 1 - lo
        while True:
            nl = buf.find(b"\n", search)
            if nl >= 0:
                stop = lo + nl + 1
                break
            if hi >= size:
                stop = size
                break
            more = min(max(len(buf), _SCAN_BYTES), size - hi)
            search = len(buf)
            buf += f.read_at(more, hi)
            hi += more
    return first, bytes(memoryview(buf)[first - lo:stop - lo])


def count_newlines(file: InputFile, stop: int) -> int:
    """Number of ``\\n`` bytes in ``[0, stop)`` of ``file`` (line numbers for error messages)."""
    total, pos, step = 0, 0, 16 << 20
    with file.filesystem.open_input_file(file.path) as f:
        while pos < stop:
            n = min(step, stop - pos)
            total += f.read_at(n, pos).count(b"\n")
            pos += n
    return total
