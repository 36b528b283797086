"""Tests of mvrec_dist.models.user_encoders.mtin: Eq. 5-11 by hand, memory I/O, gradients, learning."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from mvrec_dist.config.mtin import MTINConfig
from mvrec_dist.models.user_encoders.mtin import (MEMORY_TABLE, MTIN, History, TemporalMaskNetwork, eq12_loss,
                                                  group_distances, interest_mask, memory_row_ids, memory_table_spec,
                                                  mtin, temporal_mask)
from mvrec_dist.models.user_encoders.mtin_routing import route_interest_groups

D = 8
CFG = MTINConfig(num_groups=3, num_temporal_masks=2)
EXACT = {"atol": 1e-12, "rtol": 0.0}  # fp64 comparisons of the same arithmetic in another order
FP32 = {"atol": 1e-6, "rtol": 1e-5}  # fp32 results that must not depend on batch neighbours or padding


def _model(cfg: MTINConfig = CFG, seed: int = 0, init_std: float = 0.3) -> MTIN:
    torch.manual_seed(seed)
    return mtin(cfg, embedding_dim=D, init_std=init_std)


def _inputs(b: int = 4, length: int = 6, c: int = 3, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, length + 1, (2, b), generator=g)
    masks = [torch.arange(length)[None] < lengths[i][:, None] for i in range(2)]
    pos = History(torch.randn(b, length, D, generator=g, dtype=dtype), masks[0])
    neg = History(torch.randn(b, length, D, generator=g, dtype=dtype), masks[1])
    memory = torch.randn(b, 2, CFG.num_groups, D, generator=g, dtype=dtype) * 0.5
    candidates = torch.randn(b, c, D, generator=g, dtype=dtype)
    return pos, neg, memory, candidates


# ---------------------------------------------------------------- Eq. 6 and Eq. 9
def test_temporal_mask_is_eq_6_by_hand():
    # groups: g0 = positions (0, 2, 4), g1 = (1, 5), position 3 in no group.
    groups = torch.tensor([[0, 1, 0, -1, 0, 1]])
    decay = torch.tensor([0.5, 2.0], dtype=torch.float64)
    before, distance = group_distances(groups)
    mask = temporal_mask(before, distance.double(), decay)[0]  # p,L,L
    expect = torch.zeros(2, 6, 6, dtype=torch.float64)
    for k, w in enumerate([0.5, 2.0]):
        expect[k, 2, 0] = math.exp(-1 * w)  # g0: 2nd after 1st
        expect[k, 4, 0] = math.exp(-2 * w)  # g0: 3rd after 1st
        expect[k, 4, 2] = math.exp(-1 * w)  # g0: 3rd after 2nd
        expect[k, 5, 1] = math.exp(-1 * w)  # g1: 2nd after 1st
    torch.testing.assert_close(mask, expect, **EXACT)

    # Timestamps (ms) over a day: the distance is in days, whatever the within-group positions.
    day = 86_400_000.0
    times = torch.tensor([[0, 5, 1.5 * day, 2 * day, 4 * day, 5 + 0.25 * day]], dtype=torch.float64)
    before, distance = group_distances(groups, times, timestamps_per_unit=day)
    mask = temporal_mask(before, distance.double(), decay)[0]
    expect.zero_()
    for k, w in enumerate([0.5, 2.0]):
        expect[k, 2, 0], expect[k, 4, 0], expect[k, 4, 2] = math.exp(-1.5 * w), math.exp(-4 * w), math.exp(-2.5 * w)
        expect[k, 5, 1] = math.exp(-0.25 * w)
    torch.testing.assert_close(mask, expect, atol=1e-7, rtol=0)  # the distance is computed in fp32

    # A year between two items of one group: the reversed pair's exp(+365 w) overflows fp32; the mask
    # stays Eq. 6 on the ordered pair and 0 (not NaN) elsewhere.
    times = torch.tensor([[0, 0, 365 * day, 0, 365 * day, 0]], dtype=torch.float64)
    before, distance = group_distances(groups, times, timestamps_per_unit=day)
    mask = temporal_mask(before, distance, decay.float())[0]
    assert torch.isfinite(mask).all() and mask[0, 2, 0] == torch.exp(torch.tensor(-365 * 0.5)) and mask[0, 0, 2] == 0


def test_interest_mask_is_exactly_0_1_per_eq_9():
    tau = 0.25
    w = torch.cat([torch.rand(200, generator=torch.Generator().manual_seed(0)), torch.tensor([tau, 0.0, 1.0])])
    mask = interest_mask(w.requires_grad_(), tau)
    assert set(mask.unique().tolist()) <= {0.0, 1.0} and mask.grad_fn is None
    off = w != tau
    eq9 = torch.clamp(w[off] - tau, min=0) / (w[off] - tau)  # the formula where it is defined
    assert torch.equal(mask[off], eq9.detach())
    assert mask[w == tau].tolist() == [0.0]  # 0/0: the text's "otherwise 0"


# ---------------------------------------------------------------- Eq. 5-7, literal per group
def _eq5_to_7(net: TemporalMaskNetwork, x: torch.Tensor, groups: list[int], s: int) -> torch.Tensor:
    """Eq. 5-7 for one user: a loop over each group's items in time order."""
    reps = []
    for g in range(s):
        xs = x[[i for i, a in enumerate(groups) if a == g]]  # E_g, sorted by time
        parts = []
        for k in range(net.bilinear.shape[0]):
            r_k = torch.zeros(x.shape[1], dtype=x.dtype)
            for i in range(len(xs)):
                for j in range(len(xs)):
                    if i > j:
                        q = xs[i] @ net.bilinear[k] @ xs[j]  # Eq. 5
                        p = math.exp(-(i - j) * net.decay[k].item())  # Eq. 6
                        r_k = r_k + p * q * xs[j]  # M_ij x_j summed into m_i, m_i summed into r_g^k
            parts.append(r_k)
        reps.append(net.mlp(torch.cat(parts)))  # r_g
    return torch.stack(reps)


