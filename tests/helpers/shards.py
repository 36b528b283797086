"""Tiny spec-conformant datasets for tests (``shards/README.md``, schema version 2).

Written with ``tarfile`` and ``np.save``, independently of the ingestion's writers, so reader tests
compare against a second encoding of the spec. Tars have deterministic headers (mtime 0, uid/gid
0, no user names), adjacent members in ascending key order and only ``.npy``/``.json``/``.txt``
members.

Blocked splits (train/valid/test/items) are written from their *per-row* view: the samples the
reader must hand back (``u%010d`` keys, ``items.npy``/``json`` etc.); ``block_members`` turns a run
of rows into one block's members (``b%010d`` keys, columnar arrays). ``write_tar`` takes raw
members in any order, so tests can also build broken shards on purpose, and ``write_split``
writes per-item splits (``content``) one tar sample per row.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from mvrec_dist.data.manifest import BLOCK_SIZE_KEYS, MANIFEST_NAME, SCHEMA_VERSION

Members = dict[str, Any]
BLOCK_SIZE = 4
"""Default rows per block of the helper's datasets: small, so tiny datasets span several blocks."""


def user_key(user: int) -> str:
    """The per-row sample key of dense user ``user``."""
    return f"u{user:010d}"


def item_key(item: int) -> str:
    """The per-row sample key of dense item ``item``."""
    return f"i{item:010d}"


def encode(ext: str, value: Any) -> bytes:
    """Encode a member value the way the spec allows (bytes are written as given)."""
    if isinstance(value, bytes):
        return value
    if ext.endswith("npy"):
        out = io.BytesIO()
        np.save(out, np.asarray(value), allow_pickle=False)
        return out.getvalue()
    if ext.endswith("json"):
        return json.dumps(value, sort_keys=True).encode("utf-8")
    if ext.endswith("txt"):
        return value.encode("utf-8")
    raise ValueError(f"no encoding for extension {ext!r}")


def sample_members(key: str, members: Members) -> list[tuple[str, bytes]]:
    """The tar members ``(<key>.<ext>, bytes)`` of one sample, in the given member order."""
    return [(f"{key}.{ext}", encode(ext, value)) for ext, value in members.items()]


def block_members(split: str, index: int, rows: Sequence[Members]) -> list[tuple[str, bytes]]:
    """The tar members of block ``index`` holding ``rows`` (per-row samples, consecutive ids).

    Args:
        split: ``train``, ``valid``, ``test`` or ``items``.
        index: Block index (key ``b%010d``).
        rows: The rows' per-row members, as the reader returns them.

    Returns:
        ``(name, bytes)`` of each member of the block.
    """
    metas = [r["json"] for r in rows]
    noun = "item" if split == "items" else "user"
    ids = np.array([m[noun] for m in metas], dtype=np.int64)
    block: Members = {"json": {"block": index, f"first_{noun}": int(ids[0]), f"last_{noun}": int(ids[-1]),
                               "n": len(rows)}}
    if split == "items":
        block.update({"items.npy": ids, "raw_items.npy": np.array([m["raw_item"] for m in metas], dtype=np.int64),
                      "train_counts.npy": np.array([m["train_count"] for m in metas], dtype=np.int64),
                      "has_title.npy": np.array([m["has_title"] for m in metas], dtype=bool),
                      "titles.json": [r["txt"] for r in rows]})
    else:
        seq = "items.npy" if split == "train" else "history.npy"
        lengths = [len(r[seq]) for r in rows]
        block.update({"users.npy": ids, "raw_users.npy": np.array([m["raw_user"] for m in metas], dtype=np.int64),
                      "offsets.npy": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                      seq: np.concatenate([np.asarray(r[seq], dtype=np.int32) for r in rows])})
        if split == "train" and "ts.npy" in rows[0]:
            block["ts.npy"] = np.concatenate([np.asarray(r["ts.npy"], dtype=np.int64) for r in rows])
        if split != "train":
            block["targets.npy"] = np.array([r["target.npy"][0] for r in rows], dtype=np.int32)
    return [(f"b{index:010d}.{ext}", json.dumps(v).encode("utf-8") if ext == "titles.json" else encode(ext, v))
            for ext, v in block.items()]


