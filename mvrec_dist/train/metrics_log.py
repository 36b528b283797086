"""Run metrics: JSON lines and TensorBoard event files under the run directory, progress on stdout.

Only rank 0 writes files and prints progress (other ranks' figures are the same global numbers).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

__all__ = ["MetricsLog", "format_eta"]


def format_eta(seconds: float) -> str:
    """``1h02m``, ``3m05s`` or ``12s``."""
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class MetricsLog:
    """Writes ``metrics.jsonl`` and TensorBoard events; prints progress lines with rates and ETA.

    Args:
        run_dir: Local run directory (created); ``None`` disables files (non-zero ranks).
        quiet: Print only epoch summaries and results.
        enabled: Whether this process logs at all (rank 0).
    """

    def __init__(self, run_dir: str | None, *, quiet: bool, enabled: bool):
        self.enabled = enabled
        self.quiet = quiet
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
        """Print a progress line (suppressed in quiet mode unless ``always``)."""
        if self.enabled and (always or not self.quiet):
            print(line, file=sys.stdout, flush=True)

    def close(self) -> None:
        """Flush and close the files."""
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
