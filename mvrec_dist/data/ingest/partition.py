"""The user ranges of the group-by-user exchange (``exchange.py``): boundaries from a sample.

Interactions are partitioned by contiguous ranges of raw user id, not by a hash, which gives two
things (the range-partitioning sort of Ray Data that this replaced was chosen for them too):

* each partition holds a contiguous range of raw user ids, so after the dense ids are known
  each partition is a contiguous range of dense user ids and can write its shards directly (no
  second exchange by shard: ``range_writer``);
* a partition's rows, sorted by (user, timestamp, order key), are what ``grouping.group_users``
  wants.

The boundaries come from a sample: the first ``sample_bytes`` of every read range, parsed by
the reader's own parser (bad lines are ignored here; the read stage reports them). Quantiles of the
sampled users give ``partitions`` ranges of about equal interaction counts. The boundaries only
balance the work; correctness never depends on them. A user's rows all go to the partition of its
range; should a user anyway be grouped in two partitions, ``ids.merge_summaries`` fails the job.
"""

from __future__ import annotations

import numpy as np

from mvrec_dist.data.ingest.parse import parse_block
from mvrec_dist.data.ingest.sources import ByteRange, read_range

__all__ = ["sample_users", "user_boundaries"]


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
