"""Distributed evaluation with the MicroLens protocol (leave-one-out, full ranking, history excluded).

Item representations are computed once per evaluation (split over ranks, all-gathered), each rank
scores its own slice of users against every item, and the metric sums are added over ranks. The
model side is reached through a small protocol, so this module never touches process groups.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable, Protocol, Sequence

import torch

from mvrec_dist.eval.buckets import bucket_results, bucket_sums
from mvrec_dist.eval.candidate_metrics import CandidateScores
from mvrec_dist.eval.full_ranking import target_ranks
from mvrec_dist.config.task import ranking_metrics
from mvrec_dist.eval.metrics import metric_sums
from mvrec_dist.eval.scored_ranking import click_metric_sums, negatives_per_user

__all__ = ["RankingModel", "evaluate_ranking"]


class RankingModel(Protocol):
    """What evaluation needs from the (parallel) model."""

    def item_representations(self, num_items: int) -> torch.Tensor: ...  # [N+1, D]

    def user_states(self, history: torch.Tensor, lengths: torch.Tensor,
                    item_repr: torch.Tensor) -> torch.Tensor: ...  # [B, D]

    def sum_over_ranks(self, values: torch.Tensor) -> torch.Tensor: ...

    def gather_rows(self, rows: torch.Tensor) -> torch.Tensor: ...  # every rank's rows (candidate metrics only)


def evaluate_ranking(model: RankingModel, batches: Iterable, *, num_items: int, ks: tuple[int, ...],
                     progress: Callable[[int, int], None] | None = None,
                     item_train_counts: torch.Tensor | None = None,
                     bucket_edges: Sequence[int] = (), click_cutoff: int | None = None,
                     candidates: Callable[[object], torch.Tensor] | None = None,
                     candidate_ks: Sequence[int] = (3, 5)) -> dict[str, float]:
    """HR@K and NDCG@K (and the click metrics) over all users of a split, averaged over users of every rank.

    Call inside the model's ``evaluating()`` context.

    Args:
        model: The model (``ParallelModel`` or a single-process equivalent).
        batches: This rank's ``EvalBatch``es (its slice of the split's users).
        num_items: N; every item 1..N is a candidate.
        ks: Cut-offs.
        progress: Called as ``progress(done, total)`` with this rank's users scored so far and in
            all: once when the item representations are ready (``done`` 0), then after each batch.
        item_train_counts: ``[N+1]`` train interactions per item, for the popularity buckets.
        bucket_edges: Lower edges of the popularity buckets of the targets (``mvrec_dist.eval.buckets``); with
            ``item_train_counts``, the result gets ``buckets``. Empty: none.
        click_cutoff: With K, also AUC and Precision/Recall/F1@K over the same ranks (MTIN's metrics,
            ``scored_ranking.click_metric_sums``: one target per user, its negatives every other unseen item).
        candidates: With a function giving a batch's ``[B, 1 + K]`` candidates (target first,
            ``candidate_metrics.draw_candidates``), also FRAME's metrics over them (``frame/*``, scored by
            the same dot product; ``candidate_metrics.CandidateScores``).
        candidate_ks: Cut-offs of the candidate metrics.

    Returns:
        ``{"hr@10": ..., "ndcg@10": ..., "users": U, "seconds": s}`` (identical on every rank), and
        ``"buckets"``: ``buckets.bucket_results`` (a list of one dict per bucket) when asked for.
    """
    start = time.perf_counter()
    batches = list(batches)
    total, done = sum(int(b.targets.numel()) for b in batches), 0
    item_repr = model.item_representations(num_items)  # [N+1, D]
    if progress is not None:
        progress(0, total)
    names = [m.name for m in ranking_metrics(ks, click_cutoff)]
    sums = torch.zeros(len(names) + 1, dtype=torch.float64)
    with_buckets = bool(bucket_edges) and item_train_counts is not None
    if with_buckets:
        target_counts = torch.as_tensor(item_train_counts).cpu()
        per_bucket = torch.zeros(len(bucket_edges), 2 * len(ks) + 1, dtype=torch.float64)  # HR, NDCG per K; users
    scored = CandidateScores(candidate_ks) if candidates is not None else None
    for batch in batches:
        states = model.user_states(batch.history, batch.lengths, item_repr)  # [B, D]
        if scored is not None:
            chosen = candidates(batch).to(item_repr.device)  # B,1+K
            scored.add(batch.users, torch.einsum("bd,bkd->bk", states.float(), item_repr[chosen].float()))
        device = item_repr.device
        ranks = target_ranks(states, item_repr, batch.targets.to(device), batch.history_values.to(device),
                             batch.history_offsets.to(device))
        part = metric_sums(ranks, ks)
        if click_cutoff:
            negatives = negatives_per_user(batch.targets.to(device), batch.history_values.to(device),
                                           batch.history_offsets.to(device), num_items)
            part.update(click_metric_sums(ranks.cpu(), negatives.cpu(), click_cutoff))
        sums[:-1] += torch.tensor([part[n] for n in names], dtype=torch.float64)
        sums[-1] += batch.targets.numel()
        if with_buckets:
            per_bucket += bucket_sums(ranks, target_counts[batch.targets.cpu()], bucket_edges, ks)
        done += int(batch.targets.numel())
        if progress is not None:
            progress(done, total)
    if with_buckets:  # one reduction for both: the bucket sums ride along with the totals
        sums = torch.cat([sums, per_bucket.flatten()])
    total = model.sum_over_ranks(sums).cpu()
    users = int(total[len(names)])
    result = {n: float(total[i]) / max(users, 1) for i, n in enumerate(names)}
    result["users"] = users
    if scored is not None:
        result.update(scored.results(model.sum_over_ranks, model.gather_rows))
    if with_buckets:
        result["buckets"] = bucket_results(total[len(names) + 1:].view(len(bucket_edges), -1), bucket_edges, ks)
    result["seconds"] = time.perf_counter() - start
    return result
