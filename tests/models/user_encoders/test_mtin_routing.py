"""Tests of mvrec_dist.models.user_encoders.mtin_routing: batched Algorithm 1 against a literal transcription."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mvrec_dist.models.user_encoders.mtin_routing import CoAttentionMatcher, route_interest_groups


def algorithm1(p: list[list[float]], tau: int, b: float, eps: float | None) -> list[int]:
    """Algorithm 1 of the MTIN paper for one user, line by line, in plain Python.

    ``p[j][g]`` is p_{g<-j} for the j-th item of H_pos (groups 0-based). Readings of what the paper
    leaves open, as in the implementation: avg_Eg is the mean of p_{g<-i} over the members i of E_g;
    an empty group has no average and xi_g = 1; line 8 tests the chosen group's discounted score;
    eps None drops that test; argmax ties go to the first group.
    """
    l0 = len(p)
    s = len(p[0]) if l0 else 0
    S = [0] * l0
    E: dict[int, list[int]] = {g: [] for g in range(s)}
    for j in range(l0):  # line 1
        S[j] = -1  # line 2: no group yet (E_-1 is "no group")
    for _ in range(tau):  # line 4
        for j in range(l0):  # line 5
            xi = []
            for g in range(s):  # line 6
                if E[g]:
                    avg = sum(p[i][g] for i in E[g]) / len(E[g])
                    xi.append(math.log(b + max(avg - p[j][g], 0.0), b))
                else:
                    xi.append(1.0)
            pd = [p[j][g] / xi[g] for g in range(s)]  # line 7
            g_star = 0
            for g in range(1, s):
                if pd[g] > pd[g_star]:
                    g_star = g
            if g_star != S[j] and (eps is None or pd[g_star] > eps):  # line 8
                if S[j] != -1:
                    E[S[j]].remove(j)  # line 9: POP(E_Sj, i_j)
                S[j] = g_star
                E[g_star].append(j)  # ADD(E_g*, i_j)
    for g in range(s):
        E[g].sort()  # line 13: SortByTime (positions are in time order)
    return S  # the groups E_g are {j : S_j = g}


def _batched_vs_literal(scores: np.ndarray, mask: np.ndarray, tau: int, b: float, eps: float | None) -> None:
    got = route_interest_groups(torch.from_numpy(scores), torch.from_numpy(mask), iterations=tau, base=b,
                                threshold=eps)
    assert got.dtype == torch.long and got.shape == mask.shape
    for u in range(scores.shape[0]):
        real = np.flatnonzero(mask[u])  # H_pos: the user's real items, in order
        expect = np.full(mask.shape[1], -1)
        expect[real] = algorithm1(scores[u, real].tolist(), tau, b, eps)
        np.testing.assert_array_equal(got[u].numpy(), expect)


@st.composite
def _routing_inputs(draw, values):
    users = draw(st.integers(1, 4))
    length = draw(st.integers(1, 9))
    groups = draw(st.integers(1, 5))
    flat = draw(st.lists(values, min_size=users * length * groups, max_size=users * length * groups))
    scores = np.array(flat, dtype=np.float64).reshape(users, length, groups)
    mask = np.array(draw(st.lists(st.booleans(), min_size=users * length, max_size=users * length))).reshape(
        users, length)
    return scores, mask


# Scores on a coarse grid: many exact ties (within an item and between groups' averages), empty groups
# whenever fewer groups are chosen than exist. Bases whose discounts over that range are irrational, so
# two different expressions never tie exactly (which a 1-ulp difference between torch.log and math.log
# could then break differently).
@settings(max_examples=200, deadline=None)
@given(inputs=_routing_inputs(st.sampled_from([-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0])),
       tau=st.integers(1, 3), b=st.sampled_from([3.0, 10.0, math.e]),
       eps=st.sampled_from([None, -0.3, 0.0, 0.25]))
def test_matches_literal_algorithm_on_ties(inputs, tau, b, eps):
    scores, mask = inputs
    _batched_vs_literal(scores, mask, tau, b, eps)


# fp16-representable scores: varied values whose sums are exact in fp64 in any order.
@settings(max_examples=150, deadline=None)
@given(inputs=_routing_inputs(st.floats(-1.0, 1.0, width=16)), tau=st.integers(1, 3),
       b=st.sampled_from([3.0, 10.0, math.e]), eps=st.sampled_from([None, 0.0, 0.1]))
def test_matches_literal_algorithm_on_varied_scores(inputs, tau, b, eps):
    scores, mask = inputs
    _batched_vs_literal(scores, mask, tau, b, eps)


@pytest.mark.parametrize("seed", range(5))
def test_matches_literal_algorithm_on_continuous_scores_default_base(seed):
    rng = np.random.default_rng(seed)
    scores = rng.normal(0.0, 1.0, (6, 12, 6))
    mask = np.arange(12)[None] < rng.integers(1, 13, 6)[:, None]  # right-padded
    _batched_vs_literal(scores, mask, tau=3, b=2.0, eps=None)
    _batched_vs_literal(scores, mask, tau=2, b=2.0, eps=0.5)


def test_hand_case_discount_filters_and_moves():
    # 3 items, 2 groups, b = e.
    # pass 1: item 0 -> g0 (1.0 > 0.5). Item 1: avg_E0 = 1.0, shortfall 1.0 - 0.2 = 0.8, xi_0 = ln(e + 0.8)
    # = 1.258, 0.2 / 1.258 = 0.159 < 0.3 (g1, empty) -> g1. Item 2: scores equal (0.3, 0.3); xi_0 = ln(e+0.7),
    # xi_1 = 1 (avg_E1 = 0.3, no shortfall) -> g1; eps = 0.25 < 0.3 passes.
    scores = np.array([[[1.0, 0.5], [0.2, 0.3], [0.3, 0.3]]])
    mask = np.ones((1, 3), dtype=bool)
    got = route_interest_groups(torch.from_numpy(scores), torch.from_numpy(mask), iterations=2, base=math.e,
                                threshold=0.25)
    assert got.tolist() == [[0, 1, 1]]
    # A threshold above every score leaves every item in no group (all groups empty).
    none = route_interest_groups(torch.from_numpy(scores), torch.from_numpy(mask), iterations=2, base=math.e,
                                 threshold=1.0)
    assert none.tolist() == [[-1, -1, -1]]


def test_padding_is_never_routed_and_empty_batch():
    scores = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[True, True, False, False], [False, False, False, False]])
    got = route_interest_groups(scores, mask, iterations=2, base=2.0, threshold=None)
    assert (got[0, :2] >= 0).all() and (got[0, 2:] == -1).all() and (got[1] == -1).all()


def test_matcher_is_frozen_and_shapes():
    torch.manual_seed(0)
    matcher = CoAttentionMatcher(embedding_dim=8, activation="tanh", init_std=0.3)
    assert not any(p.requires_grad for p in matcher.parameters())
    items = torch.randn(3, 5, 8, requires_grad=True)
    memory = torch.randn(3, 4, 8)
    p = matcher(items, memory)
    assert p.shape == (3, 5, 4) and p.grad_fn is None and not p.requires_grad


def test_matcher_is_eq_2_to_4():
    torch.manual_seed(1)
    m = CoAttentionMatcher(embedding_dim=4, activation="sigmoid", init_std=0.5)
    for lin in (m.item, m.group, m.gate, m.hidden, m.score):
        torch.nn.init.normal_(lin.bias, std=0.5)
    x, c = torch.randn(1, 2, 4, dtype=torch.float64), torch.randn(1, 3, 4, dtype=torch.float64)
    m.double()
    got = m(x, c)
    for j in range(2):
        for g in range(3):
            s = m.gate.weight @ torch.sigmoid(m.item.weight @ x[0, j] + m.item.bias + m.group.weight @ c[0, g]
                                              + m.group.bias) + m.gate.bias  # Eq. 2
            x_hat, c_hat = s * x[0, j], s * c[0, g]  # Eq. 3
            p = m.score.weight @ torch.sigmoid(m.hidden.weight @ torch.cat([x_hat, c_hat]) + m.hidden.bias) \
                + m.score.bias  # Eq. 4
            torch.testing.assert_close(got[0, j, g], p[0], atol=1e-12, rtol=0)
