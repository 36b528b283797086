"""Where a loader consumer is in its stream: the unit of exact data resume."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["DataCursor"]


@dataclass(frozen=True)
class DataCursor:
    """How far one loader consumer (rank, worker) got in its stream of the current epoch.

    A consumer's stream is a list of user samples; each sample is cut into training windows.
    """

    consumer: int
    """Consumer id ``rank * loader_workers + worker`` under the world size that produced it."""
    samples: int
    """Samples fully consumed."""
    windows: int
    """Windows consumed of the next (partially consumed) sample."""
    batches: int
    """Batches this consumer produced (seeds per-batch randomness such as negative sampling)."""

    def to_dict(self) -> dict[str, int]:
        """JSON form."""
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "DataCursor":
        """Inverse of ``to_dict``."""
        return DataCursor(consumer=int(d["consumer"]), samples=int(d["samples"]), windows=int(d["windows"]),
                          batches=int(d["batches"]))
