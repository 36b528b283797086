"""What a run directory holds, read without torch: checkpoints, status, metrics, the final result.

A run is ``<train.storage_path>/<train.run_name>/`` (local, shared filesystem or object store):

```
checkpoint-step<9 digits>/   COMMIT.json (written last), state.json, config.json, tensors
logs/metrics.jsonl           one JSON record per line (train / epoch / valid / test / memory / checkpoint)
logs/tensorboard/            TensorBoard event files of the same records
curves.png                   training loss and every validation metric per epoch, drawn when the run finished
status.json                  the driver's view: running (a heartbeat while it runs), failed, finished
result.json                  final metrics, written by rank 0 when the run finished
evals/<checkpoint>-<split>.json   results of ``mvrec eval``
```

A run counts as *finished* when ``result.json`` exists, *failed* when the driver recorded a failure
or nothing in the run changed for longer than ``stale_after`` seconds (a killed driver leaves no
record; resubmitting the same command resumes it), and *in progress* otherwise.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs as pafs

from mvrec_dist.data.fs import open_output_stream, resolve

__all__ = ["RESULT_NAME", "STATUS_NAME", "COMMIT_NAME", "METRICS_LOG", "HEARTBEAT_SECONDS", "NOT_METRICS",
           "RunSummary", "checkpoint_name", "checkpoint_position", "list_checkpoints", "list_runs", "summarize_run",
           "resolve_checkpoint", "write_status", "read_json", "read_metrics_log", "metric_keys", "format_duration"]

RESULT_NAME = "result.json"
STATUS_NAME = "status.json"
COMMIT_NAME = "COMMIT.json"  # parallel.checkpoint.COMMIT_NAME, repeated so that this module imports no torch
METRICS_LOG = "logs/metrics.jsonl"
"""The run's metric records, relative to the run directory (``train.metrics_log.MetricsLog`` writes them)."""
NOT_METRICS = frozenset({"users", "items", "seconds", "step", "epoch", "best_epoch", "time", "kind"})
"""Numeric entries of a metrics record that are counts, times or positions rather than metrics."""
HEARTBEAT_SECONDS = 60.0
"""How often a running driver rewrites ``status.json``; ``stale_after`` should be several of these."""

_CHECKPOINT = re.compile(r"^checkpoint-step(\d{9})$")


def checkpoint_name(step: int) -> str:
    """Directory name of the checkpoint taken after ``step`` optimiser steps."""
    return f"checkpoint-step{step:09d}"


def list_checkpoints(run_uri: str) -> list[tuple[int, str]]:
    """``(step, name)`` of every checkpoint directory under a run directory, newest first."""
    fs, root = resolve(run_uri)
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        return []
    found = []
    for entry in fs.get_file_info(pafs.FileSelector(root)):
        m = _CHECKPOINT.match(entry.base_name)
        if m and entry.type == pafs.FileType.Directory:
            found.append((int(m.group(1)), entry.base_name))
    return sorted(found, reverse=True)


