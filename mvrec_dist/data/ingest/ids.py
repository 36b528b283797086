"""Dense ids: the sorted raw ids of kept users and of their items, and the mapping onto them.

Dense id ``i`` is the ``i``-th smallest raw id (1-based; 0 is padding), so the maps are just the
sorted unique raw ids. Each grouped block is summarised (its kept users, the unique items of
their sequences with train-split counts, and its row/interaction counts); summaries are merged
in a tree of Ray tasks as they arrive (``MergeTree``), so no process ever sees more than the id arrays. The merged arrays go to
the object store and every mapping task reads them zero-copy and maps with ``np.searchsorted``.

The merge is also where the whole-groups guarantee of the range partitioning is checked: blocks
must hold disjoint users, and a user seen in two blocks fails the job instead of producing two
samples.

With labelled input the items are those of kept users' interactions *and* exposures (an item only
ever shown is still an item of the catalogue, with a train count of 0); the train counts count
interactions only. So do the interaction counts: every kept interaction of the item over the kept users'
full sequences (train positions and the valid and test targets), the popularity label's count
(``mvrec_dist.data.item_split``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import ray

from mvrec_dist.data.ingest.errors import IngestError
from mvrec_dist.data.ingest.shard_writer import dense_schema

__all__ = ["Summary", "summarize", "count_by_id", "merge_summaries", "MergeTree", "lookup", "assign_dense", "COUNT_KEYS",
           "EXPOSURE_COUNT_KEYS"]

COUNT_KEYS = ("kept_users", "kept_rows", "kept_interactions", "filtered_users", "filtered_rows",
              "filtered_interactions", "train_interactions", "duplicate_users", "duplicate_rows", "dropped_rows",
              "dropped_interactions")
EXPOSURE_COUNT_KEYS = ("kept_exposures", "filtered_exposures", "dropped_exposures", "exposure_users")
"""Further totals of a ``Summary`` of labelled input (absent without labels)."""


@dataclass
class Summary:
    """Ids and counts of one or more grouped blocks."""

    users: np.ndarray
    """Sorted kept raw user ids, int64 [U]."""
    items: np.ndarray
    """Sorted unique raw item ids of kept users' sequences, int64 [N]."""
    train_counts: np.ndarray
    """Train-split interactions of each item, int64 [N]."""
    interaction_counts: np.ndarray
    """Kept interactions of each item over the kept users' full sequences (train + valid + test targets), int64 [N]."""
    counts: dict[str, int] = field(default_factory=dict)
    """``COUNT_KEYS`` totals."""


_DENSE_SPAN = 1 << 26
"""Id spans up to this many values (and up to 4x the ids counted) are counted with ``np.bincount`` over
the span instead of sorting the ids: one pass, no sort (``count_by_id``, ``lookup``)."""


def _dense_span(ids: np.ndarray, n: int) -> tuple[int, int] | None:
    """``(lowest id, span)`` when ids this close together are cheaper to count over their span."""
    if len(ids) == 0:
        return None
    lo, hi = int(ids.min()), int(ids.max())
    span = hi - lo + 1
    return (lo, span) if lo >= 0 and span <= min(_DENSE_SPAN, max(4 * n, 1 << 20)) else None


def count_by_id(ids: np.ndarray, weights: list[np.ndarray | None], extra: np.ndarray | None = None
                ) -> tuple[np.ndarray, list[np.ndarray]]:
    """The sorted unique ids of ``ids`` (and ``extra``) and, per weight, its sum per unique id.

    Args:
        ids: Ids, int64 [M].
        weights: Per entry a weight array [M] (int64), a boolean mask [M] (count the masked ids), or None
            (count every id).
        extra: Ids that join the unique ids but add nothing to the sums.

    Returns:
        ``(unique ids, [int64 sums])``. Equal to ``np.unique`` and ``np.bincount`` on its inverse; ids whose
        range is small (item ids) take one counting pass instead of a sort.
    """
    every = ids if extra is None or len(extra) == 0 else np.concatenate([ids, extra])
    dense = _dense_span(every, len(every))
    if dense is None:
        uniq, inverse = np.unique(every, return_inverse=True)
        inverse = inverse[:len(ids)]
        sums = []
        for w in weights:
            if w is not None and w.dtype == bool:
                sums.append(np.bincount(inverse[w], minlength=len(uniq)).astype(np.int64))
            else:
                sums.append(_sum(inverse, w, len(uniq)))
        return uniq, sums
    lo, span = dense
    present = np.bincount(every - lo, minlength=span) > 0
    rel = ids - lo
    sums = [(np.bincount(rel[w], minlength=span) if w is not None and w.dtype == bool
             else _sum(rel, w, span))[present].astype(np.int64) for w in weights]
    return np.flatnonzero(present) + lo, sums


def _sum(index: np.ndarray, weights: np.ndarray | None, n: int) -> np.ndarray:
    if weights is None:
        return np.bincount(index, minlength=n).astype(np.int64)
    # Exact in float64 below 2**53 (counts of interactions).
    return np.rint(np.bincount(index, weights=weights, minlength=n)).astype(np.int64)


