"""Throttled progress lines of one evaluation: share done, examples/s over every rank, ETA."""

from __future__ import annotations

import time
from typing import Any

__all__ = ["EVAL_PROGRESS_SECONDS", "EvalProgress"]

EVAL_PROGRESS_SECONDS = 10.0
"""Least time between two progress lines of one evaluation."""


class EvalProgress:
    """``progress(done, total)`` callback of an evaluation, writing to a ``MetricsLog``.

    Rank 0 extrapolates from its own slice: the ranks' slices are equal up to one example.

    Args:
        log: The run's ``MetricsLog``.
        split: ``valid`` or ``test`` (the lines' prefix).
        world_size: Ranks sharing the split.
        noun: What is scored (``users``, ``items``).
    """

    def __init__(self, log: Any, split: str, world_size: int, noun: str = "users"):
        self.log, self.split, self.world_size, self.noun = log, split, world_size, noun
        self._start = self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if done == 0:  # the representations are ready: examples are scored from here on
            self._start = self._last = now
            return
        if done >= total or now - self._last < EVAL_PROGRESS_SECONDS:
            return
        self._last = now
        rate = done / max(now - self._start, 1e-9)
        from mvrec_dist.train.metrics_log import format_eta

        self.log.progress(f"{self.split}: {100 * done / total:.0f}% of ~{total * self.world_size:,} {self.noun} "
                          f"({rate * self.world_size:,.0f} {self.noun}/s) eta {format_eta((total - done) / rate)}")
