"""Warm-N datasets derived from a published dataset (the MicroLens paper's warm/cold evaluation, Table 8).

Warm-N of a dataset: every item with fewer than N interactions in the parent, counted over the
parent's full sequences (train + valid + test of every user), is taken out of every sequence;
users left with fewer than the parent's ``min_seq_len`` interactions are dropped; the rest is split
leave-one-out and given dense ids again. The result is a normal dataset, made by the normal
ingestion (one ingestion path, one set of checks):

1. the parent's full sequences are read from its test split (a test row's history plus its target
   is the user's whole sequence; raw ids through ``maps/``), block by block, twice: once to count
   every item's interactions, once to filter them;
2. what remains is written as the raw input the ingest job accepts into the work folder
   ``<output_dir>.work/``: ``interactions_pairs.tsv`` (``user<TAB>items`` in interaction order)
   for a parent ingested from a tsv, ``interactions_pairs.csv`` (``user,item,timestamp``) for a csv
   parent, and ``titles.csv`` with the titles of the kept items that had one;
3. ``pipeline.run_ingest`` ingests them with the parent's settings (``min_seq_len``, shard and block
   sizes); its counts are checked against the derivation's, and the ``derived_from`` section is
   added to the published manifest in one atomic replace (``manifest_writer.replace_manifest``).

Dense user ids are the sorted raw user ids, in the parent as here, so the derived users are the
parent's users in the parent's order minus the dropped ones, and each sequence is the parent's
with the removed items taken out (the others in their order).

``derived_from.counts`` reconcile exactly, and are checked before anything is written: parent
items = kept + removed (removed = below N + only in dropped users' sequences), parent interactions
= kept + removed (removed = of items below N + the rest of dropped users' sequences), parent users
= kept + dropped for length (``dropped_users_empty``: nothing left at all; the others are in the
written input and the ingestion filters them, which is checked against its counts).

One pass of the rule, as in the paper (no k-core iteration): once short users are dropped a kept
item may have fewer than N interactions left; ``counts.kept_items_below_n`` says how many.

Timestamps (csv parents only): a dataset stores timestamps for the train part of a sequence
(``ts.npy``), not for its last two interactions, so those are written with the timestamp of the
user's last train interaction; the order, and so every derived sequence, is exact, but a derived
train item that was a parent's valid or test target carries that approximate time.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import io
import json
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mvrec_dist.config.ingest import IngestConfig
from mvrec_dist.data import fs as dfs
from mvrec_dist.data.ingest.errors import IngestError
from mvrec_dist.data.ingest.manifest_writer import check_output_dir, publish, remove_tree, temp_dir_for
from mvrec_dist.data.ingest.tar_writer import write_bytes
from mvrec_dist.data.manifest import Manifest, ManifestError, load_manifest
from mvrec_dist.data.reader import ShardReader

__all__ = ["derive_warm", "warm_output_dir", "check_warm_n", "warm_filter", "WARM_RULE"]

WARM_RULE = ("items with fewer than n interactions over the parent's full sequences removed from every "
             "sequence; users left with fewer than min_seq_len interactions dropped; leave-one-out re-split")
"""What ``derived_from.rule`` says."""


def warm_output_dir(output_dir: str, n: int) -> str:
    """Where ``ingest.warm`` puts Warm-``n`` of the dataset at ``output_dir``: ``<output_dir>-warm<n>``."""
    return f"{output_dir.rstrip('/')}-warm{n}"


def check_warm_n(n: object) -> int:
    """``n`` as the N of a Warm-N dataset (an int >= 1).

    Raises:
        ValueError: naming the value, when ``n`` is not an integer >= 1.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"Warm-N needs an integer N >= 1 (items with fewer than N interactions are removed), "
                         f"got {n!r}")
    return int(n)


@dataclass
class _Sequences:
    """Full sequences of one block of the parent's users."""

    raw_users: np.ndarray
    """Raw user ids, int64 [U]."""
    offsets: np.ndarray
    """User ``i``'s sequence is ``items[offsets[i]:offsets[i+1]]``, int64 [U+1]."""
    items: np.ndarray
    """Dense item ids of the parent, in interaction order, int64 [M]."""
    ts: np.ndarray | None
    """Timestamps (csv parents), int64 [M]; see the module docstring for the last two per user."""


