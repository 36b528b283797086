"""Global line numbers of quarantined rows from per-block line counts."""

from mvrec_dist.data.ingest.datasource import BlockReport, quarantine_part_path
from mvrec_dist.data.ingest.quarantine import QUARANTINE_HEADER, first_lines, merge_quarantine
from mvrec_dist.data.ingest.sources import list_inputs


def report(file_index, start, lines, bad=0):
    return BlockReport(file_index=file_index, start=start, offset=start, lines=lines, header_rows=0,
                       rows=lines - bad, interactions=lines - bad, bad_rows=bad)


def test_first_lines_accumulate_per_file():
    reports = [report(0, 100, 7), report(1, 0, 3), report(0, 0, 5), report(0, 200, 1)]
    assert first_lines(reports) == {(0, 0): 1, (0, 100): 6, (0, 200): 13, (1, 0): 1}


def test_merge_sorts_by_file_and_line(tmp_path):
    for name in ("a.csv", "b.csv"):
        (tmp_path / name).write_bytes(b"x\n")
    files = list_inputs(str(tmp_path))
    parts = str(tmp_path / "parts")
    for (f, start), text in {(1, 0): "0\tblank line\t\n", (0, 100): "2\tbad\tx,y\n0\tbad\tz\n"}.items():
        path = tmp_path / "parts" / quarantine_part_path("", f, start).lstrip("/")
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    reports = [report(0, 0, 5), report(0, 100, 4, bad=2), report(1, 0, 1, bad=1)]
    out = str(tmp_path / "q.tsv")
    rows, info = merge_quarantine(parts, reports, files, [("t.csv", 9, "dup", "1,x")], out)
    a, b = files[0].display, files[1].display
    assert rows == 3 and info["bytes"] == len(open(out, "rb").read())
    assert open(out).read() == (QUARANTINE_HEADER + f"{a}\t6\tbad\tz\n{a}\t8\tbad\tx,y\n{b}\t1\tblank line\t\n"
                                "t.csv\t9\tdup\t1,x\n")
    assert not (tmp_path / "parts").exists()
