"""Exposures and timestamps as tasks read them: a user's recent exposures, candidate pools, per-user rows.

Labelled datasets keep every user's exposures (label-0 rows: shown, not clicked) in the
``exposures`` split, in time order with their timestamps; csv datasets keep timestamps beside the
items of every user split (``shards/README.md``). MTIN's negative branch reads them
(``tasks/mtin_batch.py``); the functions here are the task-independent part, vectorised over a
batch of rows given as jagged arrays (``values``, ``offsets``: row ``r`` is
``values[offsets[r]:offsets[r+1]]``):

* ``recent_before``: each row's last ``length`` exposures strictly before a time (H_neg of the
  window whose positive happened then), left-aligned and right-padded like the positive history;
* ``exposure_pools``: each row's exposures outside its H_neg and outside a given set of items (what
  the label-0 candidates may be drawn from, ``negatives.sample_from_pools``);
* ``spread_times``: times for items that have none of their own (sampled H_neg under
  ``time_distance='timestamp'``): spread evenly over the positive history's times;
* ``hold_last``: the padding slots of a times array take the row's last real time;
* ``UserRows``: the jagged members of one user split for a rank's evaluation users, read once
  through ``ShardReader.iter_blocks`` and gathered per batch by dense user id.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from mvrec_dist.data.manifest import Manifest
from mvrec_dist.data.plan import Chunk
from mvrec_dist.data.reader import ShardReader

__all__ = ["jagged", "recent_before", "exposure_pools", "spread_times", "hold_last", "UserRows"]


def jagged(rows: Sequence[np.ndarray], dtype: type = np.int64) -> tuple[np.ndarray, np.ndarray]:
    """``(values, offsets int64 [B+1])`` of a list of 1-D arrays."""
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in rows], out=offsets[1:])
    values = np.concatenate(rows).astype(dtype, copy=False) if offsets[-1] else np.zeros(0, dtype=dtype)
    return values, offsets


def _positions(offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row of every value and its position inside the row."""
    lengths = np.diff(offsets)
    row = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    return row, np.arange(int(offsets[-1]), dtype=np.int64) - offsets[:-1][row]


