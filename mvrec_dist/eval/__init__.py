"""Evaluation: ranking metrics as pure functions of ranks, full-ranking scoring against every item, and FRAME's
metrics over each user's scored candidates."""

from mvrec_dist.eval.candidate_metrics import auc, candidate_metric_sums, candidate_metrics, log_loss
from mvrec_dist.eval.full_ranking import target_ranks
from mvrec_dist.eval.metrics import hit_rate, metric_sums, ndcg

__all__ = ["hit_rate", "ndcg", "metric_sums", "target_ranks", "auc", "log_loss", "candidate_metric_sums",
           "candidate_metrics"]
