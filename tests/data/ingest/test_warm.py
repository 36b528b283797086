"""Warm-N datasets (mvrec_dist.data.ingest.warm) against a brute-force derivation of hand-made inputs."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mvrec_dist.config import ConfigError, IngestJobConfig, load_config
from mvrec_dist.config.ingest import IngestConfig
from mvrec_dist.data.ingest import IngestError, run_ingest, run_ingest_job
from mvrec_dist.data.ingest.warm import _reconcile, check_warm_n, derive_warm, warm_filter, warm_output_dir
from mvrec_dist.data.verify import verify_dataset
from tests.data.ingest.test_pipeline import read_split

pytestmark = pytest.mark.integration

MIN_SEQ_LEN = 3
SMALL = {"shard_max_samples": 4, "users_per_block": 2, "items_per_block": 3}
"""Several shards, several blocks per shard, short last blocks: in the parent and in every derived dataset."""

# user -> items in interaction order (raw ids; users out of order in the file, sparse item ids).
SEQUENCES = {
    907: [11, 12, 13, 14, 15],
    3: [11, 12, 21, 22, 31],
    58: [11, 21, 12, 11, 40],      # repeats item 11
    12: [50, 51, 52, 11],          # mostly rare items: drops out at N >= 2
    400: [11, 12, 13, 21, 22, 23, 31, 32],
    7: [60, 61, 62, 63, 64, 65],   # only its own items: nothing left at N >= 2
    81: [12, 13, 21, 11, 22],
    5: [22, 21, 12, 11, 13, 23, 31],
    66: [13, 31, 32, 11, 12],
    200: [40, 11, 12, 22, 23],
    19: [23, 11, 21, 13],
    # At N = 2 and 3: item 70 (3 interactions) only in users who are dropped; item 71 (3) kept by user 303
    # alone, so it is left with 1 < N (kept_items_below_n) and has no title.
    300: [70, 71, 80],
    301: [70, 90, 91],
    302: [70, 92, 93, 94],
    303: [71, 11, 12, 13],
    304: [71, 95, 96],
}
TITLES = {11: "plain", 12: "with, a comma", 13: 'with "quotes"', 14: "two\nlines", 21: "  spaces  ",
          22: "", 23: "unicode: café 東京", 31: "x", 32: "y", 40: "z", 50: "a", 60: "b"}
"""Every kept item has one except 15, 51, 52, 61.. (absent) -- 22 has an empty one."""


def write_inputs(root: Path) -> tuple[Path, Path]:
    """The pairs tsv (file order: SEQUENCES order) and the titles csv."""
    tsv = root / "hand_pairs.tsv"
    tsv.write_text("".join(f"{u}\t{' '.join(map(str, s))}\n" for u, s in SEQUENCES.items()))
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["item", "title"])
    for item, title in TITLES.items():
        w.writerow([item, title])
    titles = root / "hand_titles.csv"
    titles.write_bytes(buf.getvalue().encode("utf-8"))
    return tsv, titles


def brute_force(sequences: dict[int, list[int]], n: int, min_seq_len: int = MIN_SEQ_LEN) -> tuple[dict, dict]:
    """``({user: warm sequence} of kept users, derived_from counts)``, one Python loop at a time."""
    parent = {u: s for u, s in sequences.items() if len(s) >= min_seq_len}
    counts = Counter(i for s in parent.values() for i in s)
    filtered = {u: [i for i in s if counts[i] >= n] for u, s in parent.items()}
    kept = {u: s for u, s in filtered.items() if len(s) >= min_seq_len}
    kept_items = {i for s in kept.values() for i in s}
    kept_counts = Counter(i for s in kept.values() for i in s)
    below = {i for i, c in counts.items() if c < n}
    dropped = {u: s for u, s in filtered.items() if u not in kept}
    c = {
        "parent_users": len(parent), "parent_items": len(counts), "parent_interactions": sum(counts.values()),
        "kept_users": len(kept), "kept_items": len(kept_items), "kept_interactions": sum(map(len, kept.values())),
        "removed_items_below_n": len(below),
        "removed_items_with_dropped_users": len(set(counts) - below - kept_items),
        "removed_interactions_below_n": sum(counts[i] for i in below),
        "removed_interactions_with_dropped_users": sum(map(len, dropped.values())),
        "dropped_users": len(dropped), "dropped_users_empty": sum(1 for s in dropped.values() if not s),
        "kept_items_below_n": sum(1 for i in kept_items if kept_counts[i] < n),
        "kept_items_without_title": len(kept_items - set(TITLES)),
    }
    c["removed_items"] = c["removed_items_below_n"] + c["removed_items_with_dropped_users"]
    c["removed_interactions"] = c["removed_interactions_below_n"] + c["removed_interactions_with_dropped_users"]
    return kept, c


def dataset_sequences(root: Path) -> dict[int, list[int]]:
    """``{raw user: raw items}`` of a dataset in dense user order, read with tarfile and numpy."""
    items = np.load(root / "maps" / "items.npy")
    out = {}
    for key, row in read_split(root, "test").items():
        out[row["json"]["raw_user"]] = items[np.concatenate([row["history.npy"], row["target.npy"]])].tolist()
    return out


@pytest.fixture(scope="module")
def parent(ray_local, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("warm")
    tsv, titles = write_inputs(root)
    out = root / "parent"
    run_ingest(IngestConfig(input=str(tsv), titles=str(titles), output_dir=str(out), min_seq_len=MIN_SEQ_LEN,
                            progress=False, **SMALL))
    return out


def test_the_brute_force_itself():
    kept, c = brute_force({1: [1, 2, 3], 2: [1, 2, 4], 3: [1, 5, 6, 2], 4: [1, 2]}, n=2)
    assert kept == {}  # every user keeps [1, 2] only; user 4 is not in the parent at all
    assert (c["parent_users"], c["parent_items"], c["removed_items_below_n"], c["removed_items_with_dropped_users"],
            c["dropped_users"], c["dropped_users_empty"]) == (3, 6, 4, 2, 3, 0)
    kept, c = brute_force({1: [1, 2, 3], 2: [1, 2, 3], 3: [7, 8, 9]}, n=2)
    assert kept == {1: [1, 2, 3], 2: [1, 2, 3]} and c["dropped_users_empty"] == 1


@pytest.mark.parametrize("n", [2, 3, 5])
def test_warm_n_equals_the_brute_force(parent, tmp_path, n):
    out = tmp_path / f"parent-warm{n}"
    manifest = derive_warm(str(parent), n, str(out))
    expected, counts = brute_force(SEQUENCES, n)
    got = dataset_sequences(out)
    # Same sequences; the users in the parent's (ascending raw id) order minus the dropped ones.
    assert got == expected
    assert list(got) == [u for u in dataset_sequences(parent) if u in expected]
    d = manifest["derived_from"]
    assert d["counts"] == counts and d["n"] == n and d["kind"] == "warm" and d["reconciliation"]["ok"]
    parent_manifest = json.loads((parent / "manifest.json").read_text())
    assert d["parent"] == {"dir": str(parent), "fingerprint": parent_manifest["fingerprint"],
                           "created_at": parent_manifest["created_at"]}
    # The identities hold and the published manifest is the one returned.
    assert counts["parent_items"] == counts["kept_items"] + counts["removed_items"]
    assert counts["parent_interactions"] == counts["kept_interactions"] + counts["removed_interactions"]
    assert counts["parent_users"] == counts["kept_users"] + counts["dropped_users"]
    assert json.loads((out / "manifest.json").read_text()) == manifest
    c = manifest["counts"]
    assert (c["users"], c["items"], c["kept_interactions"]) == \
        (counts["kept_users"], counts["kept_items"], counts["kept_interactions"])
    assert manifest["config"]["ingest"]["output_dir"] == str(out)
    # Same shard layout as the parent.
    for key in ("min_seq_len", "shard_max_samples", "users_per_block", "items_per_block"):
        assert manifest["config"]["ingest"][key] == parent_manifest["config"]["ingest"][key]
    # Titles carried over for kept items (none invented for the ones without).
    items = {row["json"]["raw_item"]: row for row in read_split(out, "items").values()}
    assert set(items) == {i for s in expected.values() for i in s}
    for raw, row in items.items():
        assert row["json"]["has_title"] == (raw in TITLES) and row["txt"] == TITLES.get(raw, "")
    # The derived dataset's own popularity label counts (its sequences' interactions) and item split.
    from collections import Counter

    per_item = Counter(i for s in expected.values() for i in s)
    assert {raw: row["json"]["interactions"] for raw, row in items.items()} == dict(per_item)
    assert manifest["item_labels"]["labelled_items"] == len(per_item) and manifest["item_labels"]["split"]["seed"] == 0
    assert verify_dataset(str(out)) == []
    assert not (tmp_path / f"parent-warm{n}.work").exists()


def test_the_hand_made_data_covers_every_count():
    for n in (2, 3):
        c = brute_force(SEQUENCES, n)[1]
        assert min(c.values()) > 0, c
    assert brute_force(SEQUENCES, 5)[1]["kept_users"] > 0


def test_n_1_keeps_the_parent(parent, tmp_path):
    out = tmp_path / "w1"
    derive_warm(str(parent), 1, str(out))
    assert dataset_sequences(out) == dataset_sequences(parent)
    for split in ("train", "valid", "test", "items"):
        assert read_split(out, split).keys() == read_split(parent, split).keys()


def test_a_csv_parent_keeps_order_and_train_timestamps(ray_local, tmp_path):
    # user,item,ts with ties (broken by file position) and rows out of order.
    rows = [(1, 10, 5), (1, 11, 5), (1, 12, 3), (1, 13, 9), (1, 10, 20), (1, 14, 21),
            (2, 10, 1), (2, 11, 2), (2, 12, 2), (2, 13, 4),
            (3, 11, 7), (3, 10, 6), (3, 99, 8), (3, 12, 9), (3, 13, 10), (3, 98, 11)]
    src = tmp_path / "x_pairs.csv"
    src.write_text("user,item,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows))
    par = tmp_path / "csvparent"
    run_ingest(IngestConfig(input=str(src), output_dir=str(par), min_seq_len=MIN_SEQ_LEN, progress=False, **SMALL))
    seqs = dataset_sequences(par)
    out = tmp_path / "csvparent-warm2"
    manifest = derive_warm(str(par), 2, str(out), keep_work=True)
    expected, counts = brute_force(seqs, 2)
    assert dataset_sequences(out) == expected and manifest["derived_from"]["counts"] == \
        dict(counts, kept_items_without_title=counts["kept_items"])
    assert manifest["derived_from"]["source"]["format"] == "pairs_csv"
    assert (tmp_path / "csvparent-warm2.work" / "interactions_pairs.csv").read_text().startswith("user,item,timestamp")
    # Timestamps of items that were in the parent's train part are the real ones.
    real = {}
    for row in read_split(par, "train").values():
        for item, t in zip(np.load(par / "maps" / "items.npy")[row["items.npy"]].tolist(), row["ts.npy"].tolist()):
            real.setdefault((row["json"]["raw_user"], item), t)
    items = np.load(out / "maps" / "items.npy")
    for row in read_split(out, "train").values():
        ts = row["ts.npy"].tolist()
        assert ts == sorted(ts)
        for item, t in zip(items[row["items.npy"]].tolist(), ts):
            key = (row["json"]["raw_user"], item)
            if key in real:
                assert t == real[key]


def test_a_rerun_reuses_and_a_different_derivation_needs_overwrite(parent, tmp_path):
    out = tmp_path / "w2"
    first = derive_warm(str(parent), 2, str(out))
    assert derive_warm(str(parent), 2, str(out)) == first  # kept, not derived again
    with pytest.raises(IngestError, match="already holds a different dataset"):
        derive_warm(str(parent), 3, str(out))
    third = derive_warm(str(parent), 3, str(out), overwrite=True)
    assert third["derived_from"]["n"] == 3 and dataset_sequences(out) == brute_force(SEQUENCES, 3)[0]


@pytest.mark.parametrize("bad", [0, -1, True, 2.5, "20"])
def test_a_bad_n_is_refused_clearly(parent, tmp_path, bad):
    with pytest.raises(ValueError, match=r"integer N >= 1"):
        derive_warm(str(parent), bad, str(tmp_path / "bad"))
    assert not (tmp_path / "bad").exists()


def test_no_user_left_is_an_error_and_publishes_nothing(parent, tmp_path):
    with pytest.raises(IngestError, match="no user keeps min_seq_len=3"):
        derive_warm(str(parent), 1000, str(tmp_path / "empty"))
    assert not any(tmp_path.iterdir())


def test_the_ingest_job_derives_warm_datasets_from_dotted_overrides(ray_local, tmp_path, capsys):
    tsv, titles = write_inputs(tmp_path)
    out = tmp_path / "ds"
    overrides = [f"ingest.input={tsv}", f"ingest.titles={titles}", f"ingest.output_dir={out}", "ingest.progress=false",
                 "ingest.min_seq_len=3", "ingest.warm=[2,3]"]
    preset = Path(__file__).resolve().parents[3] / "jobs" / "configs" / "microlens-50k" / "ingest-warm.yaml"
    cfg = load_config(IngestJobConfig, preset, overrides)
    result = run_ingest_job(cfg)
    assert {"warm2", "warm3"} <= set(result.timings)
    printed = capsys.readouterr().out
    for n in (2, 3):
        m = json.loads((Path(warm_output_dir(str(out), n)) / "manifest.json").read_text())
        assert m["derived_from"]["counts"] == brute_force(SEQUENCES, n)[1]
        assert f"Warm-{n}: {out}-warm{n}: {m['derived_from']['counts']['kept_users']} users" in printed
    # A second run reuses the parent and both derived datasets.
    again = run_ingest_job(cfg)
    assert "reused" in again.timings


def test_config_refuses_bad_warm_lists():
    for bad in ([0], [20, 20], [-5]):
        with pytest.raises(ConfigError, match="warm"):
            IngestConfig(warm=tuple(bad))
    assert check_warm_n(20) == 20 and IngestConfig(warm=(20, 50, 200)).warm == (20, 50, 200)


def test_warm_filter_and_a_failing_identity():
    keep_item = np.array([False, True, False, True])
    keep, remaining, kept = warm_filter(np.array([0, 3, 4, 7]), np.array([1, 2, 3, 2, 1, 3, 3]), keep_item, 2)
    assert keep.tolist() == [True, False, True, False, True, True, True]
    assert remaining.tolist() == [2, 0, 3] and kept.tolist() == [True, False, True]
    c = {"parent_items": 10, "kept_items": 6, "removed_items": 3, "removed_items_below_n": 3,
         "removed_items_with_dropped_users": 0, "parent_interactions": 5, "kept_interactions": 5,
         "removed_interactions": 0, "removed_interactions_below_n": 0, "removed_interactions_with_dropped_users": 0,
         "parent_users": 1, "kept_users": 1, "dropped_users": 0, "dropped_users_empty": 0}
    read = {"n": 20, "users": 1, "interactions": 5, "pass2_interactions": 5, "items_without_interactions": 0,
            "below_n_interactions": 0, "kept_below_n": 0}
    failing = r"Warm-20: counts do not reconcile.*parent_items = kept_items \+ removed_items"
    with pytest.raises(IngestError, match=failing):
        _reconcile(c, read)


@pytest.mark.shared_data
def test_real_microlens_50k_warm_200(ray_local, microlens_50k, tmp_path):
    """Warm-200 of the real MicroLens-50K equals the brute force on the raw file (the counts of
    jobs/configs/microlens-50k/ingest-warm.yaml)."""
    parent = tmp_path / "ml50k"
    run_ingest(IngestConfig(input=str(microlens_50k / "MicroLens-50k_pairs.tsv"),
                            titles=str(microlens_50k / "MicroLens-50k_titles.csv"), output_dir=str(parent),
                            min_seq_len=5, progress=False))
    sequences = {}
    for line in (microlens_50k / "MicroLens-50k_pairs.tsv").read_text().splitlines():
        user, items = line.split("\t")
        sequences[int(user)] = [int(x) for x in items.split()]
    out = tmp_path / "ml50k-warm200"
    manifest = derive_warm(str(parent), 200, str(out))
    expected, counts = brute_force(sequences, 200, min_seq_len=5)
    c = manifest["derived_from"]["counts"]
    assert {k: v for k, v in c.items() if k != "kept_items_without_title"} == \
        {k: v for k, v in counts.items() if k != "kept_items_without_title"}
    assert (c["kept_users"], c["kept_items"], c["kept_interactions"]) == (633, 28, 5_407)
    assert c["kept_items_without_title"] == manifest["counts"]["items_without_title"] == 0
    assert dataset_sequences(out) == expected
    assert verify_dataset(str(out)) == []
