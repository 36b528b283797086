"""Tiny spec-conformant datasets for tests (``shards/README.md``, schema version 1).

Tars have deterministic headers (mtime 0, uid/gid 0, no user names), ``u%010d`` keys, adjacent
members in ascending key order and only ``.npy``/``.json``/``.txt`` members; ``write_manifest``
writes a ``manifest.json`` that ``load_manifest`` accepts. ``write_tar`` takes raw members in any
order, so tests can also build broken shards on purpose.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from mvrec_dist.data.manifest import MANIFEST_NAME, SCHEMA_VERSION

Members = dict[str, Any]


def user_key(user: int) -> str:
    """The sample key of dense user ``user``."""
    return f"u{user:010d}"


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


def write_tar(root: Path, rel_path: str, members: Iterable[tuple[str, bytes]],
              fmt: int = tarfile.PAX_FORMAT) -> dict[str, Any]:
    """Write members in the given order with deterministic headers.

    Returns:
        The manifest shard entry; ``samples`` counts runs of equal keys (fix it by hand to test a
        count mismatch).
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
    """Write ``samples`` (in order) into shards ``<split>/<split>-%05d.tar`` of the given sizes."""
    if sum(shard_counts) != len(samples):
        raise ValueError(f"shard counts sum to {sum(shard_counts)}, not {len(samples)} samples")
    entries, i = [], 0
    for s, n in enumerate(shard_counts):
        members = [m for key, value in samples[i:i + n] for m in sample_members(key, value)]
        entries.append(write_tar(root, f"{split}/{split}-{s:05d}.tar", members))
        entries[-1]["samples"] = n
        i += n
    return entries


def write_manifest(root: Path, splits: dict[str, list[dict[str, Any]]]) -> Path:
    """Write a schema-1 ``manifest.json`` listing ``splits`` (counts other than samples are zero)."""
    counts = {k: 0 for k in ("input_rows", "header_rows", "kept_rows", "filtered_rows", "quarantined_rows",
                             "input_interactions", "kept_interactions", "filtered_interactions",
                             "users", "items", "filtered_users", "items_without_title")}
    counts["interactions"] = {"train": 0, "valid": 0, "test": 0}
    manifest = {
        "schema_version": SCHEMA_VERSION, "kind": "mvrec_dist.dataset", "created_at": "1970-01-01T00:00:00Z",
        "config": {}, "inputs": [], "counts": counts,
        "reconciliation": {"input_rows": 0, "kept_rows": 0, "filtered_rows": 0, "quarantined_rows": 0, "ok": True},
        "splits": {name: {"samples": sum(e["samples"] for e in entries), "shards": entries}
                   for name, entries in splits.items()},
        "maps": {"items": "maps/items.npy", "users": "maps/users.npy"},
        "stats": {"item_train_counts": "stats/item_train_counts.npy"},
        "files": {}, "quarantine": {"path": "quarantine.tsv", "rows": 0},
    }
    path = root / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return path


def train_samples(n: int, *, seed: int, max_len: int = 12, num_items: int = 1000) -> list[tuple[str, Members]]:
    """``n`` train-split samples of users 1..n: ``items.npy`` int32 [1..max_len] and ``json``."""
    rng = np.random.Generator(np.random.PCG64(seed))
    samples = []
    for user in range(1, n + 1):
        items = rng.integers(1, num_items + 1, size=int(rng.integers(1, max_len + 1)), dtype=np.int32)
        samples.append((user_key(user), {"items.npy": items,
                                         "json": {"user": user, "raw_user": 10 * user, "n": len(items) + 2}}))
    return samples


def train_dataset(root: Path, shard_counts: Sequence[int], *, seed: int = 0, **kwargs: Any) -> list[tuple[str, Members]]:
    """Write a dataset whose train split has ``shard_counts`` samples per shard; return the samples."""
    samples = train_samples(sum(shard_counts), seed=seed, **kwargs)
    write_manifest(root, {"train": write_split(root, "train", samples, shard_counts)})
    return samples
