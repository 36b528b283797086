"""Popularity labels and the item split at ingestion (``ingest.item_labels``): interaction counts over the full
sequences, a per-item counts file instead (each of its errors named with file and line), the saved split,
the manifest's ``item_labels`` section and its reconciliation, and the fingerprint of default settings."""

import re

import numpy as np
import pytest

from mvrec_dist.config.ingest import IngestConfig
from mvrec_dist.data.ingest import IngestError, run_ingest
from mvrec_dist.data.ingest.item_labels import read_counts_file, write_item_labels
from mvrec_dist.data.ingest.manifest_writer import fingerprint
from mvrec_dist.data.item_split import item_split, load_item_counts, load_item_split
from mvrec_dist.data.manifest import load_manifest
from mvrec_dist.data.verify import verify_dataset

SEQUENCES = {1: [10, 20, 30, 40], 2: [20, 30, 50], 3: [10, 20, 60, 70, 80], 4: [90, 91], 5: [30, 50, 20]}
"""tsv input, min_seq_len=3: user 4 is filtered, so items 90 and 91 are in no kept sequence (no id)."""
COUNTS = {10: 2, 20: 4, 30: 3, 40: 1, 50: 2, 60: 1, 70: 1, 80: 1}
"""Hand-computed: every kept interaction, train positions and the valid and test targets alike."""


