"""Evaluation: ranking metrics as pure functions of ranks, and full-ranking scoring against every item."""

from mvrec_dist.eval.full_ranking import target_ranks
from mvrec_dist.eval.metrics import hit_rate, metric_sums, ndcg

__all__ = ["hit_rate", "ndcg", "metric_sums", "target_ranks"]