def recent_before(items: np.ndarray, times: np.ndarray, offsets: np.ndarray, before: np.ndarray,
                  length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's last ``length`` exposures with a time strictly before ``before[r]``, in time order.

    Args:
        items: Exposed item ids of every row, time order within a row (jagged values).
        times: Their timestamps (non-decreasing within a row).
        offsets: ``int64 [B+1]``.
        before: ``int64 [B]`` the time each row's exposures must precede (the positive's time).
        length: L_neg.

    Returns:
        ``(items int64 [B, length], times int64 [B, length], first int64 [B])``: left-aligned, items
        right-padded with 0, times with the row's last (``hold_last``); ``first[r]``..``first[r] + taken``
        are the chosen positions in row ``r``.
    """
    b = len(offsets) - 1
    out, out_t = np.zeros((b, length), dtype=np.int64), np.zeros((b, length), dtype=np.int64)
    row, pos = _positions(offsets)
    earlier = times < np.asarray(before, dtype=np.int64)[row]
    count = np.bincount(row[earlier], minlength=b)  # rows are time-ordered: the earlier ones come first
    first = np.maximum(count - length, 0)
    take = earlier & (pos >= first[row])
    out[row[take], pos[take] - first[row[take]]] = items[take]
    out_t[row[take], pos[take] - first[row[take]]] = times[take]
    return out, hold_last(out_t, np.minimum(count, length)), first


def exposure_pools(items: np.ndarray, offsets: np.ndarray, chosen: np.ndarray, first: np.ndarray,
                   excluded: Sequence[np.ndarray]) -> list[np.ndarray]:
    """What each row's label-0 candidates may be drawn from: its exposures outside H_neg and ``excluded``.

    An item of H_neg is left out wherever it was shown (a candidate seen in the negative history
    would teach the model to spot copies, not interests), and so is an item the user interacted with.

    Args:
        items: Exposed item ids (jagged values).
        offsets: ``int64 [B+1]``.
        chosen: ``int64 [B, L_neg]`` the rows' H_neg (``recent_before``; 0 is padding).
        first: ``int64 [B]`` (``recent_before``).
        excluded: Per row, items that may not be drawn (the user's interactions).

    Returns:
        Per row, the eligible items (repeats possible).
    """
    out = []
    for r in range(len(offsets) - 1):
        mine = items[offsets[r]:offsets[r + 1]]
        if not len(mine):
            out.append(mine)
            continue
        banned = np.concatenate([chosen[r][chosen[r] > 0], np.asarray(excluded[r], dtype=np.int64)])
        out.append(mine[~np.isin(mine, banned)])
    return out


def spread_times(times: np.ndarray, lengths: np.ndarray, width: int) -> np.ndarray:
    """Times for ``width`` items without their own, spread evenly over each row's real times.

    Slot ``k`` of row ``r`` takes the time of its item ``floor(k * lengths[r] / width)``: non-decreasing,
    over the same span as the row (0 for a row without items).

    Args:
        times: ``int64 [B, L]`` left-aligned times (the positive history's).
        lengths: ``int64 [B]`` real entries of each row.
        width: Slots to fill.

    Returns:
        ``int64 [B, width]``.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    k = np.arange(width, dtype=np.int64)
    col = (k[None, :] * lengths[:, None]) // width  # B,width; < lengths where lengths > 0
    picked = np.take_along_axis(times, np.minimum(col, max(times.shape[1] - 1, 0)), axis=1) if times.shape[1] else \
        np.zeros((len(lengths), width), dtype=np.int64)
    return np.where(lengths[:, None] > 0, picked, 0)


_ROW_NAMES = {"targets.npy": "target.npy", "targets_ts.npy": "target_ts.npy"}
"""Block members whose per-row member has another name (``blocks.row_members``)."""


def hold_last(times: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Left-aligned times whose padding slots take the row's last real time (0 for an empty row).

    Padding is masked out of the model, but Eq. 6 is evaluated for every pair before the mask: a
    padding time of 0 next to Unix milliseconds is a distance of decades, whose ``exp`` overflows
    (``inf * 0`` is NaN). Holding the last time makes every padding distance 0.

    Args:
        times: ``int64 [B, W]``.
        lengths: ``int64 [B]`` real entries of each row (left-aligned).

    Returns:
        ``int64 [B, W]`` (a new array).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if times.shape[1] == 0:
        return times.copy()
    last = times[np.arange(len(lengths)), np.maximum(lengths - 1, 0)]
    return np.where(np.arange(times.shape[1])[None, :] < lengths[:, None], times, last[:, None])


class UserRows:
    """Jagged members of one user split for a set of users (a rank's evaluation users), looked up by user.

    Read once with ``ShardReader.iter_blocks`` (the block arrays, no per-user samples).

    Args:
        manifest: The dataset.
        split: A user split (``valid``, ``test``, ``exposures``).
        chunks: Unshuffled chunks of the split (``plan.eval_plan``), ascending rows.
        jagged_members: Jagged block members to keep (e.g. ``("ts.npy",)``).
        row_members: Per-user block members to keep (e.g. ``("targets_ts.npy",)``).
    """

    def __init__(self, manifest: Manifest, split: str, chunks: Sequence[Chunk], *,
                 jagged_members: Sequence[str] = (), row_members: Sequence[str] = ()):
        # Per-row member names (what the reader is asked for) of the block members kept.
        wanted = {"json"} | {_ROW_NAMES.get(m, m) for m in (*jagged_members, *row_members)}
        reader = ShardReader(manifest.root, split, members=wanted, manifest=manifest)
        users, lengths = [], []
        parts: dict[str, list[np.ndarray]] = {m: [] for m in (*jagged_members, *row_members)}
        for block in reader.iter_blocks(chunks):
            missing = [m for m in parts if m not in block.arrays]
            if missing:
                raise ValueError(f"{manifest.root}: split '{split}' has no {missing} (block {block.key})")
            users.append(block.ids)
            lengths.append(np.diff(block.arrays["offsets.npy"]))
            for m in parts:
                parts[m].append(block.arrays[m])
        self.users = np.concatenate(users) if users else np.zeros(0, dtype=np.int64)
        self.offsets = np.zeros(len(self.users) + 1, dtype=np.int64)
        np.cumsum(np.concatenate(lengths) if lengths else [], out=self.offsets[1:])
        self.arrays = {m: np.concatenate(v).astype(np.int64) if v else np.zeros(0, np.int64) for m, v in parts.items()}
        self.split = split

    def rows(self, users: np.ndarray) -> np.ndarray:
        """Positions of ``users`` (dense ids, all present) in this table."""
        users = np.asarray(users, dtype=np.int64)
        pos = np.searchsorted(self.users, users).clip(0, max(len(self.users) - 1, 0))
        if len(users) and (not len(self.users) or np.any(self.users[pos] != users)):
            raise KeyError(f"users {users[self.users[pos] != users][:3].tolist()} are not among this rank's "
                           f"'{self.split}' rows")
        return pos

    def gather(self, users: np.ndarray, member: str) -> tuple[np.ndarray, np.ndarray]:
        """``(values, offsets)`` of a jagged member for ``users``, in their order."""
        pos = self.rows(users)
        starts, ends = self.offsets[pos], self.offsets[pos + 1]
        offsets = np.zeros(len(pos) + 1, dtype=np.int64)
        np.cumsum(ends - starts, out=offsets[1:])
        index = np.repeat(starts - offsets[:-1], ends - starts) + np.arange(int(offsets[-1]), dtype=np.int64)
        return self.arrays[member][index], offsets

    def values(self, users: np.ndarray, member: str) -> np.ndarray:
        """A per-user member for ``users``, in their order."""
        return self.arrays[member][self.rows(users)]
