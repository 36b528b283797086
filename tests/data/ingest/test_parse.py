"""Block parsing: the vectorised fast path and the per-line fallback agree with a plain reference."""

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mvrec_dist.data.ingest.parse import line_starts, parse_block

_INT = re.compile(rb"[ \t]*(-?[0-9]+)[ \t]*")
BOM = b"\xef\xbb\xbf"


def _int(field: bytes, non_negative: bool) -> int | None:
    m = _INT.fullmatch(field)
    if not m:
        return None
    v = int(m.group(1))
    return v if -(1 << 63) <= v < (1 << 63) and (v >= 0 or not non_negative) else None


def reference(data: bytes, fmt: str, file_index: int, offset: int, at_eof: bool):
    """Line by line with Python ints: ``(rows [(user, item, ts, order)], bad line indices, header)``.

    A UTF-8 BOM at the start of a file is not part of the first line (positions stay file offsets)."""
    rows, bad, pos, header = [], [], 0, 0
    at_start = offset == 0
    if at_start and data.startswith(BOM):
        data, offset = data[3:], 3
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for i, raw in enumerate(lines):
        start = pos
        pos += len(raw) + 1
        line = raw[:-1] if raw.endswith(b"\r") else raw
        order = (file_index << 40) + offset + start
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            bad.append(i)
            continue
        if i == 0 and at_start and line.strip() in (b"user,item,timestamp", b"user\titems", b"user\titem"):
            header = 1
            continue
        if fmt == "pairs_csv":
            f = line.split(b",")
            vals = [_int(f[0], True), _int(f[1], True), _int(f[2], False)] if len(f) == 3 else [None]
            if None in vals:
                bad.append(i)
            else:
                rows.append((vals[0], vals[1], vals[2], order))
        else:
            f = line.split(b"\t")
            user = _int(f[0], True) if len(f) == 2 else None
            toks = f[1].split(b" ") if len(f) == 2 else []
            items = [_int(t, True) if t and t.strip() == t else None for t in toks]
            if user is None or not items or None in items:
                bad.append(i)
            else:
                rows.extend((user, it, 0, order + k) for k, it in enumerate(items))
    return rows, bad, header


def table_rows(table):
    d = table.to_pydict()
    return list(zip(d["user"], d["item"], d["ts"], d["order"]))


csv_lines = st.one_of(
    st.tuples(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(-10**12, 10**13)).map(
        lambda t: b"%d,%d,%d" % t),
    st.sampled_from([b"", b"user,item,timestamp", b"1,2", b"1,2,3,4", b"-1,2,3", b"1,-2,3", b"0x1,2,3",
                     b"+1,2,3", b"1,2,x", b"1,\xff,3", b" 4 ,5,\t6", b"007,8,9", b"1,2,3\r",
                     b"99999999999999999999,1,1", b"1,2,3\r4,5,6"]))
tsv_lines = st.one_of(
    st.tuples(st.integers(0, 10**6), st.lists(st.integers(0, 10**5), min_size=1, max_size=6)).map(
        lambda t: b"%d\t" % t[0] + b" ".join(b"%d" % x for x in t[1])),
    st.sampled_from([b"", b"user\titems", b"1\t", b"1\t2  3", b"1\t2 3 ", b"1 2", b"1\t2\t3", b"1\t-2",
                     b"1\tx", b"\xff\t1", b"5\t1 2\r"]))


@settings(max_examples=300, deadline=None)
@given(st.data(), st.sampled_from(["pairs_csv", "pairs_tsv"]), st.booleans(), st.booleans(),
       st.integers(0, 3), st.booleans(), st.booleans())
def test_parse_block_matches_reference(data, fmt, header, trailing_newline, file_index, at_start, bom):
    lines = data.draw(st.lists(csv_lines if fmt == "pairs_csv" else tsv_lines, min_size=1, max_size=25))
    if header:
        lines = [b"user,item,timestamp" if fmt == "pairs_csv" else b"user\titems"] + lines
    block = (BOM if bom else b"") + b"\n".join(lines) + (b"\n" if trailing_newline else b"")
    offset = 0 if at_start else 1000
    parsed = parse_block(block, fmt, file_index=file_index, offset=offset, at_eof=True)
    rows, bad, head = reference(block, fmt, file_index, offset, True)
    assert table_rows(parsed.table) == rows
    assert [b.index for b in parsed.bad] == bad
    assert parsed.header_rows == head
    stripped = bom and at_start
    assert parsed.bom == int(stripped)
    assert parsed.lines == len(line_starts(block[3:] if stripped else block))
    assert parsed.rows + len(parsed.bad) + parsed.header_rows == parsed.lines


def test_fallback_keeps_original_positions_and_counts():
    clean = b"1,2,3\n4,5,6\n7,8,9\n"
    dirty = b"1,2,3\nbad\n4,5,6\n\n7,8,9\n"
    a = parse_block(clean, "pairs_csv", file_index=2, offset=0, at_eof=True)
    b = parse_block(dirty, "pairs_csv", file_index=2, offset=0, at_eof=True)
    assert a.table.column("order").to_pylist() == [(2 << 40) + p for p in (0, 6, 12)]
    assert b.table.column("order").to_pylist() == [(2 << 40) + p for p in (0, 10, 17)]
    assert [x.index for x in b.bad] == [1, 3] and b.rows == 3 and b.lines == 5


