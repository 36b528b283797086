"""Full ranking from a score matrix, and the click metrics of one held-out item as functions of its rank.

``full_ranking.target_ranks`` scores users by a dot product with the item representations; a model
whose scorer is an MLP (MTIN's prediction unit) hands its ``[B, N+1]`` scores here instead, and the
ranks follow the same rules: every item 1..N is a candidate, the user's history is excluded, the
target is kept even when it also occurs in the history, padding (id 0) is never a candidate, and
ties count against the target (its rank is the number of other candidates scoring ``>=`` it).

MTIN's metrics (AUC, Precision@K, Recall@K, F1@K; the paper's K = 50) on the leave-one-out
protocol, per user, with its candidate set = the full-ranking list (every item outside the user's
history, plus the held-out target) and one relevant item, the target:

* ``AUC = (negatives - rank) / negatives``: the share of the user's negatives (candidates other
  than the target) scored strictly below the target (ties count against it, as in the ranks);
  1 for a user without negatives;
* ``Precision@K = hit / K`` and ``Recall@K = hit`` with ``hit = [rank < K]``;
* ``F1@K = 2 P R / (P + R) = 2 hit / (K + 1)``.

Each is averaged over users (``click_metric_sums`` returns sums, reduced over ranks by the caller).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["ranks_of_scores", "negatives_per_user", "click_metric_sums"]


def _history_rows(history_offsets: Tensor) -> Tensor:
    counts = history_offsets[1:] - history_offsets[:-1]
    return torch.repeat_interleave(torch.arange(len(counts), device=history_offsets.device), counts)


@torch.no_grad()
def ranks_of_scores(scores: Tensor, targets: Tensor, history_values: Tensor, history_offsets: Tensor) -> Tensor:
    """0-based rank of each user's target among all items 1..N, the user's history excluded.

    Args:
        scores: ``[B, N+1]`` every item's score per user (column 0, padding, is ignored).
        targets: ``LongTensor[B]`` target ids in 1..N.
        history_values: ``LongTensor[H]`` every user's history, concatenated (ids in 1..N).
        history_offsets: ``LongTensor[B+1]``; user b's history is ``history_values[o[b]:o[b+1]]``.

    Returns:
        ``LongTensor[B]``: candidates other than the target, outside the history, scoring ``>=`` it.
    """
    b, n1 = scores.shape
    if targets.shape != (b,) or history_offsets.shape != (b + 1,):
        raise ValueError(f"ranks_of_scores: for B={b} users expected targets [B] and history_offsets [B+1], got "
                         f"{tuple(targets.shape)} and {tuple(history_offsets.shape)}")
    if not torch.isfinite(scores).all():
        raise ValueError("ranks_of_scores: scores contain NaN/inf (a diverged model?)")
    device = scores.device
    targets = targets.to(device)
    scores = scores.float().clone()  # B,N+1
    target_scores = scores.gather(1, targets[:, None])  # B,1
    rows = _history_rows(history_offsets.to(device))
    scores.view(-1).index_fill_(0, rows * n1 + history_values.to(device), float("-inf"))
    scores[:, 0] = float("-inf")
    scores[torch.arange(b, device=device), targets] = float("-inf")  # the target is not its own competitor
    return (scores >= target_scores).sum(1)


@torch.no_grad()
def negatives_per_user(targets: Tensor, history_values: Tensor, history_offsets: Tensor, num_items: int) -> Tensor:
    """Candidates other than the target in each user's full-ranking list: ``N - 1 - |history minus target|``.

    Args:
        targets: ``LongTensor[B]`` target ids.
        history_values: ``LongTensor[H]`` the users' histories, concatenated (repeats allowed).
        history_offsets: ``LongTensor[B+1]``.
        num_items: N.

    Returns:
        ``LongTensor[B]``.
    """
    b = targets.shape[0]
    rows = _history_rows(history_offsets)
    n1 = num_items + 1
    pairs = torch.unique(rows * n1 + history_values)  # distinct (user, item)
    pair_rows, pair_items = pairs // n1, pairs % n1
    keep = pair_items != targets[pair_rows]
    distinct = torch.bincount(pair_rows[keep], minlength=b)
    return num_items - 1 - distinct


def click_metric_sums(ranks: Tensor, negatives: Tensor, k: int) -> dict[str, float]:
    """Sums over users of AUC, Precision@K, Recall@K and F1@K (module docstring).

    Args:
        ranks: ``LongTensor[B]`` 0-based ranks (``ranks_of_scores``).
        negatives: ``LongTensor[B]`` each user's negatives (``negatives_per_user``).
        k: Cut-off K.

    Returns:
        ``{"auc": sum, "precision@K": sum, "recall@K": sum, "f1@K": sum}``; divide by the user count.
    """
    if k < 1:
        raise ValueError(f"cut-off K must be >= 1, got {k}")
    ranks, negatives = ranks.double(), negatives.double()
    auc = torch.where(negatives > 0, (negatives - ranks) / negatives.clamp(min=1), torch.ones_like(ranks))
    hit = (ranks < k).double()
    return {"auc": float(auc.sum()), f"precision@{k}": float(hit.sum()) / k, f"recall@{k}": float(hit.sum()),
            f"f1@{k}": float(hit.sum()) * 2 / (k + 1)}
