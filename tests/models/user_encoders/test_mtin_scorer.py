"""Tests of mvrec_dist.models.user_encoders.mtin_scorer: split scoring == the plain MLP, Eq. 12 by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mvrec_dist.models.user_encoders.mtin_scorer import MTINScorer, click_loss_sum, eq12_loss

D, H = 6, 5


def _scorer(dtype=torch.float32) -> MTINScorer:
    torch.manual_seed(0)
    scorer = MTINScorer(embedding_dim=D, hidden_dim=H, init_std=0.5)
    for m in scorer.modules():
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.normal_(m.bias, std=0.5)  # non-zero biases, so the test sees where they go
    with torch.no_grad():
        scorer.combine.weight.copy_(torch.tensor([[0.7, -1.3]]))
    return scorer.to(dtype)


def _plain_mlp_logits(scorer: MTINScorer, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Section 4.4 as written: per branch MLP([q; x_e]) with one first layer over the concatenation."""
    scores = []
    for k in range(2):
        first = nn.Linear(2 * D, H).to(q.dtype)
        with torch.no_grad():
            first.weight.copy_(torch.cat([scorer.user[k].weight, scorer.item[k].weight], 1))
            first.bias.copy_(scorer.user[k].bias)
        mlp = nn.Sequential(first, nn.ReLU(), scorer.out[k])
        scores.append(mlp(torch.cat([q[:, k], x], -1)).squeeze(-1))
    return scorer.combine.weight[0, 0] * scores[0] + scorer.combine.weight[0, 1] * scores[1]


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_split_scoring_equals_plain_mlp(dtype, tol):
    """Split first layer (user half once per user, item half once per item) == the MLP over [q; x_e].

    Tolerance: the two sum the same products in another order (fp64 1e-12, fp32 1e-5 absolute and relative).
    """
    scorer = _scorer(dtype)
    g = torch.Generator().manual_seed(1)
    q = torch.randn(3, 2, D, generator=g, dtype=dtype)
    items = torch.randn(11, D, generator=g, dtype=dtype)
    plain = torch.stack([_plain_mlp_logits(scorer, q, items[n].expand(3, D)) for n in range(11)], 1)  # B,N
    full = scorer.score_all(scorer.user_part(q), scorer.item_part(items), item_chunk=4, user_chunk=2)  # 3 x 2 blocks, last ones partial
    torch.testing.assert_close(full, plain, atol=tol, rtol=tol)
    pairs = scorer(q, items[None, :7].expand(3, 7, D))  # training's candidates path
    torch.testing.assert_close(pairs, plain[:, :7], atol=tol, rtol=tol)


def test_combination_starts_as_positive_minus_negative():
    scorer = MTINScorer(embedding_dim=D, hidden_dim=H)
    assert scorer.combine.weight.tolist() == [[1.0, -1.0]]
    assert len(scorer.regularized_parameters()) == 6


def test_eq_12_on_a_hand_example():
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    valid = torch.tensor([[True, True], [True, False]])  # the last pair is padding
    sig = lambda y: 1 / (1 + math.exp(-y))  # noqa: E731
    data = -(math.log(sig(2.0)) + math.log(1 - sig(-1.0)) + math.log(1 - sig(0.5)))
    assert click_loss_sum(logits, labels, valid).item() == pytest.approx(data, rel=1e-6)
    l2_sq = torch.tensor(3.5)
    loss = eq12_loss(logits, labels, valid, l2_sq=l2_sq, lam=1e-4)
    assert loss.item() == pytest.approx(data + 1e-4 * 3.5, rel=1e-6)
    assert loss.dtype == torch.float32
