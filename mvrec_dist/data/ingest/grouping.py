"""Per-user sequences from a partition of interactions, vectorised over the whole block.

The pipeline range-partitions interactions by raw user id (``exchange.py``), which puts every
interaction of a user into the same single block, sorted by (user, timestamp, order key), and then
calls ``group_users`` once per block. Instead of one Python call per user, group
boundaries come from comparing neighbours; a block that is not sorted yet (any other caller) is
ordered with one ``lexsort`` first. The whole-groups property is checked again downstream: user
lists of all blocks are merged and a user found in two blocks fails the job
(``ids.merge_summaries``).

Since a block holds every row of its users, this is also where duplicate rows of a user meet,
whichever read ranges they came from: ``duplicates.py`` finds them and ``ingest.duplicates``
keeps, drops or rejects them.

Labelled input (a ``label`` column, ``pairs_csv`` only): label-1 rows are the user's interactions,
exactly as unlabelled rows are; label-0 rows are *exposures* (shown, not clicked) and never enter the
sequence, its length (``min_seq_len`` counts interactions), the split or the item counts. They are
kept per user in the same (timestamp, order key) order as ``exp_items``/``exp_ts``. A duplicate is a
repeat of a whole row, label included, so interactions and exposures are checked apart.

FRAME's input (``plays_csv``: ``play`` and ``duration`` columns) keeps both per interaction beside
``ts``, in the same order (lists ``play``, ``duration``). A duplicate is a repeat of (user, item,
timestamp), whatever the playing time.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from mvrec_dist.data.ingest.duplicates import POLICIES, Duplicates, csv_duplicates, duplicate_error, tsv_duplicates
from mvrec_dist.data.ingest.sources import InputFile

__all__ = ["grouped_schema", "group_users", "user_order"]


PLAY_COLUMNS = ("play", "duration")
"""Per-interaction columns of ``plays_csv`` input carried beside the items (``parse.interaction_schema``)."""


def grouped_schema(with_ts: bool, labels: bool = False, plays: bool = False) -> pa.Schema:
    """Schema of ``group_users`` output: one row per user (kept or dropped); with ``labels`` the
    exposure columns ``exposures`` (count), ``exp_dropped`` (duplicate exposure rows dropped),
    ``exp_items`` and ``exp_ts``; with ``plays`` the lists ``play`` and ``duration``."""
    fields = [pa.field("user", pa.int64()), pa.field("n", pa.int64()), pa.field("rows", pa.int64()),
              pa.field("dup_rows", pa.int64()), pa.field("dropped", pa.int64()), pa.field("kept", pa.bool_()),
              pa.field("items", pa.large_list(pa.int64()))]
    if with_ts:
        fields.append(pa.field("ts", pa.large_list(pa.int64())))
    if plays:
        fields += [pa.field(c, pa.large_list(pa.int64())) for c in PLAY_COLUMNS]
    if labels:
        fields += [pa.field("exposures", pa.int64()), pa.field("exp_dropped", pa.int64()),
                   pa.field("exp_items", pa.large_list(pa.int64())), pa.field("exp_ts", pa.large_list(pa.int64()))]
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
                files: list[InputFile] | None = None, labels: bool | None = None,
                plays: bool | None = None) -> pa.Table:
    """Group one block of interactions into per-user sequences.

    Args:
        block: Interactions (``parse.interaction_schema``) holding *all* interactions of its users.
        min_seq_len: Users with fewer interactions are marked ``kept = False`` (their sequences
            are not carried further; their counts are).
        with_ts: Keep the ordered timestamps (``pairs_csv``); ``pairs_tsv`` has none.
        duplicates: ``ingest.duplicates``: ``keep`` (default here, the behaviour before the
            setting existed), ``drop`` or ``error`` (``duplicates.py``).
        files: The input files by index, naming file and line in a duplicates error.
        labels: Whether the input carries the label column (None: whether ``block`` has one; the
            pipeline says it, so that empty blocks get the same schema as the others).
        plays: Whether the input carries ``play``/``duration`` (``plays_csv``; None: whether ``block`` has them).

    Returns:
        A table (``grouped_schema``) with one row per user in ascending raw user id: ``n``
        interactions and ``rows`` input rows after dropping duplicates, ``dup_rows`` duplicate
        rows found, ``dropped`` interactions dropped with them, ``kept``, and for kept users the
        ordered raw ``items`` (and ``ts``); with a ``label`` column also the exposure columns (a
        user with exposures only has ``n = 0`` and is not kept).

    Raises:
        IngestError: with ``duplicates=error``, naming the earliest duplicate row of the block.
    """
    if duplicates not in POLICIES:
        raise ValueError(f"duplicates must be one of {POLICIES}, got {duplicates!r}")
    labels = "label" in block.column_names if labels is None else labels
    plays = "play" in block.column_names if plays is None else plays
    schema = grouped_schema(with_ts, labels, plays)
    if block.num_rows == 0:
        return schema.empty_table()
    user, item, ts, order = (_np(block, c) for c in ("user", "item", "ts", "order"))
    extra = {c: _np(block, c) for c in PLAY_COLUMNS} if plays else {}
    first = _np(block, "first") if "first" in block.column_names else None
    label = _np(block, "label") if labels else None
    idx = user_order(user, ts, order)
    if idx is not None:
        user, item, ts, order = user[idx], item[idx], ts[idx], order[idx]
        extra = {c: v[idx] for c, v in extra.items()}
        first = first[idx] if first is not None else None
        label = label[idx] if label is not None else None
    if label is not None:
        return _group_labelled(user, item, ts, order, label == 1, min_seq_len=min_seq_len, duplicates=duplicates,
                               files=files, schema=schema)
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
        extra = {c: v[keep] for c, v in extra.items()}
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
    for c, v in extra.items():
        columns[c] = pa.LargeListArray.from_arrays(offsets, v[take])
    return pa.table(columns, schema=schema)


def _group_labelled(user: np.ndarray, item: np.ndarray, ts: np.ndarray, order: np.ndarray, clicked: np.ndarray, *,
                    min_seq_len: int, duplicates: str, files: list[InputFile] | None, schema: pa.Schema) -> pa.Table:
    """``group_users`` of a sorted block with labels: interactions (``clicked``) and exposures apart."""
    boundary = np.empty(len(user), dtype=bool)
    boundary[0] = True
    np.not_equal(user[1:], user[:-1], out=boundary[1:])
    group = np.cumsum(boundary) - 1  # user group of every row
    groups = int(group[-1]) + 1
    # Each class keeps the block's (user, timestamp, order key) order; a user may have none of one.
    sides = []
    for rows_of in (np.flatnonzero(clicked), np.flatnonzero(~clicked)):
        g = group[rows_of]
        count = np.bincount(g, minlength=groups)
        found = csv_duplicates(user[rows_of], item[rows_of], ts[rows_of], np.cumsum(count) - count)
        sides.append((rows_of, g, count, found))
    if duplicates == "error" and any(f.later is not None for *_, f in sides):
        # One message for the block: the earliest duplicate of either class, with the total count.
        dup = np.concatenate([r[f.dup] for r, *_, f in sides if f.later is not None])
        orig = np.concatenate([r[f.orig] for r, *_, f in sides if f.later is not None])
        found = Duplicates(rows=sides[0][3].rows + sides[1][3].rows, dup=dup, orig=orig)  # indices into the block
        raise duplicate_error(found, user, item, ts, order, tsv=False, files=files)
    kept_rows, dropped = [], []
    for rows_of, g, count, found in sides:
        gone = np.zeros(groups, dtype=np.int64)
        if found.later is not None and duplicates == "drop":
            gone = np.bincount(g[found.later], minlength=groups)
            rows_of = rows_of[~found.later]
        kept_rows.append(rows_of)
        dropped.append(gone)
    (pos, neg), (n_drop, e_drop) = kept_rows, dropped
    n = np.bincount(group[pos], minlength=groups)
    n_exp = np.bincount(group[neg], minlength=groups)
    kept = n >= min_seq_len
    pos, neg = pos[kept[group[pos]]], neg[kept[group[neg]]]
    offsets = np.concatenate([[0], np.cumsum(np.where(kept, n, 0))])
    exp_offsets = np.concatenate([[0], np.cumsum(np.where(kept, n_exp, 0))])
    columns = {"user": user[boundary], "n": n, "rows": n + n_exp, "dup_rows": sides[0][3].rows + sides[1][3].rows,
               "dropped": n_drop, "kept": kept, "items": pa.LargeListArray.from_arrays(offsets, item[pos]),
               "ts": pa.LargeListArray.from_arrays(offsets, ts[pos]), "exposures": n_exp, "exp_dropped": e_drop,
               "exp_items": pa.LargeListArray.from_arrays(exp_offsets, item[neg]),
               "exp_ts": pa.LargeListArray.from_arrays(exp_offsets, ts[neg])}
    return pa.table(columns, schema=schema)
