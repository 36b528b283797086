"""Reference rankers scored with the protocol a model is scored with, to read a model's metrics against.

The popularity baseline ranks every item by its train-split interactions (``stats/item_train_counts.npy``),
the same list for every user: leave-one-out, full ranking over all items 1..N, the user's history
excluded, ties counted against the target (``full_ranking``'s rules; items with equal counts tie),
HR@K and NDCG@K from ``metrics.metric_sums``, summed over the ranks' slices of users. A sequential
model that does not beat it has learnt nothing beyond popularity.

Because the score of an item does not depend on the user, the target's rank has a closed form,
``#{items with count >= the target's} - 1 - #{other history items with count >= the target's}``:
one sorted search per user and one pass over the histories, no ``[B, N]`` score matrix. It is the
number ``full_ranking.target_ranks`` gives with the counts as scores (``tests/eval/test_baselines.py``),
at a cost that stays negligible next to the model's own evaluation at any scale.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

import numpy as np
import torch
from torch import Tensor

from mvrec_dist.eval.metrics import metric_sums

__all__ = ["popularity_ranks", "popularity_baseline"]


def popularity_ranks(item_train_counts: Tensor | np.ndarray, targets: Tensor, history_values: Tensor,
                     history_offsets: Tensor) -> Tensor:
    """0-based rank of each user's target among items 1..N ranked by train count, history excluded.

    Args:
        item_train_counts: ``[N+1]`` train interactions per item (entry 0, padding, is never a candidate).
        targets: ``LongTensor[B]`` target ids in 1..N.
        history_values: ``LongTensor[H]`` every user's history, concatenated (ids in 1..N; repeats allowed).
        history_offsets: ``LongTensor[B+1]``; user b's history is ``history_values[o[b]:o[b+1]]``.

    Returns:
        ``LongTensor[B]``: the number of items other than the target, outside the user's history,
        whose count is ``>=`` the target's (``full_ranking.target_ranks`` with the counts as scores).
    """
    counts = torch.as_tensor(np.asarray(item_train_counts), dtype=torch.long)
    n1, b = counts.numel(), targets.numel()
    if counts.dim() != 1 or n1 < 2:
        raise ValueError(f"item_train_counts must be [N+1] with N >= 1, got shape {tuple(counts.shape)}")
    if history_offsets.shape != (b + 1,) or int(history_offsets[-1]) != history_values.numel():
        raise ValueError(f"history_offsets must be [B+1] = [{b + 1}] ending at len(history_values) = "
                         f"{history_values.numel()}, got {tuple(history_offsets.shape)}")
    for name, ids in (("targets", targets), ("history_values", history_values)):
        if ids.numel() and (int(ids.min()) < 1 or int(ids.max()) >= n1):
            raise ValueError(f"{name} must be item ids in 1..{n1 - 1}")
    targets, history_values = targets.cpu().long(), history_values.cpu().long()
    target_counts = counts[targets]  # B
    # Items 1..N with a count >= the target's, the target itself included.
    at_least = (n1 - 1) - torch.searchsorted(counts[1:].sort().values, target_counts, side="left")
    rows = torch.repeat_interleave(torch.arange(b), (history_offsets[1:] - history_offsets[:-1]).cpu())  # H
    pairs = torch.unique(rows * n1 + history_values)  # distinct (user, item): a repeat is excluded once
    rows, items = pairs // n1, pairs % n1
    excluded = (counts[items] >= target_counts[rows]) & (items != targets[rows])
    return at_least - 1 - torch.bincount(rows[excluded], minlength=b)


def popularity_baseline(batches: Iterable, item_train_counts: Tensor | np.ndarray, *, ks: tuple[int, ...],
                        sum_over_ranks: Callable[[Tensor], Tensor] = lambda values: values) -> dict[str, float]:
    """HR@K and NDCG@K of ranking items by train popularity, over every rank's evaluation batches (collective).

    Args:
        batches: This rank's ``EvalBatch``es of the split (``TrainData.eval_batches``: its slice of the users).
        item_train_counts: ``[N+1]`` train interactions per item.
        ks: Cut-offs.
        sum_over_ranks: Element-wise sum over ranks (``ParallelModel.sum_over_ranks``); identity for one process.

    Returns:
        ``{"hr@10": ..., "ndcg@10": ..., "users": U, "seconds": s}`` (identical on every rank), the
        keys of ``runner.evaluate_ranking``.
    """
    start = time.perf_counter()
    names = [f"{m}@{k}" for k in ks for m in ("hr", "ndcg")]
    sums = torch.zeros(len(names) + 1, dtype=torch.float64)
    for batch in batches:
        ranks = popularity_ranks(item_train_counts, batch.targets, batch.history_values, batch.history_offsets)
        part = metric_sums(ranks, ks)
        sums[:-1] += torch.tensor([part[n] for n in names], dtype=torch.float64)
        sums[-1] += batch.targets.numel()
    total = sum_over_ranks(sums).cpu()
    users = int(total[-1])
    result: dict[str, float] = {n: float(total[i]) / max(users, 1) for i, n in enumerate(names)}
    result["users"] = users
    result["seconds"] = time.perf_counter() - start
    return result
