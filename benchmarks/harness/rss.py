"""Peak resident memory of this process tree (the driver and the local Ray cluster it started), the peak
disk use of a filesystem, both sampled, and the bytes Ray spilled from its object store."""

from __future__ import annotations

import re
import shutil
import threading

import psutil

__all__ = ["TreeRss", "DiskPeak", "ray_spilled_bytes"]


class TreeRss:
    """Samples RSS of this process and its descendants every ``interval`` seconds; a context manager.

    Attributes:
        peak_total_mib: Largest sum over the tree at one sample.
        peak_process_mib: Largest single process (private memory: RSS minus shared pages, since Ray
            workers map object-store blocks they read and those pages are not theirs).
        peak_private_by_kind_mib: The same per kind of process: ``driver`` (this process), else its
            title (``ray::_group_partition``, ``raylet``, ...).
    """

    def __init__(self, interval: float = 0.5):
        self.interval = interval
        self.peak_total_mib = 0.0
        self.peak_process_mib = 0.0
        self.peak_private_by_kind_mib: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    info = p.memory_info()
                    kind = "driver" if p.pid == me.pid else ((p.cmdline() or [p.name()])[0].split(" ")[0] or p.name())
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                total += info.rss
                private = (info.rss - info.shared) / 2**20
                self.peak_process_mib = max(self.peak_process_mib, private)
                self.peak_private_by_kind_mib[kind] = max(self.peak_private_by_kind_mib.get(kind, 0.0), private)
            self.peak_total_mib = max(self.peak_total_mib, total / 2**20)
            self._stop.wait(self.interval)

    def __enter__(self) -> "TreeRss":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class DiskPeak:
    """Samples the used bytes of the filesystem holding ``path`` every ``interval`` seconds; a context
    manager. ``peak_growth_bytes``: the most used at one sample, less what was used on entry."""

    def __init__(self, path: str, interval: float = 0.5):
        self.path, self.interval = path, interval
        self.peak_growth_bytes = 0
        self._start = shutil.disk_usage(path).used
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_growth_bytes = max(self.peak_growth_bytes, shutil.disk_usage(self.path).used - self._start)
            self._stop.wait(self.interval)

    def __enter__(self) -> "DiskPeak":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def ray_spilled_bytes() -> int:
    """Bytes the connected Ray cluster has spilled from its object store so far (its memory summary)."""
    import ray
    from ray._private.internal_api import memory_summary

    text = memory_summary(address=ray.get_runtime_context().gcs_address, stats_only=True)
    m = re.search(r"Spilled (\d+) MiB", text)
    return int(m.group(1)) << 20 if m else 0
