"""Ingestion of FRAME's interaction format (``plays_csv``: user, item, playing time, duration, timestamp and
optional like/follow/forward): detected from the first line, every interaction's playing time and duration
stored beside its item in every user split (cut like the timestamps), bad rows named with file and line.
On the shared loopback Ray cluster."""

import random

import numpy as np
import pytest

from mvrec_dist.data.ingest import IngestError
from mvrec_dist.data.ingest.parse import parse_block
from mvrec_dist.data.verify import verify_dataset
from tests.helpers.shards import ingest_small_blocks, members_by_user

pytestmark = pytest.mark.integration

HEADER = "user,item,playing_time,duration,timestamp,like,follow,forward"
PLAYS = {1: [(10, 300, 1000, 100), (11, 1000, 1000, 110), (12, 0, 500, 120), (13, 499, 500, 130)],
         2: [(10, 50, 100, 200), (12, 100, 100, 210), (15, 7, 9, 220)],
         4: [(30, 1, 2, 1)]}
"""user -> (item, playing time, duration, timestamp) in time order; user 4 is shorter than min_seq_len=3."""
BAD = {"1,14,1200,1000,140": "playing time 1200 is greater than the duration 1000",
       "2,16,5,-10,230": "duration -10 is not positive (a play ratio needs it)",
       "2,17,5x,10,240": "playing time '5x' is not a decimal integer"}
"""Bad rows and the reason each is named with."""


def _rows() -> list[str]:
    rows = []
    for u, seq in PLAYS.items():
        for k, (i, p, d, t) in enumerate(seq):
            # The behaviour columns are optional per line: every other row has them.
            rows.append(f"{u},{i},{p},{d},{t}" + (",1,0,0" if k % 2 else ""))
    random.Random(5).shuffle(rows)
    return rows


@pytest.fixture(scope="module")
def plays(ray_local, tmp_path_factory):
    """The rows above plus the bad ones (quarantined) in one FRAME-format file with its header."""
    tmp = tmp_path_factory.mktemp("plays")
    (tmp / "raw").mkdir()
    rows = _rows()
    (tmp / "raw" / "frame.csv").write_text("\n".join([HEADER] + rows[:2] + list(BAD) + rows[2:]) + "\n")
    return tmp, ingest_small_blocks(tmp / "raw", tmp / "ds", on_bad_rows="quarantine")


def test_the_format_is_detected_and_every_split_keeps_play_and_duration(plays):
    tmp, result = plays
    m = result.manifest
    assert m["inputs"][0]["format"] == "plays_csv" and m["config"]["ingest"]["format"] == "plays_csv"
    assert m["plays"]["members"] == ["play", "duration"] and m["plays"]["splits"] == ["train", "valid", "test"]
    assert m["counts"]["quarantined_rows"] == 3 and m["counts"]["users"] == 2
    out = tmp / "ds"
    train = members_by_user(out, "train", {"play.npy", "duration.npy", "ts.npy", "json"})
    valid = members_by_user(out, "valid", {"play.npy", "duration.npy", "target_play.npy", "target_duration.npy", "json"})
    test = members_by_user(out, "test", {"play.npy", "duration.npy", "target_play.npy", "target_duration.npy", "json"})
    for user in (1, 2):
        p = [r[1] for r in PLAYS[user]]
        d = [r[2] for r in PLAYS[user]]
        assert train[user]["play.npy"].tolist() == valid[user]["play.npy"].tolist() == p[:-2]
        assert train[user]["duration.npy"].tolist() == valid[user]["duration.npy"].tolist() == d[:-2]
        assert train[user]["ts.npy"].tolist() == [r[3] for r in PLAYS[user]][:-2]
        assert valid[user]["target_play.npy"].tolist() == [p[-2]] and valid[user]["target_duration.npy"].tolist() == [d[-2]]
        assert test[user]["play.npy"].tolist() == p[:-1] and test[user]["duration.npy"].tolist() == d[:-1]
        assert test[user]["target_play.npy"].tolist() == [p[-1]] and test[user]["target_duration.npy"].tolist() == [d[-1]]
        assert train[user]["play.npy"].dtype == np.int64
    assert verify_dataset(str(out)) == []


def test_bad_rows_are_quarantined_with_file_line_and_reason(plays):
    tmp, _ = plays
    quarantine = (tmp / "ds" / "quarantine.tsv").read_text()
    for line, (raw, reason) in enumerate(BAD.items(), start=4):  # header, two rows, then the bad ones
        assert f"frame.csv\t{line}\t{reason}\t{raw}" in quarantine


@pytest.mark.parametrize("raw,reason", list(BAD.items()) + [("3,1,1,2,3,1,2,0", "follow '2' is not 0 or 1"),
                                                            ("3,1,1,2", "expected 5 or 8 comma-separated fields")])
def test_each_bad_row_stops_the_read_naming_file_and_line(tmp_path, raw, reason):
    from mvrec_dist.data.ingest.datasource import _read
    from mvrec_dist.data.ingest.sources import list_inputs, plan_ranges

    (tmp_path / "in.csv").write_text(f"{HEADER}\n1,2,3,4,5\n{raw}\n")
    first = plan_ranges(list_inputs(str(tmp_path / "in.csv")), 1 << 20)[0]
    with pytest.raises(IngestError, match=rf"in\.csv:3: {reason}".replace("(", r"\(").replace(")", r"\)")):
        list(_read(first, "plays_csv", "error", None, None))


def test_detect_format_tells_frame_csv_from_pairs_csv(tmp_path):
    from mvrec_dist.data.ingest.sources import detect_format, list_inputs

    for name, text, want in [("a.csv", f"{HEADER}\n", "plays_csv"), ("b.csv", "1,2,3,4,5\n", "plays_csv"),
                             ("c.csv", "1,2,3,4,5,0,0,1\n", "plays_csv"), ("d.csv", "user,item,timestamp\n", "pairs_csv"),
                             ("e.csv", "1,2,3,1\n", "pairs_csv"), ("f.csv", "1,2,3\n", "pairs_csv")]:
        (tmp_path / name).write_text(text)
        assert detect_format(list_inputs(str(tmp_path / name)), "auto") == want, name
    with pytest.raises(IngestError, match="inputs mix formats"):
        detect_format(list_inputs(str(tmp_path / "*.csv")), "auto")


def test_the_fast_path_and_the_slow_path_parse_the_same_rows():
    clean = "\n".join(["1,2,3,4,5", "1,3,4,4,6,1,1,0", "2,2,0,9,7"]) + "\n"
    fast = parse_block(clean.encode(), "plays_csv", file_index=0, offset=0, at_eof=True)
    assert fast.bad == []
    with_bad = "1,2,3,4,5\n1,3,4,4,6,1,1,0\n9,9,5,4,1\n2,2,0,9,7\n"  # line 3: play > duration
    slow = parse_block(with_bad.encode(), "plays_csv", file_index=0, offset=0, at_eof=True)
    assert [b.index for b in slow.bad] == [2]
    for column in ("user", "item", "ts", "play", "duration"):
        assert fast.table.column(column).to_pylist() == slow.table.column(column).to_pylist()
    assert slow.table.column("order").to_pylist() == [0, 10, 36]