def _flat(column: pa.ChunkedArray) -> np.ndarray:
    arr = column.combine_chunks()
    offsets = arr.offsets.to_numpy()
    return arr.values.to_numpy()[offsets[0]:offsets[-1]]


def summarize(grouped: pa.Table) -> Summary:
    """Summarise one block of ``grouping.group_users`` output.

    Args:
        grouped: Per-user rows of one partition.

    Returns:
        Its ``Summary``.
    """
    user = grouped.column("user").to_numpy()
    n = grouped.column("n").to_numpy()
    rows = grouped.column("rows").to_numpy()
    kept = grouped.column("kept").to_numpy(zero_copy_only=False)
    dup_rows = grouped.column("dup_rows").to_numpy()
    dropped = grouped.column("dropped").to_numpy()
    items = _flat(grouped.column("items"))
    n_kept = n[kept]
    # Position of each item in its user's sequence; the train split is all but the last two.
    starts = np.repeat(np.cumsum(n_kept) - n_kept, n_kept)
    in_train = (np.arange(len(items)) - starts) < np.repeat(n_kept - 2, n_kept)
    labels = "exposures" in grouped.column_names
    exp_items = _flat(grouped.column("exp_items")) if labels else np.zeros(0, np.int64)
    # Exposure items join the catalogue (they sort into the same unique ids) but add no train counts.
    uniq, (train_counts, interaction_counts) = count_by_id(items, [in_train, None], extra=exp_items)
    counts = {
        "kept_users": int(kept.sum()), "kept_rows": int(rows[kept].sum()),
        "kept_interactions": int(n_kept.sum()), "filtered_users": int((~kept).sum()),
        "filtered_rows": int(rows[~kept].sum()), "filtered_interactions": int(n[~kept].sum()),
        "train_interactions": int(in_train.sum()),
        # A dropped duplicate row always takes at least one interaction with it, so the users
        # with dropped interactions are exactly those whose duplicate rows were dropped.
        "duplicate_users": int((dup_rows > 0).sum()), "duplicate_rows": int(dup_rows.sum()),
        "dropped_rows": int(dup_rows[dropped > 0].sum()), "dropped_interactions": int(dropped.sum()),
    }
    if labels:
        n_exp, exp_dropped = grouped.column("exposures").to_numpy(), grouped.column("exp_dropped").to_numpy()
        # A duplicate exposure row takes no interaction with it: count the users whose rows were dropped.
        counts["dropped_rows"] = int(dup_rows[(dropped > 0) | (exp_dropped > 0)].sum())
        counts.update(kept_exposures=int(n_exp[kept].sum()), filtered_exposures=int(n_exp[~kept].sum()),
                      dropped_exposures=int(exp_dropped.sum()), exposure_users=int((n_exp[kept] > 0).sum()))
    return Summary(users=np.sort(user[kept]), items=uniq, train_counts=train_counts,
                   interaction_counts=interaction_counts, counts=counts)


def merge_summaries(parts: list[Summary]) -> Summary:
    """Merge summaries of disjoint sets of users.

    Args:
        parts: Summaries of different blocks.

    Returns:
        The merged ``Summary``.

    Raises:
        IngestError: when a user appears in two blocks (the partitioning did not keep groups whole).
    """
    users = np.concatenate([p.users for p in parts]) if parts else np.zeros(0, np.int64)
    users.sort(kind="stable")
    dup = np.flatnonzero(users[1:] == users[:-1])
    if len(dup):
        raise IngestError(f"user {int(users[dup[0]])} was grouped in two partitions ({len(dup)} such users): "
                          "the exchange did not keep each user's interactions together; refusing to write "
                          "duplicate samples")
    all_items = np.concatenate([p.items for p in parts]) if parts else np.zeros(0, np.int64)
    all_counts = np.concatenate([p.train_counts for p in parts]) if parts else np.zeros(0, np.int64)
    all_inter = np.concatenate([p.interaction_counts for p in parts]) if parts else np.zeros(0, np.int64)
    items, (train_counts, interaction_counts) = count_by_id(all_items, [all_counts, all_inter])
    keys = COUNT_KEYS + (EXPOSURE_COUNT_KEYS if any("kept_exposures" in p.counts for p in parts) else ())
    counts = {k: sum(p.counts.get(k, 0) for p in parts) for k in keys}
    return Summary(users=users, items=items, train_counts=train_counts, interaction_counts=interaction_counts,
                   counts=counts)


@ray.remote
def _merge_task(*parts: Summary) -> Summary:
    return merge_summaries(list(parts))


