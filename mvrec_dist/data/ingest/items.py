"""The item table: blocks of consecutive dense items with raw ids, interaction counts and titles.

Shard ``j`` holds dense items ``j*S+1 .. (j+1)*S``, cut into blocks of ``B`` items keyed
``b%010d`` like the user splits (``shard_writer``); a block holds ``items.npy`` (dense ids, int64),
``raw_items.npy`` (int64), ``train_counts.npy`` (int64), ``interactions.npy`` (int64: every kept
interaction of the item, train + valid + test targets), ``has_title.npy`` (bool), ``titles.json``
(a JSON list of the titles, '' where the titles file has none) and the block ``json``. Shards are
rendered by Ray tasks, each given its slice of the id map, counts and titles.
"""

from __future__ import annotations

import numpy as np
import ray

from mvrec_dist.data.blocks import LAYOUTS, block_meta, block_sizes, encode_titles
from mvrec_dist.data.ingest.shard_writer import (first_block_index, json_payload, npy_payload, render_blocks,
                                                 shard_path)
from mvrec_dist.data.ingest.tar_writer import write_bytes
from mvrec_dist.data.ingest.titles import Titles

__all__ = ["render_item_shard", "write_item_shards"]


def render_item_shard(shard: int, first: int, raw_items: np.ndarray, train_counts: np.ndarray,
                      has_title: np.ndarray, titles: list[str], *, shard_size: int, block_size: int,
                      interactions: np.ndarray | None = None) -> bytearray:
    """Render one items tar.

    Args:
        shard: Shard index (fixes the split-wide block indices).
        first: Dense id of the first item.
        raw_items: Raw ids, int64 [K].
        train_counts: Train-split interactions per item, int64 [K].
        has_title: Whether the titles file lists the item, bool [K].
        titles: Title per item ('' when none), length K.
        shard_size: ``ingest.shard_max_samples``.
        block_size: Items per block (``ingest.users_per_block``).
        interactions: Kept interactions per item over the full sequences, int64 [K]; None writes no
            ``interactions.npy`` member (the item table of datasets from before it existed).

    Returns:
        The tar bytes.
    """
    k = len(raw_items)
    dense = np.arange(first, first + k, dtype=np.int64)
    raw = np.ascontiguousarray(raw_items, dtype=np.int64)
    counts = np.ascontiguousarray(train_counts, dtype=np.int64)
    has = np.ascontiguousarray(has_title, dtype=bool)
    inter = None if interactions is None else np.ascontiguousarray(interactions, dtype=np.int64)
    blocks, lo, index = [], 0, first_block_index(shard, shard_size, block_size)
    for size in block_sizes(k, block_size):
        hi = lo + size
        members = {
            "json": json_payload(block_meta(LAYOUTS["items"], index, first + lo, size)),
            "items.npy": npy_payload(dense[lo:hi]), "raw_items.npy": npy_payload(raw[lo:hi]),
            "train_counts.npy": npy_payload(counts[lo:hi])}
        if inter is not None:
            members["interactions.npy"] = npy_payload(inter[lo:hi])
        members.update({"has_title.npy": npy_payload(has[lo:hi]), "titles.json": (encode_titles(titles[lo:hi]),)})
        blocks.append((index, members))
        lo, index = hi, index + 1
    return render_blocks(blocks)


@ray.remote
def _write_items(root: str, indices: list[int], shard_size: int, block_size: int, raw_items: np.ndarray,
                 train_counts: np.ndarray, interactions: np.ndarray, has_title: np.ndarray,
                 titles: list[str]) -> list[dict]:
    out = []
    base = indices[0] * shard_size
    for j in indices:
        lo, hi = j * shard_size - base, min((j + 1) * shard_size - base, len(raw_items))
        data = render_item_shard(j, j * shard_size + 1, raw_items[lo:hi], train_counts[lo:hi], has_title[lo:hi],
                                 titles[lo:hi], shard_size=shard_size, block_size=block_size,
                                 interactions=interactions[lo:hi])
        path = shard_path("items", j)
        out.append({"split": "items", "index": j, "path": path, "samples": hi - lo,
                    "blocks": len(block_sizes(hi - lo, block_size)),
                    **write_bytes(f"{root.rstrip('/')}/{path}", data)})
    return out


def write_item_shards(root: str, items: np.ndarray, train_counts: np.ndarray, titles: Titles | None,
                      shard_size: int, block_size: int, tasks: int, *,
                      interactions: np.ndarray) -> tuple[list[dict], int]:
    """Write every items shard with Ray tasks.

    Args:
        root: Dataset directory being written.
        items: Sorted raw item ids (dense id - 1 -> raw), int64 [N].
        train_counts: Train interactions per item, int64 [N].
        titles: Parsed titles, or None (every title empty).
        shard_size: ``ingest.shard_max_samples``.
        block_size: Items per block (``ingest.users_per_block``).
        tasks: How many tasks to spread the shards over.
        interactions: Kept interactions per item over the full sequences, int64 [N] (the
            ``interactions.npy`` member).

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
        refs.append(_write_items.remote(root, g, shard_size, block_size, items[lo:hi], train_counts[lo:hi],
                                        interactions[lo:hi], has[lo:hi], texts[lo:hi]))
    entries = [e for part in ray.get(refs) for e in part]
    return sorted(entries, key=lambda e: e["index"]), int((~has).sum())
