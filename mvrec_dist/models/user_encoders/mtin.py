"""MTIN: multi-scale time-aware user interest modeling (Jiang et al., MM'20, section 4), unsharded.

One branch (``MTINBranch``) per interaction sequence, positive (clicked) and negative (shown, not
clicked; or sampled non-interacted items where a dataset has no exposures), each with its own
parameters and its own memory M_u (s x d):

1. routing (``mtin_routing``): co-attention matching scores (Eq. 2-4) of the user's items against the
   rows c_g of M_u, then Algorithm 1 assigns each item to a group or to none;
2. item-level temporal mask network (Eq. 5-7): within each group, in time order,
   ``m_i^k = sum_j P_ij^k Q_ij^k x_j`` with ``Q_ij^k = x_i^T W^k x_j`` and ``P_ij^k = exp(-(i-j) w_k)``
   for i > j (else 0), ``r_g^k = sum_i m_i^k``, ``r_g = MLP([r_g^1, ..., r_g^p])``;
3. group-level interest mask (Eq. 8-10): ``w_pg = softmax_g(c_p^T W_h r_g)``, the 0/1 mask
   ``w^_pg = [w_pg > tau]``, ``h_p = sum_g w^_pg r_g``;
4. memory update (end of 4.3): ``c_p <- c_p + (r_p + h_p)`` (item- and group-level interest sum-pooled,
   then added to the row), and ``q = sum_p c_p`` (Eq. 11) over the updated rows.

The prediction unit (``MTINScorer``, 4.4) is, per branch, a two-layer MLP over ``[q; x_e]``; the two
branch scores are combined linearly into the logit ``y``. Loss: Eq. 12 (``eq12_loss``).

The memory is the model's input and output, not a parameter: the caller looks up a user's
``2 * s * d`` floats (both branches) in a user-keyed table (``memory_table_spec``: ``2 s`` consecutive
rows of width d per user, ``memory_row_ids``) and writes the returned memory back, so it can live in
a row-wise sharded TorchRec table beside the item table.

Where the paper is ambiguous, this implementation chooses (and the config documents the numbers):

* The two branches have their own parameters and memories ("treats ... separately", end of 4.3).
  Eq. 2-4 and Eq. 8 read the memory as looked up; the paper's p is both the number of masks (4.2)
  and a group index (4.3): here the masks are ``k = 1..p`` and groups ``g = 1..s``.
* Time distance of Eq. 6: the gap of positions inside the group (``i``, ``j`` index the group's
  mask), or, as an option, the gap of timestamps in ``timestamps_per_unit`` (days by default).
* ``W_g^k`` of Eq. 5 is one matrix per mask k shared by all groups: groups are per-user slots with no
  meaning shared across users. ``w_k`` are learned (``w_k = exp(theta_k) > 0``), initialised log-spaced.
* The MLP of Eq. 7 is ``Linear(p d, d) -> ReLU -> Linear(d, d)``; an empty group has ``r_g^k = 0``
  (empty sums), hence ``r_g = MLP(0)``, as Eq. 7 gives; so does a one-item group (Eq. 6 is strictly
  lower triangular).
* Eq. 9 is 0/0 at ``w = tau``; the text's reading is used: 1 when ``w > tau``, else 0. The mask is
  piecewise constant, so ``W_h`` of Eq. 8 never receives a gradient: it is frozen at its init,
  like the co-attention network (``mtin_routing``), and both are left out of Eq. 12's L2 term (under
  the L2 term alone Adam would drive them to zero and collapse routing and mask).
* M_u is "pretrained" in the paper without saying how; here it starts from the table's random init
  and is updated only by the rule above (the paper's MTIN-P ablation). The prediction reads the
  updated memory (otherwise nothing before 4.4 would get a gradient); the memory written back is
  detached. As written the update is additive, so a row grows with every visit of its user, and an
  empty group still receives ``MLP(0) + h``; a row whose histories are both empty (a dummy row) is
  not written back by the caller.
* The prediction MLPs are ``Linear(2d, d) -> ReLU -> Linear(d, 1)``; the linear combination is
  ``y = a P_pos + b P_neg`` with learned a, b initialised to 1 and -1 (similarity to negatives
  lowers the click score).
* Theta of Eq. 12 is the weight matrices of the trained parts (temporal masks, group MLP, prediction
  MLPs): biases, ``w_k`` and a, b are not regularised.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mvrec_dist.config.mtin import MTINConfig
from mvrec_dist.models.tables import TableSpec
from mvrec_dist.models.user_encoders.mtin_routing import CoAttentionMatcher, route_interest_groups
from mvrec_dist.models.user_encoders.mtin_scorer import MTINScorer, click_loss_sum, eq12_loss

__all__ = ["History", "UserState", "MTINOutput", "TemporalMaskNetwork", "MTINBranch", "MTIN", "MTINScorer",
           "click_loss_sum", "eq12_loss", "temporal_mask", "interest_mask", "group_distances", "mtin",
           "memory_table_spec", "memory_row_ids", "MEMORY_TABLE", "USER_FEATURE"]

MEMORY_TABLE = "mtin_memory"
USER_FEATURE = "user_id"


class History(NamedTuple):
    """One interaction sequence of a batch of users (positive or negative), in time order."""

    items: Tensor
    """``[B, L, D]`` item embeddings x_j."""
    mask: Tensor
    """``BoolTensor[B, L]`` real items (right padding, or any pattern)."""
    times: Tensor | None = None
    """``[B, L]`` timestamps (needed for ``time_distance='timestamp'`` only)."""


class UserState(NamedTuple):
    """What the two branches make of a user's histories and memory."""

    q: Tensor
    """``[B, 2, D]`` user interest representations (Eq. 11; branch 0 positive, 1 negative)."""
    memory: Tensor
    """``[B, 2, s, D]`` updated memories, detached: what the caller writes back."""
    groups: tuple[Tensor, Tensor]
    """``LongTensor[B, L]`` group of each item per branch (-1: none), for inspection."""


