"""Per-user sequences from a partition of interactions, vectorised over the whole block.

The pipeline range-partitions interactions by raw user id (``partition.range_partition``), which
puts every interaction of a user into the same single block, sorted by (user, timestamp, order
key), and then calls ``group_users`` once per block. Instead of one Python call per user, group
boundaries come from comparing neighbours; a block that is not sorted yet (any other caller) is
ordered with one ``lexsort`` first. The whole-groups property is checked again downstream: user
lists of all blocks are merged and a user found in two blocks fails the job
(``ids.merge_summaries``).

Since a block holds every row of its users, this is also where duplicate rows of a user meet,
whichever read ranges they came from: ``duplicates.py`` finds them and ``ingest.duplicates``
keeps, drops or rejects them.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from mvrec_dist.data.ingest.duplicates import POLICIES, csv_duplicates, duplicate_error, tsv_duplicates
from mvrec_dist.data.ingest.sources import InputFile

__all__ = ["grouped_schema", "group_users", "user_order"]


def grouped_schema(with_ts: bool) -> pa.Schema:
    """Schema of ``group_users`` output: one row per user (kept or dropped)."""
    fields = [pa.field("user", pa.int64()), pa.field("n", pa.int64()), pa.field("rows", pa.int64()),
              pa.field("dup_rows", pa.int64()), pa.field("dropped", pa.int64()), pa.field("kept", pa.bool_()),
              pa.field("items", pa.large_list(pa.int64()))]
    if with_ts:
        fields.append(pa.field("ts", pa.large_list(pa.int64())))
    return pa.schema(fields)


def _np(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy()


def user_order(user: np.ndarray, ts: np.ndarray, order: np.ndarray) -> np.ndarray | None:
    """Permutation sorting interactions by user, then timestamp, then order key (file, position).

    Args:
        user: Raw user ids, int64 [M].
        ts: Timestamps, int64 [M].
        order: Order keys (unique), int64 [M].

    Returns:
        The permutation, or None when the rows are in that order already (what the range
        partitioning's sorting reducers deliver): a few vectorised comparisons instead of a sort.
    """
    a, b = slice(1, None), slice(None, -1)
    if np.all(user[a] >= user[b]):
        tie = user[a] == user[b]
        if np.all(ts[a][tie] >= ts[b][tie]):
            tie &= ts[a] == ts[b]
            if np.all(order[a][tie] > order[b][tie]):
                return None
    return np.lexsort((order, ts, user))


def group_users(block: pa.Table, *, min_seq_len: int, with_ts: bool, duplicates: str = "keep",
                files: list[InputFile] | None = None) -> pa.Table:
    """Group one block of interactions into per-user sequences.

    Args:
        block: Interactions (``parse.interaction_schema``) holding *all* interactions of its users.
        min_seq_len: Users with fewer interactions are marked ``kept = False`` (their sequences
            are not carried further; their counts are).
        with_ts: Keep the ordered timestamps (``pairs_csv``); ``pairs_tsv`` has none.
        duplicates: ``ingest.duplicates``: ``keep`` (default here, the behaviour before the
            setting existed), ``drop`` or ``error`` (``duplicates.py``).
        files: The input files by index, naming file and line in a duplicates error.

    Returns:
        A table (``grouped_schema``) with one row per user in ascending raw user id: ``n``
        interactions and ``rows`` input rows after dropping duplicates, ``dup_rows`` duplicate
        rows found, ``dropped`` interactions dropped with them, ``kept``, and for kept users the
        ordered raw ``items`` (and ``ts``).

    Raises:
        IngestError: with ``duplicates=error``, naming the earliest duplicate row of the block.
    """
    if duplicates not in POLICIES:
        raise ValueError(f"duplicates must be one of {POLICIES}, got {duplicates!r}")
    schema = grouped_schema(with_ts)
    if block.num_rows == 0:
        return schema.empty_table()
    user, item, ts, order = (_np(block, c) for c in ("user", "item", "ts", "order"))
    first = _np(block, "first") if "first" in block.column_names else None
    idx = user_order(user, ts, order)
    if idx is not None:
        user, item, ts, order = user[idx], item[idx], ts[idx], order[idx]
        first = first[idx] if first is not None else None
    boundary = np.empty(len(user), dtype=bool)
    boundary[0] = True
    np.not_equal(user[1:], user[:-1], out=boundary[1:])
    starts = np.flatnonzero(boundary)
    n = np.diff(np.append(starts, len(user)))
    if first is not None:  # pairs_tsv: a row is a line; a user may (unusually) have several lines
        rows = np.add.reduceat(first.astype(np.int64), starts)
        found = tsv_duplicates(first, starts, n, rows)
    else:
        rows = n
        found = csv_duplicates(user, item, ts, starts)
    dropped = np.zeros(len(n), dtype=np.int64)
    if found.later is not None and duplicates == "error":
        raise duplicate_error(found, user, item, ts, order, tsv=first is not None, files=files)
    if found.later is not None and duplicates == "drop":
        # A user's first row is never a duplicate (it is the earliest), so every user stays.
        keep = ~found.later
        dropped = np.add.reduceat(found.later.astype(np.int64), starts)
        user, item, ts = user[keep], item[keep], ts[keep]
        n, rows = n - dropped, rows - found.rows
        starts = np.cumsum(n) - n
    kept = n >= min_seq_len
    take = np.repeat(kept, n)
    offsets = np.zeros(len(n) + 1, dtype=np.int64)
    np.cumsum(np.where(kept, n, 0), out=offsets[1:])
    columns = {"user": user[starts], "n": n, "rows": rows, "dup_rows": found.rows, "dropped": dropped,
               "kept": kept, "items": pa.LargeListArray.from_arrays(offsets, item[take])}
    if with_ts:
        columns["ts"] = pa.LargeListArray.from_arrays(offsets, ts[take])
    return pa.table(columns, schema=schema)