def read_json(uri: str) -> dict | None:
    """The JSON object stored at ``uri``; None when the file is absent or not a JSON object."""
    fs, path = resolve(uri)
    try:
        with fs.open_input_stream(path) as f:
            data = json.loads(f.read().decode("utf-8"))
    except (FileNotFoundError, OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def read_metrics_log(run_uri: str) -> list[dict]:
    """The records of ``<run>/logs/metrics.jsonl`` in the order written; empty when the file is absent.

    A line that is not a JSON object is skipped: the last one may be half-written while the run goes on.
    """
    fs, path = resolve(f"{run_uri.rstrip('/')}/{METRICS_LOG}")
    try:
        with fs.open_input_stream(path) as f:
            text = f.read().decode("utf-8", errors="replace")
    except (FileNotFoundError, OSError):
        return []
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def metric_keys(metrics: dict[str, Any]) -> list[str]:
    """The entries of a metrics record that are metrics (numbers not in ``NOT_METRICS``), in its order."""
    return [k for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in NOT_METRICS]


def write_status(run_uri: str, status: str, *, error: str | None = None, owner: dict | None = None) -> None:
    """Record the driver's view of a run in ``<run>/status.json`` (``running``/``failed``/``finished``).

    Args:
        run_uri: The run directory.
        status: What the driver knows.
        error: One line saying why the run failed.
        owner: The driver that writes it (``run_lease.DriverIdentity.to_dict()``).
    """
    record: dict = {"status": status, "updated": time.time()}
    if error:
        record["error"] = error
    if owner:
        record["owner"] = owner
    with open_output_stream(f"{run_uri.rstrip('/')}/{STATUS_NAME}") as f:
        f.write(json.dumps(record, indent=1, sort_keys=True).encode("utf-8"))


@dataclass
class RunSummary:
    """One run as ``mvrec runs list/show`` reports it."""

    name: str
    """Run name (directory name)."""
    uri: str
    """Run directory."""
    status: str
    """``finished``, ``in progress`` or ``failed``."""
    detail: str = ""
    """Why a run is failed (the driver's error, or how long it has been silent)."""
    updated: float = 0.0
    """Newest modification time seen in the run (seconds since the epoch; 0 when unknown)."""
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    """Newest first: ``name``, ``step``, ``committed``, and from its state (None when unfinished) ``epoch``
    (the epoch in progress, 0-based) and ``epoch_step`` (its steps done; 0 at an epoch's end)."""
    select_metric: str = "ndcg@10"
    """The validation metric that picks the best checkpoint."""
    metric_names: list[str] = field(default_factory=list)
    """The task's metrics in display order (from the checkpoint's config; empty when unknown)."""
    best_valid: dict[str, float] = field(default_factory=dict)
    """Metrics of the best validation so far (``hr@10``, ``ndcg@10``, ...)."""
    best_epoch: int | None = None
    """Epoch of the best validation."""
    best_step: int | None = None
    """Step of the best validation (the best checkpoint is ``checkpoint_name(best_step)``)."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """Every validation of the newest committed checkpoint's state: ``epoch``, ``step``, ``metrics``."""
    test: dict[str, float] | None = None
    """Test metrics of the best weights (finished runs that tested)."""
    result: dict[str, Any] | None = None
    """``result.json`` as written (finished runs)."""
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)
    """``mvrec eval`` results under ``evals/``, by file stem."""

    @property
    def newest_checkpoint(self) -> dict[str, Any] | None:
        """The newest committed checkpoint, if any."""
        return next((c for c in self.checkpoints if c["committed"]), None)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json`` output."""
        return {k: getattr(self, k) for k in ("name", "uri", "status", "detail", "updated", "checkpoints",
                                              "select_metric", "metric_names", "best_valid", "best_epoch", "best_step", "history",
                                              "test", "result", "evals")}


def checkpoint_position(checkpoint: dict[str, Any]) -> str:
    """Where in training a ``RunSummary.checkpoints`` entry was taken, e.g. ``end of epoch 2``."""
    epoch, epoch_step = checkpoint.get("epoch"), checkpoint.get("epoch_step")
    if epoch is None:
        return "unfinished"
    if not epoch_step:
        return f"end of epoch {epoch - 1}" if epoch > 0 else "start"
    return f"epoch {epoch}, step {epoch_step} of it"


def _mtime(info: pafs.FileInfo) -> float:
    return info.mtime.timestamp() if info.type != pafs.FileType.NotFound and info.mtime is not None else 0.0


def _is_run(fs: pafs.FileSystem, root: str) -> bool:
    names = {e.base_name for e in fs.get_file_info(pafs.FileSelector(root))}
    return bool(names & {RESULT_NAME, STATUS_NAME, "logs"}) or any(_CHECKPOINT.match(n) for n in names)


def list_runs(storage_path: str, *, stale_after: float = 600.0) -> list[RunSummary]:
    """Every run directory directly under ``storage_path``, most recently updated first.

    Args:
        storage_path: A ``train.storage_path`` (local path or URI).
        stale_after: Seconds without any change after which an unfinished run counts as failed.

    Returns:
        The runs' summaries (an empty list when the directory does not exist).
    """
    fs, root = resolve(storage_path)
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        return []
    runs = []
    for entry in fs.get_file_info(pafs.FileSelector(root)):
        if entry.type == pafs.FileType.Directory and _is_run(fs, entry.path):
            runs.append(summarize_run(f"{storage_path.rstrip('/')}/{entry.base_name}", stale_after=stale_after))
    return sorted(runs, key=lambda r: r.updated, reverse=True)


def summarize_run(run_uri: str, *, stale_after: float = 600.0, now: float | None = None) -> RunSummary:
    """Read a run directory into a ``RunSummary``.

    Args:
        run_uri: The run directory.
        stale_after: Seconds without any change after which an unfinished run counts as failed.
        now: The current time (tests pass a fixed one).

    Returns:
        The summary.
    """
    fs, root = resolve(run_uri)
    name = root.rstrip("/").rsplit("/", 1)[-1]
    summary = RunSummary(name=name, uri=run_uri, status="in progress")
    run = run_uri.rstrip("/")
    times = [_mtime(i) for i in fs.get_file_info([f"{root}/{STATUS_NAME}", f"{root}/{RESULT_NAME}",
                                                   f"{root}/{METRICS_LOG}"])]
    for step, ckpt in list_checkpoints(run_uri):
        commit_info = fs.get_file_info(f"{root}/{ckpt}/{COMMIT_NAME}")
        times.append(max(_mtime(commit_info), _mtime(fs.get_file_info(f"{root}/{ckpt}"))))
        commit = read_json(f"{run}/{ckpt}/{COMMIT_NAME}") if commit_info.type == pafs.FileType.File else None
        state = (read_json(f"{run}/{ckpt}/state.json") or {}) if commit else {}
        summary.checkpoints.append({"name": ckpt, "step": step, "committed": commit is not None,
                                    "epoch": state.get("epoch"), "epoch_step": state.get("epoch_step")})
    summary.updated = max(times, default=0.0)
    newest = summary.newest_checkpoint
    if newest is not None:
        config = read_json(f"{run}/{newest['name']}/config.json") or {}
        summary.select_metric, summary.metric_names = _task_metrics(config, summary.select_metric)
        state = read_json(f"{run}/{newest['name']}/state.json") or {}
        summary.history = state.get("history", [])
        best = next((h for h in summary.history if h.get("step") == state.get("best_step")), None)
        if best is not None:
            summary.best_valid, summary.best_epoch, summary.best_step = best["metrics"], best["epoch"], best["step"]
    _read_evals(fs, root, run, summary)
    result = read_json(f"{run}/{RESULT_NAME}")
    status = read_json(f"{run}/{STATUS_NAME}") or {}
    if result is not None:
        summary.status, summary.result = "finished", result
        valid = {k[len("valid/"):]: v for k, v in result.items() if k.startswith("valid/")}
        if valid:
            summary.best_valid, summary.best_epoch = valid, result.get("best_epoch")
        test = {k[len("test/"):]: v for k, v in result.items() if k.startswith("test/")}
        summary.test = test or None
    elif status.get("status") == "failed":
        summary.status, summary.detail = "failed", status.get("error", "the driver recorded a failure")
    else:
        silent = (time.time() if now is None else now) - summary.updated
        if silent > stale_after:
            summary.status = "failed"
            summary.detail = (f"no change for {format_duration(silent)} and no result.json (the driver was stopped "
                              "or killed); resubmit the same command to resume from the newest checkpoint")
    return summary


def _read_evals(fs: pafs.FileSystem, root: str, run: str, summary: RunSummary) -> None:
    if fs.get_file_info(f"{root}/evals").type != pafs.FileType.Directory:
        return
    for entry in fs.get_file_info(pafs.FileSelector(f"{root}/evals")):
        if entry.base_name.endswith(".json"):
            data = read_json(f"{run}/evals/{entry.base_name}")
            if data is not None:
                summary.evals[entry.base_name[:-len(".json")]] = data


def format_duration(seconds: float) -> str:
    """A duration as ``2d03h``, ``1h05m``, ``7m`` or ``42s``."""
    seconds = int(max(seconds, 0))
    days, rem = divmod(seconds, 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    return f"{days}d{h:02d}h" if days else (f"{h}h{m:02d}m" if h else (f"{m}m" if m else f"{s}s"))


def resolve_checkpoint(target: str, which: str = "best") -> tuple[str, str]:
    """Find the checkpoint ``mvrec eval`` should score.

    Args:
        target: A run directory, or a checkpoint directory (one holding ``COMMIT.json``).
        which: For a run directory: ``best`` (the best validation's checkpoint, as the newest
            committed checkpoint's state records it), ``latest`` (the newest committed one) or a
            checkpoint's directory name. Ignored for a checkpoint directory.

    Returns:
        ``(run directory, checkpoint directory)``.

    Raises:
        PathError: one line naming what is missing and what to pass instead.
    """
    from mvrec_dist.runtime.paths import PathError

    fs, path = resolve(target)
    target = target.rstrip("/")
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.NotFound:
        raise PathError(f"{target} does not exist; pass a run directory (<train.storage_path>/<train.run_name>, "
                        "see `mvrec runs list`) or a checkpoint directory inside one")
    if kind != pafs.FileType.Directory:
        raise PathError(f"{target} is a file; pass a run directory or a checkpoint directory")
    if fs.get_file_info(f"{path}/{COMMIT_NAME}").type == pafs.FileType.File:
        return target.rpartition("/")[0] or ".", target
    names = {c["name"]: c for c in summarize_run(target, stale_after=float("inf")).checkpoints}
    committed = [n for n, c in names.items() if c["committed"]]
    if not committed:
        raise PathError(f"{target} has no finished checkpoint (no checkpoint-step*/ with {COMMIT_NAME}); "
                        "train longer or pass a checkpoint directory")
    if which == "latest":
        return target, f"{target}/{committed[0]}"
    if which == "best":
        state = read_json(f"{target}/{committed[0]}/state.json") or {}
        step = state.get("best_step", -1)
        if step is None or step < 0:
            raise PathError(f"{target}: the run has not validated yet, so it has no best checkpoint; "
                            "pass --checkpoint latest")
        name = checkpoint_name(step)
        if name not in committed:
            raise PathError(f"{target}: the best checkpoint {name} is missing or unfinished; "
                            f"pass --checkpoint latest or one of {', '.join(committed)}")
        return target, f"{target}/{name}"
    if which not in committed:
        raise PathError(f"{target} has no finished checkpoint {which}; pass best, latest or one of "
                        f"{', '.join(committed)}")
    return target, f"{target}/{which}"


def _task_metrics(config: dict[str, Any], default_select: str) -> tuple[str, list[str]]:
    """``(selection metric, metric names)`` of a run from its checkpoint's ``config.json``.

    The config is rebuilt so the task resolves them as the run did; a config this version cannot
    read (written by a much older or newer one) keeps what it states, with names unknown.
    """
    from mvrec_dist.config.jobs import TrainJobConfig
    from mvrec_dist.config.load import build_config

    try:
        cfg = build_config(TrainJobConfig, config)
    except Exception:  # noqa: BLE001 (any unreadable config: show the run anyway)
        return (config.get("eval", {}).get("select_metric") or default_select), []
    return cfg.select_metric.name, [m.name for m in cfg.metrics]
