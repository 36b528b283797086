"""Peak resident memory of this process tree (the driver and the local Ray cluster it started), sampled."""

from __future__ import annotations

import threading

import psutil

__all__ = ["TreeRss"]


class TreeRss:
    """Samples RSS of this process and its descendants every ``interval`` seconds; a context manager.

    Attributes:
        peak_total_mib: Largest sum over the tree at one sample.
        peak_process_mib: Largest single process (private memory: RSS minus shared pages, since Ray
            workers map object-store blocks they read and those pages are not theirs).
    """

    def __init__(self, interval: float = 0.5):
        self.interval = interval
        self.peak_total_mib = 0.0
        self.peak_process_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    info = p.memory_info()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                total += info.rss
                self.peak_process_mib = max(self.peak_process_mib, (info.rss - info.shared) / 2**20)
            self.peak_total_mib = max(self.peak_total_mib, total / 2**20)
            self._stop.wait(self.interval)

    def __enter__(self) -> "TreeRss":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
