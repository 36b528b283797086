"""The progress bar of one evaluation: examples scored over every rank, their rate and the ETA."""

from __future__ import annotations

from typing import Any

__all__ = ["EvalProgress"]


class EvalProgress:
    """``progress(done, total)`` callback of an evaluation, drawing a bar through a ``MetricsLog``.

    Rank 0 extrapolates from its own slice: the ranks' slices are equal up to one example.

    Args:
        log: The run's ``MetricsLog`` (its ``bar``).
        split: ``valid`` or ``test`` (the bar's label).
        world_size: Ranks sharing the split.
        noun: What is scored (``users``, ``items``).
    """

    def __init__(self, log: Any, split: str, world_size: int, noun: str = "users"):
        self.log, self.split, self.world_size, self.noun = log, split, world_size, noun
        self._bar = None

    def __call__(self, done: int, total: int) -> None:
        if done == 0 or (done >= total and self._bar is None):  # nothing scored yet, or all in one go: no bar
            return
        if self._bar is None:  # opened at the first scored batch, once the representations are ready
            self._bar = self.log.bar(self.split, total * self.world_size, unit=self.noun)
        self._bar.update(done * self.world_size)
        if done >= total:  # the line with the split's metrics follows
            self._bar.close()
            self._bar = None
