"""The group-by-user exchange: range partitioning of interactions by raw user id.

Every interaction of a user must reach one block. Ray Data offers two exchanges for that: a
hash shuffle (``repartition(P, keys=["user"])``) and a range-partitioning sort
(``sort(keys, boundaries=...)``). The sort costs a little more than the hash shuffle by itself,
but it makes the second exchange of the write stage unnecessary; measured A/B on the 2-core
machine, 10M synthetic interactions, two runs each under the same load: end to end 14.4 / 15.5 s
(hash shuffle and shard repartition: 15.5 / 16.3 s), read+group 11.2 / 12.0 s (10.2 / 10.3 s),
write 1.4 / 1.5 s (3.6 / 4.1 s). It gives two things:

* each output block holds a contiguous range of raw user ids, so after the dense ids are known
  each block is a contiguous range of dense user ids and can write its shards directly (no second
  exchange by shard: ``range_writer``);
* the reducers sort by (user, timestamp, order key), so ``grouping.group_users`` finds its input
  in order and skips its own sort.

The boundaries come from a sample: the first ``sample_bytes`` of every read range, parsed by
the reader's own parser (bad lines are ignored here; the read stage reports them). Quantiles of the
sampled users give ``partitions`` ranges of about equal interaction counts. The boundaries only
balance the work; correctness never depends on them. Blocks are not split after the exchange
(``target_max_block_size`` is lifted for it), so a user never straddles two blocks; should one
anyway, ``ids.merge_summaries`` fails the job.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import ray
from ray.data import DataContext
from ray.data.context import ShuffleStrategy

from mvrec_dist.data.ingest.parse import parse_block
from mvrec_dist.data.ingest.sources import ByteRange, read_range

__all__ = ["SORT_KEYS", "sample_users", "user_boundaries", "range_partition", "exchange_context"]

SORT_KEYS = ["user", "ts", "order"]
"""Order of interactions inside a partition: user, then timestamp, then file and byte position."""


def sample_users(ranges: list[ByteRange], fmt: str, sample_bytes: int, labels: bool = False) -> np.ndarray:
    """Raw user ids of the lines at the start of every read range.

    Args:
        ranges: The read ranges (``sources.plan_ranges``).
        fmt: ``pairs_csv`` or ``pairs_tsv``.
        sample_bytes: Bytes read at the start of each range.
        labels: ``pairs_csv`` rows carry the label column.

    Returns:
        One user id per sampled interaction, int64 [K] (interactions, so that the quantiles
        balance interactions, not users).
    """
    out = []
    for r in ranges:
        head = ByteRange(file=r.file, start=r.start, end=min(r.start + sample_bytes, r.end))
        offset, data = read_range(head)
        if data:
            parsed = parse_block(data, fmt, file_index=r.file.index, offset=offset,
                                 at_eof=offset + len(data) >= r.file.size, labels=labels)
            out.append(parsed.table.column("user").to_numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def user_boundaries(sample: np.ndarray, partitions: int) -> list[int]:
    """Range boundaries splitting ``sample`` into ``partitions`` parts of about equal size.

    Args:
        sample: Sampled raw user ids, int64 [K].
        partitions: Wanted number of ranges (>= 1).

    Returns:
        Strictly ascending boundaries ``b``: range 0 holds users ``< b[0]``, range ``i`` users in
        ``[b[i-1], b[i])``, the last users ``>= b[-1]``; fewer than ``partitions - 1`` when the
        sample has few distinct users.
    """
    if partitions <= 1 or len(sample) == 0:
        return []
    q = np.quantile(np.sort(sample), np.linspace(0, 1, partitions + 1)[1:-1], method="higher")
    bounds = np.unique(q)
    return [int(b) for b in bounds if b > sample.min()]


@contextlib.contextmanager
def exchange_context() -> Iterator[DataContext]:
    """Ray Data settings for building and running the range exchange, restored afterwards.

    ``SHUFFLE_V2`` plans ``sort(..., boundaries=...)`` as sorting map tasks and merging reduce
    tasks; ``target_max_block_size=None`` keeps each reducer's output one block (a split could
    cut a user's interactions apart).
    """
    ctx = DataContext.get_current()
    saved = (ctx.shuffle_strategy, ctx.target_max_block_size, ctx.shuffle_input_batch_bytes)
    ctx.shuffle_strategy = ShuffleStrategy.SHUFFLE_V2
    ctx.target_max_block_size = None
    ctx.shuffle_input_batch_bytes = 0
    try:
        yield ctx
    finally:
        ctx.shuffle_strategy, ctx.target_max_block_size, ctx.shuffle_input_batch_bytes = saved


def range_partition(ds: "ray.data.Dataset", boundaries: list[int]) -> "ray.data.Dataset":
    """Range-partition interactions by user with ``boundaries``, each partition sorted by ``SORT_KEYS``.

    Build (and execute) the result inside ``exchange_context``.

    Args:
        ds: Interactions (``parse.interaction_schema``).
        boundaries: ``user_boundaries`` output.

    Returns:
        A dataset of ``len(boundaries) + 1`` blocks (empty ones possible), in range order.
    """
    return ds.sort(SORT_KEYS, boundaries=boundaries or None)
