"""The group-by-user exchange: boundaries from a sample, and range partitions that keep users whole
and arrive sorted by (user, timestamp, order key)."""

import numpy as np
import pyarrow as pa
import pytest
import ray
from ray.data import DataContext

from mvrec_dist.data.ingest.grouping import user_order
from mvrec_dist.data.ingest.partition import (SORT_KEYS, exchange_context, range_partition, sample_users,
                                              user_boundaries)
from mvrec_dist.data.ingest.sources import list_inputs, plan_ranges

pytestmark = pytest.mark.integration


def test_boundaries_balance_the_sample_and_ascend():
    sample = np.repeat(np.arange(1, 101, dtype=np.int64), 3)
    bounds = user_boundaries(sample, 4)
    assert bounds == sorted(set(bounds)) and len(bounds) == 3
    parts = np.bincount(np.searchsorted(bounds, sample, side="right"), minlength=4)
    assert parts.min() >= 60 and parts.max() <= 90  # about 75 each
    assert user_boundaries(sample, 1) == [] and user_boundaries(np.zeros(0, np.int64), 4) == []
    assert user_boundaries(np.array([5, 5, 5, 9]), 4) == [9]  # few distinct users: fewer ranges


def test_sample_users_reads_the_head_of_every_range(tmp_path):
    lines = b"user,item,timestamp\n" + b"".join(b"%d,%d,%d\n" % (u, u % 7, u) for u in range(20000))
    (tmp_path / "a.csv").write_bytes(lines)
    ranges = plan_ranges(list_inputs(str(tmp_path / "a.csv")), 1 << 16)
    users = sample_users(ranges, "pairs_csv", 1000)
    assert len(ranges) > 1 and len(users) >= len(ranges) * 40
    assert users[0] == 0 and set(users.tolist()) <= set(range(20000))
    assert len(set(users.tolist())) == len(users)  # one line per user here: no line sampled twice


def test_range_partitions_keep_users_whole_and_sorted(ray_local):
    rng = np.random.Generator(np.random.PCG64(4))
    n = 4000
    user = rng.integers(0, 300, n)
    table = pa.table({"user": user, "item": rng.integers(0, 50, n), "ts": rng.integers(0, 20, n),
                      "order": rng.permutation(n).astype(np.int64)})
    blocks = [table.slice(i, 500) for i in range(0, n, 500)]  # users spread over 8 input blocks
    bounds = user_boundaries(user, 4)
    saved = DataContext.get_current().target_max_block_size
    with exchange_context():
        parts = ray.get(range_partition(ray.data.from_arrow(blocks), bounds).materialize().to_arrow_refs())
    assert DataContext.get_current().target_max_block_size == saved  # the settings are restored
    parts = [p for p in parts if p.num_rows]
    assert sum(p.num_rows for p in parts) == n and len(parts) == len(bounds) + 1
    seen = set()
    for part in parts:
        u, ts, order = (part.column(k).to_numpy() for k in SORT_KEYS)
        assert user_order(u, ts, order) is None  # sorted: group_users takes its fast path
        mine = set(u.tolist())
        assert not mine & seen
        seen |= mine
        lo = np.searchsorted(bounds, u.min(), side="right")
        assert np.all(np.searchsorted(bounds, u, side="right") == lo)  # one boundary range per partition
