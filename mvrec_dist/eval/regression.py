"""Regression metrics of popularity prediction (MMRA): nMSE, Spearman's rank correlation (SRC), MAE.

Two ways of averaging, both reported:

* **whole set** (``regression_metrics``): each metric over every test item at once. This is the
  definition: nMSE = MSE / Var(labels) (population variance), SRC = Pearson correlation of the
  average ranks (ties share the mean of their positions, as ``scipy.stats.spearmanr``), MAE.
* **per batch** (``batched_regression_metrics``): MMRA's released ``test.py`` computes each metric
  on every batch of its test loader (256 items, in the test file's order) and prints the mean over
  batches. That is not the whole-set figure: nMSE divides by each batch's own label variance, SRC
  only ranks items against the 255 others of their batch, and a short last batch weighs as much as a
  full one. Batches where a metric is undefined (fewer than 2 items, or constant labels or
  predictions for SRC / constant labels for nMSE) are left out of that metric's mean and counted, rather
  than turning the mean into NaN as the released code would.

Pure numpy functions of ``(predictions, labels)``; the task gathers both to every rank first.
"""

from __future__ import annotations

import numpy as np

__all__ = ["average_ranks", "spearman", "regression_metrics", "batched_regression_metrics"]


def average_ranks(x: np.ndarray) -> np.ndarray:
    """``float64 [n]`` 1-based ranks of ``x``, ties given the mean of the positions they span."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    # Runs of equal values: each gets the mean of its 1-based positions.
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    mean_rank = (starts + ends + 1) / 2.0  # mean of positions start+1 .. end
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def spearman(pred: np.ndarray, label: np.ndarray) -> float:
    """Spearman's rank correlation of ``pred`` and ``label`` (NaN when either is constant or n < 2)."""
    if len(pred) < 2:
        return float("nan")
    a, b = average_ranks(pred), average_ranks(label)
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def regression_metrics(pred: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """Whole-set ``{"nmse", "src", "mae", "mae_nmse"}`` of predictions against labels (1-D arrays).

    ``mae_nmse`` = MAE + nMSE, MMRA's early-stopping criterion (lower is better).
    """
    pred, label = np.asarray(pred, dtype=np.float64), np.asarray(label, dtype=np.float64)
    if pred.shape != label.shape or pred.ndim != 1:
        raise ValueError(f"predictions {pred.shape} and labels {label.shape} must be equal 1-D shapes")
    if len(label) == 0:
        return {"nmse": float("nan"), "src": float("nan"), "mae": float("nan"), "mae_nmse": float("nan")}
    err = pred - label
    var = label.var()
    nmse = float((err * err).mean() / var) if var > 0 else float("nan")
    mae = float(np.abs(err).mean())
    return {"nmse": nmse, "src": spearman(pred, label), "mae": mae, "mae_nmse": mae + nmse}


def batched_regression_metrics(pred: np.ndarray, label: np.ndarray, batch_size: int = 256) -> dict[str, float]:
    """MMRA's per-batch averages: ``{"nmse_b", "src_b", "mae_b", "batches", "undefined_src", "undefined_nmse"}``.

    Consecutive batches of ``batch_size`` in the given order (the split's, sorted by item id here);
    each metric is the mean of its per-batch values over the batches where it is defined.
    """
    pred, label = np.asarray(pred, dtype=np.float64), np.asarray(label, dtype=np.float64)
    nmse, src, mae = [], [], []
    batches = 0
    for lo in range(0, len(label), batch_size):
        m = regression_metrics(pred[lo:lo + batch_size], label[lo:lo + batch_size])
        batches += 1
        mae.append(m["mae"])
        if m["nmse"] == m["nmse"]:
            nmse.append(m["nmse"])
        if m["src"] == m["src"]:
            src.append(m["src"])

    def mean(v: list[float]) -> float:
        return float(np.mean(v)) if v else float("nan")

    return {"nmse_b": mean(nmse), "src_b": mean(src), "mae_b": mean(mae), "batches": batches,
            "undefined_src": batches - len(src), "undefined_nmse": batches - len(nmse)}
