"""Tests of mvrec_dist.models.losses: hand-computed cases, masking, logQ, and the MicroLens formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mvrec_dist.config.model import FullSoftmaxConfig, InBatchSoftmaxConfig, SampledSoftmaxConfig
from mvrec_dist.data.batch import SequenceBatch, collate_train, dummy_batch
from mvrec_dist.models.losses import FullSoftmaxLoss, InBatchSoftmaxLoss, SampledSoftmaxLoss
from mvrec_dist.models.registry import LOSSES

TOL = {"atol": 1e-5, "rtol": 1e-5}


def _targets(batch: SequenceBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, cols, labels) of every target, as DenseTower computes them."""
    length = batch.items.shape[1] - 1
    rows, cols = (torch.arange(length)[None] + 1 < batch.lengths[:, None]).nonzero(as_tuple=True)
    return rows, cols, batch.inverse[rows, cols + 1]


def _lse(xs: list[float]) -> float:
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


# ---------------------------------------------------------------- full softmax
def test_full_softmax_hand_case():
    item_repr = torch.tensor([[9.0, 9.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # row 0 = padding, ignored
    states = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    labels = torch.tensor([1, 3])
    loss = FullSoftmaxLoss(num_items=3)
    out = loss(states, item_repr, labels, torch.tensor([0, 0]), dummy_batch(2, num_items=3, all_items=True))
    # logits [1, 0, 1] -> label 1; logits [0, 2, 2] -> label 3
    expected = (math.log(2 * math.e + 1) - 1) + (math.log(1 + 2 * math.e ** 2) - 2)
    assert out.loss_sum.item() == pytest.approx(expected, rel=1e-6)
    assert out.num_targets.item() == 2 and out.num_targets.dtype == torch.long

    eps = 0.1
    smooth = FullSoftmaxLoss(num_items=3, label_smoothing=eps)(states, item_repr, labels, torch.tensor([0, 0]), None)
    logp = [[1 - _lse([1, 0, 1]), 0 - _lse([1, 0, 1]), 1 - _lse([1, 0, 1])],
            [0 - _lse([0, 2, 2]), 2 - _lse([0, 2, 2]), 2 - _lse([0, 2, 2])]]
    expected = sum(-(1 - eps) * lp[lab - 1] - eps / 3 * sum(lp) for lp, lab in zip(logp, [1, 3]))
    assert smooth.loss_sum.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_full_softmax_fused_matches_unfused_cross_entropy(eps):
    g = torch.Generator().manual_seed(0)
    n, d = 50, 6
    item_repr = torch.randn(n + 1, d, generator=g, requires_grad=True)
    states = torch.randn(9, d, generator=g, requires_grad=True)
    labels = torch.randint(1, n + 1, (9,), generator=g)
    out = FullSoftmaxLoss(num_items=n, label_smoothing=eps)(states, item_repr, labels, torch.zeros(9, dtype=torch.long),
                                                            None)
    (out.loss_sum * 3.0).backward()
    got = (out.loss_sum.detach(), states.grad.clone(), item_repr.grad.clone())
    states.grad, item_repr.grad = None, None
    ref = F.cross_entropy(states @ item_repr[1:].T, labels - 1, reduction="sum", label_smoothing=eps)
    (ref * 3.0).backward()
    torch.testing.assert_close(got[0], ref.detach(), **TOL)
    torch.testing.assert_close(got[1], states.grad, **TOL)
    torch.testing.assert_close(got[2], item_repr.grad, **TOL)
    assert (got[2][0] == 0).all()  # the padding row is no candidate


def test_full_softmax_fused_refuses_a_second_backward():
    states = torch.randn(2, 3, requires_grad=True)
    out = FullSoftmaxLoss(num_items=4)(states, torch.randn(5, 3), torch.tensor([1, 2]), torch.zeros(2), None)
    out.loss_sum.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="twice"):
        out.loss_sum.backward()


def test_full_softmax_needs_every_item():
    with pytest.raises(ValueError, match="all_items=True"):
        FullSoftmaxLoss(num_items=5)(torch.zeros(1, 2), torch.zeros(3, 2), torch.tensor([1]), torch.tensor([0]), None)


# ---------------------------------------------------------------- in-batch softmax
def _inbatch_case():
    # row 0 = items 1,2,3 (targets 2, 3); row 1 = items 4,2 (target 2); unique = [0, 1, 2, 3, 4]
    batch = collate_train([np.array([1, 2, 3]), np.array([4, 2])], [1, 2], max_seq_len=2, num_items=4)
    item_repr = torch.tensor([[5.0, 5.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    states = torch.tensor([[1.0, 2.0], [0.0, 1.0], [2.0, 0.0]])
    counts = np.array([0, 1, 2, 3, 4])  # q = .1 .2 .3 .4
    return batch, item_repr, states, counts


def test_inbatch_softmax_hand_case_masking_and_logq():
    batch, item_repr, states, counts = _inbatch_case()
    rows, _, labels = _targets(batch)
    assert rows.tolist() == [0, 0, 1] and batch.unique_items[labels].tolist() == [2, 3, 2]
    out = InBatchSoftmaxLoss(num_items=4, item_train_counts=counts)(states, item_repr, labels, rows, batch)
    lq = {i: math.log(c / 10) for i, c in enumerate(counts) if c}
    # target 0 (row 0, label 2): own items 1, 3 masked -> candidates {2, 4}
    t0 = [2 - lq[2], -1 - lq[4]]
    # target 1 (row 0, label 3): own items 1, 2 masked -> candidates {3, 4}
    t1 = [1 - lq[3], 0 - lq[4]]
    # target 2 (row 1, label 2): own item 4 masked -> candidates {1, 2, 3}
    t2 = [2 - lq[1], 0 - lq[2], 2 - lq[3]]
    expected = (_lse(t0) - t0[0]) + (_lse(t1) - t1[0]) + (_lse(t2) - t2[1])
    assert out.loss_sum.item() == pytest.approx(expected, rel=1e-6)
    assert out.num_targets.item() == 3


def test_inbatch_softmax_without_mask_or_logq_is_plain_softmax_with_temperature():
    batch, item_repr, states, counts = _inbatch_case()
    rows, _, labels = _targets(batch)
    loss = InBatchSoftmaxLoss(num_items=4, item_train_counts=counts, logq_correction=False, mask_own_items=False,
                              temperature=2.0)
    out = loss(states, item_repr, labels, rows, batch)
    expected = F.cross_entropy(states @ item_repr[1:].T / 2.0, labels - 1, reduction="sum")
    torch.testing.assert_close(out.loss_sum, expected, **TOL)


def test_inbatch_softmax_zero_count_items_stay_finite():
    batch, item_repr, states, _ = _inbatch_case()
    rows, _, labels = _targets(batch)
    out = InBatchSoftmaxLoss(num_items=4, item_train_counts=np.array([0, 0, 2, 3, 4]))(
        states, item_repr, labels, rows, batch)
    assert torch.isfinite(out.loss_sum)


def _microlens_inbatch(prec_vec, score_embs, sample_items_id, log_mask, pop_prob_list):
    """MicroLens Model.forward's loss (Code/VideoRec/SASRec/model/model.py), re-expressed: every
    batch position is a candidate, logits minus log popularity, the row's items masked but the label."""
    bs, seq_len = log_mask.shape
    logits = prec_vec @ score_embs.T - torch.log(pop_prob_list[sample_items_id])
    label = torch.arange(bs * (seq_len + 1)).reshape(bs, seq_len + 1)[:, 1:].reshape(-1)
    history = torch.zeros(bs, seq_len + 2, dtype=torch.long)
    history[:, :-1] = sample_items_id.view(bs, -1)
    in_history = (history.unsqueeze(-1) == sample_items_id).any(dim=1).repeat_interleave(seq_len, dim=0)
    logits[torch.scatter(in_history, 1, label.view(-1, 1), False)] = -1e4
    keep = log_mask.reshape(-1) != 0
    return F.cross_entropy(logits[keep], label[keep])


def test_inbatch_softmax_equals_microlens_when_rows_share_no_items():
    # Without repeated items, deduplication changes nothing and the MicroLens formula applies (a repeat,
    # even inside one row, would be two candidates for the other rows there and one here).
    g = torch.Generator().manual_seed(0)
    L, N, D = 4, 30, 8
    perm = torch.randperm(N, generator=g) + 1
    windows = [perm[0:5], perm[5:8], perm[8:10], perm[10:14]]
    batch = collate_train([w.numpy() for w in windows], [1, 2, 3, 4], max_seq_len=L, num_items=N)
    counts = torch.randint(1, 50, (N + 1,), generator=g)
    counts[0] = 0
    emb = torch.randn(N + 1, D, generator=g)
    prec = torch.randn(batch.items.shape[0], L, D, generator=g)
    rows, cols, labels = _targets(batch)
    ours = InBatchSoftmaxLoss(num_items=N, item_train_counts=counts.numpy())(
        prec[rows, cols], emb[batch.unique_items], labels, rows, batch)
    pop = counts.double() / counts.sum()
    pop[0] = 1.0
    log_mask = (torch.arange(L)[None] + 1 < batch.lengths[:, None]).long()
    ref = _microlens_inbatch(prec.reshape(-1, D).double(), emb[batch.items.reshape(-1)].double(),
                             batch.items.reshape(-1), log_mask, pop)
    assert (ours.loss_sum / ours.num_targets).item() == pytest.approx(ref.item(), rel=1e-5)


def _brute_inbatch(states, item_repr, labels, rows, batch, counts, temperature):
    total, uniq = counts[1:].sum(), batch.unique_items.tolist()
    loss = 0.0
    for t in range(len(labels)):
        own = set(batch.items[rows[t]].tolist())
        lab = uniq[labels[t]]
        cands = [u for u in uniq[1:] if u == lab or u not in own]
        logit = {u: float(states[t] @ item_repr[uniq.index(u)]) / temperature - math.log(counts[u] / total)
                 for u in cands}
        loss += _lse(list(logit.values())) - logit[lab]
    return loss


def test_inbatch_softmax_matches_brute_force_on_random_batches():
    rng = np.random.default_rng(1)
    for trial in range(5):
        n, L = 12, 5
        windows = [rng.integers(1, n + 1, size=rng.integers(2, L + 2)) for _ in range(6)]
        batch = collate_train(windows, np.arange(6), max_seq_len=L, num_items=n)
        counts = rng.integers(1, 9, size=n + 1)
        counts[0] = 0
        rows, _, labels = _targets(batch)
        g = torch.Generator().manual_seed(trial)
        states = torch.randn(len(labels), 4, generator=g)
        item_repr = torch.randn(len(batch.unique_items), 4, generator=g)
        out = InBatchSoftmaxLoss(num_items=n, item_train_counts=counts, temperature=0.7)(
            states, item_repr, labels, rows, batch)
        expected = _brute_inbatch(states, item_repr, labels, rows, batch, counts, 0.7)
        assert out.loss_sum.item() == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------- sampled softmax
def _sampled_case():
    # items 1, 2, 3 (targets 2, 3); negatives = ids 2 (the first label: accidental hit), 4, 5
    batch = SequenceBatch(items=torch.tensor([[1, 2, 3]]), lengths=torch.tensor([3]), users=torch.tensor([1]),
                          unique_items=torch.tensor([0, 1, 2, 3, 4, 5]), inverse=torch.tensor([[1, 2, 3]]),
                          negatives=torch.tensor([2, 4, 5]))
    item_repr = torch.tensor([[7.0, 7.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0], [0.5, 0.5]])
    states = torch.tensor([[1.0, 2.0], [0.0, 1.0]])
    return batch, item_repr, states


def test_sampled_softmax_hand_case_uniform():
    batch, item_repr, states = _sampled_case()
    rows, _, labels = _targets(batch)
    loss = SampledSoftmaxLoss(num_items=5, item_train_counts=np.array([0, 1, 1, 1, 1, 1]), sampler="uniform")
    out = loss(states, item_repr, labels, rows, batch)
    c = math.log(3 * (1 / 5))  # log(K q)
    # target 0 (label 2): negative 2 is an accidental hit -> {2; 4, 5}
    t0 = [2.0, -1 - c, 1.5 - c]
    # target 1 (label 3): negative 2 is an own item -> {3; 4, 5}
    t1 = [1.0, 0 - c, 0.5 - c]
    assert out.loss_sum.item() == pytest.approx((_lse(t0) - t0[0]) + (_lse(t1) - t1[0]), rel=1e-6)

    loose = SampledSoftmaxLoss(num_items=5, item_train_counts=np.ones(6, dtype=np.int64), mask_own_items=False,
                               logq_correction=False)
    out = loose(states, item_repr, labels, rows, batch)
    t0 = [2.0, -1, 1.5]  # the accidental hit stays masked
    t1 = [1.0, 1.0, 0.0, 0.5]  # the own item 2 is now a negative
    assert out.loss_sum.item() == pytest.approx((_lse(t0) - t0[0]) + (_lse(t1) - t1[0]), rel=1e-6)


def test_sampled_softmax_popularity_logq():
    batch, item_repr, states = _sampled_case()
    rows, _, labels = _targets(batch)
    counts = np.array([0, 4, 3, 2, 1, 10])  # q(4) = 1/20, q(5) = 10/20
    out = SampledSoftmaxLoss(num_items=5, item_train_counts=counts, sampler="popularity", temperature=2.0)(
        states, item_repr, labels, rows, batch)
    t0 = [1.0, -0.5 - math.log(3 / 20), 0.75 - math.log(30 / 20)]
    t1 = [0.5, 0.0 - math.log(3 / 20), 0.25 - math.log(30 / 20)]
    assert out.loss_sum.item() == pytest.approx((_lse(t0) - t0[0]) + (_lse(t1) - t1[0]), rel=1e-6)


def test_losses_compute_in_fp32_from_bf16_inputs():
    batch, item_repr, states, counts = _inbatch_case()
    rows, _, labels = _targets(batch)
    loss = InBatchSoftmaxLoss(num_items=4, item_train_counts=counts)
    out16 = loss(states.bfloat16(), item_repr.bfloat16(), labels, rows, batch)
    out32 = loss(states.bfloat16().float(), item_repr.bfloat16().float(), labels, rows, batch)
    assert out16.loss_sum.dtype == torch.float32
    torch.testing.assert_close(out16.loss_sum, out32.loss_sum, atol=0, rtol=0)
    loss = loss.to(torch.bfloat16)  # a DeepSpeed bf16 cast must not round the popularity counts
    assert loss.counts.dtype == torch.long


@pytest.mark.parametrize("cfg", [FullSoftmaxConfig(), InBatchSoftmaxConfig(), SampledSoftmaxConfig(num_negatives=3)])
def test_zero_targets_give_zero_loss_with_gradient(cfg):
    loss = LOSSES.build(cfg, num_items=4, item_train_counts=np.array([0, 1, 1, 1, 1]))
    batch = dummy_batch(3, num_items=4, all_items=isinstance(cfg, FullSoftmaxConfig))
    states = torch.zeros(0, 2, requires_grad=True)
    item_repr = torch.randn(len(batch.unique_items), 2, requires_grad=True)
    empty = torch.zeros(0, dtype=torch.long)
    out = loss(states, item_repr, empty, empty, batch)
    assert out.loss_sum.item() == 0.0 and out.num_targets.item() == 0
    out.loss_sum.backward()
    assert item_repr.grad is not None and (item_repr.grad == 0).all()


def test_loss_constructors_reject_bad_counts():
    with pytest.raises(ValueError, match=r"shape \[N\+1\] = \[5\]"):
        InBatchSoftmaxLoss(num_items=4, item_train_counts=np.ones(4, dtype=np.int64))
    with pytest.raises(ValueError, match="negative"):
        SampledSoftmaxLoss(num_items=2, item_train_counts=np.array([0, -1, 1]))
    with pytest.raises(ValueError, match="every item has a train count of 0"):
        SampledSoftmaxLoss(num_items=2, item_train_counts=np.array([0, 0, 0]), sampler="popularity")
    with pytest.raises(ValueError, match="sampler"):
        SampledSoftmaxLoss(num_items=2, item_train_counts=np.array([0, 1, 1]), sampler="zipf")
