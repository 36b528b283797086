"""The item table: one sample per dense item (``i%010d``) with its title and train count.

Shard ``j`` holds dense items ``j*S+1 .. (j+1)*S``; shards are rendered by Ray tasks, each given
its slice of the id map, counts and titles.
"""

from __future__ import annotations

import json

import numpy as np
import ray

from mvrec_dist.data.ingest.shard_writer import shard_path
from mvrec_dist.data.ingest.tar_writer import tar_bytes, write_bytes
from mvrec_dist.data.ingest.titles import Titles

__all__ = ["render_item_shard", "write_item_shards"]


def render_item_shard(first: int, raw_items: np.ndarray, train_counts: np.ndarray, has_title: np.ndarray,
                      titles: list[str]) -> bytearray:
    """Render one items tar.

    Args:
        first: Dense id of the first item.
        raw_items: Raw ids, int64 [K].
        train_counts: Train-split interactions per item, int64 [K].
        has_title: Whether the titles file lists the item, bool [K].
        titles: Title per item ('' when none), length K.

    Returns:
        The tar bytes (members ``<key>.json`` then ``<key>.txt`` per item).
    """
    names, payloads = [], []
    for k, (raw, count, has, title) in enumerate(zip(raw_items.tolist(), train_counts.tolist(),
                                                     has_title.tolist(), titles)):
        key = b"i%010d" % (first + k)
        meta = json.dumps({"item": first + k, "raw_item": raw, "train_count": count, "has_title": has})
        names += [key + b".json", key + b".txt"]
        payloads += [(meta.encode("utf-8"),), (title.encode("utf-8"),)]
    return tar_bytes(names, payloads)


@ray.remote
def _write_items(root: str, indices: list[int], shard_size: int, raw_items: np.ndarray,
                 train_counts: np.ndarray, has_title: np.ndarray, titles: list[str]) -> list[dict]:
    out = []
    base = indices[0] * shard_size
    for j in indices:
        lo, hi = j * shard_size - base, min((j + 1) * shard_size - base, len(raw_items))
        data = render_item_shard(j * shard_size + 1, raw_items[lo:hi], train_counts[lo:hi], has_title[lo:hi],
                                 titles[lo:hi])
        path = shard_path("items", j)
        out.append({"split": "items", "index": j, "path": path, "samples": hi - lo,
                    **write_bytes(f"{root.rstrip('/')}/{path}", data)})
    return out


def write_item_shards(root: str, items: np.ndarray, train_counts: np.ndarray, titles: Titles | None,
                      shard_size: int, tasks: int) -> tuple[list[dict], int]:
    """Write every items shard with Ray tasks.

    Args:
        root: Dataset directory being written.
        items: Sorted raw item ids (dense id - 1 -> raw), int64 [N].
        train_counts: Train interactions per item, int64 [N].
        titles: Parsed titles, or None (every title empty).
        shard_size: ``ingest.shard_max_samples``.
        tasks: How many tasks to spread the shards over.

    Returns:
        ``(shard entries in index order, items without a title)``.
    """
    if titles is None:
        has = np.zeros(len(items), dtype=bool)
        texts = [""] * len(items)
    else:
        has, texts = titles.lookup(items)
    num_shards = -(-len(items) // shard_size)
    groups = [g.tolist() for g in np.array_split(np.arange(num_shards), min(max(tasks, 1), num_shards)) if len(g)]
    refs = []
    for g in groups:
        lo, hi = g[0] * shard_size, min((g[-1] + 1) * shard_size, len(items))
        refs.append(_write_items.remote(root, g, shard_size, items[lo:hi], train_counts[lo:hi], has[lo:hi],
                                        texts[lo:hi]))
    entries = [e for part in ray.get(refs) for e in part]
    return sorted(entries, key=lambda e: e["index"]), int((~has).sum())
