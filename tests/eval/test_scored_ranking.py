"""Ranks from a score matrix and MTIN's click metrics against a brute-force reading of their definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mvrec_dist.eval.full_ranking import target_ranks
from mvrec_dist.eval.scored_ranking import click_metric_sums, negatives_per_user, ranks_of_scores


def _jagged(histories):
    values = torch.tensor([i for h in histories for i in h], dtype=torch.long)
    offsets = torch.tensor(np.concatenate([[0], np.cumsum([len(h) for h in histories])]), dtype=torch.long)
    return values, offsets


def _brute(scores, targets, histories, n, k):
    """Per user: rank, AUC, P@K, R@K, F1@K from the explicit candidate list (items outside the history,
    plus the target), ties against the target."""
    out = []
    for row, t, h in zip(scores.tolist(), targets.tolist(), histories):
        candidates = [i for i in range(1, n + 1) if i not in set(h) or i == t]
        negatives = [i for i in candidates if i != t]
        rank = sum(row[i] >= row[t] for i in negatives)
        auc = sum(row[i] < row[t] for i in negatives) / len(negatives) if negatives else 1.0
        top = sorted(candidates, key=lambda i: (-row[i], i == t))[:k]  # the top-K list, ties before the target
        hit = 1.0 if t in top else 0.0
        p, r = hit / k, hit
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        out.append((rank, auc, p, r, f1, len(negatives)))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_ranks_and_click_metrics_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    n, b, k = 40, 12, 5
    scores = torch.from_numpy(rng.integers(0, 6, size=(b, n + 1)).astype(np.float32))  # many ties
    targets = torch.from_numpy(rng.integers(1, n + 1, size=b))
    histories = [rng.integers(1, n + 1, size=int(rng.integers(0, 15))).tolist() for _ in range(b)]
    histories[0] = histories[0] + [int(targets[0])]  # a target also in its history stays a candidate
    values, offsets = _jagged(histories)
    ranks = ranks_of_scores(scores, targets, values, offsets)
    negatives = negatives_per_user(targets, values, offsets, n)
    brute = _brute(scores, targets, histories, n, k)
    assert ranks.tolist() == [r[0] for r in brute]
    assert negatives.tolist() == [r[5] for r in brute]
    sums = click_metric_sums(ranks, negatives, k)
    for i, name in enumerate(["auc", f"precision@{k}", f"recall@{k}", f"f1@{k}"], start=1):
        assert sums[name] == pytest.approx(sum(r[i] for r in brute), abs=1e-9)


def test_the_ranks_of_a_dot_product_scorer_are_target_ranks():
    g = torch.Generator().manual_seed(0)
    states, items = torch.randn(9, 4, generator=g), torch.randn(31, 4, generator=g)
    targets = torch.randint(1, 31, (9,), generator=g)
    values, offsets = _jagged([torch.randint(1, 31, (int(m),), generator=g).tolist()
                               for m in torch.randint(0, 8, (9,), generator=g)])
    assert torch.equal(ranks_of_scores(states @ items.T, targets, values, offsets),
                       target_ranks(states, items, targets, values, offsets))


def test_a_hand_made_case():
    # 6 items; user 0: history {1, 2}, target 3 scored below item 5 only -> rank 1 of 3 negatives {4, 5, 6}.
    scores = torch.tensor([[0.0, 9.0, 9.0, 0.5, 0.1, 0.7, 0.2],
                           [0.0, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3]])  # user 1: all tied -> last
    values, offsets = _jagged([[1, 2], []])
    targets = torch.tensor([3, 6])
    ranks = ranks_of_scores(scores, targets, values, offsets)
    negatives = negatives_per_user(targets, values, offsets, 6)
    assert ranks.tolist() == [1, 5] and negatives.tolist() == [3, 5]
    sums = click_metric_sums(ranks, negatives, 2)
    assert sums["auc"] == pytest.approx(2 / 3 + 0.0)
    assert sums["recall@2"] == 1.0 and sums["precision@2"] == 0.5 and sums["f1@2"] == pytest.approx(2 / 3)
    assert math.isclose(2 * 0.5 * 1.0 / 1.5, sums["f1@2"])