def write_tar(root: Path, rel_path: str, members: Iterable[tuple[str, bytes]],
              fmt: int = tarfile.PAX_FORMAT) -> dict[str, Any]:
    """Write members in the given order with deterministic headers.

    Returns:
        The manifest shard entry; ``samples`` counts runs of equal keys (fix it by hand to test a
        count mismatch, and add ``blocks`` for a blocked split).
    """
    path = root / rel_path
    path.parent.mkdir(parents=True, exist_ok=True)
    keys: list[str] = []
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
            key = name.split(".", 1)[0]
            if not keys or keys[-1] != key:
                keys.append(key)
    raw = path.read_bytes()
    return {"path": rel_path, "samples": len(keys), "bytes": len(raw),
            "sha256": hashlib.sha256(raw).hexdigest()}


def write_split(root: Path, split: str, samples: Sequence[tuple[str, Members]],
                shard_counts: Sequence[int]) -> list[dict[str, Any]]:
    """Write ``samples`` (in order) one tar sample each, into ``<split>/<split>-%05d.tar`` of the given sizes."""
    if sum(shard_counts) != len(samples):
        raise ValueError(f"shard counts sum to {sum(shard_counts)}, not {len(samples)} samples")
    entries, i = [], 0
    for s, n in enumerate(shard_counts):
        members = [m for key, value in samples[i:i + n] for m in sample_members(key, value)]
        entries.append(write_tar(root, f"{split}/{split}-{s:05d}.tar", members))
        entries[-1]["samples"] = n
        i += n
    return entries


