"""The group-by-user exchange, on the dataset's filesystem instead of Ray's object store.

Every interaction of a user must reach one task, sorted by (user, timestamp, order key). Ray Data's
range-partitioning sort did that through the object store: at 50M interactions it took 28 of the
41 s end to end, and above the store's capacity it spilled several copies of the input (the
free-space estimate at 1B was ~70 GB of spill beside 27 GB of csv and 23 GB of shards, more than
this machine's disk). This exchange is the classic external one (``benchmarks/results/ingest.md``
has the A/B):

1. **map** (``spill_pieces``, fused into the Ray Data read tasks): a parsed read block is split
   by user range (``partition.user_boundaries``) with one stable counting sort on the range index,
   and each range's rows are written as one LZ4-compressed Arrow IPC *piece*
   ``<exchange>/p<partition>/<first order key>.arrow``. The task returns only row counts.
2. **reduce** (``group_pieces``, Ray tasks): partition ``p`` reads its pieces, sorts them by
   (user, timestamp, order key), runs ``grouping.group_users`` on the result, writes the grouped users as
   one *grouped* file ``<exchange>/grouped-<p>.arrow``, deletes its pieces, and returns its
   ``ids.Summary`` (merged as they arrive, ``ids.MergeTree``) and row counts.
3. the write stage reads each grouped file once (``write_grouped``) and deletes it.

Nothing of the data passes through the object store, so it never spills there; the disk holds at
most the pieces (during stage 1-2) or the grouped files plus the shards written so far (stage 3),
both compressed (``space.EXCHANGE_BYTES_PER_INPUT_BYTE``). Memory per task is one read block or one
partition (about ``ingest.read_block_bytes`` / 128 MiB of csv), whatever the input's size.

Counts reconcile across the exchange: the rows the pieces hold equal the read tasks' valid rows
(their ledger), and the rows the reducers read equal the rows the pieces hold; a mismatch fails
the job. A retried map task rewrites its pieces under the same names (written to a temporary name
and renamed), so retries neither lose nor double rows.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import ray

from mvrec_dist.data import fs as dfs
from mvrec_dist.data.ingest.errors import IngestError
from mvrec_dist.data.ingest.grouping import group_users, grouped_schema
from mvrec_dist.data.ingest.ids import MergeTree, Summary, summarize

__all__ = ["PIECE_COMPRESSION", "spill_schema", "spill_pieces", "read_partition", "group_pieces",
           "write_grouped", "ExchangeStats", "remove_exchange"]

PIECE_COMPRESSION = "lz4"
"""Codec of pieces and grouped files: LZ4 costs little CPU and halves the int64 columns (small ids)."""


def spill_schema() -> pa.Schema:
    """Rows ``spill_pieces`` returns: one per piece written."""
    return pa.schema([pa.field("partition", pa.int64()), pa.field("rows", pa.int64()),
                      pa.field("bytes", pa.int64())])


def _partition_dir(exchange_dir: str, p: int) -> str:
    return f"{exchange_dir.rstrip('/')}/p{p:05d}"


def grouped_path(exchange_dir: str, p: int) -> str:
    """Where partition ``p``'s grouped users are written."""
    return f"{exchange_dir.rstrip('/')}/grouped-{p:05d}.arrow"


def _write_ipc(table: pa.Table, path: str) -> int:
    """Write ``table`` as one compressed Arrow IPC file, atomically (temporary name, then rename)."""
    fs, inner = dfs.resolve(path)
    parent = inner.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    tmp = f"{inner}.tmp-{uuid.uuid4().hex[:8]}"
    options = pa.ipc.IpcWriteOptions(compression=PIECE_COMPRESSION)
    with fs.open_output_stream(tmp) as out, pa.ipc.new_file(out, table.schema, options=options) as writer:
        writer.write_table(table)
    fs.move(tmp, inner)
    return int(fs.get_file_info(inner).size)


