"""Verify an ingested dataset against its manifest: ``python -m mvrec_dist.data.verify DATASET``.

Recomputes every shard's and file's sha256 and size, reads every sample (``.npy`` with
``allow_pickle=False``), and checks: the blocked splits block by block (``verify_blocks``: key
order, uniqueness and member adjacency, block and row counts per shard, members, dtypes, shapes,
offsets and consecutive ids of every block, that train/valid/test of the same users agree (valid
history = train items, test history = valid history + valid target), ids against the maps, the
titles flags, the timestamps of every split that has them); the ``exposures`` split and the
``labels`` counts of labelled datasets; the content split and trunk-feature stores
(``verify_content``); the train item counts; the popularity labels' counts and the item split
(``verify_labels``: ``stats/item_interactions.npy`` against the recounted shards, the split against
its seed); and the count identities of ``shards/README.md``.
Every problem names the file, and the block where there is one
(``train/train-00003.tar:b0000000123: offsets.npy must ...``). Prints every problem and exits 1 when
there is any, 0 otherwise.
"""

from __future__ import annotations

import argparse
import io
import json
import sys

import numpy as np

from mvrec_dist.data.manifest import ManifestError, load_manifest
from mvrec_dist.data.verify_blocks import (Problems, check_file, read_file, verify_exposures, verify_items,
                                           verify_user_splits)
from mvrec_dist.data.verify_labels import check_item_labels, load_label_arrays

__all__ = ["verify_dataset", "main"]