def test_temporal_network_matches_eq_5_to_7_per_group():
    torch.manual_seed(0)
    net = TemporalMaskNetwork(embedding_dim=D, num_masks=3, decay_init=(1.0, 0.1), init_std=0.3).double()
    x = torch.randn(2, 7, D, dtype=torch.float64)
    groups = torch.tensor([[0, 2, 0, -1, 0, 2, 0], [1, 1, -1, -1, -1, -1, -1]])  # user 1: groups 0 and 2 empty
    got = net(x, groups, 4)  # group 3 empty for both
    for u in range(2):
        torch.testing.assert_close(got[u], _eq5_to_7(net, x[u], groups[u].tolist(), 4), **EXACT)
    empty = net.mlp(torch.zeros(3 * D, dtype=torch.float64))
    torch.testing.assert_close(got[1, 0], empty, **EXACT)  # an empty group is MLP(0), as Eq. 7 gives


def test_decay_init_is_log_spaced_and_positive():
    net = TemporalMaskNetwork(embedding_dim=D, num_masks=3, decay_init=(1.0, 0.01), init_std=0.02)
    torch.testing.assert_close(net.decay, torch.tensor([1.0, 0.1, 0.01]), atol=1e-7, rtol=1e-5)


# ---------------------------------------------------------------- Eq. 8-11 and the memory update
def test_branch_update_is_eq_8_to_11():
    model = _model().double()
    pos, _, memory, _ = _inputs(dtype=torch.float64)
    branch, c = model.branches[0], memory[:, 0]
    q, updated, groups = branch(pos, c)
    cfg = branch.cfg
    expect_groups = route_interest_groups(branch.matcher(pos.items * pos.mask[..., None], c), pos.mask,
                                          iterations=cfg.routing_iterations, base=cfg.routing_base,
                                          threshold=cfg.routing_threshold)
    assert torch.equal(groups, expect_groups)
    r = branch.temporal(pos.items * pos.mask[..., None], groups, cfg.num_groups)
    tau = 1 / cfg.num_groups  # interest_threshold None -> 1/s
    for b in range(c.shape[0]):
        for p in range(cfg.num_groups):
            logits = torch.stack([c[b, p] @ branch.interest @ r[b, g] for g in range(cfg.num_groups)])  # Eq. 8
            w = torch.softmax(logits, 0)
            h = sum((1.0 if w[g] > tau else 0.0) * r[b, g] for g in range(cfg.num_groups))  # Eq. 9-10
            torch.testing.assert_close(updated[b, p], c[b, p] + r[b, p] + h, **EXACT)  # c_p += r_p + h_p
    torch.testing.assert_close(q, updated.sum(1), **EXACT)  # Eq. 11 over the updated memory
    assert not updated.requires_grad


