"""The write stage without a second exchange: blocks of contiguous user ranges write their inner shards,
and the boundary shards are written from the pieces of their neighbours, byte-identical to writing
every shard from the whole table."""

import hashlib

import numpy as np
import pyarrow as pa
import pytest

from mvrec_dist.data.ingest.errors import IngestError
from mvrec_dist.data.ingest.grouping import group_users
from mvrec_dist.data.ingest.ids import assign_dense, merge_summaries, summarize
from mvrec_dist.data.ingest.range_writer import collect, write_pieces, write_ranges
from mvrec_dist.data.ingest.shard_writer import write_user_shards

pytestmark = pytest.mark.integration


def grouped_ranges(bounds, seed=0):
    """``group_users`` output of raw users 0..59 split into the given raw-id ranges (some users dropped)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    rows = [(u, int(rng.integers(100)), t) for u in range(60) for t in range(int(rng.integers(2, 9)))]
    user, item, ts = (np.array(c, dtype=np.int64) for c in zip(*rows))
    table = pa.table({"user": user, "item": item, "ts": ts, "order": np.arange(len(user), dtype=np.int64)})
    edges = [0, *bounds, 60]
    return [group_users(table.filter(pa.array((user >= lo) & (user < hi))), min_seq_len=3, with_ts=True)
            for lo, hi in zip(edges[:-1], edges[1:])]


def shard_digests(root, entries):
    return {e["path"]: hashlib.sha256((root / e["path"]).read_bytes()).hexdigest() for e in entries}


@pytest.mark.parametrize("shard_size, bounds", [(7, [10, 11, 30, 45]), (100, [20]), (1, [5, 50]), (4, [])])
def test_ranges_and_pieces_write_every_shard_once(ray_local, tmp_path, shard_size, bounds):
    blocks = grouped_ranges(bounds)
    summary = merge_summaries([summarize(b) for b in blocks])
    maps = [ray_local.put(summary.users), ray_local.put(summary.items)]
    layout = {"shard_size": shard_size, "block_size": 3, "num_users": len(summary.users), "with_ts": True}
    results = [write_ranges(b, maps=maps, root=str(tmp_path / "ranges"), **layout) for b in blocks]
    entries, pieces = collect(results)
    entries += write_pieces(pieces, root=str(tmp_path / "ranges"), **layout)
    shards = -(-len(summary.users) // shard_size)
    for split in ("train", "valid", "test"):
        assert sorted(e["index"] for e in entries if e["split"] == split) == list(range(shards))
    whole = pa.concat_tables([assign_dense(b, maps, shard_size, True) for b in blocks])
    reference = write_user_shards(whole, root=str(tmp_path / "whole"), **layout)
    assert shard_digests(tmp_path / "ranges", entries) == shard_digests(tmp_path / "whole", reference)
    assert sorted(entries, key=lambda e: e["path"]) == sorted(reference, key=lambda e: e["path"])


def test_a_block_without_a_contiguous_user_range_is_refused(ray_local, tmp_path):
    a, b = grouped_ranges([30])
    summary = merge_summaries([summarize(a), summarize(b)])
    maps = [ray_local.put(summary.users), ray_local.put(summary.items)]
    gap = pa.concat_tables([a.slice(0, 3), a.slice(5)])  # two users of the range missing
    with pytest.raises(IngestError, match="not a contiguous run: the range exchange did not keep user ranges whole"):
        write_ranges(gap, maps=maps, root=str(tmp_path), shard_size=10, block_size=4,
                     num_users=len(summary.users), with_ts=True)
