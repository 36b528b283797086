"""Per-line validation: every bad-row reason, and the raw-text escaping of quarantine.tsv."""

import pytest

from mvrec_dist.data.ingest.validate import escape_raw, find_bad_lines, line_problem


def problem(line: bytes, fmt: str = "pairs_csv", last: bool = False, first: bool = False) -> str | None:
    return line_problem(line, fmt, unterminated_last=last, may_be_header=first)


@pytest.mark.parametrize("line", [b"1,2,3", b" 1 ,\t2,3 ", b"007,0,-5", b"0,0,0", b"9223372036854775807,1,1"])
def test_valid_csv_lines(line):
    assert problem(line) is None


@pytest.mark.parametrize("line, reason", [
    (b"1,2", "expected 3 comma-separated fields"),
    (b"1,2,3,4", "got 4"),
    (b"a,2,3", "user id 'a' is not a decimal integer"),
    (b"1,2.5,3", "item id '2.5' is not a decimal integer"),
    (b"0x1,2,3", "not a decimal integer"),
    (b"+1,2,3", "not a decimal integer"),
    (b"-1,2,3", "user id -1 is negative"),
    (b"1,-2,3", "item id -2 is negative"),
    (b"1,2,", "timestamp is empty"),
    (b"9223372036854775808,1,1", "out of the int64 range"),
    (b"", "blank line"),
    (b"  \t", "blank line"),
    (b"user,item,timestamp", "header line in the middle of the file"),
    (b"1,\xff\xfe,3", "invalid UTF-8 (byte 0xff at column 3)"),
])
def test_bad_csv_lines(line, reason):
    assert reason in problem(line)


def test_header_only_allowed_on_the_first_line_of_a_file():
    assert problem(b"user,item,timestamp", first=True) is None
    assert problem(b"\xef\xbb\xbfuser,item,timestamp", first=True) is None
    assert problem(b"user\titems", "pairs_tsv", first=True) is None
    assert "header" in problem(b"user\titems", "pairs_tsv")


def test_truncated_last_line_is_named():
    assert problem(b"1,2", last=True).startswith("truncated last line (no newline at end of file)")
    assert problem(b"17", "pairs_tsv", last=True).startswith("truncated last line")
    assert problem(b"1,2,3", last=True) is None  # a complete last line without newline is fine


@pytest.mark.parametrize("line, reason", [
    (b"1\t", "empty item sequence"),
    (b"1\t   ", "empty item sequence"),
    (b"1\t2  3", "empty item token at position 2"),
    (b"1\t2 3 ", "empty item token at position 3"),
    (b"1\t2 x", "item 2 'x' is not a decimal integer"),
    (b"1\t2 -3", "item 2 -3 is negative"),
    (b"1 2 3", "expected 2 tab-separated fields"),
    (b"1\t2\t3", "got 3"),
    (b"u\t2", "user id 'u' is not a decimal integer"),
])
def test_bad_tsv_lines(line, reason):
    assert reason in problem(line, "pairs_tsv")


def test_find_bad_lines_indexes_lines_of_the_block():
    data = b"1,2,3\r\n\nx,1,1\n4,5,6\n7,8"
    starts = [0, 7, 8, 14, 20]
    bad = find_bad_lines(data, starts, "pairs_csv", at_file_start=False, at_eof=True)
    assert [(b.index, b.raw) for b in bad] == [(1, b""), (2, b"x,1,1"), (4, b"7,8")]
    assert bad[2].reason.startswith("truncated last line")
    # Not at the end of the file: the same last line is an ordinary column-count error.
    bad = find_bad_lines(data, starts, "pairs_csv", at_file_start=False, at_eof=False)
    assert not bad[2].reason.startswith("truncated")


def test_escape_raw_keeps_one_tsv_cell():
    assert escape_raw(b"a\tb\\c\xff") == "a\\tb\\\\c\\xff"
    assert escape_raw(b"x" * 2000, limit=10) == "x" * 10 + "..."


@pytest.mark.parametrize("line, reason", [
    (b"1,2,3,1", None), (b"1,2,3, 0 ", None), (b"1,2,3,01", None), (b"1,2,3,-0", None),
    (b"1,2,3", "expected 4 comma-separated fields (user,item,timestamp,label), got 3"),
    (b"1,2,3,2", "label '2' is not 0 or 1 (1: clicked, 0: shown but not clicked)"),
    (b"1,2,3,yes", "label 'yes' is not 0 or 1"),
    (b"1,2,3,-1", "label '-1' is not 0 or 1"),
    (b"1,2,3,0.5", "label '0.5' is not 0 or 1"),
    (b"1,2,3,", "label is empty"),
    (b"1,x,3,1", "item id 'x' is not a decimal integer"),
    (b"user,item,timestamp,label", "header line in the middle of the file"),
])
def test_labelled_csv_lines(line, reason):
    got = line_problem(line, "pairs_csv", unterminated_last=False, may_be_header=False, labels=True)
    assert got == reason if reason is None else reason in got
    assert line_problem(b"user,item,timestamp,label", "pairs_csv", unterminated_last=False, may_be_header=True,
                        labels=True) is None
    assert "expected 3" in problem(b"1,2,3,1")  # without the column a fourth field stays a bad line
