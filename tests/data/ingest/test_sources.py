"""Input listing and byte ranges: every line is read exactly once, whatever the block size."""

import fsspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mvrec_dist.data.ingest import sources
from mvrec_dist.data.ingest.errors import IngestError
from mvrec_dist.data.ingest.sources import count_newlines, detect_format, list_inputs, plan_ranges, read_range


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")), min_size=1, max_size=40),
       trailing=st.booleans(), block=st.integers(1, 60), scan=st.integers(1, 9))
def test_ranges_cover_every_line_exactly_once(tmp_path_factory, lines, trailing, block, scan):
    data = b"\n".join(lines) + (b"\n" if trailing else b"")
    if not data:
        return
    path = tmp_path_factory.mktemp("r") / "x.csv"
    path.write_bytes(data)
    out = b""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sources, "_SCAN_BYTES", scan)  # small reads force the read-more path
        for r in plan_ranges(list_inputs(str(path)), block):
            offset, chunk = read_range(r)
            assert not chunk or offset == len(out)
            out += chunk
    assert out == data


def test_list_inputs_file_directory_glob_sorted(tmp_path):
    for name in ("b.csv", "a.csv", "notes.txt", "sub/c.csv"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"1,2,3\n")
    assert [f.path.rsplit("/", 1)[-1] for f in list_inputs(str(tmp_path))] == ["a.csv", "b.csv", "c.csv"]
    files = list_inputs(str(tmp_path / "*.csv"))
    assert [f.index for f in files] == [0, 1] and files[0].path.endswith("a.csv") and files[0].size == 6
    assert list_inputs("file://" + str(tmp_path / "a.csv"))[0].display == str(tmp_path / "a.csv")


def test_missing_and_empty_inputs_are_errors(tmp_path):
    with pytest.raises(IngestError, match="missing input: .*nope.csv"):
        list_inputs(str(tmp_path / "nope.csv"))
    with pytest.raises(IngestError, match="missing input: .*matched no input files"):
        list_inputs(str(tmp_path / "*.csv"))
    (tmp_path / "e.csv").write_bytes(b"")
    with pytest.raises(IngestError, match=r"e\.csv: empty input \(0 bytes\)"):
        list_inputs(str(tmp_path / "e.csv"))


def test_fsspec_uri_input():
    mem = fsspec.filesystem("memory")
    data = b"user,item,timestamp\n" + b"".join(b"%d,%d,%d\n" % (i, i + 1, i + 2) for i in range(100))
    with mem.open("/mvrec-test/pairs.csv", "wb") as f:
        f.write(data)
    files = list_inputs("memory://mvrec-test/pairs.csv")
    assert files[0].display == "memory://mvrec-test/pairs.csv" and files[0].size == len(data)
    assert b"".join(read_range(r)[1] for r in plan_ranges(files, 100)) == data
    assert count_newlines(files[0], 40) == data[:40].count(b"\n")


def test_detect_format(tmp_path):
    for name in ("a.csv", "b.tsv", "c.dat"):
        (tmp_path / name).write_bytes(b"x\n")
    assert detect_format(list_inputs(str(tmp_path / "a.csv")), "auto") == "pairs_csv"
    assert detect_format(list_inputs(str(tmp_path / "b.tsv")), "auto") == "pairs_tsv"
    assert detect_format(list_inputs(str(tmp_path / "c.dat")), "pairs_csv") == "pairs_csv"
    with pytest.raises(IngestError, match="cannot tell the format"):
        detect_format(list_inputs(str(tmp_path / "c.dat")), "auto")
    with pytest.raises(IngestError, match="inputs mix formats"):
        detect_format(list_inputs(str(tmp_path)), "auto")


def test_detect_labels_from_the_first_line_of_every_csv(tmp_path):
    from mvrec_dist.data.ingest.sources import detect_labels

    (tmp_path / "h").mkdir()
    (tmp_path / "h" / "a.csv").write_bytes(b"\xef\xbb\xbfuser,item,timestamp,label\n1,2,3,1\n")
    (tmp_path / "h" / "b.csv").write_bytes(b"\n4,5,6,0\n")  # no header: four fields
    assert detect_labels(list_inputs(str(tmp_path / "h")), "pairs_csv") is True
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "a.csv").write_bytes(b"user,item,timestamp\n1,2,3\n")
    (tmp_path / "p" / "b.csv").write_bytes(b"1,2,3\n")
    assert detect_labels(list_inputs(str(tmp_path / "p")), "pairs_csv") is False
    (tmp_path / "h" / "c.csv").write_bytes(b"user,item,timestamp\n1,2,3\n")
    with pytest.raises(IngestError, match=r"mix csv files with and without the label column \(.*a.csv: "
                                          r"user,item,timestamp,label; .*c.csv: no label\)"):
        detect_labels(list_inputs(str(tmp_path / "h")), "pairs_csv")
    (tmp_path / "t.tsv").write_bytes(b"1\t2 3 4\n")
    assert detect_labels(list_inputs(str(tmp_path / "t.tsv")), "pairs_tsv") is False
