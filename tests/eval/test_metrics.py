"""Tests of mvrec_dist.eval.metrics against hand values and a per-user Python reference."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mvrec_dist.eval.metrics import hit_rate, metric_sums, ndcg


def test_hand_values():
    ranks = torch.tensor([0, 1, 9, 10, 19, 500])
    assert hit_rate(ranks, 10).tolist() == [1, 1, 1, 0, 0, 0]
    expected = [1.0, 1 / math.log2(3), 1 / math.log2(11), 0.0, 0.0, 0.0]
    torch.testing.assert_close(ndcg(ranks, 10), torch.tensor(expected, dtype=torch.float64), atol=1e-12, rtol=0)
    sums = metric_sums(ranks, (10, 20))
    assert list(sums) == ["hr@10", "ndcg@10", "hr@20", "ndcg@20"]
    assert sums["hr@10"] == 3 and sums["hr@20"] == 5
    assert sums["ndcg@20"] == pytest.approx(sum(expected) + 1 / math.log2(12) + 1 / math.log2(21), abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(ranks=st.lists(st.integers(0, 60), max_size=40), k=st.integers(1, 50))
def test_matches_per_user_reference(ranks, k):
    t = torch.tensor(ranks, dtype=torch.long)
    sums = metric_sums(t, [k])
    assert sums[f"hr@{k}"] == sum(1 for r in ranks if r < k)
    assert sums[f"ndcg@{k}"] == pytest.approx(sum(1 / math.log2(r + 2) for r in ranks if r < k), abs=1e-9)


def test_bad_input():
    with pytest.raises(ValueError, match="K must be >= 1"):
        hit_rate(torch.tensor([1]), 0)
    with pytest.raises(ValueError, match="integer"):
        ndcg(torch.tensor([1.0]), 10)
