"""Parse one block of whole lines into an interactions table, vectorised, with a careful fallback.

The fast path hands the block to pyarrow's CSV reader (C++, no per-line Python). It is accepted
only when nothing looks off: the block holds only the bytes a valid file can hold (digits,
separators, ``-``, line breaks), pyarrow parses it without complaint, the row count equals the
line count (pyarrow skips blank lines), and ids are non-negative. Anything else sends the block
to ``validate.find_bad_lines``, which names each bad line and its reason; the good lines are then
parsed by the fast path again, keeping their original byte offsets.

A UTF-8 byte-order mark at the start of a file (spreadsheet exports write one) is stripped
before anything else looks at the block and reported in ``ParsedBlock.bom``; the first line then
starts at byte 3, so order keys stay byte positions in the file.

Every interaction carries ``order = (file_index << 40) | byte position`` (line start, plus the
token index for ``pairs_tsv``), the deterministic tie-break of equal timestamps: file order, then
position in the file.

``pairs_csv`` input with the label column (``labels=True``: ``user,item,timestamp,label``) adds an
int8 ``label`` column (1: clicked, 0: shown but not clicked); a label other than 0 or 1 sends the
block to the slow path like any other bad field.

``plays_csv`` (FRAME's format, ``validate.py``) adds int64 ``play`` and ``duration`` columns (the
playing time and the video's duration, in the input's unit). Its lines have five or eight fields (the
behaviour columns are optional, per line): the fast path reads each shape with its own pyarrow pass
and restores line order, and rejects (to the slow path) a playing time below 0 or above the duration
or a duration that is not positive.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from mvrec_dist.data.ingest.validate import BOM, LABEL_COLUMN, BadLine, find_bad_lines, is_header, strip_terminator

__all__ = ["ParsedBlock", "parse_block", "line_starts", "empty_interactions", "interaction_schema",
           "MAX_FILE_BYTES", "MAX_FILES"]

MAX_FILE_BYTES = 1 << 40
"""Order keys hold byte positions in 40 bits: input files must be smaller than 1 TiB."""
MAX_FILES = 1 << 22
"""Order keys hold the file index in the remaining bits."""

# Bytes a valid data line can contain; anything else (letters, '+', a BOM after the start of a
# file, 'x' of '0x1' which pyarrow would read as hex) routes the block to the slow path.
_ALLOWED = b"0123456789-, \t\r\n"


class _Rejected(Exception):
    """The fast path is not sure about this block."""


@dataclass
class ParsedBlock:
    """The result of parsing one block."""

    table: pa.Table
    """Interactions: ``user``, ``item``, ``ts``, ``order`` (int64) and, for tsv, ``first``
    (bool, first item of its line, so rows can be counted per user after grouping); with labels,
    ``label`` (int8, 0 or 1): then the table holds the exposures (label 0) too."""
    lines: int
    """Lines in the block, header line included."""
    header_rows: int
    """1 when the block starts its file with a header line, else 0."""
    rows: int
    """Valid rows (lines that became interactions)."""
    bad: list[BadLine]
    """Bad lines, in order."""
    bom: int = 0
    """1 when the block starts its file with a UTF-8 byte-order mark, which was stripped."""


def interaction_schema(fmt: str, labels: bool = False) -> pa.Schema:
    """The schema of parsed interaction tables of format ``fmt`` (with the ``label`` column when ``labels``)."""
    fields = [pa.field("user", pa.int64()), pa.field("item", pa.int64()), pa.field("ts", pa.int64()),
              pa.field("order", pa.int64())]
    if fmt == "pairs_tsv":
        fields.append(pa.field("first", pa.bool_()))
    if fmt == "plays_csv":
        fields += [pa.field("play", pa.int64()), pa.field("duration", pa.int64())]
    if labels:
        fields.append(pa.field(LABEL_COLUMN, pa.int8()))
    return pa.schema(fields)


def empty_interactions(fmt: str, labels: bool = False) -> pa.Table:
    """An interactions table with no rows."""
    return interaction_schema(fmt, labels).empty_table()


def line_starts(data: bytes) -> np.ndarray:
    """Start offset of every line in ``data`` (a last line without ``\\n`` counts), int64 [L]."""
    arr = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(arr == 10)
    starts = np.empty(len(ends) + 1, dtype=np.int64)
    starts[0] = 0
    starts[1:] = ends + 1
    if len(data) == 0 or data[-1] == 10:
        starts = starts[:-1]
    return starts


_PLAYS_NAMES = ["user", "item", "play", "duration", "ts", "like", "follow", "forward"]


def _read(body: bytes, fmt: str, labels: bool, fields: int = 5) -> pa.Table:
    if fmt == "plays_csv":
        names = _PLAYS_NAMES[:fields]
        types, delimiter = {name: pa.int64() for name in names}, ","
    elif fmt == "pairs_csv":
        names, types, delimiter = ["user", "item", "ts"], {"user": pa.int64(), "item": pa.int64(),
                                                           "ts": pa.int64()}, ","
        if labels:
            names.append(LABEL_COLUMN)
            types[LABEL_COLUMN] = pa.int64()
    else:
        names, types, delimiter = ["user", "items"], {"user": pa.int64(), "items": pa.string()}, "\t"
    try:
        return pcsv.read_csv(
            pa.py_buffer(body),
            read_options=pcsv.ReadOptions(column_names=names, use_threads=False, block_size=1 << 24),
            parse_options=pcsv.ParseOptions(delimiter=delimiter, quote_char=False, escape_char=False,
                                            double_quote=False, newlines_in_values=False),
            convert_options=pcsv.ConvertOptions(column_types=types, null_values=[], strings_can_be_null=False,
                                                quoted_strings_can_be_null=False, check_utf8=True))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise _Rejected(str(exc)) from None


def _column(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy().astype(np.int64, copy=False)


def _fast(body: bytes, starts: np.ndarray, fmt: str, base: int, labels: bool = False) -> pa.Table:
    """Parse ``body`` (no header) whose lines start at ``starts`` (absolute order base added)."""
    if len(starts) == 0:
        return empty_interactions(fmt, labels)
    if body.translate(None, _ALLOWED):  # what is left after deleting the allowed bytes
        raise _Rejected("unexpected bytes")
    # pyarrow ends a row at a bare '\r' too: with a blank line (which it skips) in the same block the
    # row count would still match the line count, and one bad line would become two rows.
    if b"\r" in body and body.count(b"\r") != body.count(b"\r\n"):
        raise _Rejected("carriage return inside a line")
    if fmt == "plays_csv":
        return _fast_plays(body, starts, base)
    table = _read(body, fmt, labels)
    if table.num_rows != len(starts):
        raise _Rejected(f"{table.num_rows} rows for {len(starts)} lines")
    if table.num_rows == 0:
        return empty_interactions(fmt, labels)
    user = _column(table, "user")
    if user.min() < 0:
        raise _Rejected("negative user")
    if fmt == "pairs_csv":
        item = _column(table, "item")
        if item.min() < 0:
            raise _Rejected("negative item")
        columns = {"user": user, "item": item, "ts": _column(table, "ts"), "order": base + starts}
        if labels:
            label = _column(table, LABEL_COLUMN)
            if np.any((label != 0) & (label != 1)):
                raise _Rejected("label other than 0 or 1")
            columns[LABEL_COLUMN] = label.astype(np.int8)
        return pa.table(columns, schema=interaction_schema(fmt, labels))
    tokens = pc.split_pattern(table.column("items").combine_chunks(), " ")
    lengths = pc.list_value_length(tokens).to_numpy()
    try:
        item = pc.cast(tokens.flatten(), pa.int64()).to_numpy()
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise _Rejected(str(exc)) from None
    if len(item) == 0 or item.min() < 0:
        raise _Rejected("negative or missing item")
    row_of = np.repeat(np.arange(len(lengths)), lengths)
    first_of_row = np.cumsum(lengths) - lengths
    token = np.arange(len(item), dtype=np.int64) - np.repeat(first_of_row, lengths)
    return pa.table({"user": user[row_of], "item": item, "ts": np.zeros(len(item), dtype=np.int64),
                     "order": base + starts[row_of] + token, "first": token == 0},
                    schema=interaction_schema(fmt))


def _fast_plays(body: bytes, starts: np.ndarray, base: int) -> pa.Table:
    """``_fast`` for ``plays_csv``: lines of 5 and of 8 fields parsed apart, rows back in line order."""
    arr = np.frombuffer(body, dtype=np.uint8)
    commas = np.concatenate([[0], np.cumsum(arr == ord(","))])
    ends = np.append(starts[1:], len(body))
    fields = commas[ends] - commas[starts] + 1
    if not np.all(np.isin(fields, (5, 8))):
        raise _Rejected("a line without 5 or 8 fields")
    parts, at = [], []
    for n in (5, 8):
        lines = np.flatnonzero(fields == n)
        if len(lines) == 0:
            continue
        piece = b"".join(body[starts[i]:ends[i]] for i in lines) if len(lines) < len(starts) else body
        if not piece.endswith(b"\n"):
            piece += b"\n"
        table = _read(piece, "plays_csv", False, n)
        if table.num_rows != len(lines):
            raise _Rejected(f"{table.num_rows} rows for {len(lines)} lines")
        if n == 8 and any(np.any((_column(table, c) != 0) & (_column(table, c) != 1))
                          for c in ("like", "follow", "forward")):
            raise _Rejected("behaviour other than 0 or 1")
        parts.append(table.select(["user", "item", "ts", "play", "duration"]))
        at.append(lines)
    if not parts:
        return empty_interactions("plays_csv")
    table = pa.concat_tables(parts)
    line = np.concatenate(at)
    columns = {c: _column(table, c) for c in ("user", "item", "ts", "play", "duration")}
    back = np.argsort(line, kind="stable")
    columns = {c: v[back] for c, v in columns.items()}
    play, duration = columns["play"], columns["duration"]
    if columns["user"].min() < 0 or columns["item"].min() < 0 or play.min() < 0 or duration.min() <= 0 or \
            np.any(play > duration):
        raise _Rejected("an id, playing time or duration out of range")
    return pa.table({"user": columns["user"], "item": columns["item"], "ts": columns["ts"],
                     "order": base + starts, "play": play, "duration": duration},
                    schema=interaction_schema("plays_csv"))


def parse_block(data: bytes, fmt: str, *, file_index: int, offset: int, at_eof: bool,
                labels: bool = False) -> ParsedBlock:
    """Parse a block of whole lines of one input file.

    Args:
        data: The lines (the last may lack ``\\n`` only when ``at_eof``).
        fmt: ``pairs_csv``, ``plays_csv`` or ``pairs_tsv``.
        file_index: Position of the file in the sorted input list.
        offset: Byte offset of ``data`` in its file (0: the block may start with a BOM and a header).
        at_eof: The block ends at the end of its file.
        labels: ``pairs_csv`` rows carry the label column (``sources.detect_labels``).

    Returns:
        The ``ParsedBlock``; its ``bad`` lines are excluded from ``table``.
    """
    at_file_start = offset == 0
    bom = int(at_file_start and data.startswith(BOM))
    if bom:
        data, offset = data[len(BOM):], len(BOM)
    starts = line_starts(data)
    lines = len(starts)
    base = (file_index << 40) + offset
    header = 0
    if at_file_start and lines and is_header(strip_terminator(data[:starts[1] if lines > 1 else len(data)]), fmt,
                                             labels):
        header = 1
    body_from = int(starts[header]) if lines > header else len(data)
    body, body_starts = data[body_from:], starts[header:] - body_from
    try:
        table = _fast(body, body_starts, fmt, base + body_from, labels)
        return ParsedBlock(table=table, lines=lines, header_rows=header, rows=lines - header, bad=[], bom=bom)
    except _Rejected as exc:
        first_problem = str(exc)
    bad = find_bad_lines(data, starts.tolist(), fmt, at_file_start=at_file_start, at_eof=at_eof, labels=labels)
    bad_idx = {b.index for b in bad}
    keep = np.array([i for i in range(header, lines) if i not in bad_idx], dtype=np.int64)
    ends = np.append(starts[1:], len(data))
    pieces = [data[starts[i]:ends[i]] for i in keep]
    if pieces and not pieces[-1].endswith(b"\n"):
        pieces[-1] += b"\n"
    clean = b"".join(pieces)
    clean_starts = np.cumsum([0] + [len(p) for p in pieces[:-1]], dtype=np.int64) if pieces else keep
    try:
        table = _fast(clean, clean_starts, fmt, base, labels)
    except _Rejected as exc:
        raise AssertionError(f"the validator accepted lines the parser rejects ({exc}); fast path said: "
                             f"{first_problem}") from None
    # The cleaned bytes are contiguous; restore each row's position in the original block.
    if table.num_rows:
        table = table.set_column(table.schema.get_field_index("order"), "order",
                                 pa.array(_restore_order(table, keep, starts, clean_starts, base, fmt)))
    return ParsedBlock(table=table, lines=lines, header_rows=header, rows=len(keep), bad=bad, bom=bom)


def _restore_order(table: pa.Table, keep: np.ndarray, starts: np.ndarray, clean_starts: np.ndarray,
                   base: int, fmt: str) -> np.ndarray:
    order = table.column("order").to_numpy() - base
    row = np.searchsorted(clean_starts, order, side="right") - 1  # clean line of each interaction
    within = order - clean_starts[row]  # token index (tsv) or 0 (csv)
    return base + starts[keep[row]] + within
