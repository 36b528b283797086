"""What a benchmark part is, and the context every part runs in.

A part (``benchmarks/bench_<name>.py`` defines ``PART``) has a ``run`` that measures and returns a
result (``schema.new_result``), and a ``render`` that turns a result into a report section. Parts
written by other engineers' scripts (quality, video) have ``run=None``: the harness renders their
JSON as it finds it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from benchmarks.harness.jobs import REPO, ensure_dataset, prepare_tiny_dataset
from benchmarks.harness.machine import machine_info
from benchmarks.harness.ranks import RankPool
from benchmarks.harness.schema import new_result

__all__ = ["Part", "RunContext", "RenderContext", "write_result", "FULL_PRESET", "QUICK_PRESET", "FULL_DATASET"]

FULL_PRESET = "jobs/configs/microlens-50k/sasrec-id.yaml"
FULL_DATASET = "data/shards/microlens-50k"
FULL_INGEST = "jobs/configs/microlens-50k/ingest.yaml"
QUICK_PRESET = "jobs/configs/synthetic/sasrec-id-small.yaml"


@dataclasses.dataclass
class RunContext:
    """Settings and shared resources of one harness invocation.

    Attributes:
        quick: CI-sized run (tiny data, few steps, one repeat).
        results_dir: Where ``<part>.json`` and ``figures/`` go.
        work_dir: Scratch space (datasets, runs, checkpoints); git-ignored.
        argv: The harness's command-line arguments (for the command each result records).
        repeats: Repeats of every timed configuration.
        launcher: ``ray`` or ``gloo`` for training runs (``jobs.run_job``).
        workers: Worker counts of the scaling study.
        use_gpu: One GPU per worker (cluster runs).
        address: Ray cluster address (None: embedded local cluster).
        dataset: Training dataset override (None: MicroLens-50K, or the tiny synthetic one in quick mode).
        preset: Training preset override.
        storage: Storage path of benchmark runs (must be shared on multi-node clusters).
        extra: Part-specific command-line settings (e.g. ``global_batch``); None values mean the default.
    """

    quick: bool
    results_dir: Path
    work_dir: Path
    argv: list[str]
    repeats: int
    launcher: str
    workers: tuple[int, ...]
    use_gpu: bool = False
    address: str | None = None
    dataset: str | None = None
    preset: str | None = None
    storage: str | None = None
    extra: dict = dataclasses.field(default_factory=dict)
    _pools: dict[int, RankPool] = dataclasses.field(default_factory=dict)
    _machine: dict | None = None
    _tiny: str | None = None
    _full: str | None = None

    # ------------------------------------------------------------------ identity
    @property
    def command(self) -> str:
        """The command this invocation was started with."""
        return " ".join(["python", "benchmarks/run.py", *self.argv])

    def machine(self) -> dict:
        """The machine block (computed once)."""
        if self._machine is None:
            self._machine = machine_info()
        return self._machine

    def new_result(self, part: str, title: str, settings: dict) -> dict:
        """An empty result of ``part`` stamped with the command, mode and machine."""
        # The load average when the part starts (run.py adds the one at its end): this machine may be shared.
        machine = {**self.machine(), "load_average_start": [round(x, 2) for x in os.getloadavg()]}
        return new_result(part, title, command=self.command, quick=self.quick, machine=machine, settings=settings)

    def log(self, line: str) -> None:
        """A progress line on stderr (stdout stays for the final summary)."""
        print(f"[bench {time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ data and presets
    def train_data(self) -> tuple[str, str]:
        """``(dataset_dir, preset)`` of the training measurements."""
        if self.quick:
            if self.dataset is None and self._tiny is None:
                self.log("preparing the CI-sized synthetic dataset")
                self._tiny = prepare_tiny_dataset(str(self.work_dir / "tiny"))
            return self.dataset or self._tiny, self.preset or str(REPO / QUICK_PRESET)
        if self.dataset is None and self._full is None:
            # The shared dataset when it loads; else an own copy kept beside the (per-run) scratch directory.
            self._full = ensure_dataset(str(REPO / FULL_DATASET), str(self.work_dir.parent / "datasets" / "microlens-50k"),
                                        str(REPO / FULL_INGEST), log=self.log)
        dataset = self.dataset or self._full
        return dataset, self.preset or str(REPO / FULL_PRESET)

    def runs_dir(self, part: str) -> str:
        """Storage path for ``part``'s training runs."""
        path = self.storage or str(self.work_dir / "runs" / part)
        if "://" not in path:
            os.makedirs(path, exist_ok=True)
        return path

    def figure_path(self, name: str) -> tuple[str, str]:
        """``(absolute path, results-relative path)`` of a new figure ``figures/<name>.png``."""
        rel = f"figures/{name}.png"
        return str(self.results_dir / rel), rel

    # ------------------------------------------------------------------ rank pools
    def pool(self, world_size: int) -> RankPool:
        """A running pool of ``world_size`` gloo ranks, started on first use and kept for later parts."""
        if world_size not in self._pools:
            self.log(f"starting a pool of {world_size} gloo rank(s)")
            self._pools[world_size] = RankPool(world_size, use_gpu=self.use_gpu).__enter__()
        return self._pools[world_size]

    def fresh_pool(self, world_size: int) -> RankPool:
        """A new pool (for measurements that need fresh processes, e.g. peak memory); close it after use."""
        return RankPool(world_size, use_gpu=self.use_gpu).__enter__()

    def close(self) -> None:
        """Stop every pool this context started."""
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()


@dataclasses.dataclass(frozen=True)
class RenderContext:
    """Where a section's figures are, relative to the report."""

    results_dir: Path
    report_dir: Path

    def link(self, path: str) -> str:
        """Link to a results-relative file from the report."""
        return os.path.relpath(self.results_dir / path, self.report_dir)

    def figure_md(self, fig: dict) -> str:
        """A figure embedded with its caption: title, unit, command and aggregation."""
        return (f"![{fig['title']}]({self.link(fig['path'])})\n\n*{fig['title']}. Unit: {fig['unit']}. "
                f"Aggregation: {fig['aggregation']}. Command: `{fig['command']}`.*\n")



@dataclasses.dataclass(frozen=True)
class Part:
    """A benchmark part.

    Attributes:
        name: ``--only`` name and result file name.
        title: Report section heading.
        run: Measures and returns a result (None: the result is written by another script).
        render: ``(result, RenderContext) -> markdown`` of the section body.
        owner_command: For parts written elsewhere: how their JSON is produced (shown in the report).
        owner_script: For parts written elsewhere: the repo-relative script the harness may run for them.
    """

    name: str
    title: str
    run: Callable[[RunContext], dict] | None
    render: Callable[[dict, RenderContext], str]
    owner_command: str | None = None
    owner_script: str | None = None


def write_result(result: dict, results_dir: Path) -> Path:
    """Write ``<results_dir>/<part>.json`` (sorted keys, one-space indent)."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{result['part']}.json"
    path.write_text(json.dumps(result, indent=1, sort_keys=True, default=_jsonable) + "\n")
    return path


def _jsonable(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    if isinstance(x, (set, tuple)):
        return list(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")
