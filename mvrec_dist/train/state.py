"""The training state that a checkpoint carries besides tensors: counters, best metric, data cursors.

Everything here is JSON (no pickle), so a checkpoint's state file is safe to read and easy to inspect.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from mvrec_dist.data.cursor import DataCursor

__all__ = ["TrainState"]


@dataclass
class TrainState:
    """Counters and bookkeeping of a run (identical on every rank, except nothing: cursors are global)."""

    epoch: int = 0
    """Epoch in progress (0-based); after an epoch finishes it is the next one."""
    step: int = 0
    """Optimiser steps taken in total."""
    epoch_step: int = 0
    """Steps taken in the current epoch."""
    best_metric: float = float("-inf")
    """Best validation value of ``eval.select_metric`` so far."""
    best_epoch: int = -1
    """Epoch of the best validation."""
    best_step: int = -1
    """Step of the best validation."""
    evals_since_best: int = 0
    """Validations without improvement (early stopping counts these)."""
    train_seconds: float = 0.0
    """Wall time spent training (excluding evaluation) so far, summed over resumes."""
    seconds_to_best: float = 0.0
    """Wall time (training + evaluation) from the start to the best validation."""
    elapsed_seconds: float = 0.0
    """Wall time (training + evaluation) so far, summed over resumes."""
    world_size: int = 1
    """World size of the run that wrote this state."""
    loader_workers: int = 0
    """Loader workers per rank of the run that wrote this state."""
    cursors: list[DataCursor] = field(default_factory=list)
    """Cursor of every consumer in the current epoch (empty at an epoch boundary)."""
    plan: list[list[dict[str, Any]]] | None = None
    """The current epoch's consumer plans when they are not the epoch's canonical plan (after a resume
    on another world size), as ``Chunk`` dicts; None otherwise."""
    window_skips: dict[str, int] = field(default_factory=dict)
    """Global sample index -> training windows already consumed of it, for samples that were cut
    mid-way by a resume on another world size (keys are strings for JSON)."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """One entry per validation: epoch, step, metrics, seconds."""

    def to_json(self) -> str:
        """Serialise to JSON."""
        d = dataclasses.asdict(self)
        d["cursors"] = [c.to_dict() for c in self.cursors]
        return json.dumps(d, indent=1, sort_keys=True)

    @staticmethod
    def from_json(text: str) -> "TrainState":
        """Inverse of ``to_json``."""
        d = json.loads(text)
        d["cursors"] = [DataCursor.from_dict(c) for c in d.get("cursors", [])]
        return TrainState(**d)
