"""Fabricated run directories with the records a training run leaves (``logs/metrics.jsonl``, ``result.json``).

The records have the shape ``train.metrics_log.MetricsLog`` writes for the next-item task: per epoch a
``train`` record, an ``epoch`` record (the epoch's mean loss), ``memory``, ``valid`` (HR@K and NDCG@K) and
a ``checkpoint`` record marked ``best`` when the validation improved NDCG@10; ``test`` and ``result.json``
when the run finished.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

STEPS_PER_EPOCH = 10
SEQUENCES_PER_S = 1000.0
EPOCH_SECONDS = 2.0


def valid_metrics(ndcg10: float) -> dict[str, float]:
    """The validation metrics recorded with a given NDCG@10 (the others derived from it)."""
    return {"hr@10": 2 * ndcg10, "ndcg@10": ndcg10, "hr@20": 3 * ndcg10, "ndcg@20": 1.2 * ndcg10}


def write_run(run: Path, losses: Sequence[float], ndcgs: Sequence[float], *, finished: bool = True) -> Path:
    """Write a run's ``logs/metrics.jsonl`` (and ``result.json`` when ``finished``).

    Args:
        run: The run directory (created).
        losses: Mean training loss of each epoch.
        ndcgs: Validation NDCG@10 of each epoch (shorter than ``losses`` when the last epoch did not validate).
        finished: Also write the test record and ``result.json``.

    Returns:
        ``run``.
    """
    records: list[dict] = []
    best_epoch, best = -1, float("-inf")
    for epoch, loss in enumerate(losses):
        step = (epoch + 1) * STEPS_PER_EPOCH
        records += [
            {"kind": "train", "epoch": epoch, "step": step - 5, "loss": loss + 0.1, "sequences_per_s": SEQUENCES_PER_S},
            {"kind": "epoch", "epoch": epoch, "step": step, "loss": loss, "seconds": EPOCH_SECONDS,
             "sequences_per_s": SEQUENCES_PER_S, "steps": STEPS_PER_EPOCH},
            {"kind": "memory", "epoch": epoch, "step": step, "peak_rss_mib_max": 500.0},
        ]
        if epoch < len(ndcgs):
            improved = ndcgs[epoch] > best
            if improved:
                best_epoch, best = epoch, ndcgs[epoch]
            records += [{"kind": "valid", "epoch": epoch, "step": step, "seconds": 0.5, "users": 100,
                         **valid_metrics(ndcgs[epoch])},
                        {"kind": "checkpoint", "epoch": epoch + 1, "step": step, "best": improved}]
    if finished:
        test = {k: v / 2 for k, v in valid_metrics(best).items()}
        records.append({"kind": "test", "step": len(losses) * STEPS_PER_EPOCH, "best_epoch": best_epoch,
                        "users": 100, "seconds": 0.5, **test})
        result = {"final": True, "epochs": len(losses), "steps": len(losses) * STEPS_PER_EPOCH,
                  "best_epoch": best_epoch, "seconds_to_best": (best_epoch + 1) * EPOCH_SECONDS,
                  "sequences_per_s": SEQUENCES_PER_S, "train_seconds": len(losses) * EPOCH_SECONDS,
                  **{f"valid/{k}": v for k, v in {**valid_metrics(best), "users": 100}.items()},
                  **{f"test/{k}": v for k, v in {**test, "users": 100}.items()}}
        (run / "result.json").parent.mkdir(parents=True, exist_ok=True)
        (run / "result.json").write_text(json.dumps(result))
    (run / "logs").mkdir(parents=True, exist_ok=True)
    (run / "logs" / "metrics.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    return run