def write_blocked_split(root: Path, split: str, samples: Sequence[tuple[str, Members]],
                        shard_counts: Sequence[int], block_size: int = BLOCK_SIZE) -> list[dict[str, Any]]:
    """Write per-row ``samples`` (consecutive ids from 1, in order) as blocked shards of the given sizes.

    Block indices run on across shards (``b%010d``), every shard holds whole blocks.

    Returns:
        The manifest shard entries (``samples`` = rows, ``blocks``).
    """
    if sum(shard_counts) != len(samples):
        raise ValueError(f"shard counts sum to {sum(shard_counts)}, not {len(samples)} samples")
    entries, i, index = [], 0, 0
    for s, n in enumerate(shard_counts):
        members = []
        for lo in range(i, i + n, block_size):
            members += block_members(split, index, [m for _, m in samples[lo:min(lo + block_size, i + n)]])
            index += 1
        entry = write_tar(root, f"{split}/{split}-{s:05d}.tar", members)
        entry.update(samples=n, blocks=-(-n // block_size))
        entries.append(entry)
        i += n
    return entries


def write_manifest(root: Path, splits: dict[str, list[dict[str, Any]]], block_size: int = BLOCK_SIZE) -> Path:
    """Write a schema-2 ``manifest.json`` listing ``splits`` (counts other than samples are zero).

    Blocked splits get ``users_per_block`` / ``items_per_block`` = ``block_size``.
    """
    counts = {k: 0 for k in ("input_rows", "header_rows", "kept_rows", "filtered_rows", "quarantined_rows",
                             "input_interactions", "kept_interactions", "filtered_interactions",
                             "users", "items", "filtered_users", "items_without_title")}
    counts["interactions"] = {"train": 0, "valid": 0, "test": 0}
    section = {}
    for name, entries in splits.items():
        section[name] = {"samples": sum(e["samples"] for e in entries), "shards": entries}
        if name in BLOCK_SIZE_KEYS:
            section[name][BLOCK_SIZE_KEYS[name]] = block_size
    manifest = {
        "schema_version": SCHEMA_VERSION, "kind": "mvrec_dist.dataset", "created_at": "1970-01-01T00:00:00Z",
        "config": {}, "inputs": [], "counts": counts,
        "reconciliation": {"input_rows": 0, "kept_rows": 0, "filtered_rows": 0, "quarantined_rows": 0, "ok": True},
        "splits": section,
        "maps": {"items": "maps/items.npy", "users": "maps/users.npy"},
        "stats": {"item_train_counts": "stats/item_train_counts.npy"},
        "files": {}, "quarantine": {"path": "quarantine.tsv", "rows": 0},
    }
    path = root / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return path


def train_samples(n: int, *, seed: int, max_len: int = 12, num_items: int = 1000,
                  with_ts: bool = False) -> list[tuple[str, Members]]:
    """``n`` train-split samples of users 1..n: ``items.npy`` int32 [1..max_len], ``json`` (+ ``ts.npy``)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    samples = []
    for user in range(1, n + 1):
        items = rng.integers(1, num_items + 1, size=int(rng.integers(1, max_len + 1)), dtype=np.int32)
        members: Members = {"items.npy": items}
        if with_ts:
            members["ts.npy"] = np.sort(rng.integers(0, 10**9, size=len(items))).astype(np.int64)
        members["json"] = {"user": user, "raw_user": 10 * user, "n": len(items) + 2}
        samples.append((user_key(user), members))
    return samples


def eval_samples(train: Sequence[tuple[str, Members]], split: str, *, seed: int,
                 num_items: int = 1000) -> list[tuple[str, Members]]:
    """The valid or test samples of the users of ``train`` (histories extending the train items)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    out = []
    for key, members in train:
        history = members["items.npy"]
        valid_target, test_target = rng.integers(1, num_items + 1, size=2, dtype=np.int32)
        if split == "test":
            history = np.concatenate([history, [valid_target]]).astype(np.int32)
        target = np.array([valid_target if split == "valid" else test_target], dtype=np.int32)
        out.append((key, {"history.npy": history, "target.npy": target, "json": dict(members["json"])}))
    return out


def item_samples(n: int, *, seed: int) -> list[tuple[str, Members]]:
    """``n`` item-table samples of items 1..n: ``json`` and ``txt`` (any text, some titles empty)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    texts = ["", "ça va", 'quote " and \\ backslash', "emoji \U0001F600", "line\nbreak", "\u0000nul"]
    out = []
    for item in range(1, n + 1):
        title = texts[int(rng.integers(len(texts)))]
        out.append((item_key(item), {"json": {"item": item, "raw_item": 7 * item, "train_count": int(rng.integers(9)),
                                              "has_title": bool(title)}, "txt": title}))
    return out


def train_dataset(root: Path, shard_counts: Sequence[int], *, seed: int = 0, block_size: int = BLOCK_SIZE,
                  **kwargs: Any) -> list[tuple[str, Members]]:
    """Write a dataset whose train split has ``shard_counts`` users per shard; return the per-row samples."""
    samples = train_samples(sum(shard_counts), seed=seed, **kwargs)
    write_manifest(root, {"train": write_blocked_split(root, "train", samples, shard_counts, block_size)},
                   block_size)
    return samples


TINY_INGEST = """# A tiny synthetic dataset (600 users, 300 items) for the jobs' end-to-end tests.
ingest:
  output_dir: {out}
  shard_max_samples: 200
  progress: false
synthetic:
  enabled: true
  output: {raw}
  users: 600
  items: 300
  interactions: 6000
  seed: 1
  chunk_users: 300
"""
"""An ingest config (``.format(out=..., raw=...)``) the end-to-end tests of the jobs ingest first."""


def ingest_synthetic(root: Path, *overrides: str) -> Path:
    """Generate and ingest a synthetic dataset under ``root`` (``raw/`` and ``ds/``) with the ingest job's own
    function; ``overrides``: dotted ``ingest.``/``synthetic.`` settings (sizes, seed, ``synthetic.plays``, ...).

    Returns:
        The dataset directory, ``root / "ds"``.
    """
    from mvrec_dist.config import IngestJobConfig, load_config
    from mvrec_dist.data.ingest import run_ingest_job

    run_ingest_job(load_config(IngestJobConfig, None, [f"ingest.output_dir={root / 'ds'}", "ingest.progress=false",
                                                       "synthetic.enabled=true", f"synthetic.output={root / 'raw'}",
                                                       *overrides]))
    return root / "ds"


def ingest_small_blocks(src: Any, out: Any, **kw: Any) -> Any:
    """``run_ingest`` of a hand-made input with one user per block and 2 samples per shard, so even a few rows
    cross block and shard boundaries (``kw``: further ``IngestConfig`` fields)."""
    from mvrec_dist.config.ingest import IngestConfig
    from mvrec_dist.data.ingest import run_ingest

    return run_ingest(IngestConfig(input=str(src), output_dir=str(out), progress=False, min_seq_len=3,
                                   shard_max_samples=2, users_per_block=1, items_per_block=4, **kw))


def members_by_user(root: Any, split: str, members: set[str]) -> dict:
    """``{raw user: its sample's members}`` of ``split`` read back from the dataset at ``root``."""
    from mvrec_dist.data.plan import eval_plan
    from mvrec_dist.data.reader import ShardReader

    reader = ShardReader(str(root), split, members=members)
    return {s.members["json"]["raw_user"]: s.members
            for _, s in reader.iter_chunks(eval_plan(reader.shard_counts, num_consumers=1)[0])}