def _parent_sequences(parent: Manifest, with_ts: bool) -> Iterator[_Sequences]:
    """Every parent user's full sequence (test history + target), block by block in user order."""
    test = ShardReader(parent.root, "test", members={"history.npy", "target.npy", "json"}, manifest=parent)
    train = (ShardReader(parent.root, "train", members={"ts.npy", "json"}, manifest=parent).iter_blocks()
             if with_ts else None)
    for block in test.iter_blocks():
        off, hist, tgt = (block.arrays[k] for k in ("offsets.npy", "history.npy", "targets.npy"))
        lengths = np.diff(off) + 1
        offsets = np.zeros(len(block) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        items = np.empty(int(offsets[-1]), dtype=np.int64)
        last = offsets[1:] - 1
        history = np.ones(len(items), dtype=bool)
        history[last] = False
        items[history] = hist
        items[last] = tgt
        ts = None
        if train is not None:
            tb = next(train, None)
            if tb is None or tb.first != block.first or len(tb) != len(block) or "ts.npy" not in tb.arrays:
                raise IngestError(f"{parent.root}: the train split does not line up with the test split at user "
                                  f"{block.first + 1}, or has no ts.npy; the parent cannot be read as a csv dataset")
            toff, tts = tb.arrays["offsets.npy"], tb.arrays["ts.npy"]
            if not np.array_equal(np.diff(toff), lengths - 2):
                raise IngestError(f"{parent.root}: train and test sequence lengths disagree in the block of user "
                                  f"{block.first + 1}")
            within = np.arange(len(items), dtype=np.int64) - np.repeat(offsets[:-1], lengths)
            ts = np.repeat(tts[toff[1:] - 1], lengths)  # the last train timestamp for valid and test ...
            ts[within < np.repeat(lengths - 2, lengths)] = tts  # ... and the real ones before
        yield _Sequences(raw_users=block.arrays["raw_users.npy"], offsets=offsets, items=items, ts=ts)


def warm_filter(offsets: np.ndarray, items: np.ndarray, keep_item: np.ndarray,
                min_seq_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Warm-N rule on a block of sequences.

    Args:
        offsets: User ``i``'s sequence is ``items[offsets[i]:offsets[i+1]]``, int64 [U+1].
        items: Item ids, int64 [M].
        keep_item: Whether each item id is kept (interaction count >= N), bool indexed by id.
        min_seq_len: Users with fewer interactions left are dropped.

    Returns:
        ``(keep [M], remaining [U], kept_user [U])``: which interactions stay in the sequences, how
        many each user keeps, and which users keep at least ``min_seq_len``.
    """
    lengths = np.diff(offsets)
    keep = keep_item[items]
    row = np.repeat(np.arange(len(lengths)), lengths)
    remaining = np.bincount(row[keep], minlength=len(lengths))
    return keep, remaining, remaining >= min_seq_len


def _tsv_bytes(raw_users: np.ndarray, offsets: np.ndarray, raw_items: np.ndarray) -> bytes:
    """``user<TAB>item item ...`` lines, one per user (every user has at least one item)."""
    if len(raw_users) == 0:
        return b""
    strings = pc.cast(pa.array(raw_items, pa.int64()), pa.string())
    joined = pc.binary_join(pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), strings), " ")
    lines = pc.binary_join_element_wise(pc.cast(pa.array(raw_users, pa.int64()), pa.string()), joined, "\t")
    return ("\n".join(lines.to_pylist()) + "\n").encode("ascii")


def _csv_bytes(raw_users: np.ndarray, raw_items: np.ndarray, ts: np.ndarray) -> bytes:
    """``user,item,timestamp`` lines, one per interaction."""
    if len(raw_items) == 0:
        return b""
    cols = [pc.cast(pa.array(a, pa.int64()), pa.string()) for a in (raw_users, raw_items, ts)]
    lines = pc.binary_join_element_wise(*cols, ",")
    return ("\n".join(lines.to_pylist()) + "\n").encode("ascii")


class _Output:
    """A file written in pieces, with its size and sha256."""

    def __init__(self, path: str):
        self.path, self.size, self._hash = path, 0, hashlib.sha256()
        self._f = dfs.open_output_stream(path)

    def write(self, data: bytes) -> None:
        if data:
            self._f.write(data)
            self._hash.update(data)
            self.size += len(data)

    def close(self) -> dict:
        self._f.close()
        return {"path": self.path, "bytes": self.size, "sha256": self._hash.hexdigest()}


def _load_map(parent: Manifest, which: str, length: int) -> np.ndarray:
    with dfs.open_input_file(parent.path(parent.data["maps"][which])) as f:
        array = np.load(io.BytesIO(f.read()), allow_pickle=False)
    if array.shape != (length + 1,):
        raise IngestError(f"{parent.root}: maps/{which}.npy has shape {array.shape}, expected ({length + 1},)")
    return array


def _count_items(parent: Manifest) -> tuple[np.ndarray, int, int]:
    """Pass 1: ``(interactions per parent item id [N+1], users, interactions)`` over the full sequences."""
    n_items = parent.num_items
    counts = np.zeros(n_items + 1, dtype=np.int64)
    users = interactions = 0
    for seqs in _parent_sequences(parent, with_ts=False):
        if len(seqs.items) and (int(seqs.items.min()) < 1 or int(seqs.items.max()) > n_items):
            raise IngestError(f"{parent.root}: a test row holds an item id outside 1..{n_items}")
        counts += np.bincount(seqs.items, minlength=n_items + 1)
        users += len(seqs.raw_users)
        interactions += len(seqs.items)
    return counts, users, interactions


def _write_source(parent: Manifest, keep_item: np.ndarray, min_seq_len: int, fmt: str, path: str,
                  items_map: np.ndarray) -> tuple[dict, dict, np.ndarray, np.ndarray]:
    """Pass 2: filter the parent's sequences and write the remaining ones as raw input at ``path``.

    Returns:
        ``(file info, counts, kept parent item ids as a bool mask [N+1], their interactions left [N+1])``.
    """
    with_ts = fmt == "pairs_csv"
    out = _Output(path)
    if with_ts:
        out.write(b"user,item,timestamp\n")
    n_items = parent.num_items
    present = np.zeros(n_items + 1, dtype=bool)
    derived_counts = np.zeros(n_items + 1, dtype=np.int64)
    c = dict.fromkeys(("kept_users", "dropped_users", "dropped_users_empty", "kept_interactions",
                       "removed_interactions_below_n", "removed_interactions_with_dropped_users",
                       "written_users", "written_interactions"), 0)
    try:
        for seqs in _parent_sequences(parent, with_ts):
            keep, remaining, kept_user = warm_filter(seqs.offsets, seqs.items, keep_item, min_seq_len)
            lengths = np.diff(seqs.offsets)
            in_kept_user = np.repeat(kept_user, lengths)
            stays = keep & in_kept_user
            present[seqs.items[stays]] = True
            derived_counts += np.bincount(seqs.items[stays], minlength=n_items + 1)
            c["kept_users"] += int(kept_user.sum())
            c["dropped_users"] += int((~kept_user).sum())
            c["dropped_users_empty"] += int((remaining == 0).sum())
            c["kept_interactions"] += int(stays.sum())
            c["removed_interactions_below_n"] += int((~keep).sum())
            c["removed_interactions_with_dropped_users"] += int((keep & ~in_kept_user).sum())
            # Every user with something left is written (the ingestion drops the short ones and counts them).
            written = remaining > 0
            c["written_users"] += int(written.sum())
            c["written_interactions"] += int(keep.sum())
            raw_items = items_map[seqs.items[keep]]
            if with_ts:
                out.write(_csv_bytes(np.repeat(seqs.raw_users, remaining), raw_items, seqs.ts[keep]))
            else:
                w_off = np.zeros(int(written.sum()) + 1, dtype=np.int64)
                np.cumsum(remaining[written], out=w_off[1:])
                out.write(_tsv_bytes(seqs.raw_users[written], w_off, raw_items))
    finally:
        info = out.close()
    return info, c, present, derived_counts


def _write_titles(parent: Manifest, present: np.ndarray, path: str) -> int:
    """Write ``item,title`` for every kept item the parent has a title for; return the rows (0: no file)."""
    reader = ShardReader(parent.root, "items", members={"json", "txt"}, manifest=parent)
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["item", "title"])
    rows = 0
    for block in reader.iter_blocks():
        raw, has, titles = block.arrays["raw_items.npy"], block.arrays["has_title.npy"], block.arrays["titles.json"]
        for i in np.flatnonzero(present[block.ids] & has).tolist():
            writer.writerow([int(raw[i]), titles[i]])
            rows += 1
    if rows:
        write_bytes(path, buf.getvalue().encode("utf-8"))
    return rows


def _fail(what: str, checks: dict[str, bool], counts: dict) -> None:
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        raise IngestError(f"{what}: counts do not reconcile, nothing published: " + "; ".join(failed)
                          + f" (counts: {json.dumps(counts, sort_keys=True)})")


def _reconcile(c: dict, read: dict) -> list[str]:
    """Check the ``derived_from.counts`` identities (``read``: what pass 1 saw and pass 1's view of
    the removed interactions); return the checks' names."""
    checks = {
        "parent_items = kept_items + removed_items": c["parent_items"] == c["kept_items"] + c["removed_items"],
        "removed_items = removed_items_below_n + removed_items_with_dropped_users":
            c["removed_items"] == c["removed_items_below_n"] + c["removed_items_with_dropped_users"],
        "parent_interactions = kept_interactions + removed_interactions":
            c["parent_interactions"] == c["kept_interactions"] + c["removed_interactions"],
        "removed_interactions = removed_interactions_below_n + removed_interactions_with_dropped_users":
            c["removed_interactions"] == c["removed_interactions_below_n"]
            + c["removed_interactions_with_dropped_users"],
        "parent_users = kept_users + dropped_users": c["parent_users"] == c["kept_users"] + c["dropped_users"],
        "dropped_users_empty <= dropped_users": 0 <= c["dropped_users_empty"] <= c["dropped_users"],
        "users read = parent_users": read["users"] == c["parent_users"],
        "interactions read = parent_interactions (both passes)":
            read["interactions"] == c["parent_interactions"] == read["pass2_interactions"],
        "every parent item has an interaction": read["items_without_interactions"] == 0,
        "removed_interactions_below_n = interactions of the items below n (pass 1)":
            c["removed_interactions_below_n"] == read["below_n_interactions"],
        "no kept item is below n": read["kept_below_n"] == 0,
    }
    _fail(f"Warm-{read['n']}", checks, c)
    return sorted(checks)


def _check_ingested(ingested: dict, c: dict, written: dict, titled: int | None, fmt: str, n: int) -> list[str]:
    """Check the derived ingestion's manifest counts against the derivation's; return the checks' names."""
    k = ingested["counts"]
    checks = {
        "ingested users = kept_users": k["users"] == c["kept_users"],
        "ingested items = kept_items": k["items"] == c["kept_items"],
        "ingested kept_interactions = kept_interactions": k["kept_interactions"] == c["kept_interactions"],
        "ingested filtered_users = dropped_users - dropped_users_empty":
            k["filtered_users"] == c["dropped_users"] - c["dropped_users_empty"],
        "ingested filtered_interactions = removed_interactions_with_dropped_users":
            k["filtered_interactions"] == c["removed_interactions_with_dropped_users"],
        "ingested input_interactions = written interactions": k["input_interactions"] == written["interactions"],
        "ingested input_rows = written rows":
            k["input_rows"] == (written["users"] if fmt == "pairs_tsv" else written["interactions"]),
        "ingested quarantined_rows = 0": k["quarantined_rows"] == 0,
        "ingested items_without_title = kept items without a parent title":
            k["items_without_title"] == c["kept_items"] - (titled or 0),
    }
    _fail(f"Warm-{n} (ingested)", checks, c)
    return sorted(checks)


def _same_derivation(output_dir: str, parent_fp: str, n: int) -> dict | None:
    """The manifest at ``output_dir`` when it is Warm-``n`` of the parent with fingerprint ``parent_fp``."""
    try:
        existing = load_manifest(output_dir).data
    except ManifestError:
        return None
    d = existing.get("derived_from") or {}
    same = d.get("kind") == "warm" and d.get("n") == n and (d.get("parent") or {}).get("fingerprint") == parent_fp
    return existing if same else None


def derive_warm(parent_dir: str, n: int, output_dir: str, *, overwrite: bool = False, progress: bool = False,
                work_dir: str | None = None, keep_work: bool = False) -> dict:
    """Derive the Warm-``n`` dataset of the published dataset ``parent_dir`` into ``output_dir``.

    See the module docstring for the rule and the steps. Starts an embedded Ray cluster when none is
    connected (the ingestion runs on Ray).

    Args:
        parent_dir: A published dataset (local path or URI).
        n: Items with fewer than ``n`` interactions in the parent are removed (``n >= 1``; 1 keeps every item).
        output_dir: The derived dataset's directory (``warm_output_dir(parent_dir, n)`` by convention).
        overwrite: Replace an ``output_dir`` holding anything else than this derivation (as
            ``ingest.overwrite``); without it an ``output_dir`` that already holds Warm-``n`` of this
            parent (same parent fingerprint) is kept and its manifest returned.
        progress: Ray Data progress bars of the derived ingestion.
        work_dir: Where the derived raw input is written (default ``<output_dir>.work``).
        keep_work: Keep the work folder afterwards (it is removed by default; the ``inputs`` of the
            derived manifest name its files).

    Returns:
        The derived dataset's manifest, with its ``derived_from`` section.

    Raises:
        ValueError: when ``n`` is not an integer >= 1.
        ManifestError: when ``parent_dir`` holds no dataset.
        IngestError: when ``output_dir`` holds something else (and ``overwrite`` is off), when no user is
            left, or when counts do not reconcile (nothing is published then).
    """
    from mvrec_dist.config.runtime import RayConfig
    from mvrec_dist.data.ingest.pipeline import run_ingest
    from mvrec_dist.runtime.ray_cluster import ray_session

    n = check_warm_n(n)
    t0 = time.perf_counter()
    parent = load_manifest(parent_dir)
    parent_fp = parent.data["fingerprint"]
    if output_dir.rstrip("/") == parent_dir.rstrip("/"):
        raise IngestError(f"Warm-{n}: output_dir {output_dir} is the parent dataset itself")
    if not overwrite:
        existing = _same_derivation(output_dir, parent_fp, n)
        if existing is not None:
            return existing
    check_output_dir(output_dir, "", overwrite)  # anything there but this derivation needs overwrite
    settings = dict(parent.data["config"].get("ingest") or {})
    fmt = settings.get("format") or parent.data["inputs"][0]["format"]
    if fmt not in ("pairs_tsv", "pairs_csv"):
        raise IngestError(f"{parent_dir}: parent format {fmt!r} is neither pairs_tsv nor pairs_csv")
    if parent.labels is not None:
        # The derived input is rewritten from the parent's sequences; its exposures would be lost silently.
        raise IngestError(f"Warm-{n}: {parent_dir} holds exposures (input with a label column), which Warm-N "
                          "derivation does not carry over yet (the derived dataset would lose them); leave "
                          "ingest.warm empty for labelled input")
    defaults = IngestConfig()
    min_seq_len = int(settings.get("min_seq_len", defaults.min_seq_len))

    counts_by_item, users_read, interactions_read = _count_items(parent)
    keep_item = counts_by_item >= n
    keep_item[0] = False
    work = (work_dir or f"{output_dir.rstrip('/')}.work").rstrip("/")
    remove_tree(work)
    source_path = f"{work}/interactions_pairs.{'tsv' if fmt == 'pairs_tsv' else 'csv'}"
    titles_path = f"{work}/titles.csv"
    tmp = temp_dir_for(output_dir)
    try:
        items_map = _load_map(parent, "items", parent.num_items)
        source, w, present, derived_counts = _write_source(parent, keep_item, min_seq_len, fmt, source_path,
                                                           items_map)
        below = np.zeros(len(counts_by_item), dtype=bool)
        below[1:] = counts_by_item[1:] < n
        c = {
            "parent_users": parent.num_users, "parent_items": parent.num_items,
            "parent_interactions": int(parent.counts["kept_interactions"]),
            "kept_users": w["kept_users"], "kept_items": int(present.sum()),
            "kept_interactions": w["kept_interactions"],
            "removed_items_below_n": int(below.sum()),
            "removed_items_with_dropped_users": int((~below[1:] & ~present[1:]).sum()),
            "removed_interactions_below_n": w["removed_interactions_below_n"],
            "removed_interactions_with_dropped_users": w["removed_interactions_with_dropped_users"],
            "dropped_users": w["dropped_users"], "dropped_users_empty": w["dropped_users_empty"],
            "kept_items_below_n": int((present & (derived_counts < n)).sum()),
        }
        c["removed_items"] = c["removed_items_below_n"] + c["removed_items_with_dropped_users"]
        c["removed_interactions"] = c["removed_interactions_below_n"] + c["removed_interactions_with_dropped_users"]
        read = {"n": n, "users": users_read, "interactions": interactions_read,
                "pass2_interactions": c["kept_interactions"] + c["removed_interactions"],
                "items_without_interactions": int((counts_by_item[1:] == 0).sum()),
                "below_n_interactions": int(counts_by_item[below].sum()),
                "kept_below_n": int((present & below).sum())}
        checks = _reconcile(c, read)
        if c["kept_users"] == 0:
            raise IngestError(f"Warm-{n} of {parent_dir}: no user keeps min_seq_len={min_seq_len} interactions "
                              f"once the items with fewer than {n} interactions are removed; nothing to write")
        titled = _write_titles(parent, present, titles_path) if parent.data.get("titles") else None
        c["kept_items_without_title"] = c["kept_items"] - (titled or 0)
        cfg = IngestConfig(
            input=source_path, format=fmt, titles=titles_path if titled else None, output_dir=tmp,
            min_seq_len=min_seq_len,
            shard_max_samples=int(settings.get("shard_max_samples", defaults.shard_max_samples)),
            users_per_block=parent.block_size("train"), items_per_block=parent.block_size("items"),
            read_block_bytes=int(settings.get("read_block_bytes", defaults.read_block_bytes)),
            group_partitions=int(settings.get("group_partitions", defaults.group_partitions)),
            # The parent already applied its duplicates policy: its sequences are taken as they are. No resume:
            # the derived input is written anew by every derivation, so there is never anything to reuse.
            on_bad_rows="error", duplicates="keep", overwrite=False, progress=progress, resume=False,
            # The popularity labels as the parent's: its counts file (a superset of the kept items) or the
            # interactions (of the derived sequences), split with the parent's settings.
            item_counts=settings.get("item_counts"),
            **{k: settings.get(k, getattr(defaults, k)) for k in ("item_count_column", "item_split_seed",
                                                                  "item_valid_fraction", "item_test_fraction")})
        with ray_session(RayConfig()):
            ingested = run_ingest(cfg).manifest
        written = {"users": w["written_users"], "interactions": w["written_interactions"]}
        checks += _check_ingested(ingested, c, written, titled, fmt, n)
        manifest = dict(ingested)
        manifest["config"] = dict(ingested["config"], ingest=dict(ingested["config"]["ingest"], output_dir=output_dir))
        manifest["derived_from"] = {
            "kind": "warm",
            "n": n,
            "rule": WARM_RULE,
            "min_seq_len": min_seq_len,
            "parent": {"dir": parent_dir, "fingerprint": parent_fp, "created_at": parent.data.get("created_at")},
            "counts": c,
            "reconciliation": {"ok": True, "checks": sorted(checks)},
            "source": {"interactions": {k: source[k] for k in ("path", "bytes", "sha256")}, "format": fmt,
                       "titles": titles_path if titled else None, "kept": keep_work},
            "seconds": round(time.perf_counter() - t0, 3),
            "created_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        publish(tmp, output_dir, manifest, overwrite=overwrite)
    except BaseException:
        remove_tree(tmp)
        raise
    finally:
        if not keep_work:
            remove_tree(work)
    return manifest


def main(argv: list[str] | None = None) -> int:
    """``python -m mvrec_dist.data.ingest.warm PARENT_DIR N [N ...]``: Warm-N datasets into ``<PARENT_DIR>-warm<N>``."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m mvrec_dist.data.ingest.warm", description=main.__doc__)
    ap.add_argument("parent_dir")
    ap.add_argument("n", type=int, nargs="+")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    from mvrec_dist.config.runtime import RayConfig
    from mvrec_dist.runtime.ray_cluster import ray_session

    with ray_session(RayConfig()):
        for n in args.n:
            out = warm_output_dir(args.parent_dir, n)
            m = derive_warm(args.parent_dir, n, out, overwrite=args.overwrite)
            print(f"Warm-{n}: {out}: " + json.dumps(m["derived_from"]["counts"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
