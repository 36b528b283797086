"""MTIN's prediction unit and loss (Jiang et al., MM'20, section 4.4, Eq. 12).

Per branch (positive, negative) a two-layer MLP scores ``[q; x_e]``; the logit is the linear
combination ``y = a P(x_e | H_pos) + b P(x_e | H_neg)``. The first layer of each MLP is kept as two
modules, its q columns with the bias (``user``) and its x_e columns (``item``), so that
``W [q; x_e] + b = (W_q q + b) + W_x x_e``: full ranking computes the item half once per evaluation for
all N items and the user half once per user, and only ``ReLU(u + v)`` and the second layer run per
(user, item) pair (``score_all``). Training scores its candidates through the same two halves.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MTINScorer", "click_loss_sum", "eq12_loss"]


class MTINScorer(nn.Module):
    """Two MLPs over ``[q; x_e]`` (positive and negative branch), combined linearly.

    Args:
        embedding_dim: d (width of q and x_e).
        hidden_dim: Width of the MLPs' hidden layer (paper: not given).
        init_std: Std of the normal init of the weights (biases start at 0).
    """

    def __init__(self, *, embedding_dim: int, hidden_dim: int, init_std: float = 0.02) -> None:
        super().__init__()
        self.user = nn.ModuleList(nn.Linear(embedding_dim, hidden_dim) for _ in range(2))  # W_q, b of layer 1
        self.item = nn.ModuleList(nn.Linear(embedding_dim, hidden_dim, bias=False) for _ in range(2))  # W_x
        self.out = nn.ModuleList(nn.Linear(hidden_dim, 1) for _ in range(2))  # layer 2
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=init_std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.combine = nn.Linear(2, 1, bias=False)  # (a, b): y = a P_pos + b P_neg
        with torch.no_grad():
            self.combine.weight.copy_(torch.tensor([[1.0, -1.0]]))

    def user_part(self, q: Tensor) -> Tensor:
        """First-layer half of the users: ``W_q q + b`` per branch.

        Args:
            q: ``[B, 2, D]`` user representations (branch 0 positive, 1 negative).

        Returns:
            ``[B, 2, H]``.
        """
        return torch.stack([self.user[k](q[:, k]) for k in range(2)], 1)  # B,2,H

    def item_part(self, items: Tensor) -> Tensor:
        """First-layer half of the items: ``W_x x_e`` per branch.

        Args:
            items: ``[..., D]`` item embeddings.

        Returns:
            ``[..., 2, H]``.
        """
        return torch.stack([self.item[k](items) for k in range(2)], -2)  # ...,2,H

    def combine_parts(self, user: Tensor, item: Tensor) -> Tensor:
        """Logits from the two halves (broadcast against each other).

        Args:
            user: ``[..., 2, H]`` (``user_part``).
            item: ``[..., 2, H]`` (``item_part``).

        Returns:
            ``[...]`` the logits y.
        """
        hidden = F.relu(user + item)  # ...,2,H
        branch = torch.cat([self.out[k](hidden[..., k, :]) for k in range(2)], -1)  # ...,2: P_pos, P_neg
        return self.combine(branch).squeeze(-1)

    def forward(self, q: Tensor, candidates: Tensor) -> Tensor:
        """Logits of each user's candidates.

        Args:
            q: ``[B, 2, D]`` user representations.
            candidates: ``[B, C, D]`` item embeddings x_e.

        Returns:
            ``[B, C]``.
        """
        return self.combine_parts(self.user_part(q)[:, None], self.item_part(candidates))  # B,C

    def folded_output(self) -> tuple[Tensor, Tensor]:
        """The second layers and the combination folded into one linear map of the hidden layers.

        ``y = a (w_pos . h_pos + c_pos) + b (w_neg . h_neg + c_neg) = [a w_pos; b w_neg] . [h_pos; h_neg] + const``.

        Returns:
            ``(weight [2 H], const [])``.
        """
        a = self.combine.weight[0]  # 2: (a, b)
        weight = torch.cat([a[k] * self.out[k].weight[0] for k in range(2)])  # 2H
        return weight, a[0] * self.out[0].bias[0] + a[1] * self.out[1].bias[0]

    def score_all(self, user: Tensor, items: Tensor, *, item_chunk: int = 256, user_chunk: int = 8) -> Tensor:
        """Logits of every (user, item) pair: the full-ranking scores.

        The pairs are scored in blocks of ``user_chunk x item_chunk``: a block's hidden layers
        (``user_chunk * item_chunk * 2 H`` floats, 2 MiB at 8 x 256 x 256) stay in the CPU's cache
        through ``ReLU(u + v)`` and the folded output (``folded_output``, one matrix-vector product):
        about 10-30x faster than ``combine_parts`` over 64 x 1024 blocks on this project's 2-core
        machine (MicroLens-50K, d = 128: 50,000 users x 19,220 items in 68 s on 2 ranks, the whole
        evaluation). Equal to ``combine_parts`` up to the order of float sums.

        Args:
            user: ``[B, 2, H]`` ``user_part`` of B users.
            items: ``[N, 2, H]`` ``item_part`` of N items, computed once per evaluation.
            item_chunk: Items per block.
            user_chunk: Users per block.

        Returns:
            ``[B, N]``.
        """
        b, n = user.shape[0], items.shape[0]
        weight, const = self.folded_output()
        u, v = user.reshape(b, -1), items.reshape(n, -1)  # B,2H and N,2H (branch-major, as ``weight``)
        out = u.new_empty(b, n)
        for i in range(0, b, user_chunk):
            for j in range(0, n, item_chunk):
                hidden = (u[i:i + user_chunk, None] + v[None, j:j + item_chunk]).relu_()  # b,n,2H
                out[i:i + user_chunk, j:j + item_chunk] = hidden @ weight + const  # b,n
        return out

    def regularized_parameters(self) -> list[nn.Parameter]:
        """The MLPs' weight matrices (their part of Theta in Eq. 12)."""
        return [m.weight for group in (self.user, self.item, self.out) for m in group]


def click_loss_sum(logits: Tensor, labels: Tensor, valid: Tensor) -> Tensor:
    """Eq. 12's data term: ``-(sum_pos log sigmoid(y) + sum_neg log(1 - sigmoid(y)))`` over valid pairs (fp32).

    Args:
        logits: ``[B, C]`` y.
        labels: ``[B, C]`` 1 for a positive (clicked) candidate, 0 for a negative.
        valid: ``BoolTensor[B, C]`` real candidates.

    Returns:
        ``[]`` the sum (divide by the global count of valid pairs for a mean).
    """
    per_pair = F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none")
    return (per_pair * valid).sum()


def eq12_loss(logits: Tensor, labels: Tensor, valid: Tensor, *, l2_sq: Tensor, lam: float) -> Tensor:
    """Eq. 12 as written: the summed log loss plus ``lambda ||Theta||_2^2``.

    Args:
        logits: ``[B, C]`` y.
        labels: ``[B, C]`` 1 (positive) or 0 (negative).
        valid: ``BoolTensor[B, C]`` real candidates.
        l2_sq: ``[]`` ``||Theta||_2^2`` (``MTIN.l2_penalty()``).
        lam: lambda.

    Returns:
        ``[]`` the loss.
    """
    return click_loss_sum(logits, labels, valid) + lam * l2_sq
