"""Ingestion of csv input with the optional click label: label-0 rows are exposures, kept per user in the
``exposures`` split and out of sequences, splits and item counts; every row is counted; bad labels are
named with file and line; every split keeps the input's timestamps. On the shared loopback Ray cluster."""

import json
import random

import numpy as np
import pytest

from mvrec_dist.config.ingest import IngestConfig
from mvrec_dist.data.ingest import IngestError
from mvrec_dist.data.verify import verify_dataset
from tests.helpers.shards import ingest_small_blocks, members_by_user

pytestmark = pytest.mark.integration

CLICKS = {1: [(10, 100), (11, 110), (12, 120), (13, 130), (14, 140)], 2: [(10, 200), (12, 210), (15, 220), (16, 230)],
          4: [(30, 1), (31, 2)], 5: [(11, 1), (12, 2), (13, 3)]}
"""Label-1 rows: user -> (item, timestamp) in time order. User 4 is shorter than min_seq_len=3."""
SHOWN = {1: [(20, 105), (21, 125), (99, 150)], 2: [(11, 201)], 3: [(10, 300), (11, 310)], 4: [(32, 3)]}
"""Label-0 rows. Item 99 is only ever shown; user 3 has exposures only (0 interactions: filtered)."""


BAD = "1,10,107,2"
"""A row whose label is neither 0 nor 1: line 5 of part-0.csv."""


def _rows():
    rows = [(u, i, t, 1) for u, seq in CLICKS.items() for i, t in seq] + \
           [(u, i, t, 0) for u, seq in SHOWN.items() for i, t in seq]
    random.Random(3).shuffle(rows)
    out = [",".join(map(str, r)) for r in rows]
    return out[:3] + [BAD] + out[3:]


def _write(tmp_path, rows, header="user,item,timestamp,label"):
    tmp_path.mkdir(parents=True, exist_ok=True)
    half = len(rows) // 2
    for k, part in enumerate((rows[:half], rows[half:])):
        (tmp_path / f"part-{k}.csv").write_text("\n".join([header] + part) + "\n")
    return tmp_path


@pytest.fixture(scope="module")
def labelled(ray_local, tmp_path_factory):
    """The rows above (and the bad one, quarantined) ingested in two files."""
    tmp = tmp_path_factory.mktemp("labels")
    return tmp / "ds", ingest_small_blocks(_write(tmp / "raw", _rows()), tmp / "ds", on_bad_rows="quarantine")


def test_every_row_is_counted_and_the_manifest_says_labels_were_present(labelled):
    out, result = labelled
    m = result.manifest
    assert m["labels"] == {"column": "label", "values": {"1": "clicked: an interaction",
                                                         "0": "shown, not clicked: an exposure"},
                           "clicked_rows": 14, "exposure_rows": 7,
                           "exposures": {"kept": 4, "filtered": 3, "dropped": 0, "users": 2}}
    c = m["counts"]
    assert (c["input_rows"], c["kept_rows"], c["filtered_rows"], c["quarantined_rows"]) == (22, 16, 5, 1)
    assert m["labels"]["clicked_rows"] + m["labels"]["exposure_rows"] + c["quarantined_rows"] == c["input_rows"]
    assert (c["input_interactions"], c["kept_interactions"], c["filtered_interactions"]) == (14, 12, 2)
    assert (c["users"], c["filtered_users"]) == (3, 2)
    assert c["interactions"] == {"train": 6, "valid": 3, "test": 3}
    assert m["reconciliation"]["ok"] and "exposure_rows = kept + filtered + dropped exposures" in \
        m["reconciliation"]["checks"]
    assert m["timestamps"]["splits"] == ["train", "valid", "test", "exposures"]
    assert m["splits"]["exposures"]["samples"] == 3
    assert verify_dataset(str(out)) == []