def _tsv(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("".join(f"{u}\t{' '.join(map(str, s))}\n" for u, s in SEQUENCES.items()))
    return path


def ingest(src, out, **kw):
    return run_ingest(IngestConfig(input=str(src), output_dir=str(out), progress=False, min_seq_len=3,
                                   shard_max_samples=3, users_per_block=2, items_per_block=3, **kw))


def write(tmp_path, text, name="counts.csv"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="module")
def plain(ray_local, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("item-labels")
    return tmp / "ds", ingest(_tsv(tmp), tmp / "ds")


def test_the_label_counts_are_every_kept_interaction(plain):
    out, result = plain
    m = result.manifest
    items = np.load(out / "maps" / "items.npy")
    inter = np.load(out / "stats" / "item_interactions.npy")
    assert inter.dtype == np.int64 and inter[0] == 0
    assert dict(zip(items[1:].tolist(), inter[1:].tolist())) == COUNTS
    assert inter.sum() == m["counts"]["kept_interactions"] == 15
    s = m["item_labels"]
    assert (s["source"], s["counts"], s["labelled_items"], s["unlabelled_items"]) == \
        ("interactions", "stats/item_interactions.npy", 8, 0)
    assert m["stats"]["item_interactions"] == "stats/item_interactions.npy"
    assert {"stats/item_interactions.npy", "stats/item_split.npy"} <= set(m["files"])
    assert "item_labels: sum of item interactions = kept_interactions" in m["reconciliation"]["checks"]
    manifest = load_manifest(str(out))
    assert np.array_equal(load_item_counts(manifest), inter)
    assert verify_dataset(str(out)) == []


def test_the_split_is_saved_and_is_the_seeded_split_of_the_labelled_items(plain):
    out, result = plain
    split = load_item_split(load_manifest(str(out)))
    assert sorted(np.concatenate(list(split.values())).tolist()) == list(range(1, 9))
    again = item_split(8, valid_fraction=0.1, test_fraction=0.1, seed=0, items=np.arange(1, 9))
    assert all(np.array_equal(split[k], again[k]) for k in split)
    s = result.manifest["item_labels"]["split"]
    assert (s["train"], s["valid"], s["test"], s["seed"]) == (6, 1, 1, 0)
    codes = np.load(out / "stats" / "item_split.npy")
    assert codes.dtype == np.int8 and codes[0] == -1


def test_the_item_table_holds_the_interaction_counts(plain):
    from mvrec_dist.data.plan import eval_plan
    from mvrec_dist.data.reader import ShardReader

    out, _ = plain
    reader = ShardReader(str(out), "items", members={"json"})
    rows = [s.members["json"] for _, s in reader.iter_chunks(eval_plan(reader.shard_counts, num_consumers=1)[0])]
    assert {r["raw_item"]: r["interactions"] for r in rows} == COUNTS


def test_a_counts_file_gives_the_labels(ray_local, tmp_path):
    # Item 60 has no comments (no label); 999 and 998 are not in the dataset.
    rows = {10: 5, 20: 0, 30: 7, 40: 1, 50: 2, 60: 0, 70: 3, 80: 9, 999: 4, 998: 1}
    path = write(tmp_path, "item,likes,views,comments\n" + "".join(f"{i},1,2.5,{c}\n" for i, c in rows.items()))
    result = ingest(_tsv(tmp_path), tmp_path / "ds", item_counts=path)
    m, out = result.manifest, tmp_path / "ds"
    s = m["item_labels"]
    assert (s["source"], s["counts"], s["labelled_items"], s["unlabelled_items"]) == \
        ("file", "stats/item_label_counts.npy", 6, 2)
    f = s["file"]
    assert (f["path"], f["column"], f["rows"], f["not_in_dataset"], f["not_in_dataset_ids"], f["missing_items"]) == \
        (path, "comments", 10, 2, [999, 998], 0)
    assert f["bytes"] == (tmp_path / "counts.csv").stat().st_size and len(f["sha256"]) == 64
    items = np.load(out / "maps" / "items.npy")
    counts = load_item_counts(load_manifest(str(out)))
    assert dict(zip(items[1:].tolist(), counts[1:].tolist())) == {i: rows[i] for i in COUNTS}
    # the interactions are still counted and stored beside them
    assert np.load(out / "stats" / "item_interactions.npy")[1:].tolist() == [COUNTS[i] for i in items[1:]]
    split = load_item_split(load_manifest(str(out)))
    labelled = sorted(int(np.searchsorted(items[1:], i)) + 1 for i in COUNTS if rows[i] > 0)
    assert sorted(np.concatenate(list(split.values())).tolist()) == labelled
    assert verify_dataset(str(out)) == []
    # A counts file changes the dataset's identity; its default settings do not.
    assert m["fingerprint"] != ingest(_tsv(tmp_path), tmp_path / "plain").manifest["fingerprint"]


def test_dataset_items_missing_from_the_counts_file_stop_the_job(ray_local, tmp_path):
    path = write(tmp_path, "item,comments\n10,1\n20,2\n30,3\n")
    with pytest.raises(IngestError, match=r"counts\.csv: 5 of the dataset's 8 items are missing from the counts "
                                          r"file \(raw item ids 40, 50, 60, 70, 80\)"):
        ingest(_tsv(tmp_path), tmp_path / "ds", item_counts=path)
    assert not (tmp_path / "ds" / "manifest.json").exists()


@pytest.mark.parametrize("text, message", [
    ("item,likes,comments\n1,2,3\n2,5,-3\n", r":3: comments '-3' is not a non-negative integer"),
    ("item,likes,comments\n1,2,3\n\n2,5,x7\n", r":4: comments 'x7' is not a non-negative integer"),
    ("item,comments\n1,3\n7,1\n1,4\n", r":4: item 1 again \(first on line 2\)"),
    ("item,likes,views\n1,2,3\n", r":1: no column 'comments' in the header \(columns: item, likes, views\)"),
    ("id,comments\n1,2\n", r":1: the header must be 'item,<count columns>'"),
    ("item,comments\n1,2,3\n", r":2: 3 fields, the header has 2"),
    ("item,comments\nab,2\n", r":2: item 'ab' is not a raw item id"),
])
def test_each_counts_file_error_names_file_and_line(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(IngestError, match=f"^{path}" + message):
        read_counts_file(path, "comments")


def test_a_counts_file_with_a_bom_and_another_column(tmp_path):
    path = write(tmp_path, "\ufeffitem,likes,comments\r\n5,7,0\r\n3,1,2\r\n")
    cf = read_counts_file(path, "likes")
    assert (cf.rows, cf.bom_stripped, cf.raw_items.tolist(), cf.counts.tolist()) == (2, 1, [5, 3], [7, 1])


def test_reconciliation_of_the_section(tmp_path):
    cfg = IngestConfig(item_valid_fraction=0.25, item_test_fraction=0.25, item_split_seed=4)
    items, inter = np.array([3, 5, 8, 9]), np.array([2, 0, 1, 5])
    files, stats, section, checks = write_item_labels(str(tmp_path), cfg, items, inter, 8, None)
    assert all(checks.values()) and len(checks) == 4
    assert (section["labelled_items"], section["unlabelled_items"]) == (3, 1)
    codes = np.load(tmp_path / "stats" / "item_split.npy")
    assert codes[[0, 2]].tolist() == [-1, -1] and (codes[[1, 3, 4]] >= 0).all()  # item 5 (dense 2): no label
    assert set(files) == {"stats/item_interactions.npy", "stats/item_split.npy"} and "item_label_counts" not in stats
    # counts that do not add up to the kept interactions fail the identity (and so the job, in reconcile)
    _, _, _, bad = write_item_labels(str(tmp_path), cfg, items, inter, 9, None)
    assert [k for k, ok in bad.items() if not ok] == ["item_labels: sum of item interactions = kept_interactions"]


def test_default_settings_keep_the_fingerprint():
    inputs, base = [{"path": "a.csv", "bytes": 10}], {k: 1 for k in ("format", "min_seq_len", "shard_max_samples",
                                                                      "users_per_block", "items_per_block",
                                                                      "on_bad_rows")}
    before = fingerprint(base, inputs, None)  # a config from before the item settings existed
    defaults = dict(base, item_counts=None, item_count_column="comments", item_split_seed=0,
                    item_valid_fraction=0.1, item_test_fraction=0.1)
    assert fingerprint(defaults, inputs, None) == before
    assert fingerprint(dict(defaults, item_split_seed=1), inputs, None) != before
    assert fingerprint(dict(defaults, item_test_fraction=0.2), inputs, None) != before
    assert fingerprint(defaults, inputs, None, item_counts={"path": "c.csv", "bytes": 3, "column": "comments"}) \
        != before
    # pinned: what the code before the item settings computed for these settings
    assert before == "b23835f59d834709a30dea7d7d5fb5834510c611bfe325c7a4519b346a35a74b"


@pytest.mark.parametrize("kw, message", [
    ({"item_valid_fraction": -0.1}, "item_valid_fraction: must be in [0, 1)"),
    ({"item_valid_fraction": 0.5, "item_test_fraction": 0.5}, "item_valid_fraction + item_test_fraction must be < 1"),
    ({"item_count_column": "item"}, "item_count_column: must name a count column"),
])
def test_config_refuses_bad_item_settings(kw, message):
    from mvrec_dist.config.fields import ConfigError

    with pytest.raises(ConfigError, match=re.escape(message)):
        IngestConfig(**kw)