def test_memory_rows_round_trip_and_table_spec():
    model = _model()
    pos, neg, memory, cand = _inputs()
    out = model(pos, neg, memory, cand)
    rows = memory.reshape(memory.shape[0], -1)  # [B, 2 s D] as the table holds them
    out_rows = model(pos, neg, rows, cand)
    torch.testing.assert_close(out_rows.logits, out.logits, atol=0, rtol=0)
    assert out.memory.shape == memory.shape == (4, *model.memory_shape())
    spec = memory_table_spec(CFG, num_users=10, embedding_dim=D, init_std=0.02, seed=3)
    assert (spec.name, spec.num_embeddings, spec.embedding_dim, spec.keyed_by, spec.pooled, spec.state) == \
        (MEMORY_TABLE, 11 * 2 * CFG.num_groups, D, "user", False, True)
    assert spec.features == ("user_id",)
    # User u's 2 s rows of width d, in (branch, group) order, read back as its [2 s d] memory.
    table = memory.new_zeros(spec.num_embeddings, D)
    users = torch.tensor([3, 1, 5, 7])
    table[memory_row_ids(users, CFG)] = memory.reshape(-1, D)
    torch.testing.assert_close(table[memory_row_ids(users[:2], CFG)].reshape(2, -1), rows[:2], atol=0, rtol=0)
    assert memory_row_ids(torch.tensor([2]), CFG).tolist() == list(range(4 * CFG.num_groups, 6 * CFG.num_groups))


def test_timestamp_distance_needs_times():
    model = _model(dataclasses.replace(CFG, time_distance="timestamp"))
    pos, neg, memory, cand = _inputs()
    with pytest.raises(ValueError, match="timestamps"):
        model(pos, neg, memory, cand)
    times = torch.arange(6.0)[None].expand(4, 6) * 3_600_000  # an hour apart
    out = model(pos._replace(times=times), neg._replace(times=times), memory, cand)
    assert torch.isfinite(out.logits).all()


# ---------------------------------------------------------------- batching, padding
def test_rows_do_not_depend_on_batch_neighbours_or_padding():
    model = _model()
    pos, neg, memory, cand = _inputs(b=5, seed=3)
    out = model(pos, neg, memory, cand)
    for b in range(5):
        one = model(History(pos.items[b:b + 1], pos.mask[b:b + 1]), History(neg.items[b:b + 1], neg.mask[b:b + 1]),
                    memory[b:b + 1], cand[b:b + 1])
        torch.testing.assert_close(one.logits, out.logits[b:b + 1], **FP32)
        torch.testing.assert_close(one.memory, out.memory[b:b + 1], **FP32)
    # Garbage in the padding and extra padding positions change nothing.
    def noisy(h: History) -> History:
        items = torch.cat([h.items, torch.zeros(5, 3, D)], 1)
        mask = torch.cat([h.mask, torch.zeros(5, 3, dtype=torch.bool)], 1)
        return History(torch.where(mask[..., None], items, torch.randn_like(items) * 100), mask)
    padded = model(noisy(pos), noisy(neg), memory, cand)
    torch.testing.assert_close(padded.logits, out.logits, **FP32)
    torch.testing.assert_close(padded.memory, out.memory, **FP32)
    assert [torch.equal(g[:, :6], h) for g, h in zip(padded.groups, out.groups)] == [True, True]