def _read_ipc(fs: pafs.FileSystem, inner: str) -> pa.Table:
    if isinstance(fs, pafs.LocalFileSystem):
        with pa.memory_map(inner) as source:
            return pa.ipc.open_file(source).read_all()
    with fs.open_input_file(inner) as source:
        return pa.ipc.open_file(source).read_all()


def spill_pieces(block: pa.Table, *, boundaries: list[int], exchange_dir: str) -> pa.Table:
    """Map side: write one parsed read block's rows as one piece per user range.

    Args:
        block: Parsed interactions (``parse.interaction_schema``) of one read range, in file order.
        boundaries: ``partition.user_boundaries`` (partition ``p`` holds users in ``[b[p-1], b[p])``).
        exchange_dir: The exchange's directory (local or URI, on the dataset's filesystem).

    Returns:
        ``spill_schema`` rows, one per piece written.
    """
    if block.num_rows == 0:
        return spill_schema().empty_table()
    user = block.column("user").to_numpy()
    part = np.searchsorted(np.asarray(boundaries, dtype=np.int64), user, side="right").astype(np.int32)
    # int16 partition indices take NumPy's radix sort: one pass where an int64 argsort is a full sort.
    idx = np.argsort(part.astype(np.int16) if len(boundaries) < 1 << 15 else part, kind="stable")
    counts = np.bincount(part, minlength=len(boundaries) + 1)
    starts = np.concatenate([[0], np.cumsum(counts)])
    ordered = block.take(pa.array(idx))
    name = f"{int(block.column('order')[0].as_py()):020d}.arrow"  # unique: the block's first order key
    rows = {"partition": [], "rows": [], "bytes": []}
    for p in np.flatnonzero(counts).tolist():
        piece = ordered.slice(int(starts[p]), int(counts[p]))
        rows["partition"].append(p)
        rows["rows"].append(int(counts[p]))
        rows["bytes"].append(_write_ipc(piece, f"{_partition_dir(exchange_dir, p)}/{name}"))
    return pa.table(rows, schema=spill_schema())


def read_partition(exchange_dir: str, p: int) -> pa.Table | None:
    """Reduce side: partition ``p``'s pieces, concatenated in order-key order and sorted by
    (user, timestamp, order key).

    Args:
        exchange_dir: The exchange's directory.
        p: The partition.

    Returns:
        The partition's interactions, sorted (``grouping.user_order`` finds nothing to do), or None
        when no read block held a user of its range.
    """
    fs, inner = dfs.resolve(_partition_dir(exchange_dir, p))
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.NotFound:
        return None
    # Finished pieces only: a map task killed while writing leaves a ``<name>.tmp-*`` (its retry writes
    # the piece again).
    names = sorted(i.path for i in fs.get_file_info(pafs.FileSelector(inner)) if i.base_name.endswith(".arrow"))
    table = pa.concat_tables([_read_ipc(fs, n) for n in names]).combine_chunks()
    # Arrow's multi-key sort: 1.0 s for 5M rows where np.lexsort takes 1.5 s (the order key only breaks
    # the rare ties of user and timestamp, so it costs little).
    idx = pc.sort_indices(table, sort_keys=[("user", "ascending"), ("ts", "ascending"), ("order", "ascending")])
    return table.take(idx)


@dataclass
class ExchangeStats:
    """What crossed the exchange."""

    piece_rows: int
    """Rows the map side wrote."""
    piece_bytes: int
    """Bytes of every piece written (compressed)."""
    pieces: int
    """Piece files written."""
    reduced_rows: int = 0
    """Rows the reducers read back."""
    grouped_bytes: int = 0
    """Bytes of the grouped files (compressed)."""