class MTINOutput(NamedTuple):
    """``MTIN.forward``'s result."""

    logits: Tensor
    """``[B, C]`` y of each candidate (the click probability is its sigmoid)."""
    memory: Tensor
    """``[B, 2, s, D]`` updated memories, detached."""
    groups: tuple[Tensor, Tensor]
    """``LongTensor[B, L]`` per branch: the routing's assignment (-1: none)."""


def group_distances(groups: Tensor, times: Tensor | None = None, *, timestamps_per_unit: float = 1.0
                    ) -> tuple[Tensor, Tensor]:
    """Which item pairs share a group with j before i, and their time distance (i - j) of Eq. 6.

    Args:
        groups: ``LongTensor[B, L]`` group per item (-1: none), items in time order.
        times: ``[B, L]`` timestamps, or None for positions inside the group.
        timestamps_per_unit: Timestamp ticks per unit of distance (with ``times``).

    Returns:
        ``(before[B, L, L] bool, distance[B, L, L] float)``: ``before[b, i, j]`` when items i and j are
        in the same group and j comes first; ``distance`` is meaningful where ``before`` holds.
    """
    length = groups.shape[1]
    assigned = groups >= 0
    earlier = torch.ones(length, length, dtype=torch.bool, device=groups.device).tril(-1)  # j < i
    before = (groups[:, :, None] == groups[:, None, :]) & assigned[:, :, None] & earlier  # B,L,L
    if times is None:
        rank = before.sum(-1).float()  # B,L; earlier items of the own group = position inside it
        distance = rank[:, :, None] - rank[:, None, :]  # B,L,L
    else:
        t = times.double()  # ms timestamps exceed fp32's exact integers
        distance = ((t[:, :, None] - t[:, None, :]) / timestamps_per_unit).float()  # B,L,L
    return before, distance


