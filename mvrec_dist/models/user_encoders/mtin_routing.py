"""MTIN's interest group routing unit (Jiang et al., MM'20, section 4.1): matching scores and Algorithm 1.

* ``CoAttentionMatcher``: the item-group co-attention network, Eq. 2-4, scoring every item j of a
  user's sequence against every row c_g of the user's interest memory M_u.
* ``route_interest_groups``: Algorithm 1 over a whole batch of users at once.

Neither is differentiable, as in the paper: the scores only feed the discrete assignment of items
to groups. Consequence of the equations as written: Eq. 2-4's weights never receive a gradient from
the loss (Eq. 12), so the matcher is frozen at its initialisation (``requires_grad=False``, out of the
optimizer and of the L2 term) and runs under ``no_grad``.

Choices where the paper is silent:

* ``avg_Eg`` (line 6) is the mean of ``p_g<-i`` over the items i currently in group g (their scores
  against that group), the item being routed included if it is a member; for an empty group there is
  no average, and ``xi_g = 1`` (no discount).
* The condition of line 8 reads the discounted score of the chosen group, ``p^(d)_g*<-j > eps``;
  ``eps = None`` drops that half of the condition.
* Items are visited in sequence order and each move takes effect at once (line 9), so a later item
  of the same pass sees the groups as the earlier items left them: the loop runs over positions and
  iterations, and is vectorised over the users of a batch.
* Ties in line 7's argmax go to the lowest group index.
* Line 13 (sort each group by time) is implicit: sequences come in time order, and positions are
  kept.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["CoAttentionMatcher", "route_interest_groups", "ACTIVATIONS"]

ACTIVATIONS = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu}
"""The element-wise sigma of Eq. 2 and 4, by config name."""


class CoAttentionMatcher(nn.Module):
    """Item-group matching scores ``p_g<-j`` (Eq. 2-4), frozen (see the module docstring).

    Eq. 2: ``s_jg = W_s sigma(W_v x_j + b_v + W_u c_g + b_u) + b_s`` (a d-vector);
    Eq. 3: ``x^_j = s_jg * x_j``, ``c^_g = s_jg * c_g``;
    Eq. 4: ``p_g<-j = W_p^h sigma(W_p^l [x^_j, c^_g] + b_p^l) + b_p^h`` (a scalar).

    Args:
        embedding_dim: d.
        activation: sigma, a key of ``ACTIVATIONS``.
        init_std: Std of the normal init of the weights (biases start at 0).
    """

    def __init__(self, *, embedding_dim: int, activation: str = "sigmoid", init_std: float = 0.02) -> None:
        super().__init__()
        d = embedding_dim
        self.activation = ACTIVATIONS[activation]
        self.item = nn.Linear(d, d)  # W_v, b_v
        self.group = nn.Linear(d, d)  # W_u, b_u
        self.gate = nn.Linear(d, d)  # W_s, b_s
        self.hidden = nn.Linear(2 * d, d)  # W_p^l, b_p^l
        self.score = nn.Linear(d, 1)  # W_p^h, b_p^h
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=init_std)
                nn.init.zeros_(m.bias)
        self.requires_grad_(False)

    @torch.no_grad()
    def forward(self, items: Tensor, memory: Tensor) -> Tensor:
        """Matching scores of every item against every group of its user.

        Args:
            items: ``[B, L, D]`` item embeddings x_j.
            memory: ``[B, s, D]`` interest memories M_u (rows c_g).

        Returns:
            ``[B, L, s]`` scores ``p_g<-j`` (detached).
        """
        items, memory = items.detach(), memory.detach()
        s = self.gate(self.activation(self.item(items)[:, :, None] + self.group(memory)[:, None]))  # B,L,s,D
        x_hat = s * items[:, :, None]  # B,L,s,D
        c_hat = s * memory[:, None]  # B,L,s,D
        return self.score(self.activation(self.hidden(torch.cat([x_hat, c_hat], dim=-1)))).squeeze(-1)  # B,L,s


@torch.no_grad()
def route_interest_groups(scores: Tensor, mask: Tensor, *, iterations: int, base: float,
                          threshold: float | None) -> Tensor:
    """Algorithm 1 (interest group routing) for a batch of users.

    Group averages are recomputed from the current members at every visit (not kept as running sums),
    so the result does not depend on the order of earlier floating-point additions and removals.

    Args:
        scores: ``[B, L, s]`` matching scores ``p_g<-j`` (computed in fp32, or fp64 when given fp64).
        mask: ``BoolTensor[B, L]`` real items (padding is never routed).
        iterations: tau, passes over the sequence.
        base: b > 1, base of the discount's logarithm.
        threshold: eps of line 8, or None for none.

    Returns:
        ``LongTensor[B, L]``: the group ``S_j`` of each item, -1 for items in no group (never assigned,
        and every padding position).
    """
    p = scores.detach()
    p = p if p.dtype == torch.float64 else p.float()
    b, length, s = p.shape
    assign = torch.full((b, length), -1, dtype=torch.long, device=p.device)  # line 2: S_j = -1
    member = p.new_zeros(b, length, s)  # member[b, i, g] = 1 when item i is in E_g
    one_hot = torch.eye(s, dtype=p.dtype, device=p.device)
    log_base = math.log(base)
    for _ in range(iterations):
        for j in range(length):  # padding positions are visited as no-ops: no host sync to skip them
            count = member.sum(1)  # B,s
            avg = (member * p).sum(1) / count.clamp(min=1)  # B,s; avg over E_g
            pj = p[:, j]  # B,s
            excess = torch.where(count > 0, (avg - pj).clamp(min=0), 0.0)  # B,s
            # xi_g = log_b(b + excess); exactly 1 without excess (an empty group, or no shortfall).
            xi = torch.where(excess > 0, torch.log(base + excess) / log_base, 1.0)  # B,s
            discounted = pj / xi  # B,s; line 7
            best = discounted.argmax(1)  # B; first maximum on ties
            move = mask[:, j] & (best != assign[:, j])  # line 8
            if threshold is not None:
                move &= discounted.gather(1, best[:, None]).squeeze(1) > threshold
            assign[:, j] = torch.where(move, best, assign[:, j])  # line 9: pop from E_Sj, add to E_g*
            member[:, j] = torch.where(move[:, None], one_hot[best], member[:, j])
    return assign