def test_a_bare_carriage_return_next_to_a_blank_line_is_not_two_rows():
    # pyarrow splits rows at a bare '\r' and skips blank lines: counts alone cannot tell.
    for fmt, line in (("pairs_csv", b"1,2,3\r4,5,6"), ("pairs_tsv", b"1\t2\r4\t5")):
        parsed = parse_block(b"\n" + line, fmt, file_index=0, offset=1000, at_eof=True)
        assert parsed.table.num_rows == 0 and [b.index for b in parsed.bad] == [0, 1]


def test_tsv_order_keys_follow_file_order():
    block = b"7\t30 10 20\r\n3\t5\n7\t1\n"
    parsed = parse_block(block, "pairs_tsv", file_index=0, offset=50, at_eof=True)
    d = parsed.table.to_pydict()
    assert d["user"] == [7, 7, 7, 3, 7] and d["item"] == [30, 10, 20, 5, 1]
    assert d["order"] == [50, 51, 52, 62, 66]  # line starts 0, 12, 16 plus token index
    assert d["first"] == [True, False, False, True, True]
    assert np.all(np.diff(d["order"]) > 0)


def test_header_is_only_recognised_at_file_start():
    parsed = parse_block(b"user,item,timestamp\n1,2,3\n", "pairs_csv", file_index=0, offset=100, at_eof=True)
    assert parsed.header_rows == 0 and parsed.bad[0].reason == "header line in the middle of the file"
    parsed = parse_block(b"user,item,timestamp\n", "pairs_csv", file_index=0, offset=0, at_eof=True)
    assert parsed.header_rows == 1 and parsed.rows == 0 and parsed.table.num_rows == 0


@pytest.mark.parametrize("fmt, header, line", [("pairs_tsv", b"user\titems", b"1\t2 3"),
                                               ("pairs_csv", b"user,item,timestamp", b"1,2,3")])
def test_a_bom_at_the_start_of_a_file_is_stripped_and_counted(fmt, header, line):
    # Spreadsheet exports start with a UTF-8 byte-order mark, with or without a header line.
    for first, header_rows in ((line, 0), (header, 1)):
        parsed = parse_block(BOM + first + b"\n" + line + b"\n", fmt, file_index=1, offset=0, at_eof=True)
        assert (parsed.bad, parsed.bom, parsed.header_rows, parsed.rows) == ([], 1, header_rows, 2 - header_rows)
    # Order keys stay byte positions in the file: the first line starts after the three BOM bytes.
    parsed = parse_block(BOM + line + b"\n", fmt, file_index=1, offset=0, at_eof=True)
    assert parsed.table.column("order")[0].as_py() == (1 << 40) + 3
    # Only at the start of a file: anywhere else the BOM belongs to a bad line.
    later = parse_block(BOM + line + b"\n", fmt, file_index=1, offset=100, at_eof=True)
    assert later.bom == 0 and [b.index for b in later.bad] == [0] and "not a decimal integer" in later.bad[0].reason
    second = parse_block(line + b"\n" + BOM + line + b"\n", fmt, file_index=1, offset=0, at_eof=True)
    assert second.bom == 0 and [b.index for b in second.bad] == [1]


def test_a_bom_with_bad_lines_keeps_positions():
    parsed = parse_block(BOM + b"1,2,3\nx\n4,5,6\n", "pairs_csv", file_index=0, offset=0, at_eof=True)
    assert parsed.bom == 1 and [b.index for b in parsed.bad] == [1] and parsed.rows == 2
    assert parsed.table.column("order").to_pylist() == [3, 11]  # file offsets of "1,2,3" and "4,5,6"


labelled_lines = st.one_of(
    st.tuples(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(-10**12, 10**13), st.integers(0, 1)).map(
        lambda t: b"%d,%d,%d,%d" % t),
    st.sampled_from([b"", b"1,2,3", b"1,2,3,2", b"1,2,3,-1", b"1,2,3,x", b"1,2,3, 1", b"1,2,3,01", b"1,2,3,1,1",
                     b"user,item,timestamp,label", b"4,5,6,0\r"]))


def _label(field: bytes) -> int | None:
    v = _int(field, False)
    return v if v in (0, 1) else None


@settings(max_examples=200, deadline=None)
@given(st.lists(labelled_lines, min_size=1, max_size=25), st.booleans(), st.booleans())
def test_labelled_csv_blocks_match_the_line_rules(lines, header, at_start):
    # Reference: a row is valid when its first three fields are (reference()) and its label is 0 or 1.
    if header:
        lines = [b"user,item,timestamp,label"] + lines
    block = b"\n".join(lines) + b"\n"
    offset = 0 if at_start else 1000
    parsed = parse_block(block, "pairs_csv", file_index=1, offset=offset, at_eof=True, labels=True)
    want, bad, pos = [], [], 0
    for i, raw in enumerate(lines):
        line = raw.rstrip(b"\r")
        order, pos = (1 << 40) + offset + pos, pos + len(raw) + 1
        if i == 0 and at_start and line == b"user,item,timestamp,label":
            continue
        fields = line.split(b",")
        vals = [_int(fields[0], True), _int(fields[1], True), _int(fields[2], False), _label(fields[3])] \
            if len(fields) == 4 else [None]
        if None in vals:
            bad.append(i)
        else:
            want.append((*vals[:3], order, vals[3]))
    d = parsed.table.to_pydict()
    assert list(zip(d["user"], d["item"], d["ts"], d["order"], d["label"])) == want
    assert [b.index for b in parsed.bad] == bad
    assert parsed.table.schema.field("label").type == "int8"
