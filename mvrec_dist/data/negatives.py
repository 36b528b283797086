"""Items a user never interacted with, sampled uniformly and reproducibly from a key per user.

MTIN's negative branch and its label-0 candidates (``mvrec_dist.tasks.mtin``) need, for datasets
without exposures (MicroLens records comments only), items the user never interacted with. The
draws must not depend on which rank, loader worker or batch a row lands in, so that a resumed run
(on any world size) draws exactly what an uninterrupted one does: every draw is a function of a
64-bit *row key* (``row_keys``: seed, stream, epoch, user, window), the slot and the attempt, hashed
with splitmix64; nothing reads a random generator's state.

Sampling (``sample_non_interacted``): slot ``j`` of a row draws ``1 + h(key, j, a) mod N`` for
attempts ``a = 0, 1, ...`` until the item is outside the row's excluded set (rejection sampling:
uniform over the complement); a slot still rejected after ``MAX_ATTEMPTS`` (a user who interacted
with nearly every item) takes the ``h mod |complement|``-th item of the explicit complement, also
uniform. Draws are with replacement across slots. A user who interacted with every item gets 0
(padding) in every slot.

Drawing from a given pool per row (``sample_from_pools``, e.g. a user's exposures for MTIN's
label-0 candidates) uses the same keys: every distinct item of a row's pool gets the hash of
``(row key, POOL_TAG, item)`` and the ``count`` smallest are taken, in hash order: a uniform subset
without replacement, in random order, again a function of the key alone.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["STREAMS", "row_keys", "sample_non_interacted", "sample_from_pools", "MAX_ATTEMPTS", "POOL_TAG"]

MAX_ATTEMPTS = 32
"""Rejection rounds before a slot falls back to the explicit complement (each round redraws only rejected slots)."""

STREAMS = {"train": 0, "valid": 1, "test": 2}
"""Stream ids of the row keys: training draws (per epoch and window) and each evaluation split's."""