def _features_manifest(root: str) -> dict | None:
    """The manifest of a trunk-feature store at ``root``, None for anything else."""
    from mvrec_dist.data.content_store import FEATURES_KIND

    try:
        data = json.loads(read_file(f"{root.rstrip('/')}/manifest.json").decode("utf-8"))
    except (FileNotFoundError, OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("kind") == FEATURES_KIND else None


def verify_dataset(root: str) -> list[str]:
    """Check a dataset directory; return every problem found (empty when it verifies).

    Args:
        root: Dataset directory (local path or URI).

    Returns:
        Human-readable problems, each naming the file (and the block or sample) and the reason.
    """
    features = _features_manifest(root)
    if features is not None:
        from mvrec_dist.data.verify_content import verify_features

        return verify_features(root, features)
    try:
        m = load_manifest(root)
    except ManifestError as exc:
        return [str(exc)]
    problems = Problems()
    item_map, user_map, train_counts = _maps(root, m, problems)
    counts = m.counts
    n_items = m.num_items
    files = m.data.get("files", {})
    if "quarantine.tsv" in files:
        data = check_file(root, "quarantine.tsv", files["quarantine.tsv"], problems)
        rows = data.count(b"\n") - 1 if data is not None else None
        if rows is not None and rows != m.data["quarantine"]["rows"]:
            problems.add("quarantine.tsv", f"{rows} rows, manifest says {m.data['quarantine']['rows']}")
    recount = np.zeros(n_items + 1, dtype=np.int64)
    recount_all = np.zeros(n_items + 1, dtype=np.int64)
    split_inter = {"train": 0, "valid": 0, "test": 0}
    has_ts = m.input_format in ("pairs_csv", "plays_csv")
    label_arrays = load_label_arrays(root, m, problems)
    before = len(problems)
    verify_user_splits(root, m, has_ts, user_map, recount, split_inter, problems, recount_all=recount_all)
    if label_arrays is not None:
        # A broken shard leaves the recount short; that shard is reported already, so don't compare then.
        check_item_labels(m, label_arrays, recount_all if len(problems) == before else None, problems)
    _check_exposures(root, m, user_map, problems)
    if train_counts is not None and not np.array_equal(train_counts, recount):
        problems.add("stats/item_train_counts.npy", "differs from the item counts of the train shards")
    if not m.has_split("items"):
        problems.add("manifest", "no items split")
    else:
        without = verify_items(root, m, item_map, train_counts, problems,
                               interactions=label_arrays["interactions"] if label_arrays else None,
                               expect_interactions=label_arrays is not None)
        if without != counts.get("items_without_title"):
            problems.add("manifest", f"items_without_title = {counts.get('items_without_title')}, the items shards "
                                     f"flag {without} items without a title")
    if m.has_split("content"):
        from mvrec_dist.data.verify_content import verify_content

        for p in verify_content(m, item_map):
            problems.add("content", p)
    if m.has_split("text"):
        from mvrec_dist.data.verify_content import verify_text

        for p in verify_text(m, item_map):
            problems.add("text", p)
    _check_counts(m, split_inter, problems)
    return list(problems)


def _maps(root: str, m, problems: Problems) -> tuple[np.ndarray | None, ...]:
    """``maps/items.npy``, ``maps/users.npy`` and ``stats/item_train_counts.npy`` (None where unusable)."""
    files = m.data.get("files", {})
    arrays = {}
    for rel in ("maps/items.npy", "maps/users.npy", "stats/item_train_counts.npy"):
        data = check_file(root, rel, files.get(rel, {}), problems)
        arrays[rel] = None
        if data is not None:
            try:
                arrays[rel] = np.load(io.BytesIO(data), allow_pickle=False)
            except (ValueError, OSError, EOFError) as exc:
                problems.add(rel, f"unreadable .npy ({exc})")
    for name, size in (("maps/items.npy", m.num_items), ("maps/users.npy", m.num_users)):
        arr = arrays[name]
        if arr is not None and (arr.dtype != np.int64 or arr.shape != (size + 1,) or arr[0] != -1
                                or np.any(np.diff(arr[1:]) <= 0)):
            problems.add(name, f"must be int64 [{size + 1}] with entry 0 = -1 and strictly increasing raw ids")
            arrays[name] = None
    counts = arrays["stats/item_train_counts.npy"]
    if counts is not None and counts.shape != (m.num_items + 1,):
        problems.add("stats/item_train_counts.npy", f"must be int64 [{m.num_items + 1}], got {list(counts.shape)}")
        arrays["stats/item_train_counts.npy"] = None
    return arrays["maps/items.npy"], arrays["maps/users.npy"], arrays["stats/item_train_counts.npy"]


def _check_counts(m, split_inter: dict[str, int], problems: Problems) -> None:
    """The manifest's interaction counts against the shards, and the count identities."""
    c = m.counts
    for split, value in split_inter.items():
        if c["interactions"][split] != value:
            problems.add("manifest", f"interactions.{split} = {c['interactions'][split]}, shards hold {value}")
    identities = {
        # dropped_rows: duplicates dropped with ingest.duplicates=drop (absent from older manifests).
        "input_rows = kept_rows + filtered_rows + quarantined_rows + dropped_rows":
            c["input_rows"] == c["kept_rows"] + c["filtered_rows"] + c["quarantined_rows"] + c.get("dropped_rows", 0),
        "train + valid + test = kept_interactions": sum(c["interactions"].values()) == c["kept_interactions"],
        "valid = test = users": c["interactions"]["valid"] == c["interactions"]["test"] == c["users"],
    }
    for name, ok in identities.items():
        if not ok:
            problems.add("manifest counts", f"{name} does not hold")
    for split in ("train", "valid", "test", "items"):
        expected = m.num_users if split != "items" else m.num_items
        if m.has_split(split):
            entry = m.data["splits"][split]
            listed, in_shards = entry["samples"], sum(s["samples"] for s in entry["shards"])
            if not listed == in_shards == expected:
                problems.add("manifest", f"split {split} lists {listed} samples ({in_shards} in its shards), "
                                         f"expected {expected}")


def _check_exposures(root: str, m, user_map: np.ndarray | None, problems: Problems) -> None:
    """A labelled dataset's ``exposures`` split against its ``labels`` counts; no split without labels."""
    labels = m.labels
    if labels is None:
        if m.has_split("exposures"):
            problems.add("manifest", "an exposures split without a labels section")
        return
    if not m.has_split("exposures"):
        problems.add("manifest", "a labels section but no exposures split")
        return
    entry = m.data["splits"]["exposures"]
    if not entry["samples"] == sum(s["samples"] for s in entry["shards"]) == m.num_users:
        problems.add("manifest", f"split exposures lists {entry['samples']} samples, expected {m.num_users}")
        return
    found, users = verify_exposures(root, m, user_map, problems)
    e = labels["exposures"]
    if (found, users) != (e["kept"], e["users"]):
        problems.add("manifest", f"labels.exposures says {e['kept']} exposures of {e['users']} users, the shards "
                                 f"hold {found} of {users}")
    c = m.counts
    identities = {
        "clicked_rows + exposure_rows = kept + filtered + dropped rows (valid rows)":
            labels["clicked_rows"] + labels["exposure_rows"] == c["kept_rows"] + c["filtered_rows"]
            + c.get("dropped_rows", 0),
        "exposure_rows = kept + filtered + dropped exposures":
            labels["exposure_rows"] == e["kept"] + e["filtered"] + e["dropped"],
        "clicked_rows = input_interactions": labels["clicked_rows"] == c["input_interactions"],
    }
    for name, ok in identities.items():
        if not ok:
            problems.add("manifest labels", f"{name} does not hold")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m mvrec_dist.data.verify", description=__doc__.split("\n")[0])
    parser.add_argument("dataset", help="dataset directory (local path or URI)")
    args = parser.parse_args(argv)
    problems = verify_dataset(args.dataset)
    if problems:
        print(f"{args.dataset}: {len(problems)} problem(s)", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    features = _features_manifest(args.dataset)
    if features is not None:
        print(f"{args.dataset}: OK (trunk features of {features['counts']['with_features']} items, "
              f"{len(features['splits']['features']['shards'])} shards verified)")
        return 0
    m = load_manifest(args.dataset)
    splits = [s for s in ("train", "valid", "test", "exposures", "items", "content", "text") if m.has_split(s)]
    print(f"{args.dataset}: OK ({m.num_users} users, {m.num_items} items, "
          f"{sum(len(m.shards(s)) for s in splits)} shards verified"
          + (f", content for {m.data['content']['counts']['with_content']} items" if "content" in splits else "")
          + (f", title tokens for {m.data['text']['counts']['with_text']} items" if "text" in splits else "")
          + (f", {m.labels['exposures']['kept']} exposures" if m.labels else "")
          + ")")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
