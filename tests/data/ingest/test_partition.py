"""The user ranges of the group-by-user exchange: boundaries from a sample (the exchange itself:
``test_exchange.py``)."""

import numpy as np
import pytest

from mvrec_dist.data.ingest.partition import sample_users, user_boundaries
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
