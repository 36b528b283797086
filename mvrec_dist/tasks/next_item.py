"""Next-item sequential recommendation: the MicroLens protocol, the system's first task.

Batch: ``SequenceBatch`` (user-sequence windows; a window of length L has L-1 targets). Sparse
feature: the batch's unique items in the item table. Model: ``SequentialRecommender`` (item
tower, user encoder, loss). Evaluation: leave-one-out, full ranking over every item with the
user's history excluded, HR@K / NDCG@K averaged over users (``mvrec_dist.eval.runner``).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from mvrec_dist.data.loader import TrainData, load_item_train_counts
from mvrec_dist.eval.baselines import popularity_baseline
from mvrec_dist.eval.candidate_metrics import draw_candidates
from mvrec_dist.eval.progress import EvalProgress
from mvrec_dist.eval.runner import evaluate_ranking
from mvrec_dist.tasks.base import Task

__all__ = ["NextItemTask", "evaluate_split"]


def evaluate_split(model: Any, data: Any, split: str, ks: tuple[int, ...], log: Any | None = None,
                   popularity_buckets: tuple[int, ...] = (), click_cutoff: int | None = None,
                   candidate_negatives: int = 0, candidate_ks: tuple[int, ...] = (3, 5),
                   seed: int = 0) -> dict[str, float]:
    """HR@K / NDCG@K of ``model`` on ``split`` (``valid`` or ``test``), full ranking (collective).

    Args:
        model: The ``ParallelModel`` (or anything with the ``RankingModel`` protocol and ``evaluating()``).
        data: This rank's ``TrainData`` (its slice of the split's users).
        split: Which split.
        ks: Cut-offs.
        log: Where its progress bar goes while it runs (``eval.progress.EvalProgress``); None for none.
        popularity_buckets: Lower edges of the target-popularity buckets (``eval.popularity_buckets``,
            by ``data.item_train_counts``); empty for none.
        click_cutoff: K of the click metrics (AUC, Precision/Recall/F1@K); None for none.
        candidate_negatives: With N > 0, also FRAME's metrics over each user's target and N unplayed videos
            (``eval.candidate_metrics.draw_candidates``, keyed by ``seed``, ``split`` and user); 0 for none.
        candidate_ks: Cut-offs of the candidate metrics.
        seed: Run seed (``train.seed``), the key of the candidates.

    Returns:
        What ``evaluate_ranking`` returns (identical on every rank; with ``buckets`` when asked for).
    """
    progress = EvalProgress(log, split, data.world_size, "users") if log is not None else None
    counts = getattr(data, "item_train_counts", None) if popularity_buckets else None  # TrainData has them
    counts = torch.from_numpy(counts) if counts is not None else None
    candidates = None
    if candidate_negatives:
        def candidates(batch: Any) -> torch.Tensor:
            return draw_candidates(seed=seed, split=split, users=batch.users.numpy(), targets=batch.targets.numpy(),
                                   history_values=batch.history_values.numpy(),
                                   history_offsets=batch.history_offsets.numpy(), negatives=candidate_negatives,
                                   num_items=data.num_items)
    with model.evaluating():
        return evaluate_ranking(model, data.eval_batches(split), num_items=data.num_items, ks=ks, progress=progress,
                                item_train_counts=counts, bucket_edges=popularity_buckets, click_cutoff=click_cutoff,
                                candidates=candidates, candidate_ks=candidate_ks)


class NextItemTask(Task):
    """``task.name=next_item``: see the module docstring."""

    examples_key = "users"

    def build_model(self, manifest: Any, *, device: str | torch.device) -> nn.Module:
        """``build_recommender`` over the dataset's items (the ID table on ``device``, normally meta)."""
        from mvrec_dist.models.builders import build_recommender

        return build_recommender(self.cfg.model, num_items=manifest.num_items,
                                 item_train_counts=load_item_train_counts(manifest),
                                 max_seq_len=self.cfg.data.max_seq_len, seed=self.cfg.train.seed, device=device)

    def build_data(self, manifest: Any, *, rank: int, world_size: int, pin_memory: bool, content_store: Any,
                   gather: Callable[[torch.Tensor], torch.Tensor] | None) -> TrainData:
        """The rank's ``TrainData`` (sequence windows, resumable cursors, cached evaluation batches)."""
        return TrainData(self.cfg, manifest, rank=rank, world_size=world_size, pin_memory=pin_memory,
                         content_store=content_store, gather=gather)

    def count(self, batch: Any) -> tuple[int, int]:
        """Targets: ``sum(max(length - 1, 0))`` (every position but the first predicts the next item);
        examples: rows with any item."""
        return int((batch.lengths - 1).clamp(min=0).sum()), int((batch.lengths > 0).sum())

    def evaluate(self, model: Any, data: Any, split: str, log: Any | None = None) -> dict[str, float]:
        """Full-ranking HR@K / NDCG@K of ``split`` (``evaluate_split``); the test split also per
        popularity bucket of the targets (``eval.popularity_buckets``, result key ``buckets``)."""
        buckets = self.cfg.eval.popularity_buckets if split == "test" else ()
        e = self.cfg.eval
        return evaluate_split(model, data, split, e.ks, log, popularity_buckets=buckets,
                              click_cutoff=self.cfg.click_cutoff, candidate_negatives=e.candidate_negatives,
                              candidate_ks=e.candidate_ks, seed=self.cfg.train.seed)

    def baselines(self, model: Any, data: Any, split: str) -> dict[str, dict[str, float]]:
        """``popularity``: items ranked by train interactions, same protocol (``eval.baselines``); none
        for data without train counts."""
        counts = getattr(data, "item_train_counts", None)  # TrainData has them
        if counts is None:
            return {}
        return {"popularity": popularity_baseline(data.eval_batches(split), counts, ks=self.cfg.eval.ks,
                                                  sum_over_ranks=model.sum_over_ranks)}
