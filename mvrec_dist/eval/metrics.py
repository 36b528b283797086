"""Ranking metrics as pure functions of the target's 0-based rank among all candidates.

MicroLens protocol (westlake-repl/MicroLens ``Code/VideoRec/SASRec/utils/metrics.py``,
``metrics_topK``, which uses a 1-based rank ``r``): HR@K = 1 if the target is among the top K, and
NDCG@K = 1 / log2(r + 1) = 1 / log2(rank + 2) with one relevant item. Values are averaged over users;
``metric_sums`` returns sums so that ranks can reduce them across workers before dividing by the
global user count.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor

__all__ = ["hit_rate", "ndcg", "metric_sums"]


def _check(ranks: Tensor, k: int) -> None:
    if k < 1:
        raise ValueError(f"cut-off K must be >= 1, got {k}")
    if ranks.is_floating_point() or ranks.dim() != 1:
        raise ValueError(f"ranks must be a 1-D integer tensor, got {ranks.dtype} of shape {tuple(ranks.shape)}")


def hit_rate(ranks: Tensor, k: int) -> Tensor:
    """Per-user hit at K.

    Args:
        ranks: ``LongTensor[B]`` 0-based rank of each user's target.
        k: Cut-off K.

    Returns:
        ``float64 [B]``: 1 where ``rank < k``, else 0.
    """
    _check(ranks, k)
    return (ranks < k).double()


def ndcg(ranks: Tensor, k: int) -> Tensor:
    """Per-user NDCG at K with a single relevant item.

    Args:
        ranks: ``LongTensor[B]`` 0-based rank of each user's target.
        k: Cut-off K.

    Returns:
        ``float64 [B]``: ``1 / log2(rank + 2)`` where ``rank < k``, else 0.
    """
    _check(ranks, k)
    gain = 1.0 / torch.log2(ranks.double() + 2.0)
    return torch.where(ranks < k, gain, torch.zeros_like(gain))


def metric_sums(ranks: Tensor, ks: Iterable[int]) -> dict[str, float]:
    """Sums over users of HR@K and NDCG@K for each K.

    Args:
        ranks: ``LongTensor[B]`` 0-based ranks.
        ks: Cut-offs.

    Returns:
        ``{'hr@10': sum, 'ndcg@10': sum, ...}`` in the order of ``ks``; divide by the number of users.
    """
    out: dict[str, float] = {}
    for k in ks:
        out[f"hr@{k}"] = float(hit_rate(ranks, k).sum())
        out[f"ndcg@{k}"] = float(ndcg(ranks, k).sum())
    return out
