"""FRAME's candidate metrics: a hand-made table with values written out, a brute-force per-user reference on
random tables (ties included), and the bad inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mvrec_dist.eval.candidate_metrics import auc, candidate_metric_sums, candidate_metrics, log_loss

# (user, logit, label), users' candidates interleaved on purpose.
TABLE = [(10, 0.4, 1), (20, 2.0, 0), (10, 0.9, 1), (30, 0.3, 0), (10, 0.6, 0), (50, 1.0, 0), (10, 0.8, 0),
         (40, 0.1, 1), (10, 0.5, 0), (20, 1.0, 1), (50, 1.0, 1), (10, 0.7, 1), (30, 0.2, 0), (50, 0.0, 0)]
USERS, LOGITS, LABELS = (np.array(c) for c in zip(*TABLE))
L3 = 1 / math.log2(3)
# Per user: recall@3, ndcg@3, dcg@3, recall@5, ndcg@5, dcg@5, user AUC (None: undefined).
# 10: ranked .9(1) .8(0) .7(1) .6(0) .5(0) .4(1); 3 positives; AUC: .9 beats 3 negatives, .7 two, .4 none.
# 20: ranked 2.0(0) 1.0(1), fewer than K candidates.  30: no positive (not ranked).  40: one positive, no negative.
# 50: 1.0(0) and 1.0(1) tie, kept in input order (negative first); AUC: the tie counts 1/2, the 0.0 negative 1.
IDCG3 = 1 + L3 + 0.5
EXPECTED = {10: (2 / 3, 1.5 / IDCG3, 1.5, 2 / 3, 1.5 / IDCG3, 1.5, 5 / 9),
            20: (1.0, L3, L3, 1.0, L3, L3, 0.0),
            40: (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, None),
            50: (1.0, L3, L3, 1.0, L3, L3, 0.75)}


def _brute_auc(scores, labels):
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    if not pos or not neg:
        return None
    return sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg) / (len(pos) * len(neg))


def test_hand_table():
    got = candidate_metrics(USERS, LOGITS, LABELS, ks=(3, 5))
    keys = ("recall@3", "ndcg@3", "dcg@3", "recall@5", "ndcg@5", "dcg@5")
    for i, key in enumerate(keys):
        assert got[key] == pytest.approx(np.mean([v[i] for v in EXPECTED.values()]), abs=1e-12), key
    assert got["user_auc"] == pytest.approx((5 / 9 + 0.0 + 0.75) / 3, abs=1e-12)
    assert (got["users"], got["users_ranked"], got["users_auc"], got["candidates"]) == (5, 4, 3, 14)
    assert got["auc"] == pytest.approx(_brute_auc(LOGITS, LABELS), abs=1e-12)
    p = 1 / (1 + np.exp(-LOGITS))
    assert got["logloss"] == pytest.approx(-np.mean(LABELS * np.log(p) + (1 - LABELS) * np.log(1 - p)), abs=1e-12)
    # FRAME's DCG is not bounded by 1: user 10's best ranking scores 1 + 1/log2(3) + 1/2 un-normalised.
    best = candidate_metrics(np.zeros(3), np.array([3.0, 2.0, 1.0]), np.ones(3), ks=(3,))
    assert best["ndcg@3"] == 1.0 and best["dcg@3"] == pytest.approx(IDCG3, abs=1e-12)


def test_global_auc_and_log_loss_by_hand():
    assert auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert auc([1.0, 1.0], [0, 1]) == 0.5
    assert math.isnan(auc([1.0, 2.0], [1, 1])) and math.isnan(auc([], []))
    assert log_loss([0.0, 0.0], [0, 1]) == pytest.approx(math.log(2), abs=1e-15)
    # From the logit, exact where the probability would round to 1: -log(sigmoid(-40)) = 40 + log1p(e^-40).
    assert log_loss([40.0], [0]) == pytest.approx(40.0, abs=1e-12)


def _brute(users, logits, labels, ks):
    """Per-user loops, the definitions as the module docstring states them."""
    by_user: dict[int, list] = {}
    for u, s, y in zip(users, logits, labels):
        by_user.setdefault(int(u), []).append((float(s), int(y)))
    sums = {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg", "dcg")}
    ranked = aucs = 0
    auc_sum = 0.0
    for rows in by_user.values():
        a = _brute_auc([s for s, _ in rows], [y for _, y in rows])
        if a is not None:
            aucs, auc_sum = aucs + 1, auc_sum + a
        positives = sum(y for _, y in rows)
        if positives == 0:
            continue
        ranked += 1
        order = sorted(rows, key=lambda r: -r[0])  # stable: ties keep input order
        for k in ks:
            dcg = sum(y / math.log2(i + 2) for i, (_, y) in enumerate(order[:k]))
            idcg = sum(1 / math.log2(i + 2) for i in range(min(k, positives)))
            sums[f"recall@{k}"] += sum(y for _, y in order[:k]) / positives
            sums[f"ndcg@{k}"] += dcg / idcg
            sums[f"dcg@{k}"] += dcg
    out = {key: v / ranked if ranked else float("nan") for key, v in sums.items()}
    out.update(user_auc=auc_sum / aucs if aucs else float("nan"), users=len(by_user), users_ranked=ranked,
               users_auc=aucs)
    return out


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(0, 6), st.one_of(st.sampled_from([-1.0, 0.0, 0.5, 2.0]),
                                                             st.floats(-5, 5)), st.integers(0, 1)), max_size=60),
       ks=st.lists(st.integers(1, 8), min_size=1, max_size=3, unique=True))
def test_matches_a_per_user_brute_force(rows, ks):
    users, logits, labels = (np.array(c, dtype=d) for c, d in
                             zip(zip(*rows) if rows else ([], [], []), (np.int64, np.float64, np.int64)))
    got = candidate_metrics(users, logits, labels, ks)
    want = _brute(users, logits, labels, ks)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-9, nan_ok=True), key
    want_auc = _brute_auc(logits.tolist(), labels.tolist())
    assert got["auc"] == pytest.approx(float("nan") if want_auc is None else want_auc, abs=1e-12, nan_ok=True)
    # Sums of two halves split by user add up to the whole (the cross-rank reduction).
    if rows:
        half = users % 2 == 0
        parts = [candidate_metric_sums(users[m], logits[m], labels[m], ks) for m in (half, ~half)]
        whole = candidate_metric_sums(users, logits, labels, ks)
        for key, value in whole.items():
            assert parts[0][key] + parts[1][key] == pytest.approx(value, abs=1e-9), key


def test_one_positive_per_user_agrees_with_the_rank_metrics():
    import torch

    from mvrec_dist.eval.metrics import hit_rate, ndcg

    rng = np.random.default_rng(3)
    users = np.repeat(np.arange(50), 12)
    logits = rng.standard_normal(len(users))  # no ties
    labels = np.zeros(len(users), dtype=np.int64)
    labels[np.arange(50) * 12 + rng.integers(0, 12, 50)] = 1
    got = candidate_metrics(users, logits, labels, ks=(3, 5))
    target = logits[labels == 1]
    ranks = torch.tensor([(logits[users == u] > t).sum() for u, t in zip(range(50), target)])
    for k in (3, 5):
        assert got[f"ndcg@{k}"] == pytest.approx(ndcg(ranks, k).mean().item(), abs=1e-12)
        assert got[f"recall@{k}"] == pytest.approx(hit_rate(ranks, k).mean().item(), abs=1e-12)


def test_bad_input():
    with pytest.raises(ValueError, match="0 or 1"):
        candidate_metrics([1, 1], [0.2, 0.1], [1, 2])
    with pytest.raises(ValueError, match="equal 1-D"):
        candidate_metrics([1, 1], [0.2], [1, 0])
    with pytest.raises(ValueError, match="NaN"):
        auc([np.nan], [1])
    with pytest.raises(ValueError, match="K must be >= 1"):
        candidate_metrics([1], [0.2], [1], ks=(0,))