def temporal_mask(before: Tensor, distance: Tensor, decay: Tensor) -> Tensor:
    """Eq. 6: ``P_ij^k = exp(-(i - j) w_k)`` where j precedes i in the group, else 0.

    Args:
        before: ``BoolTensor[B, L, L]`` pairs (i, j) of one group with j first.
        distance: ``[B, L, L]`` their distance (i - j).
        decay: ``[p]`` coefficients w_k.

    Returns:
        ``[B, p, L, L]``.
    """
    # Pairs outside ``before`` have j after i, a negative distance: exp of a large positive gap would be inf,
    # and inf * 0 a NaN. Their distance is clamped to 0 first; they are zeroed by the mask anyway.
    gap = distance.clamp(min=0)[:, None]  # B,1,L,L
    return torch.exp(-gap * decay[None, :, None, None]) * before[:, None]  # B,p,L,L


def interest_mask(weights: Tensor, tau: float) -> Tensor:
    """Eq. 9: ``max(w - tau, 0) / (w - tau)``, i.e. 1 where ``w > tau`` and 0 elsewhere (also at w = tau).

    Args:
        weights: Attention weights w (any shape).
        tau: The threshold.

    Returns:
        A 0/1 tensor of ``weights``' shape and dtype, without gradient.
    """
    return (weights.detach() > tau).to(weights.dtype)


class TemporalMaskNetwork(nn.Module):
    """Item-level temporal mask network (Eq. 5-7): the representation r_g of every group.

    Args:
        embedding_dim: d.
        num_masks: p.
        decay_init: ``(first, last)``: initial w_k, log-spaced.
        init_std: Std of the normal init of the weights (biases start at 0).
    """

    def __init__(self, *, embedding_dim: int, num_masks: int, decay_init: tuple[float, float],
                 init_std: float) -> None:
        super().__init__()
        d = embedding_dim
        self.bilinear = nn.Parameter(torch.randn(num_masks, d, d) * init_std)  # W^k of Eq. 5
        first, last = (math.log(w) for w in decay_init)
        self.log_decay = nn.Parameter(torch.linspace(first, last, num_masks))  # log w_k
        self.mlp = nn.Sequential(nn.Linear(num_masks * d, d), nn.ReLU(), nn.Linear(d, d))
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=init_std)
                nn.init.zeros_(m.bias)

    @property
    def decay(self) -> Tensor:
        """``[p]`` the coefficients w_k (> 0)."""
        return self.log_decay.exp()

    def forward(self, items: Tensor, groups: Tensor, num_groups: int, times: Tensor | None = None,
                timestamps_per_unit: float = 1.0) -> Tensor:
        """Group representations.

        Args:
            items: ``[B, L, D]`` x_j (padding and unassigned items contribute nothing).
            groups: ``LongTensor[B, L]`` group per item (-1: none).
            num_groups: s.
            times: ``[B, L]`` timestamps for time distances, or None for position gaps.
            timestamps_per_unit: Timestamp ticks per unit of distance.

        Returns:
            ``[B, s, D]`` r_g.
        """
        b, length, d = items.shape
        before, distance = group_distances(groups, times, timestamps_per_unit=timestamps_per_unit)
        mask = temporal_mask(before, distance.to(items.dtype), self.decay.to(items.dtype))  # B,p,L,L
        xw = torch.einsum("bid,kde->bkie", items, self.bilinear)  # B,p,L,D
        q = xw @ items[:, None].transpose(-1, -2)  # B,p,L,L; Q_ij^k = x_i^T W^k x_j
        m = (mask * q) @ items[:, None]  # B,p,L,D; m_i^k
        member = F.one_hot(groups.clamp(min=0), num_groups).to(items.dtype) * (groups >= 0)[..., None]  # B,L,s
        r = torch.einsum("big,bkid->bgkd", member, m)  # B,s,p,D; r_g^k
        return self.mlp(r.reshape(b, num_groups, -1))  # B,s,D


