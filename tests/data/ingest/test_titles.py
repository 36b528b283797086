"""The titles CSV: quoted commas and newlines, line numbers of bad records, lookup."""

import re

import numpy as np
import pytest

from mvrec_dist.data.ingest.errors import IngestError
from mvrec_dist.data.ingest.titles import parse_titles

GOOD = b'item,title\n3,"a, b"\n1,"two\nlines"\n2,plain\n'


def test_parse_quoted_fields_and_lookup():
    t = parse_titles(GOOD, "t.csv", "error")
    assert t.items.tolist() == [1, 2, 3] and t.titles == ["two\nlines", "plain", "a, b"]
    assert (t.rows, t.header_rows) == (3, 1)
    has, titles = t.lookup(np.array([2, 5, 3]))
    assert has.tolist() == [True, False, True] and titles == ["plain", "", "a, b"]


@pytest.mark.parametrize("data, line, reason", [
    (b'item,title\n1,"x\ny"\nabc,z\n', 4, "item id 'abc' is not a non-negative decimal integer"),
    (b'item,title\n1,x\n1,y\n', 3, "duplicate item id 1 (first on line 2)"),
    (b'item,title\n1,x,extra\n', 2, "expected 2 fields (item,title), got 3"),
    (b'item,title\n1,\xff\n', 2, "invalid UTF-8"),
    (b'item,title\n-4,x\n', 2, "item id '-4' is not a non-negative decimal integer"),
    (b'\xe9t\xe9,x\n1,y\n', 1, "invalid UTF-8"),  # the first record, where a header may be
])
def test_bad_records_name_their_line(data, line, reason):
    with pytest.raises(IngestError, match=rf"^t\.csv:{line}: {re.escape(reason)}"):
        parse_titles(data, "t.csv", "error")
    t = parse_titles(data, "t.csv", "quarantine")
    assert [(b[0], b[1]) for b in t.bad] == [(line, reason)]


def test_empty_titles_file_is_an_error():
    with pytest.raises(IngestError, match="empty titles file"):
        parse_titles(b"item,title\n", "t.csv", "error")


@pytest.mark.parametrize("data", [b"\xef\xbb\xbfitem,title\n1,x\n2,y\n", b"\xef\xbb\xbf1,x\n2,y\n",
                                  b'\xef\xbb\xbf"item","title"\n1,x\n2,y\n'])
def test_a_leading_bom_is_stripped_and_counted(data):
    # Spreadsheet exports start with a UTF-8 byte-order mark; it is not part of the first field.
    t = parse_titles(data, "t.csv", "error")
    assert t.items.tolist() == [1, 2] and t.titles == ["x", "y"] and t.bom_stripped == 1
    assert parse_titles(b"1,x\n", "t.csv", "error").bom_stripped == 0


def test_a_bom_after_the_start_is_a_bad_record():
    with pytest.raises(IngestError, match=r"^t\.csv:2: item id '\\ufeff2' is not a non-negative decimal integer"):
        parse_titles(b"1,x\n\xef\xbb\xbf2,y\n", "t.csv", "error")
