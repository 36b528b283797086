"""Ranking metrics per popularity bucket of the target item (the MicroLens paper's Figure 6).

Test users are grouped by how popular their target item is in training: the item's interactions in
the train split (``stats/item_train_counts.npy``, ``TrainData.item_train_counts``). Buckets are
given by their lower edges ``e_0 = 0 < e_1 < ... < e_{B-1}``: bucket ``b`` holds counts in
``[e_b, e_{b+1})`` and the last one ``[e_{B-1}, inf)``, so every count falls in exactly one bucket
and the coldest one, ``[0, e_1)``, holds the targets never seen in training (count 0).

The default edges ``0, 1, 5, 10, 20, 50, 100, 200`` split the 50,000 MicroLens-50K test users into
2,226 / 9,722 / 8,749 / 11,710 / 13,472 / 3,237 / 717 / 167 (the most popular test target has 294
train interactions): ``[0, 1)`` is exactly the cold targets, and every bucket is non-empty.

Like ``metrics.metric_sums`` the work is split into sums (``bucket_sums``: per bucket, the HR@K
and NDCG@K sums and the user count) that ranks add up before dividing (``bucket_results``), so a
split evaluated as slices of users on several ranks gives the figures of the whole split.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from mvrec_dist.config.eval import DEFAULT_POPULARITY_BUCKETS
from mvrec_dist.eval.metrics import hit_rate, ndcg

__all__ = ["DEFAULT_EDGES", "check_edges", "bucket_labels", "bucket_of", "bucket_sums", "bucket_results",
           "bucket_metrics", "sum_columns"]

DEFAULT_EDGES = DEFAULT_POPULARITY_BUCKETS
"""Lower edges of the default popularity buckets (``eval.popularity_buckets``)."""


def check_edges(edges: Sequence[Any]) -> tuple[int, ...]:
    """``edges`` as a tuple of ints, checked: non-empty, starting at 0, strictly increasing.

    Raises:
        ValueError: saying what is wrong.
    """
    edges = tuple(edges)
    if not edges or any(isinstance(e, bool) or not isinstance(e, (int, np.integer)) for e in edges):
        raise ValueError(f"popularity bucket edges must be a non-empty list of integers, got {list(edges)}")
    if edges[0] != 0 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"popularity bucket edges must start at 0 (never-seen items) and increase strictly, "
                         f"got {list(edges)}")
    return tuple(int(e) for e in edges)


def bucket_labels(edges: Sequence[int]) -> list[str]:
    """``["[0,1)", "[1,5)", ..., "[200,inf)"]``."""
    edges = check_edges(edges)
    return [f"[{lo},{hi})" for lo, hi in zip(edges, edges[1:])] + [f"[{edges[-1]},inf)"]


def bucket_of(counts: Tensor | np.ndarray, edges: Sequence[int]) -> Tensor:
    """The bucket of each count: ``b`` with ``edges[b] <= count < edges[b+1]`` (the last bucket open).

    Args:
        counts: Non-negative integer counts ``[B]`` (tensor or array).
        edges: Lower bucket edges (``check_edges``).

    Returns:
        ``LongTensor[B]`` bucket indices in ``0 .. len(edges)-1``.
    """
    edges = check_edges(edges)
    counts = torch.as_tensor(counts)
    if counts.is_floating_point() or counts.dim() != 1:
        raise ValueError(f"counts must be a 1-D integer tensor, got {counts.dtype} of shape {tuple(counts.shape)}")
    if counts.numel() and int(counts.min()) < 0:
        raise ValueError("counts must be >= 0")
    upper = torch.tensor(edges[1:], dtype=torch.long, device=counts.device)
    return torch.bucketize(counts.long(), upper, right=True)


def _names(ks: Sequence[int]) -> list[str]:
    return [f"{m}@{k}" for k in ks for m in ("hr", "ndcg")]


def bucket_sums(ranks: Tensor, target_counts: Tensor | np.ndarray, edges: Sequence[int],
                ks: Sequence[int]) -> Tensor:
    """Per bucket, the sums over its users of HR@K and NDCG@K, and its user count.

    Args:
        ranks: ``LongTensor[B]`` 0-based rank of each user's target (``full_ranking.target_ranks``).
        target_counts: Train interactions of each user's target item, ``[B]``.
        edges: Lower bucket edges.
        ks: Cut-offs.

    Returns:
        ``float64 [len(edges), 2 * len(ks) + 1]`` on the CPU: columns ``hr@k, ndcg@k`` for each ``k`` in
        order (``sum_columns``), then users. Add these up over ranks, then ``bucket_results``.
    """
    ranks = torch.as_tensor(ranks).cpu()
    counts = torch.as_tensor(target_counts).cpu()
    if counts.shape != ranks.shape:
        raise ValueError(f"ranks {tuple(ranks.shape)} and target_counts {tuple(counts.shape)} must have the same shape")
    bucket = bucket_of(counts, edges)
    columns = []
    for k in ks:
        columns += [hit_rate(ranks, k), ndcg(ranks, k)]
    columns.append(torch.ones(ranks.shape[0], dtype=torch.float64))
    values = torch.stack(columns, dim=1) if ranks.numel() else torch.zeros(0, len(columns), dtype=torch.float64)
    out = torch.zeros(len(check_edges(edges)), len(columns), dtype=torch.float64)
    return out.index_add_(0, bucket, values)


def sum_columns(ks: Sequence[int]) -> list[str]:
    """The column names of ``bucket_sums``: ``hr@k``, ``ndcg@k`` per ``k``, then ``users``."""
    return _names(ks) + ["users"]


def bucket_results(sums: Tensor, edges: Sequence[int], ks: Sequence[int]) -> list[dict[str, Any]]:
    """Per-bucket means from (rank-summed) ``bucket_sums``.

    Args:
        sums: ``[len(edges), 2 * len(ks) + 1]`` sums.
        edges: Lower bucket edges.
        ks: Cut-offs.

    Returns:
        One dict per bucket, coldest first: ``bucket`` (label), ``lo``, ``hi`` (None for the last,
        open bucket), ``users``, and ``hr@k`` / ``ndcg@k`` averaged over the bucket's users (None
        for an empty bucket: no users, no figure).
    """
    edges = check_edges(edges)
    names = _names(ks)
    sums = torch.as_tensor(sums, dtype=torch.float64).cpu()
    if tuple(sums.shape) != (len(edges), len(names) + 1):
        raise ValueError(f"sums must be [{len(edges)}, {len(names) + 1}], got {tuple(sums.shape)}")
    out = []
    for b, label in enumerate(bucket_labels(edges)):
        users = int(round(float(sums[b, -1])))
        row: dict[str, Any] = {"bucket": label, "lo": edges[b], "hi": edges[b + 1] if b + 1 < len(edges) else None,
                               "users": users}
        row.update({n: (float(sums[b, i]) / users if users else None) for i, n in enumerate(names)})
        out.append(row)
    return out


def bucket_metrics(ranks: Tensor, target_counts: Tensor | np.ndarray, edges: Sequence[int] = DEFAULT_EDGES,
                   ks: Sequence[int] = (10, 20)) -> list[dict[str, Any]]:
    """HR@K / NDCG@K and user count per popularity bucket of one process's users (``bucket_results``
    of ``bucket_sums``; for several ranks add the sums first)."""
    return bucket_results(bucket_sums(ranks, target_counts, edges, ks), edges, ks)
