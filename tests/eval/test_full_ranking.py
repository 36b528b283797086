"""Tests of mvrec_dist.eval.full_ranking against a brute-force per-user Python reference."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mvrec_dist.eval.full_ranking import target_ranks


def _brute(states, items, targets, histories) -> list[int]:
    """Per user: candidates 1..N minus history (the target always kept); rank = others scoring >= target."""
    ranks = []
    for b, hist in enumerate(histories):
        scores = [float(states[b] @ items[i]) for i in range(items.shape[0])]
        t = int(targets[b])
        excluded = set(hist) - {t}
        ranks.append(sum(1 for i in range(1, len(scores)) if i != t and i not in excluded and scores[i] >= scores[t]))
    return ranks


def _jagged(histories):
    values = torch.tensor([v for h in histories for v in h], dtype=torch.long)
    offsets = torch.tensor([0] + [len(h) for h in histories]).cumsum(0)
    return values, offsets


def test_hand_case_ties_history_and_padding():
    items = torch.tensor([[100.0], [1.0], [2.0], [2.0], [3.0], [0.0]])  # id 0 scores highest but is padding
    states = torch.tensor([[1.0], [1.0], [-1.0]])
    targets = torch.tensor([2, 4, 5])
    histories = [[4], [4, 1], [5, 5, 1]]  # user 1's target 4 is in its history; user 2's too
    values, offsets = _jagged(histories)
    ranks = target_ranks(states, items, targets, values, offsets, chunk_size=2)
    # user 0: item 4 excluded; item 3 ties item 2 (counted against), others lower -> 1
    # user 1: target 4 kept although in history, item 1 excluded; nothing scores >= 3 -> 0
    # user 2: scores are -id; target 5 (-0) beats all; item 1 excluded -> 0
    assert ranks.tolist() == [1, 0, 0] == _brute(states, items, targets, histories)
    assert ranks.dtype == torch.long


def test_constant_model_ranks_last():
    n = 50
    ranks = target_ranks(torch.ones(3, 4), torch.ones(n + 1, 4), torch.tensor([1, 7, 50]), torch.tensor([2, 3]),
                         torch.tensor([0, 2, 2, 2]))
    assert ranks.tolist() == [n - 1 - 2, n - 1, n - 1]


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n=st.integers(1, 25), b=st.integers(1, 9), d=st.integers(1, 3), chunk=st.integers(1, 5))
def test_matches_brute_force_with_ties(data, n, b, d, chunk):
    # Small integer embeddings make exact score ties frequent.
    ints = st.integers(-2, 2)
    items = torch.tensor(data.draw(st.lists(st.lists(ints, min_size=d, max_size=d), min_size=n + 1, max_size=n + 1)),
                         dtype=torch.float32)
    states = torch.tensor(data.draw(st.lists(st.lists(ints, min_size=d, max_size=d), min_size=b, max_size=b)),
                          dtype=torch.float32)
    targets = data.draw(st.lists(st.integers(1, n), min_size=b, max_size=b))
    histories = data.draw(st.lists(st.lists(st.integers(1, n), max_size=8), min_size=b, max_size=b))
    # Make some targets part of their own history.
    histories = [h + [t] if data.draw(st.booleans()) else h for h, t in zip(histories, targets)]
    values, offsets = _jagged(histories)
    ranks = target_ranks(states, items, torch.tensor(targets), values, offsets, chunk_size=chunk)
    assert ranks.tolist() == _brute(states, items, targets, histories)


def test_chunking_does_not_change_ranks():
    g = torch.Generator().manual_seed(0)
    states, items = torch.randn(300, 8, generator=g), torch.randn(201, 8, generator=g)
    targets = torch.randint(1, 201, (300,), generator=g)
    lengths = torch.randint(0, 20, (300,), generator=g)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    values = torch.randint(1, 201, (int(offsets[-1]),), generator=g)
    ref = target_ranks(states, items, targets, values, offsets, chunk_size=300)
    for chunk in (1, 7, 128, 1000):
        assert torch.equal(target_ranks(states, items, targets, values, offsets, chunk_size=chunk), ref)


@pytest.mark.parametrize("kwargs, match", [
    ({"targets": torch.tensor([0])}, "targets must be item ids in 1..3"),
    ({"targets": torch.tensor([4])}, "targets must be item ids in 1..3"),
    ({"history_values": torch.tensor([0])}, "history_values must be item ids"),
    ({"history_offsets": torch.tensor([0, 2])}, "history_offsets"),
    ({"user_states": torch.full((1, 2), float("nan"))}, "NaN"),
    ({"user_states": torch.zeros(1, 3)}, "share D"),
    ({"chunk_size": 0}, "chunk_size"),
])
def test_bad_input_fails_clearly(kwargs, match):
    args = {"user_states": torch.zeros(1, 2), "item_repr": torch.zeros(4, 2), "targets": torch.tensor([1]),
            "history_values": torch.tensor([2]), "history_offsets": torch.tensor([0, 1]), "chunk_size": 4} | kwargs
    with pytest.raises(ValueError, match=match):
        target_ranks(**args)