def test_exposures_stay_out_of_sequences_splits_and_counts(labelled):
    out, _ = labelled
    items = np.load(out / "maps" / "items.npy")
    # Items of kept users' interactions and exposures (99 was only shown); users 3 and 4 add none.
    assert items[1:].tolist() == [10, 11, 12, 13, 14, 15, 16, 20, 21, 99]
    test = members_by_user(out, "test", {"history.npy", "target.npy", "json"})
    for user in (1, 2, 5):
        full = np.concatenate([test[user]["history.npy"], test[user]["target.npy"]])
        assert items[full].tolist() == [i for i, _ in CLICKS[user]]
    counts = dict(zip(items[1:].tolist(), np.load(out / "stats" / "item_train_counts.npy")[1:].tolist()))
    assert counts == {10: 2, 11: 2, 12: 2, 13: 0, 14: 0, 15: 0, 16: 0, 20: 0, 21: 0, 99: 0}
    # The popularity label counts every kept interaction (valid and test targets too), never an exposure
    # nor a filtered user's click: items only shown (20, 21, 99) have 0 and no label.
    inter = dict(zip(items[1:].tolist(), np.load(out / "stats" / "item_interactions.npy")[1:].tolist()))
    assert inter == {10: 2, 11: 2, 12: 3, 13: 2, 14: 1, 15: 1, 16: 1, 20: 0, 21: 0, 99: 0}
    section = json.loads((out / "manifest.json").read_text())["item_labels"]
    assert (section["labelled_items"], section["unlabelled_items"]) == (7, 3)
    codes = np.load(out / "stats" / "item_split.npy")
    assert sorted(items[np.flatnonzero(codes >= 0)].tolist()) == [10, 11, 12, 13, 14, 15, 16]
    shown = members_by_user(out, "exposures", {"items.npy", "ts.npy", "json"})
    assert sorted(shown) == [1, 2, 5]
    for user in (1, 2, 5):
        assert list(zip(items[shown[user]["items.npy"]].tolist(), shown[user]["ts.npy"].tolist())) == \
            SHOWN.get(user, [])


def test_valid_and_test_keep_the_inputs_timestamps(labelled):
    out, _ = labelled
    valid = members_by_user(out, "valid", {"ts.npy", "target_ts.npy", "json"})
    test = members_by_user(out, "test", {"ts.npy", "target_ts.npy", "json"})
    train = members_by_user(out, "train", {"ts.npy", "json"})
    for user in (1, 2, 5):
        times = [t for _, t in CLICKS[user]]
        assert train[user]["ts.npy"].tolist() == valid[user]["ts.npy"].tolist() == times[:-2]
        assert valid[user]["target_ts.npy"].tolist() == [times[-2]]
        assert test[user]["ts.npy"].tolist() == times[:-1] and test[user]["target_ts.npy"].tolist() == [times[-1]]


def test_verify_finds_exposure_counts_that_do_not_match(labelled, tmp_path):
    import shutil

    out, _ = labelled
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["labels"]["exposures"]["kept"] = 5
    (copy / "manifest.json").write_text(json.dumps(manifest))
    problems = verify_dataset(str(copy))
    assert any("labels.exposures says 5 exposures of 2 users, the shards hold 4 of 2" in p for p in problems)


def test_a_bad_label_is_named_with_file_and_line_or_quarantined(labelled):
    from mvrec_dist.data.ingest.datasource import _read
    from mvrec_dist.data.ingest.sources import list_inputs, plan_ranges

    out, _ = labelled
    first = plan_ranges(list_inputs(str(out.parent / "raw")), 1 << 20)[0]  # part-0.csv whole
    # With on_bad_rows=error the read task of its range stops the job (before it reports anything).
    with pytest.raises(IngestError, match=r"part-0\.csv:5: label '2' is not 0 or 1 \(1: clicked, 0: shown but "
                                          r"not clicked\); fix the input or rerun with --on-bad-rows=quarantine"):
        list(_read(first, "pairs_csv", "error", None, None, labels=True))
    assert f"part-0.csv\t5\tlabel '2' is not 0 or 1 (1: clicked, 0: shown but not clicked)\t{BAD}" in \
        (out / "quarantine.tsv").read_text()


def test_files_with_and_without_the_column_are_refused_before_reading(tmp_path):
    from mvrec_dist.data.ingest.pipeline import dataset_identity

    mixed = _write(tmp_path / "mixed", _rows())
    assert dataset_identity(IngestConfig(input=str(mixed), output_dir=str(tmp_path / "ds"))).labels
    (mixed / "part-9.csv").write_text("user,item,timestamp\n1,2,3\n")
    with pytest.raises(IngestError, match="mix csv files with and without the label column"):
        ingest_small_blocks(mixed, tmp_path / "ds")
