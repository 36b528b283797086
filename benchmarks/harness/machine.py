"""What a benchmark ran on: CPU, cores, memory, GPU, library versions (the report's machine block)."""

from __future__ import annotations

import importlib.metadata
import os
import platform

__all__ = ["machine_info", "LIBRARIES"]

# Distribution names whose versions every result records (fbgemm comes as the CPU or the CUDA wheel).
LIBRARIES = ("torch", "torchrec", "fbgemm-gpu-cpu", "fbgemm-gpu", "deepspeed", "ray", "pyarrow", "numpy",
             "matplotlib")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)


def _gpus() -> list[str]:
    """Names of the visible CUDA devices (empty without torch's CUDA build or a GPU)."""
    try:
        import torch

        if torch.cuda.is_available():
            return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - a broken CUDA install just means no usable GPU here
        pass
    return []


def _git() -> dict:
    """The commit the benchmark code ran at, and whether tracked files differed from it."""
    import subprocess

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                                    capture_output=True, text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "tracked_changes": None}
    return {"commit": commit, "tracked_changes": dirty}


def machine_info() -> dict:
    """The machine block of a result.

    Returns:
        ``cpu`` (model name), ``cores`` (logical CPUs), ``cores_usable`` (this process's affinity),
        ``memory_gib``, ``gpus`` (names, empty when none), ``platform``, ``python`` and
        ``libraries`` (distribution -> version, only the installed ones), ``git`` (commit, and whether
        tracked files had uncommitted changes).
    """
    libs = {}
    for name in LIBRARIES:
        try:
            libs[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {"cpu": _cpu_model(), "cores": os.cpu_count() or 0,
            "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "memory_gib": _memory_gib(), "gpus": _gpus(), "platform": platform.platform(),
            "python": platform.python_version(), "libraries": libs, "git": _git()}
