"""The write stage without a second exchange: each user-range block writes its own shards.

After the exchange (``exchange.py``) every grouped block holds all users of a contiguous raw-id
range, so its kept users have contiguous dense ids ``[lo, hi]`` (dense ids follow the sorted raw
ids). ``write_ranges`` (one call per grouped block, ``exchange.write_grouped``) maps the block to dense ids,
writes every shard that lies inside ``[lo, hi]`` (``shard_writer.write_user_shards``, which checks
each shard is exactly its id range) and hands back the users of the one or two shards that reach
past the block's range as *pieces*. ``write_pieces`` then writes those boundary shards, each from
the pieces of the neighbouring blocks, in Ray tasks. Every shard is written exactly once; the
reconciliation checks that shards ``0..ceil(U/S)-1`` all exist.

Its output rows carry the written shards' manifest entries (JSON) and the pieces
(Arrow IPC bytes): small next to the data.
"""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pyarrow as pa
import ray

from mvrec_dist.data.ingest.errors import IngestError
from mvrec_dist.data.ingest.ids import assign_dense
from mvrec_dist.data.ingest.shard_writer import dense_schema, write_user_shards

__all__ = ["result_schema", "write_ranges", "collect", "write_pieces"]


def result_schema() -> pa.Schema:
    """Rows ``write_ranges`` returns: an entry (``shard = -1``) or a piece of boundary shard ``shard``."""
    return pa.schema([pa.field("shard", pa.int64()), pa.field("entries", pa.string()),
                      pa.field("piece", pa.large_binary())])


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def write_ranges(grouped: pa.Table, *, maps: list, root: str, shard_size: int, block_size: int,
                 num_users: int, with_ts: bool, labels: bool = False, plays: bool = False,
                 resume_key: str | None = None) -> pa.Table:
    """Write the shards inside one grouped block's dense-id range; return entries and pieces.

    Args:
        grouped: ``grouping.group_users`` output of one range partition (ascending raw users).
        maps: ``[users_ref, items_ref]`` (``ids.assign_dense``).
        root: Dataset directory being written.
        shard_size: ``ingest.shard_max_samples`` (S).
        block_size: ``ingest.users_per_block``.
        num_users: Kept users U.
        with_ts: Write the timestamps.
        labels: Write the exposures split.
        plays: Write the playing times and durations (``plays_csv``).
        resume_key: Reuse shards an interrupted run finished (``shard_writer.write_user_shards``).

    Returns:
        ``result_schema`` rows: one with the JSON list of written shard entries, and one per
        boundary shard with this block's users of it.

    Raises:
        IngestError: when the block's dense ids are not contiguous (a partition that did not hold
            a whole user range).
    """
    dense = assign_dense(grouped, maps, shard_size, with_ts, labels, plays)
    if dense.num_rows == 0:
        return result_schema().empty_table()
    users = dense.column("user").to_numpy()
    lo, hi = int(users[0]), int(users[-1])
    if hi - lo + 1 != len(users) or np.any(users[1:] <= users[:-1]):
        raise IngestError(f"a range partition holds {len(users)} kept users with dense ids {lo}..{hi}, not a "
                          "contiguous run: the range exchange did not keep user ranges whole")
    shard = dense.column("shard").to_numpy()
    first_full = -(-(lo - 1) // shard_size)  # first shard starting at or after lo
    last_full = (hi // shard_size) - 1 if hi < num_users else (num_users - 1) // shard_size
    inside = (shard >= first_full) & (shard <= last_full)
    entries = write_user_shards(dense.filter(pa.array(inside)), root=root, shard_size=shard_size,
                                block_size=block_size, num_users=num_users, with_ts=with_ts,
                                labels=labels, plays=plays, resume_key=resume_key) if inside.any() else []
    rows = {"shard": [-1], "entries": [json.dumps(entries)], "piece": [None]}
    for j in np.unique(shard[~inside]).tolist():
        rows["shard"].append(j)
        rows["entries"].append(None)
        rows["piece"].append(_ipc(dense.filter(pa.array(shard == j))))
    return pa.table(rows, schema=result_schema())


def collect(results: list[pa.Table]) -> tuple[list[dict], dict[int, list[bytes]]]:
    """The written entries and the pieces by boundary shard, from every block's ``write_ranges`` rows."""
    entries: list[dict] = []
    pieces: dict[int, list[bytes]] = defaultdict(list)
    for table in results:
        for j, text, piece in zip(table.column("shard").to_pylist(), table.column("entries").to_pylist(),
                                  table.column("piece").to_pylist()):
            if j < 0:
                entries += json.loads(text)
            else:
                pieces[j].append(piece)
    return entries, dict(pieces)


@ray.remote
def _write_boundary(pieces: list[bytes], root: str, shard_size: int, block_size: int, num_users: int,
                    with_ts: bool, labels: bool, plays: bool, resume_key: str | None) -> list[dict]:
    tables = [pa.ipc.open_stream(p).read_all() for p in pieces]
    table = pa.concat_tables(tables).cast(dense_schema(with_ts, labels, plays))
    return write_user_shards(table, root=root, shard_size=shard_size, block_size=block_size,
                             num_users=num_users, with_ts=with_ts, labels=labels, plays=plays, resume_key=resume_key)


def write_pieces(pieces: dict[int, list[bytes]], *, root: str, shard_size: int, block_size: int,
                 num_users: int, with_ts: bool, labels: bool = False, plays: bool = False,
                 resume_key: str | None = None) -> list[dict]:
    """Write every boundary shard from its pieces (Ray tasks; each checks its shard is whole).

    Args:
        pieces: Boundary shard -> the Arrow IPC pieces of the blocks that hold its users.
        root: Dataset directory being written.
        shard_size: S.
        block_size: Users per block.
        num_users: U.
        with_ts: Write the timestamps.
        labels: Write the exposures split.
        plays: Write the playing times and durations.
        resume_key: Reuse shards an interrupted run finished (``shard_writer.write_user_shards``).

    Returns:
        The written (or reused) shards' manifest entries.
    """
    refs = [_write_boundary.remote(p, root, shard_size, block_size, num_users, with_ts, labels, plays, resume_key)
            for p in pieces.values()]
    return [e for part in ray.get(refs) for e in part]