class MergeTree:
    """Summaries merged in a tree of Ray tasks as they arrive, ``fan_in`` at a time per level.

    A level's summaries are merged as soon as ``fan_in`` of them are there, so at most
    ``fan_in - 1`` wait per level: the object store holds O(fan_in x levels) summaries however many
    partitions there are, not all of them until the last one is done.
    """

    def __init__(self, fan_in: int = 8) -> None:
        self._fan_in = fan_in
        self._levels: list[list] = []

    def add(self, summary: "ray.ObjectRef") -> None:
        """Add one summary (an object ref of a ``Summary``)."""
        level = 0
        while True:
            if len(self._levels) == level:
                self._levels.append([])
            self._levels[level].append(summary)
            if len(self._levels[level]) < self._fan_in:
                return
            summary = _merge_task.remote(*self._levels[level])
            self._levels[level] = []
            level += 1

    def result(self) -> Summary:
        """The merge of every summary added (fetched to the caller)."""
        rest = [s for level in self._levels for s in level]
        if not rest:
            return merge_summaries([])
        return ray.get(rest[0] if len(rest) == 1 else _merge_task.remote(*rest))


def lookup(sorted_ids: np.ndarray, raw: np.ndarray, what: str) -> np.ndarray:
    """Positions of ``raw`` ids in the sorted array ``sorted_ids`` (all must be present).

    Args:
        sorted_ids: Sorted unique raw ids, int64 [N].
        raw: Ids to look up, int64 [M].
        what: ``user`` or ``item``, for the error message.

    Returns:
        0-based positions, int64 [M] (dense id = position + 1).

    Raises:
        IngestError: when an id is missing (the maps and the data disagree).
    """
    dense = _dense_span(sorted_ids, len(raw))
    if dense is not None and len(raw) > len(sorted_ids) // 4:
        # Many lookups into a compact id range (items): a position table over the range, then one gather.
        lo, span = dense
        table = np.full(span + 1, -1, dtype=np.int32)  # the last slot answers ids outside the range
        table[sorted_ids - lo] = np.arange(len(sorted_ids), dtype=np.int32)
        rel = raw - lo
        rel[(rel < 0) | (rel >= span)] = span
        pos = table[rel].astype(np.int64)
        bad = pos < 0
    else:
        pos = np.searchsorted(sorted_ids, raw)
        bad = pos >= len(sorted_ids)
        bad[~bad] = sorted_ids[pos[~bad]] != raw[~bad]
    if bad.any():
        raise IngestError(f"raw {what} id {int(raw[np.argmax(bad)])} is missing from the merged id map: "
                          "the id maps and the grouped data disagree")
    return pos


def _dense_list(column: pa.ChunkedArray, items_map: np.ndarray) -> pa.LargeListArray:
    """A list column of raw item ids as dense ids (int32), offsets rebased to 0."""
    arr = column.combine_chunks()
    offsets = arr.offsets.to_numpy()
    pos = lookup(items_map, arr.values.to_numpy()[offsets[0]:offsets[-1]], "item")
    return pa.LargeListArray.from_arrays(offsets - offsets[0], (pos + 1).astype(np.int32))


def _rebased(column: pa.ChunkedArray) -> pa.LargeListArray:
    """A list column with offsets rebased to 0 (what a filtered block's slices need)."""
    arr = column.combine_chunks()
    offsets = arr.offsets.to_numpy()
    return pa.LargeListArray.from_arrays(offsets - offsets[0], arr.values.to_numpy()[offsets[0]:offsets[-1]])


def assign_dense(grouped: pa.Table, maps: list, shard_size: int, with_ts: bool, labels: bool = False,
                 plays: bool = False) -> pa.Table:
    """Map one grouped block to dense ids and shard indices (dropped users are left out).

    Args:
        grouped: Per-user rows of one partition.
        maps: ``[users_ref, items_ref]``, object refs of the sorted raw id arrays (wrapped in a
            list so Ray passes the refs, and each task reads the arrays zero-copy).
        shard_size: ``ingest.shard_max_samples``.
        with_ts: Carry the timestamps.
        labels: Carry the exposures (``exp_items`` as dense ids, ``exp_ts``).
        plays: Carry ``play`` and ``duration`` (``plays_csv``).

    Returns:
        Rows of ``shard_writer.dense_schema``.
    """
    users_map, items_map = ray.get(maps)
    kept = grouped.column("kept").to_numpy(zero_copy_only=False)
    if not kept.any():
        return dense_schema(with_ts, labels, plays).empty_table()
    rows = grouped.filter(pa.array(kept))
    raw_user = rows.column("user").to_numpy()
    dense_user = lookup(users_map, raw_user, "user") + 1
    columns = {"shard": (dense_user - 1) // shard_size, "user": dense_user, "raw_user": raw_user,
               "n": rows.column("n").to_numpy(), "items": _dense_list(rows.column("items"), items_map)}
    if with_ts:
        columns["ts"] = _rebased(rows.column("ts"))
    if plays:
        columns.update({c: _rebased(rows.column(c)) for c in ("play", "duration")})
    if labels:
        columns["exp_items"] = _dense_list(rows.column("exp_items"), items_map)
        columns["exp_ts"] = _rebased(rows.column("exp_ts"))
    return pa.table(columns, schema=dense_schema(with_ts, labels, plays))