@ray.remote(num_returns=3)
def _group_partition(exchange_dir: str, p: int, group_kwargs: dict) -> tuple[Summary, int, int]:
    table = read_partition(exchange_dir, p)
    if table is None:  # no read block had a user of this range
        return summarize(grouped_schema(group_kwargs["with_ts"], bool(group_kwargs.get("labels")),
                                        bool(group_kwargs.get("plays"))).empty_table()), 0, 0
    grouped = group_users(table, **group_kwargs)
    size = _write_ipc(grouped, grouped_path(exchange_dir, p))
    fs, inner = dfs.resolve(_partition_dir(exchange_dir, p))
    fs.delete_dir(inner)
    return summarize(grouped), table.num_rows, size


def _bounded(submit: Callable, n: int, limit: int, done: Callable) -> None:
    """Submit ``submit(0..n-1)`` with at most ``limit`` in flight, calling ``done(i, refs)`` as each
    finishes (so finished results are consumed, and freed, while the rest run). ``submit`` returns an
    object ref or a tuple of them (a task with several returns, all ready together)."""
    pending: dict = {}
    nxt = 0
    while nxt < n or pending:
        while nxt < n and len(pending) < limit:
            refs = submit(nxt)
            pending[refs[0] if isinstance(refs, (tuple, list)) else refs] = (nxt, refs)
            nxt += 1
        ready, _ = ray.wait(list(pending), num_returns=1)
        done(*pending.pop(ready[0]))


def group_pieces(exchange_dir: str, partitions: int, stats: ExchangeStats, *, in_flight: int,
                 **group_kwargs) -> Summary:
    """Reduce side: group every partition (Ray tasks, at most ``in_flight`` at once) and merge their
    summaries as they finish.

    Args:
        exchange_dir: The exchange's directory.
        partitions: Number of partitions.
        stats: Filled with ``reduced_rows`` and ``grouped_bytes``; checked against ``piece_rows``.
        in_flight: Tasks submitted at once (a few per CPU).
        group_kwargs: ``grouping.group_users`` keyword arguments.

    Returns:
        The merged ``Summary`` of every partition.

    Raises:
        IngestError: when the reducers read back another number of rows than the map side wrote.
    """
    tree = MergeTree()

    def done(p: int, refs: tuple) -> None:
        summary_ref, rows, size = refs
        stats.reduced_rows += ray.get(rows)
        stats.grouped_bytes += ray.get(size)
        tree.add(summary_ref)

    _bounded(lambda p: _group_partition.remote(exchange_dir, p, group_kwargs), partitions, in_flight, done)
    if stats.reduced_rows != stats.piece_rows:
        raise IngestError(f"the exchange's reducers read {stats.reduced_rows} rows but its map side wrote "
                          f"{stats.piece_rows}; refusing to write an incomplete dataset")
    return tree.result()


@ray.remote
def _write_partition(path: str, write: Callable, kwargs: dict) -> pa.Table:
    fs, inner = dfs.resolve(path)
    out = write(_read_ipc(fs, inner), **kwargs)
    fs.delete_file(inner)
    return out


def write_grouped(exchange_dir: str, partitions: int, write: Callable, *, in_flight: int, **kwargs) -> list:
    """Run ``write(grouped_table, **kwargs)`` on every partition's grouped file (Ray tasks, at most
    ``in_flight`` at once), deleting each file once written.

    Returns:
        ``write``'s results in partition order (partitions without users are left out).
    """
    fs, _ = dfs.resolve(exchange_dir)
    present = [p for p in range(partitions)
               if fs.get_file_info(dfs.resolve(grouped_path(exchange_dir, p))[1]).type == pafs.FileType.File]
    results: dict[int, pa.Table] = {}

    def done(i: int, ref: "ray.ObjectRef") -> None:
        results[i] = ray.get(ref)

    _bounded(lambda i: _write_partition.remote(grouped_path(exchange_dir, present[i]), write, kwargs),
             len(present), in_flight, done)
    return [results[i] for i in range(len(present))]


def remove_exchange(exchange_dir: str) -> None:
    """Delete the exchange's directory and everything in it (absent: nothing to do)."""
    fs, inner = dfs.resolve(exchange_dir)
    if fs.get_file_info(inner).type != pafs.FileType.NotFound:
        fs.delete_dir(inner)
