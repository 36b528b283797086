"""``mvrec ingest``'s summary: one line per stage with its rates, from an ``IngestResult``."""

from __future__ import annotations

from types import SimpleNamespace

from mvrec_dist.cli.ingest import stage_lines

COUNTS = {"input_rows": 2000, "input_interactions": 2000, "users": 100, "items": 50, "kept_interactions": 1900}


def test_each_stage_has_its_rates():
    result = SimpleNamespace(manifest={"counts": COUNTS}, timings={"read_group": 2.0, "ids": 0.5, "write": 4.0,
                                                                   "items": 0.5, "finish": 0.25, "publish": 0.25})
    lines = stage_lines(result)
    assert [line.split(":")[0] for line in lines] == ["read+group", "ids", "write", "items", "finish"]
    assert "2,000 rows (1,000 rows/s), 2,000 interactions (1,000/s)" in lines[0]
    assert "100 users (25/s), 1,900 interactions (475/s)" in lines[2]
    assert lines[3].endswith("50 items (100/s)") and lines[4].startswith("finish:         0.5 s")
    split = stage_lines(SimpleNamespace(manifest={"counts": COUNTS}, timings={"read_group": 2.0, "read": 1.5,
                                                                              "group": 0.5}))
    assert split[0].endswith("2,000 interactions (1,000/s) (read 1.5 s, group 0.5 s)")


def test_a_reused_dataset_with_new_videos():
    result = SimpleNamespace(manifest={"counts": COUNTS, "content": {"counts": {"items": 50, "with_content": 3}}},
                             timings={"reused": 0.0, "content": 10.0})
    assert stage_lines(result) == ["interactions: already ingested with these inputs; reused",
                                   "videos:        10.0 s  50 items (5/s), 3 with content"]


def test_a_stripped_bom_and_duplicate_rows_are_reported():
    counts = dict(COUNTS, bom_stripped=1, duplicate_users=1, duplicate_rows=2, dropped_rows=2, dropped_interactions=3)
    lines = stage_lines(SimpleNamespace(manifest={"counts": counts}, timings={"read_group": 2.0}))
    assert lines[1] == "inputs:     1 file started with a UTF-8 BOM (stripped); 2 duplicate rows of 1 user: " \
                       "dropped (3 interactions)"
    kept = dict(counts, bom_stripped=0, dropped_rows=0, dropped_interactions=0)
    assert stage_lines(SimpleNamespace(manifest={"counts": kept}, timings={}))[0] == \
        "inputs:     2 duplicate rows of 1 user: kept"
    clean = dict(COUNTS, bom_stripped=0, duplicate_rows=0)
    assert stage_lines(SimpleNamespace(manifest={"counts": clean}, timings={})) == []
