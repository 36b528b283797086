"""Run metrics: JSON lines and TensorBoard event files under the run directory; progress lines and bars.

Only rank 0 writes files and shows progress (other ranks' figures are the same global numbers). Progress
goes to a sink (``runtime.console``): under Ray Train the driver's console, through a queue; anywhere
else (tests, benchmarks) a ``Console`` in this process.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from mvrec_dist.runtime.console import Console, Sink

__all__ = ["MetricsLog", "ProgressBar", "format_eta"]


def format_eta(seconds: float) -> str:
    """``1h02m``, ``3m05s`` or ``12s``."""
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class ProgressBar:
    """One progress bar of a ``MetricsLog`` (an epoch's steps, an evaluation's users); a no-op where
    nothing is shown (ranks other than 0, ``train.quiet``)."""

    def __init__(self, sink: Sink | None, key: int):
        self._sink, self._key = sink, key

    def update(self, n: int, postfix: str = "") -> None:
        """Set the count done to ``n``; ``postfix`` follows the rate (e.g. ``loss 7.65, 4,044 seq/s``)."""
        if self._sink is not None:
            self._sink(("update", self._key, n, postfix))

    def close(self) -> None:
        """Remove the bar (idempotent); the line printed after it keeps the record."""
        if self._sink is not None:
            self._sink(("close", self._key))
            self._sink = None


class MetricsLog:
    """Writes ``metrics.jsonl`` and TensorBoard events; shows progress lines and bars (rates, ETA).

    Args:
        run_dir: Local run directory (created); ``None`` disables files (non-zero ranks).
        quiet: Lines only, and only those marked ``always`` (epoch summaries, validations, results): no bars.
        enabled: Whether this process logs at all (rank 0).
        sink: Where progress events go (``runtime.console.worker_sink``); None draws them here.
    """

    def __init__(self, run_dir: str | None, *, quiet: bool, enabled: bool, sink: Sink | None = None):
        self.enabled = enabled
        self.quiet = quiet
        self._sink: Sink = sink if sink is not None else Console()
        self._bars: list[ProgressBar] = []
        self._jsonl = None
        self._tb = None
        if enabled and run_dir:
            os.makedirs(run_dir, exist_ok=True)
            self._jsonl = open(os.path.join(run_dir, "metrics.jsonl"), "a", encoding="utf-8")
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=os.path.join(run_dir, "tensorboard"))
            except ImportError:  # tensorboard is a pinned dependency; absent only in odd installs
                self._tb = None

    def record(self, kind: str, step: int, values: dict[str, Any]) -> None:
        """Append one record (``kind`` = train / valid / test / epoch / checkpoint) to the files."""
        if not self.enabled:
            return
        row = {"kind": kind, "step": step, "time": time.time(), **values}
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(row, sort_keys=True) + "\n")
            self._jsonl.flush()
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(f"{kind}/{key}", value, step)
            self._tb.flush()

    def progress(self, line: str, *, always: bool = False) -> None:
        """Show a progress line (suppressed in quiet mode unless ``always``)."""
        if self.enabled and (always or not self.quiet):
            self._sink(("line", line))

    def bar(self, desc: str, total: int, *, unit: str, initial: int = 0) -> ProgressBar:
        """Open a progress bar of ``total`` ``unit`` s, ``initial`` of them done (after a resume).

        Returns:
            The bar; close it when done (``close()`` closes any left open).
        """
        if not self.enabled or self.quiet:
            return ProgressBar(None, 0)
        bar = ProgressBar(self._sink, len(self._bars))
        self._bars.append(bar)
        self._sink(("open", len(self._bars) - 1, desc, total, unit, initial))
        return bar

    def close(self) -> None:
        """Close open bars, flush and close the files."""
        for bar in self._bars:
            bar.close()
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
