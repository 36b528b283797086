"""The output-directory contract, reconciliation and atomic publish."""

import json

import pytest

from mvrec_dist.data.ingest.errors import IngestError
from mvrec_dist.data.ingest.manifest_writer import (check_output_dir, fingerprint, publish, reconcile,
                                                    temp_dir_for)

CONFIG = {"format": "pairs_csv", "min_seq_len": 5, "shard_max_samples": 10, "users_per_block": 4,
          "items_per_block": 4, "on_bad_rows": "error", "output_dir": "x", "read_block_bytes": 1 << 20}


def test_fingerprint_ignores_settings_that_do_not_change_the_data():
    inputs = [{"path": "/d/a.csv", "bytes": 10}]
    fp = fingerprint(CONFIG, inputs, None)
    assert fp == fingerprint(dict(CONFIG, output_dir="y", read_block_bytes=1 << 16), inputs, None)
    assert fp != fingerprint(dict(CONFIG, min_seq_len=3), inputs, None)
    assert fp != fingerprint(dict(CONFIG, users_per_block=8), inputs, None)  # other bytes in the shards
    assert fp != fingerprint(CONFIG, [{"path": "/d/a.csv", "bytes": 11}], None)
    assert fp != fingerprint(CONFIG, inputs, {"path": "t.csv", "bytes": 1})


def test_only_dropping_duplicates_changes_the_fingerprint():
    # keep and error write the same bytes whenever error lets the job finish, as did every
    # ingestion before ingest.duplicates existed: those datasets keep their fingerprint.
    inputs = [{"path": "/d/a.csv", "bytes": 10}]
    fp = fingerprint(CONFIG, inputs, None)
    assert fp == fingerprint(dict(CONFIG, duplicates="keep"), inputs, None)
    assert fp == fingerprint(dict(CONFIG, duplicates="error"), inputs, None)
    assert fp != fingerprint(dict(CONFIG, duplicates="drop"), inputs, None)


def test_check_output_dir(tmp_path):
    out = tmp_path / "ds"
    check_output_dir(str(out), "fp", overwrite=False)  # absent
    out.mkdir()
    check_output_dir(str(out), "fp", overwrite=False)  # empty
    (out / "manifest.json").write_text(json.dumps({"fingerprint": "fp"}))
    check_output_dir(str(out), "fp", overwrite=False)  # the same dataset may be replaced
    with pytest.raises(IngestError, match="already holds a different dataset"):
        check_output_dir(str(out), "other", overwrite=False)
    check_output_dir(str(out), "other", overwrite=True)
    (out / "manifest.json").unlink()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(IngestError, match="holds files but no dataset manifest"):
        check_output_dir(str(out), "fp", overwrite=False)


def counts(**changes):
    c = {"input_rows": 10, "kept_rows": 6, "filtered_rows": 3, "quarantined_rows": 1, "valid_rows": 9,
         "input_interactions": 9, "kept_interactions": 6, "filtered_interactions": 3, "users": 2, "items": 3,
         "duplicate_rows": 0, "dropped_rows": 0, "dropped_interactions": 0,
         "interactions": {"train": 2, "valid": 2, "test": 2}}
    c.update(changes)
    return c


def splits(users=2, items=3, size=10, per_block=1):
    def entry(split, n):
        key = "items_per_block" if split == "items" else "users_per_block"
        return {"samples": n, key: per_block,
                "shards": [{"path": f"{split}/{split}-00000.tar", "samples": n, "blocks": -(-n // per_block)}]}
    return {"train": entry("train", users), "valid": entry("valid", users), "test": entry("test", users),
            "items": entry("items", items)}


def test_reconcile_accepts_consistent_counts():
    r = reconcile(counts(), splits(), summary_train=2, shard_size=10)
    assert r["ok"] and r["input_rows"] == 10 and r["dropped_rows"] == 0 and len(r["checks"]) == 19


def test_dropped_duplicates_are_part_of_the_reconciliation():
    dropped = counts(input_rows=12, valid_rows=11, input_interactions=13, duplicate_rows=2, dropped_rows=2,
                     dropped_interactions=4)
    r = reconcile(dropped, splits(), summary_train=2, shard_size=10, duplicates="drop")
    assert r["ok"] and r["dropped_rows"] == 2
    with pytest.raises(IngestError, match=r"dropped_rows = duplicate_rows with ingest.duplicates=drop, else 0"):
        reconcile(dropped, splits(), summary_train=2, shard_size=10, duplicates="keep")
    with pytest.raises(IngestError, match=r"input_rows = kept_rows \+ filtered_rows \+ quarantined_rows \+ "
                                          r"dropped_rows"):
        reconcile(counts(dropped_rows=1, duplicate_rows=1), splits(), summary_train=2, shard_size=10,
                  duplicates="drop")


def test_reconcile_checks_the_block_counts():
    bad = splits()
    bad["valid"]["shards"][0]["blocks"] = 1  # 2 users at 1 per block make 2 blocks
    with pytest.raises(IngestError, match=r"valid: blocks = ceil\(samples / users_per_block\) per shard"):
        reconcile(counts(), bad, summary_train=2, shard_size=10)


@pytest.mark.parametrize("change, failed", [
    ({"quarantined_rows": 0}, "input_rows = kept_rows + filtered_rows + quarantined_rows + dropped_rows"),
    ({"valid_rows": 8}, "valid rows read = kept_rows + filtered_rows + dropped_rows"),
    ({"input_interactions": 10},
     "input_interactions = kept_interactions + filtered_interactions + dropped_interactions"),
    ({"interactions": {"train": 2, "valid": 2, "test": 1}}, "valid = test = users"),
])
def test_reconcile_names_each_failed_identity(change, failed):
    with pytest.raises(IngestError, match="counts do not reconcile") as exc:
        reconcile(counts(**change), splits(), summary_train=2, shard_size=10)
    assert failed in str(exc.value)


def test_reconcile_detects_missing_shards():
    with pytest.raises(IngestError, match=r"train: shards 0..1 all written"):
        reconcile(counts(), splits(), summary_train=2, shard_size=1)


def test_publish_moves_a_complete_directory_and_replaces_the_same_dataset(tmp_path):
    out = str(tmp_path / "ds")
    for version in (1, 2):
        tmp = temp_dir_for(out)
        (tmp_path / tmp.rsplit("/", 1)[-1]).mkdir()
        (tmp_path / tmp.rsplit("/", 1)[-1] / "data.bin").write_text(str(version))
        publish(tmp, out, {"fingerprint": "fp", "v": version}, overwrite=False)
        assert json.loads((tmp_path / "ds" / "manifest.json").read_text())["v"] == version
        assert (tmp_path / "ds" / "data.bin").read_text() == str(version)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temporary or old directory left
    tmp = temp_dir_for(out)
    (tmp_path / tmp.rsplit("/", 1)[-1]).mkdir()
    with pytest.raises(IngestError, match="different dataset"):
        publish(tmp, out, {"fingerprint": "other"}, overwrite=False)
    assert json.loads((tmp_path / "ds" / "manifest.json").read_text())["v"] == 2
