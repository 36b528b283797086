"""The training state that a checkpoint carries besides tensors: counters, best metric, the data stream's state.

Everything here is JSON (no pickle), so a checkpoint's state file is safe to read and easy to inspect.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TrainState"]


@dataclass
class TrainState:
    """Counters and bookkeeping of a run (identical on every rank: the data state is gathered from all ranks)."""

    epoch: int = 0
    """Epoch in progress (0-based); after an epoch finishes it is the next one."""
    step: int = 0
    """Optimiser steps taken in total."""
    epoch_step: int = 0
    """Steps taken in the current epoch."""
    epoch_loss_sum: float = 0.0
    """Sum of the training loss of the current epoch's ``epoch_step`` steps (the epoch's mean loss, also after a
    resume mid-epoch)."""
    best_metric: float = float("-inf")
    """Best validation value of the selection metric so far (meaningful once ``best_step >= 0``)."""
    best_epoch: int = -1
    """Epoch of the best validation."""
    best_step: int = -1
    """Step of the best validation."""
    evals_since_best: int = 0
    """Validations without improvement (early stopping counts these)."""
    train_seconds: float = 0.0
    """Wall time spent training (excluding evaluation) so far, summed over resumes."""
    sequences: int = 0
    """Training sequences (examples) consumed so far over all ranks, summed over resumes: with
    ``train_seconds``, the run's throughput (a resumed run's covers its whole life, not the last attempt)."""
    targets: int = 0
    """Training targets so far over all ranks, summed over resumes."""
    seconds_to_best: float = 0.0
    """Wall time (training + evaluation) from the start to the best validation."""
    elapsed_seconds: float = 0.0
    """Wall time (training + evaluation) so far, summed over resumes."""
    data: dict[str, Any] = field(default_factory=dict)
    """The training data stream's own state (``TaskData.state_dict()``: for next-item data the epoch's
    consumer cursors, plan and window skips); opaque to the loop and the checkpoint. Empty: fresh start."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """One entry per validation: epoch, step, metrics, seconds."""

    def to_json(self) -> str:
        """Serialise to JSON."""
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

    @staticmethod
    def from_json(text: str) -> "TrainState":
        """Inverse of ``to_json``; also reads states written before the data stream kept its own state."""
        d = json.loads(text)
        legacy = {k: d.pop(k) for k in _LEGACY_DATA_KEYS if k in d}
        if legacy and "data" not in d:
            # Checkpoints before the task seam kept the next-item stream's fields at the top level;
            # they are that stream's state_dict under other names.
            d["data"] = {"epoch": d.get("epoch", 0), "cursors": legacy.get("cursors", []),
                         "plan": legacy.get("plan"), "window_skips": legacy.get("window_skips", {}),
                         "world_size": legacy.get("world_size", 1),
                         "loader_workers": legacy.get("loader_workers", 0)}
        return TrainState(**d)


_LEGACY_DATA_KEYS = ("cursors", "plan", "window_skips", "world_size", "loader_workers")
