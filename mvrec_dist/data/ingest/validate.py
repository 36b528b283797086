"""The slow path of parsing: find every bad line of a block and say why it is bad.

Parsing runs vectorised (``parse.py``) and falls back here only when a block looks wrong, so the
per-line Python loop costs nothing on clean input. The rules below are the definition of a valid
line; the fast path is tuned to accept exactly the same lines (and to reject, never silently
reinterpret, anything it is unsure of).

Valid lines:
* ``pairs_csv``: ``user,item,timestamp``, three decimal integers (spaces and tabs around a field are
  ignored), ``user >= 0`` and ``item >= 0``, all within int64.
* ``pairs_csv`` with the label column (``labels=True``, decided per dataset by
  ``sources.detect_labels``): ``user,item,timestamp,label``, the same three fields and a decimal
  integer equal to 0 or 1 (1: clicked, an interaction; 0: shown but not clicked, an exposure).
* ``plays_csv`` (FRAME's interaction format, Lu et al., SIGIR'23, public code tsinghua-fib-lab/FRAME:
  ``data_final2.csv`` holds user, video, playing time, duration, timestamp and like/follow/forward):
  ``user,item,playing_time,duration,timestamp`` or the same with ``,like,follow,forward``, five or
  eight fields. The ids and the timestamp as in ``pairs_csv``; ``playing_time`` a decimal integer
  ``>= 0``; ``duration`` a decimal integer ``> 0`` (a play ratio needs it) and ``playing_time <=
  duration`` (FRAME clips the ratio at 1 itself; input claiming a longer play than the video is taken
  as broken, not clipped silently); like/follow/forward each 0 or 1 (validated, not stored: FRAME's
  model does not read them).
* ``pairs_tsv``: ``user<TAB>item item ...``, a non-empty sequence of single-space separated
  non-negative decimal integers.
* A line ends with ``\\n`` (``\\r\\n`` accepted); only the last line of a file may lack it.
* A UTF-8 byte-order mark (``BOM``) at the very start of a file is not part of its first line
  (``parse.parse_block`` strips it and counts it); anywhere else it makes a bad line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["BOM", "BadLine", "CSV_HEADER", "LABELED_CSV_HEADER", "LABEL_COLUMN", "PLAYS_CSV_HEADER",
           "PLAYS_BEHAVIOUR_HEADER", "PLAYS_FIELDS", "TSV_HEADERS", "TITLES_HEADER",
           "is_header", "find_bad_lines", "escape_raw"]

CSV_HEADER = b"user,item,timestamp"
LABEL_COLUMN = "label"
"""Name of the optional per-interaction click label of ``pairs_csv`` (its header's fourth field)."""
LABELED_CSV_HEADER = CSV_HEADER + b"," + LABEL_COLUMN.encode("ascii")
PLAYS_CSV_HEADER = b"user,item,playing_time,duration,timestamp"
"""FRAME's interaction columns (``plays_csv``)."""
PLAYS_BEHAVIOUR_HEADER = PLAYS_CSV_HEADER + b",like,follow,forward"
"""The same with FRAME's optional behaviour columns."""
PLAYS_FIELDS = (5, 8)
"""Fields a ``plays_csv`` line may have: without and with the behaviour columns."""
TSV_HEADERS = (b"user\titems", b"user\titem")
TITLES_HEADER = b"item,title"
BOM = b"\xef\xbb\xbf"
"""The UTF-8 byte-order mark spreadsheet exports start with."""

_INT = re.compile(rb"-?[0-9]+")
_INT64_MAX = (1 << 63) - 1
_INT64_MIN = -(1 << 63)


@dataclass(frozen=True)
class BadLine:
    """A line that is not a valid row."""

    index: int
    """0-based index of the line within its block (header line included)."""
    reason: str
    """Why the line is rejected, in words."""
    raw: bytes
    """The line as read, without its line terminator."""


def is_header(line: bytes, fmt: str, labels: bool = False) -> bool:
    """Whether ``line`` (terminator stripped) is the header line of format ``fmt`` (with the label column
    when ``labels``)."""
    text = line.removeprefix(BOM).strip(b" \t")  # a header checked on its own may still carry it
    if fmt == "pairs_csv":
        return text == (LABELED_CSV_HEADER if labels else CSV_HEADER)
    if fmt == "plays_csv":
        return text in (PLAYS_CSV_HEADER, PLAYS_BEHAVIOUR_HEADER)
    return text in TSV_HEADERS


def strip_terminator(line: bytes) -> bytes:
    """Drop a trailing ``\\n`` or ``\\r\\n``."""
    if line.endswith(b"\n"):
        line = line[:-1]
    if line.endswith(b"\r"):
        line = line[:-1]
    return line


def _int_problem(field: bytes, what: str, non_negative: bool) -> str | None:
    text = field.strip(b" \t")
    if not text:
        return f"{what} is empty"
    if not _INT.fullmatch(text):
        return f"{what} {_show(text)} is not a decimal integer"
    value = int(text)
    if value > _INT64_MAX or value < _INT64_MIN:
        return f"{what} {_show(text)} is out of the int64 range"
    if non_negative and value < 0:
        return f"{what} {value} is negative (ids must be non-negative integers)"
    return None


def _show(text: bytes, limit: int = 40) -> str:
    s = text.decode("utf-8", errors="backslashreplace")
    return repr(s if len(s) <= limit else s[:limit] + "...")


def _label_problem(field: bytes) -> str | None:
    text = field.strip(b" \t")
    if not text:
        return "label is empty"
    # Any decimal integer equal to 0 or 1 ("01", "-0"): what the vectorised path's int64 parse accepts.
    if not _INT.fullmatch(text) or int(text) not in (0, 1):
        return f"label {_show(text)} is not 0 or 1 (1: clicked, 0: shown but not clicked)"
    return None


def line_problem(line: bytes, fmt: str, *, unterminated_last: bool, may_be_header: bool,
                 labels: bool = False) -> str | None:
    """Return why ``line`` is not a valid row of ``fmt``, or ``None`` when it is valid.

    Args:
        line: The line without its terminator.
        fmt: ``pairs_csv``, ``plays_csv`` or ``pairs_tsv``.
        unterminated_last: The line is the last of its file and has no newline (possibly truncated).
        may_be_header: The line is the first of its file, where a header is allowed.
        labels: ``pairs_csv`` rows carry the label column.

    Returns:
        The reason, or ``None``.
    """
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"invalid UTF-8 (byte 0x{line[exc.start]:02x} at column {exc.start + 1})"
    if not line.strip(b" \t"):
        return "blank line"
    if is_header(line, fmt, labels):
        return None if may_be_header else "header line in the middle of the file"
    truncated = "truncated last line (no newline at end of file): " if unterminated_last else ""
    if fmt == "pairs_csv":
        fields = line.split(b",")
        want = 4 if labels else 3
        if len(fields) != want:
            names = (LABELED_CSV_HEADER if labels else CSV_HEADER).decode("ascii")
            return f"{truncated}expected {want} comma-separated fields ({names}), got {len(fields)}"
        for field, what, non_negative in zip(fields, ("user id", "item id", "timestamp"), (True, True, False)):
            problem = _int_problem(field, what, non_negative)
            if problem:
                return problem
        return _label_problem(fields[3]) if labels else None
    if fmt == "plays_csv":
        return _plays_problem(line.split(b","), truncated)
    parts = line.split(b"\t")
    if len(parts) != 2:
        return f"{truncated}expected 2 tab-separated fields (user<TAB>items), got {len(parts)}"
    problem = _int_problem(parts[0], "user id", True)
    if problem:
        return problem
    items = parts[1]
    if not items.strip(b" "):
        return "empty item sequence"
    for k, token in enumerate(items.split(b" ")):
        if not token:
            return f"empty item token at position {k + 1} (double, leading or trailing space)"
        problem = _int_problem(token, f"item {k + 1}", True)
        if problem:
            return problem
    return None


def _plays_problem(fields: list[bytes], truncated: str) -> str | None:
    """Why the fields of a ``plays_csv`` line are not a valid row, or None."""
    if len(fields) not in PLAYS_FIELDS:
        return (f"{truncated}expected 5 or 8 comma-separated fields ({PLAYS_CSV_HEADER.decode()}[,like,follow,forward]),"
                f" got {len(fields)}")
    names = ("user id", "item id", "playing time", "duration", "timestamp")
    for field, what, non_negative in zip(fields, names, (True, True, False, False, False)):
        problem = _int_problem(field, what, non_negative)
        if problem:
            return problem
    play, duration = int(fields[2]), int(fields[3])
    if play < 0:
        return f"playing time {play} is negative"
    if duration <= 0:
        return f"duration {duration} is not positive (a play ratio needs it)"
    if play > duration:
        return f"playing time {play} is greater than the duration {duration}"
    for field, what in zip(fields[5:], ("like", "follow", "forward")):
        text = field.strip(b" \t")
        if not _INT.fullmatch(text) or int(text) not in (0, 1):
            return f"{what} {_show(text)} is not 0 or 1"
    return None


def find_bad_lines(data: bytes, starts: list[int], fmt: str, *, at_file_start: bool,
                   at_eof: bool, labels: bool = False) -> list[BadLine]:
    """Check every line of a block.

    Args:
        data: The block: whole lines, the last one unterminated only at the end of a file.
        starts: Start offset of each line within ``data``.
        fmt: ``pairs_csv`` or ``pairs_tsv``.
        at_file_start: The block starts at byte 0 of its file (its first line may be a header).
        at_eof: The block ends at the end of its file.
        labels: ``pairs_csv`` rows carry the label column.

    Returns:
        The bad lines in order (a header line at the start of a file is not bad).
    """
    bad = []
    n = len(starts)
    for i, s in enumerate(starts):
        e = starts[i + 1] if i + 1 < n else len(data)
        raw = data[s:e]
        unterminated = at_eof and i == n - 1 and not raw.endswith(b"\n")
        line = strip_terminator(raw)
        reason = line_problem(line, fmt, unterminated_last=unterminated,
                              may_be_header=at_file_start and i == 0, labels=labels)
        if reason is not None:
            bad.append(BadLine(index=i, reason=reason, raw=line))
    return bad


def escape_raw(raw: bytes, limit: int = 1000) -> str:
    """Render a raw line for one TSV cell: invalid UTF-8 as ``\\xNN``, tabs/newlines escaped."""
    text = raw[:limit].replace(b"\\", b"\\\\").decode("utf-8", errors="backslashreplace")
    text = text.replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return text + ("..." if len(raw) > limit else "")
