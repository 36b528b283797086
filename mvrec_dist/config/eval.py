"""Evaluation settings: cut-offs, the selection metric (checked against the task's metrics), batch sizes, cadence."""

from __future__ import annotations

from dataclasses import dataclass

from mvrec_dist.config.fields import Problems, setting

__all__ = ["EvalConfig", "DEFAULT_POPULARITY_BUCKETS"]

DEFAULT_POPULARITY_BUCKETS = (0, 1, 5, 10, 20, 50, 100, 200)
"""Lower edges of the test split's popularity buckets (``mvrec_dist.eval.buckets``: on MicroLens-50K
2,226 / 9,722 / 8,749 / 11,710 / 13,472 / 3,237 / 717 / 167 test users)."""


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """How and how often validation and test are scored."""

    ks: tuple[int, ...] = setting((10, 20), doc="Cut-offs K of HR@K and NDCG@K.")
    select_metric: str | None = setting(
        None, doc="Validation metric for early stopping and the best checkpoint; null = the task's own "
                  "(next_item: ndcg@10; item_popularity: mae).")
    batch_size: int = setting(2048, doc="Users scored per chunk on each rank.")
    every_epochs: int = setting(1, doc="Validate every N epochs.")
    content_batch_size: int = setting(
        256, doc="Items whose content one rank loads and encodes at once when representing all items (content towers).")
    popularity_buckets: tuple[int, ...] = setting(
        DEFAULT_POPULARITY_BUCKETS, doc="Test users are also scored per bucket of their target's train interactions: "
        "lower edges, from 0 (bucket [0,1) = never-seen items), the last bucket open; [] turns it off "
        "(mvrec_dist.eval.buckets).")
    click_cutoff: int | None = setting(
        None, doc="K of MTIN's click metrics, also reported beside HR/NDCG: AUC and Precision/Recall/F1@K over the "
                  "same full-ranking list (mvrec_dist.eval.scored_ranking); null = the task's own (next_item: "
                  "not reported; mtin: 50, the paper's).")
    candidate_negatives: int = setting(
        0, doc="next_item only: with N > 0, also FRAME's metrics (frame/auc, user_auc, logloss, recall/ndcg/dcg@K) "
               "over each user's target and N videos the user never played, drawn as task frame draws them (keyed "
               "by train.seed, split and user), so that a next-item model and FRAME are compared on the same "
               "candidates (eval.candidate_metrics); 0 = off.")
    candidate_ks: tuple[int, ...] = setting((3, 5), doc="Cut-offs of the candidate metrics (FRAME: 3 and 5).")

    def __post_init__(self) -> None:
        p = Problems()
        p.check(len(self.ks) >= 1 and all(k >= 1 for k in self.ks), "ks",
                f"must be a non-empty list of positive ints, got {list(self.ks)}")
        p.check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        p.check(self.every_epochs >= 1, "every_epochs", f"must be >= 1, got {self.every_epochs}")
        p.check(self.content_batch_size >= 1, "content_batch_size", f"must be >= 1, got {self.content_batch_size}")
        p.check(self.click_cutoff is None or self.click_cutoff >= 1, "click_cutoff",
                f"must be >= 1 or null, got {self.click_cutoff}")
        p.check(self.candidate_negatives >= 0, "candidate_negatives", f"must be >= 0, got {self.candidate_negatives}")
        p.check(bool(self.candidate_ks) and all(k >= 1 for k in self.candidate_ks), "candidate_ks",
                f"must be cut-offs >= 1, got {list(self.candidate_ks)}")
        edges = self.popularity_buckets
        p.check(not edges or (edges[0] == 0 and all(b > a for a, b in zip(edges, edges[1:]))), "popularity_buckets",
                f"must be empty or start at 0 and increase strictly, got {list(edges)}")
        p.raise_if_any()