class MTINBranch(nn.Module):
    """Routing, temporal masks, interest mask and memory update for one sequence (positive or negative).

    Args:
        cfg: The MTIN settings.
        embedding_dim: d.
        init_std: Std of the normal init of the weights.
    """

    def __init__(self, cfg: MTINConfig, *, embedding_dim: int, init_std: float) -> None:
        super().__init__()
        self.cfg = cfg
        self.matcher = CoAttentionMatcher(embedding_dim=embedding_dim, activation=cfg.coattention_activation,
                                          init_std=init_std)
        self.temporal = TemporalMaskNetwork(embedding_dim=embedding_dim, num_masks=cfg.num_temporal_masks,
                                            decay_init=cfg.decay_init, init_std=init_std)
        # W_h of Eq. 8: frozen, Eq. 9 passes it no gradient (module docstring).
        self.interest = nn.Parameter(torch.randn(embedding_dim, embedding_dim) * init_std, requires_grad=False)

    def forward(self, history: History, memory: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One branch of one batch.

        Args:
            history: The sequence (``times`` required when ``time_distance='timestamp'``).
            memory: ``[B, s, D]`` M_u before the update.

        Returns:
            ``(q[B, D], memory[B, s, D] updated and detached, groups[B, L])``.
        """
        cfg = self.cfg
        memory = memory.detach().to(history.items.dtype)  # state, written by the update rule only
        items = history.items.masked_fill(~history.mask[..., None], 0.0)  # B,L,D
        times = None
        if cfg.time_distance == "timestamp":
            if history.times is None:
                raise ValueError("MTIN: time_distance='timestamp' needs the histories' timestamps")
            times = history.times
        groups = route_interest_groups(self.matcher(items, memory), history.mask,
                                       iterations=cfg.routing_iterations, base=cfg.routing_base,
                                       threshold=cfg.routing_threshold)  # B,L
        r = self.temporal(items, groups, cfg.num_groups, times, cfg.timestamps_per_unit)  # B,s,D; Eq. 7
        logits = torch.einsum("bpd,de,bge->bpg", memory, self.interest, r)  # B,s,s; Eq. 8
        keep = interest_mask(logits.softmax(-1), cfg.interest_tau)  # B,s,s; Eq. 9
        h = keep @ r  # B,s,D; Eq. 10
        updated = memory + (r + h)  # B,s,D; c_p + sum-pooled item- and group-level interest
        return updated.sum(1), updated.detach(), groups  # Eq. 11


class MTIN(nn.Module):
    """The whole model: positive and negative branches and the prediction unit.

    Args:
        cfg: The MTIN settings.
        embedding_dim: d (``model.embedding_dim``; paper: 128).
        init_std: Std of the normal init of the weights (biases start at 0).
    """

    def __init__(self, cfg: MTINConfig, *, embedding_dim: int, init_std: float = 0.02) -> None:
        super().__init__()
        self.cfg = cfg
        self.embedding_dim = embedding_dim
        self.branches = nn.ModuleList(MTINBranch(cfg, embedding_dim=embedding_dim, init_std=init_std)
                                      for _ in range(2))  # positive, negative
        self.scorer = MTINScorer(embedding_dim=embedding_dim, hidden_dim=embedding_dim, init_std=init_std)

    def memory_shape(self) -> tuple[int, int, int]:
        """``(2, s, D)``: one user's memory; its table row holds ``2 * s * D`` floats in this order."""
        return (2, self.cfg.num_groups, self.embedding_dim)

    def user_state(self, positive: History, negative: History, memory: Tensor) -> UserState:
        """Route, mask and update both branches.

        Args:
            positive: Clicked items (H_pos).
            negative: Shown-but-not-clicked, or sampled non-interacted, items (H_neg).
            memory: ``[B, 2, s, D]`` the users' memories (``[B, 2 s D]`` table rows are reshaped).

        Returns:
            ``UserState``.
        """
        memory = memory.reshape(memory.shape[0], *self.memory_shape())
        outs = [branch(history, memory[:, i]) for i, (branch, history) in
                enumerate(zip(self.branches, (positive, negative)))]
        return UserState(q=torch.stack([o[0] for o in outs], 1), memory=torch.stack([o[1] for o in outs], 1),
                         groups=(outs[0][2], outs[1][2]))

    def forward(self, positive: History, negative: History, memory: Tensor, candidates: Tensor) -> MTINOutput:
        """Logits of candidate items for each user, and the updated memories.

        Args:
            positive: Clicked items (H_pos).
            negative: Shown-but-not-clicked, or sampled non-interacted, items (H_neg).
            memory: ``[B, 2, s, D]`` (or ``[B, 2 s D]``) the users' memories, as looked up.
            candidates: ``[B, C, D]`` embeddings x_e of the items to score.

        Returns:
            ``MTINOutput``.
        """
        state = self.user_state(positive, negative, memory)
        return MTINOutput(self.scorer(state.q, candidates), state.memory, state.groups)

    def regularized_parameters(self) -> list[nn.Parameter]:
        """Theta of Eq. 12: the weight matrices of the trained parts (module docstring)."""
        params = [p for branch in self.branches for p in
                  [branch.temporal.bilinear] + [m.weight for m in branch.temporal.mlp if isinstance(m, nn.Linear)]]
        return params + self.scorer.regularized_parameters()

    def l2_penalty(self) -> Tensor:
        """``||Theta||_2^2`` (fp32)."""
        return sum(p.float().pow(2).sum() for p in self.regularized_parameters())


def mtin(cfg: MTINConfig, *, embedding_dim: int, init_std: float) -> MTIN:
    """Build MTIN from its config (draws from the global torch RNG: seed it first).

    Args:
        cfg: The MTIN settings.
        embedding_dim: d.
        init_std: Std of the normal weight init.

    Returns:
        The model.
    """
    return MTIN(cfg, embedding_dim=embedding_dim, init_std=init_std)


def memory_table_spec(cfg: MTINConfig, *, num_users: int, embedding_dim: int, init_std: float,
                      seed: int = 0) -> TableSpec:
    """The per-user memory table: a sequence table keyed by user, ``2 s`` rows of width d per user.

    User u's memory ``[2, s, d]`` (branch, group) is rows ``2 s u .. 2 s u + 2 s - 1`` in that order
    (``memory_row_ids``), not one ``2 s d`` row: TorchRec's ``EmbeddingCollection`` holds tables of one
    width, and this way the memory shares the item table's collection (one lookup, one all-to-all).
    A row-wise shard holds whole users except at its boundaries, which the per-row write-back does not mind.

    Args:
        cfg: The MTIN settings.
        num_users: Users (dense ids 1..num_users; user 0 is the padding/dummy user).
        embedding_dim: d.
        init_std: Std of the rows' random init (the memory's starting point, see the module docstring).
        seed: Init seed of the table.

    Returns:
        The ``TableSpec`` (``mtin_memory``, feature ``user_id``), a state table: written back by the
        update rule, never learnt (``TableSpec.state``).
    """
    return TableSpec(name=MEMORY_TABLE, num_embeddings=(num_users + 1) * 2 * cfg.num_groups,
                     embedding_dim=embedding_dim, features=(USER_FEATURE,), keyed_by="user", init_std=init_std,
                     seed=seed, state=True)


def memory_row_ids(users: Tensor, cfg: MTINConfig) -> Tensor:
    """The memory-table rows of ``users`` (``memory_table_spec``), user by user.

    Args:
        users: ``LongTensor[B]`` dense user ids.
        cfg: The MTIN settings.

    Returns:
        ``LongTensor[B * 2 s]``; their lookup ``[B * 2 s, d]`` reshaped to ``[B, 2 s d]`` is ``MTIN``'s memory input.
    """
    per_user = 2 * cfg.num_groups
    return (users[:, None] * per_user + torch.arange(per_user, device=users.device)).reshape(-1)