POOL_TAG = 0x706F6F6C5F746167
"""Hashed in before the item by ``sample_from_pools``: its draws are independent of the slots' draws."""

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 of every element (uint64, wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def _combine(key: np.ndarray, value: np.ndarray | int) -> np.ndarray:
    """A new key from ``key`` and one more component (order matters)."""
    return _mix(key ^ np.asarray(value).astype(np.uint64))


def row_keys(seed: int, stream: str, epoch: int, users: np.ndarray, windows: np.ndarray | None = None) -> np.ndarray:
    """The 64-bit key of each row's draws.

    Args:
        seed: Run seed (``train.seed``).
        stream: A key of ``STREAMS`` (``train``, ``valid``, ``test``).
        epoch: Training epoch (0 for evaluation).
        users: ``[B]`` dense user ids.
        windows: ``[B]`` window index of the row in its user's sequence (training), or None.

    Returns:
        ``uint64 [B]``.
    """
    users = np.asarray(users, dtype=np.int64)
    head = _combine(_combine(_mix(np.full(1, seed, dtype=np.int64).astype(np.uint64)), STREAMS[stream]), epoch)
    keys = _combine(np.broadcast_to(head, users.shape).copy(), users)
    if windows is not None:
        keys = _combine(keys, np.asarray(windows, dtype=np.int64))
    return keys


def _draw(keys: np.ndarray, slots: np.ndarray, attempt: int) -> np.ndarray:
    """``uint64 [B, S]`` hash of (row key, slot, attempt)."""
    return _combine(_combine(keys[:, None], slots[None, :]), attempt)


def sample_non_interacted(keys: np.ndarray, count: int, excluded: Sequence[np.ndarray], num_items: int, *,
                          first_slot: int = 0) -> np.ndarray:
    """``count`` items per row drawn uniformly from ``1..num_items`` minus the row's excluded items.

    Args:
        keys: ``uint64 [B]`` row keys (``row_keys``).
        count: Items per row.
        excluded: Per row, the item ids it must never return (the user's interactions); any order,
            repeats allowed.
        num_items: N.
        first_slot: Index of the first slot: draws of slots ``first_slot..first_slot+count-1``, so
            that two calls with the same keys and disjoint slot ranges are independent.

    Returns:
        ``int64 [B, count]``; 0 only for a row whose excluded set covers every item.
    """
    b = len(keys)
    if len(excluded) != b:
        raise ValueError(f"sample_non_interacted: {b} keys but {len(excluded)} excluded sets")
    if b == 0 or count == 0:
        return np.zeros((b, count), dtype=np.int64)
    n1 = np.int64(num_items + 1)
    lengths = np.array([len(e) for e in excluded], dtype=np.int64)
    rows = np.repeat(np.arange(b, dtype=np.int64), lengths)
    flat = np.concatenate([np.asarray(e, dtype=np.int64).ravel() for e in excluded]) if lengths.sum() else \
        np.zeros(0, dtype=np.int64)
    forbidden = np.unique(rows * n1 + flat)  # sorted keys row*(N+1)+item of the excluded pairs
    slots = np.arange(first_slot, first_slot + count, dtype=np.uint64)
    row_index = np.arange(b, dtype=np.int64)[:, None]

    def rejected(items: np.ndarray, where: np.ndarray) -> np.ndarray:
        pairs = (row_index * n1 + items)[where]
        pos = np.searchsorted(forbidden, pairs)
        hit = np.zeros(len(pairs), dtype=bool)
        inside = pos < len(forbidden)
        hit[inside] = forbidden[pos[inside]] == pairs[inside]
        out = np.zeros_like(where)
        out[where] = hit
        return out

    out = (_draw(keys, slots, 0) % np.uint64(num_items)).astype(np.int64) + 1  # B,count
    bad = rejected(out, np.ones_like(out, dtype=bool))
    for attempt in range(1, MAX_ATTEMPTS):
        if not bad.any():
            break
        redraw = (_draw(keys, slots, attempt) % np.uint64(num_items)).astype(np.int64) + 1
        out = np.where(bad, redraw, out)
        bad = rejected(out, bad)
    for r in np.flatnonzero(bad.any(1)):  # users who interacted with (nearly) every item
        complement = np.setdiff1d(np.arange(1, num_items + 1, dtype=np.int64), np.asarray(excluded[r], dtype=np.int64))
        cols = np.flatnonzero(bad[r])
        if len(complement) == 0:
            out[r, cols] = 0
            continue
        h = _draw(keys[r:r + 1], slots[cols], MAX_ATTEMPTS)[0]
        out[r, cols] = complement[(h % np.uint64(len(complement))).astype(np.int64)]
    return out


def sample_from_pools(keys: np.ndarray, pools: Sequence[np.ndarray], count: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` distinct items per row drawn uniformly without replacement from the row's pool.

    Args:
        keys: ``uint64 [B]`` row keys (``row_keys``).
        pools: Per row, the items it may return (repeats count once; any order).
        count: Items per row.

    Returns:
        ``(items int64 [B, count], filled int64 [B])``: row ``r``'s first ``filled[r] = min(count,
        distinct pool items)`` slots hold the draw, the rest 0.
    """
    b = len(keys)
    if len(pools) != b:
        raise ValueError(f"sample_from_pools: {b} keys but {len(pools)} pools")
    out = np.zeros((b, count), dtype=np.int64)
    lengths = np.array([len(p) for p in pools], dtype=np.int64)
    if b == 0 or count == 0 or not lengths.sum():
        return out, np.zeros(b, dtype=np.int64)
    rows = np.repeat(np.arange(b, dtype=np.int64), lengths)
    items = np.concatenate([np.asarray(p, dtype=np.int64).ravel() for p in pools])
    order = np.lexsort((items, rows))
    rows, items = rows[order], items[order]
    distinct = np.ones(len(rows), dtype=bool)
    distinct[1:] = (rows[1:] != rows[:-1]) | (items[1:] != items[:-1])
    rows, items = rows[distinct], items[distinct]
    h = _combine(_combine(np.asarray(keys, dtype=np.uint64)[rows], POOL_TAG), items)
    order = np.lexsort((h, rows))  # by row, then by hash: a random order of each row's pool
    rows, items = rows[order], items[order]
    sizes = np.bincount(rows, minlength=b)
    rank = np.arange(len(rows)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    take = rank < count
    out[rows[take], rank[take]] = items[take]
    return out, np.minimum(sizes, count).astype(np.int64)