# ---------------------------------------------------------------- gradients and learning
def test_gradients_reach_trained_parts_but_not_routing_or_interest_mask():
    model = _model()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in model.named_parameters() if ".matcher." in n or n.endswith(".interest")}
    for n, p in model.named_parameters():  # let autograd try: routing and Eq. 9 still pass no gradient
        p.requires_grad_(True)
    pos, neg, memory, cand = _inputs()
    pos = pos._replace(items=pos.items.requires_grad_())
    memory.requires_grad_()
    out = model(pos, neg, memory, cand)
    labels = torch.tensor([[1.0, 0.0, 1.0]]).expand(4, 3)
    eq12_loss(out.logits, labels, torch.ones(4, 3, dtype=torch.bool), l2_sq=model.l2_penalty(), lam=1e-4).backward()
    for n, p in model.named_parameters():
        if n in frozen:
            assert p.grad is None, n
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, n
    assert pos.items.grad.abs().sum() > 0  # item embeddings train through Eq. 5-7
    assert memory.grad is None  # the memory is state, written by the update rule only
    assert all(g.grad_fn is None for g in out.groups) and out.memory.grad_fn is None


def test_l2_covers_exactly_the_trained_weight_matrices():
    model = _model()
    theta = {id(p) for p in model.regularized_parameters()}
    names = {n for n, p in model.named_parameters() if id(p) in theta}
    assert names == {n for n, p in model.named_parameters()
                     if p.requires_grad and p.dim() >= 2 and not n.startswith("scorer.combine")}
    expect = sum(float(p.detach().double().pow(2).sum()) for p in model.regularized_parameters())
    assert model.l2_penalty().item() == pytest.approx(expect, rel=1e-6)


def test_adam_steps_lower_the_loss_with_memory_written_back():
    """A tiny synthetic problem: users click items of their own cluster, not the other cluster's."""
    torch.manual_seed(0)
    cfg = MTINConfig(num_groups=2, num_temporal_masks=2)
    model = mtin(cfg, embedding_dim=D, init_std=0.3)
    items = torch.nn.Embedding(21, D)  # item 0 = padding; items 1-10 cluster A, 11-20 cluster B
    torch.nn.init.normal_(items.weight, std=0.3)
    g = torch.Generator().manual_seed(1)
    b, length = 16, 6
    own = torch.where(torch.arange(b) % 2 == 0, 1, 11)[:, None]  # cluster offset per user
    other = 12 - own
    pos_ids = own + torch.randint(0, 10, (b, length), generator=g)
    neg_ids = other + torch.randint(0, 10, (b, length), generator=g)
    cand = torch.cat([own + torch.randint(0, 10, (b, 2), generator=g),
                      other + torch.randint(0, 10, (b, 2), generator=g)], 1)  # 2 clicked, 2 not
    labels = torch.tensor([1.0, 1.0, 0.0, 0.0]).expand(b, 4)
    valid = torch.ones(b, 4, dtype=torch.bool)
    mask = torch.ones(b, length, dtype=torch.bool)
    memory = torch.randn(b, 2, cfg.num_groups, D, generator=g) * 0.3  # the table rows of these users
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad] + list(items.parameters()), lr=1e-2)
    losses = []
    for _ in range(40):
        out = model(History(items(pos_ids), mask), History(items(neg_ids), mask), memory, items(cand))
        loss = eq12_loss(out.logits, labels, valid, l2_sq=model.l2_penalty(), lam=cfg.l2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        memory = out.memory  # written back
        losses.append(loss.item())
    # Below 64 ln 2 = 44.4 (the best loss without personalisation: the clusters swap between users) only
    # through the histories, i.e. through Eq. 5-11.
    assert losses[-1] < 0.6 * 64 * math.log(2), losses
