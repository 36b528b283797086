"""Driver side of training and evaluation: check the job before anything starts, then run it under Ray Train.

Every check that can fail fast runs here, on the driver, before a worker starts: device support
of the sharding/optimizer choices, the dataset, a checkpoint to resume or evaluate, the storage
paths (writable, and shared when the cluster has several nodes), and the cluster's resources.
Each failure is one line naming the setting to change.

A run directory has one driver (``claim_run``, ``train.run_lease``): it keeps ``<run>/status.json``
up to date (a heartbeat, then ``finished`` or ``failed`` with the reason), refuses a second live
driver and takes over a dead one's run. Running a finished run's command again shows its result
(``finished_result``). The driver also decides retries (``run_training``): a lost worker or node is
retried from the newest checkpoint, a full disk or a bad config is not.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from typing import Callable

import pyarrow.fs as pafs

from mvrec_dist.config.jobs import TrainJobConfig
from mvrec_dist.data.fs import resolve
from mvrec_dist.data.manifest import ManifestError, load_manifest
from mvrec_dist.runtime.console import run_log_dir
from mvrec_dist.runtime.errors import describe_failure, failure_cause, is_deterministic, user_error_types
from mvrec_dist.runtime.paths import PathError, check_dataset_dir, check_storage_path, relative_in_working_dir_copy
from mvrec_dist.runtime.ray_cluster import cluster_view
from mvrec_dist.train.curves import save_run_curves
from mvrec_dist.train.run_lease import RunLease
from mvrec_dist.train.run_logs import start_attempt
from mvrec_dist.train.runs import RESULT_NAME, STATUS_NAME, list_checkpoints, read_json

__all__ = ["PreflightError", "RunFailedError", "preflight", "prepare_dataset", "prepare_features", "absolute_paths",
           "run_uri_of", "finished_result", "finished_message", "check_run_free", "claim_run", "run_training",
           "run_evaluation", "read_result", "RESULT_NAME"]


class PreflightError(RuntimeError):
    """The job cannot start as configured; ``problems`` says why, each one line naming a setting."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("cannot start:\n  - " + "\n  - ".join(problems))


def _cluster_problems(cfg: TrainJobConfig, resources: dict, num_nodes: int, shared: dict[str, str]) -> list[str]:
    p = cfg.parallel
    problems = []
    need_cpu = p.num_workers * p.cpus_per_worker
    have_cpu = int(resources.get("CPU", 0))
    if need_cpu > have_cpu:
        problems.append(f"parallel.num_workers={p.num_workers} x parallel.cpus_per_worker={p.cpus_per_worker} "
                        f"needs {need_cpu} CPUs but the Ray cluster has {have_cpu}; lower num_workers or add nodes")
    if p.use_gpu:
        have_gpu = int(resources.get("GPU", 0))
        if p.num_workers > have_gpu:
            problems.append(f"parallel.num_workers={p.num_workers} with parallel.use_gpu=true needs "
                            f"{p.num_workers} GPUs but the Ray cluster has {have_gpu}; lower num_workers or add "
                            "GPU nodes (an autoscaling cluster: start its GPU workers first)")
    # Workers on any node read the dataset and write checkpoints: both must be visible everywhere.
    for key, path in shared.items():
        try:
            check_storage_path(path, num_nodes=num_nodes, key=key)
        except PathError as exc:
            problems.append(str(exc))
    return problems


def preflight(cfg: TrainJobConfig, *, resources: dict | None = None, num_nodes: int = 1,
              evaluating: str | None = None) -> None:
    """Raise ``PreflightError`` listing everything that would stop the job.

    Args:
        cfg: The job config.
        resources: ``ray.cluster_resources()``; None skips the cluster checks.
        num_nodes: Alive nodes of the cluster (a local path is fine on one node only).
        evaluating: The checkpoint ``mvrec eval`` scores: checked for being shared instead of the
            run's storage, while ``train.resume`` is ignored (the caller verifies the checkpoint
            itself, before it reads the config from it), and cached trunk features must already
            exist (evaluation never computes them). None for training.
    """
    from mvrec_dist.parallel.planning import sharding_problems
    from mvrec_dist.tasks import build_task
    from mvrec_dist.train.checkpointing import check_checkpoint
    from mvrec_dist.train.content import content_problems

    problems: list[str] = []
    manifest = None
    try:
        manifest = load_manifest(check_dataset_dir(cfg.data.dataset_dir))  # the schema too, not only the file
    except ManifestError as exc:  # a dataset is there but unusable: prepare_with would not replace it
        problems.append(str(exc))
    except PathError as exc:
        prepare = cfg.data.prepare_with if evaluating is None else None  # evaluation never ingests
        if not prepare:
            problems.append(str(exc))
        elif not os.path.isfile(prepare):
            problems.append(f"data.prepare_with={prepare} does not exist and data.dataset_dir holds no dataset "
                            "yet; give an ingest preset (jobs/configs/<dataset>/ingest*.yaml) or point "
                            "data.dataset_dir at an ingested dataset")
    # The model's own tables when the dataset is there (their sizes need it); else the item table.
    task = build_task(cfg)
    data_problems = task.dataset_problems(manifest) if manifest is not None else []
    # A table may take its width from the data (FRAME's clip features): only a usable dataset has specs, and the
    # model's tables are checked once the dataset is.
    if manifest is None:
        problems[:0] = sharding_problems(cfg.parallel, None)
    elif not data_problems:
        problems[:0] = sharding_problems(cfg.parallel, task.table_specs(manifest))
    problems.extend(data_problems)
    if evaluating is None and cfg.train.resume not in ("auto", "never"):
        try:
            check_checkpoint(cfg.train.resume, key="train.resume")
        except PathError as exc:
            problems.append(str(exc))
    if evaluating is not None:  # trunk_cache.build_if_missing is a training step: the store must be there
        cfg = dataclasses.replace(cfg, trunk_cache=dataclasses.replace(cfg.trunk_cache, build_if_missing=False))
    problems.extend(content_problems(cfg))
    if resources is not None:
        shared = {"data.dataset_dir": cfg.data.dataset_dir}
        if cfg.data.content_features:
            shared["data.content_features"] = cfg.data.content_features
        if evaluating is not None:
            shared["checkpoint"] = evaluating
        else:
            shared["train.storage_path"] = cfg.train.storage_path
        problems.extend(_cluster_problems(cfg, resources, num_nodes, shared))
    if problems:
        raise PreflightError(problems)


def prepare_dataset(cfg: TrainJobConfig) -> None:
    """Run the ingest preset ``data.prepare_with`` when ``data.dataset_dir`` holds no dataset yet.

    The preset's output directory is replaced by ``data.dataset_dir`` so the two cannot disagree.
    Needs a Ray session (ingestion is a Ray Data pipeline).
    """
    if not cfg.data.prepare_with:
        return
    try:
        check_dataset_dir(cfg.data.dataset_dir)
        return
    except PathError:
        pass
    from mvrec_dist.config.jobs import IngestJobConfig
    from mvrec_dist.config.load import load_config
    from mvrec_dist.data.ingest import run_ingest_job

    ingest_cfg = load_config(IngestJobConfig, cfg.data.prepare_with, [f"ingest.output_dir={cfg.data.dataset_dir}"])
    print(f"{cfg.data.dataset_dir} has no dataset yet: ingesting it with {cfg.data.prepare_with}", flush=True)
    run_ingest_job(ingest_cfg)


def prepare_features(cfg: TrainJobConfig) -> None:
    """Compute the cached (video: trunk) features when ``trunk_cache.build_if_missing`` and the store is absent.

    Needs a Ray session (the feature pass is a Ray Data job). An existing store is left alone; the
    workers check that it belongs to this run's frozen encoder part and content.
    """
    if not cfg.model.uses_cached_features or not cfg.trunk_cache.build_if_missing:
        return
    from mvrec_dist.data.content_store import ContentStoreError, load_features_manifest

    try:
        load_features_manifest(cfg.data.content_features)
        return
    except ContentStoreError:
        pass
    from mvrec_dist.features.trunk_cache import run_trunk_cache

    print(f"{cfg.data.content_features} holds no trunk features yet: computing them", flush=True)
    run_trunk_cache(absolute_paths(cfg))


_WARNED: set[str] = set()


def absolute_paths(cfg: TrainJobConfig) -> TrainJobConfig:
    """``cfg`` with local relative paths made absolute against the driver's working directory.

    Ray Train workers do not run in the driver's directory, so a relative ``data/shards/x`` would
    name nothing there; URIs are left as they are.
    """
    warning = relative_in_working_dir_copy({"train.storage_path": cfg.train.storage_path,
                                            "data.dataset_dir": cfg.data.dataset_dir})
    if warning and warning not in _WARNED:  # once per job: absolute_paths runs at every stage
        _WARNED.add(warning)
        print(warning, file=sys.stderr, flush=True)

    def fix(path: str | None) -> str | None:
        return os.path.abspath(path) if path and "://" not in path else path

    data = dataclasses.replace(cfg.data, dataset_dir=fix(cfg.data.dataset_dir),
                               content_features=fix(cfg.data.content_features), prepare_with=fix(cfg.data.prepare_with))
    train = dataclasses.replace(cfg.train, storage_path=fix(cfg.train.storage_path))
    resume = train.resume if train.resume in ("auto", "never") else fix(train.resume)
    r = cfg.retrieval  # the neighbour job's output and MMRA's inputs
    retrieval = dataclasses.replace(r, output_dir=fix(r.output_dir), text_features=fix(r.text_features),
                                    frame_features=fix(r.frame_features))
    return dataclasses.replace(cfg, data=data, train=dataclasses.replace(train, resume=resume), retrieval=retrieval)


def _fit(cfg: TrainJobConfig, worker: Callable[[dict], None], payload: dict, *, name: str, storage: str,
         log_dir: str | None = None) -> None:
    """Run ``worker`` once on ``parallel.num_workers`` Ray Train workers; raise what failed.

    Ray Train restarts nothing itself (``max_failures=0``): whether a failed run is retried is
    decided by ``run_training``, which knows a full disk from a lost worker.

    Rank 0's progress lines and bars reach this console through a queue (``runtime.console``); unless
    ``ray.verbose``, each rank's own output goes to ``<log_dir>/<job>-rank<r>.log`` (``<job>``: ``train``
    for ``train_worker``, ``eval`` for ``eval_worker``; ``log_dir``: the run's ``logs/`` by default).
    """
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from mvrec_dist.runtime.console import Console, console_relay, logged_worker

    p = cfg.parallel
    resources = {"CPU": p.cpus_per_worker}
    if p.use_gpu:
        resources["GPU"] = 1
    console = Console()
    log_dir = log_dir or run_log_dir(cfg.train.storage_path, cfg.train.run_name)
    job = worker.__name__.removesuffix("_worker")
    os.makedirs(log_dir, exist_ok=True)  # the run is claimed: the driver's log may start here (driver.log)
    if not cfg.ray.verbose:
        console(("line", f"starting {p.num_workers} Ray Train workers; their output: {log_dir}/{job}-rank*.log"))
    with console_relay(console) as queue:
        trainer = TorchTrainer(
            logged_worker,
            train_loop_config={**payload, "console": {"entry": f"{worker.__module__}:{worker.__name__}",
                                                      "log_dir": log_dir, "log_name": job,
                                                      "verbose": cfg.ray.verbose, "queue": queue}},
            torch_config=TorchConfig(backend="nccl" if p.use_gpu else "gloo", timeout_s=p.timeout_s),
            scaling_config=ScalingConfig(num_workers=p.num_workers, use_gpu=p.use_gpu,
                                         resources_per_worker=resources),
            run_config=RunConfig(
                name=name, storage_path=storage,
                failure_config=FailureConfig(max_failures=0),
                # Checkpoints are the Checkpointer's alone (written, committed and pruned by it); Ray Train
                # is given metrics only, so its run snapshot never lists a checkpoint the Checkpointer pruned.
                checkpoint_config=CheckpointConfig(num_to_keep=None),
                # Our own progress lines say what happens; Ray Train's per-report INFO lines repeat it.
                logging_config=LoggingConfig(log_level="WARNING"),
                worker_runtime_env={"env_vars": {
                    # Ray Train's print patch tees worker prints that Ray already streams: every line twice.
                    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
                    # Told, DeepSpeed does not probe for an accelerator and warn that it fell back to the CPU.
                    "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR") or ("cuda" if p.use_gpu else "cpu")}}),
        )
        result = trainer.fit()
    if result.error is not None:
        raise result.error


class RunFailedError(RuntimeError):
    """A run failed on its workers; the message is one line: the cause, and whether it was retried."""


def run_uri_of(cfg: TrainJobConfig) -> str:
    """The run directory ``<train.storage_path>/<train.run_name>``."""
    return f"{cfg.train.storage_path.rstrip('/')}/{cfg.train.run_name}"


def finished_result(cfg: TrainJobConfig) -> dict | None:
    """The result of the run ``cfg`` names when it already finished and ``train.resume`` keeps it, else None.

    ``train.resume=never`` asks for a fresh run, so a finished one does not count.
    """
    if cfg.train.resume == "never":
        return None
    return read_json(f"{run_uri_of(cfg)}/{RESULT_NAME}")


def finished_message(cfg: TrainJobConfig, result: dict) -> str:
    """What a rerun of a finished run prints before its result: that it finished, and how to train more."""
    run = run_uri_of(cfg)
    newest = list_checkpoints(run)
    last = f"{run}/{newest[0][1]}" if newest else f"{run}/checkpoint-step<N>"
    return (f"run {cfg.train.run_name} already finished ({result.get('epochs', '?')} "
            f"epochs, best epoch {result.get('best_epoch', '?')}); its result is below. To train it again from "
            f"scratch: train.resume=never. To train on from its weights as a new run: "
            f"train.run_name=<new name> train.resume={last} train.epochs=<more>")


def check_run_free(cfg: TrainJobConfig) -> None:
    """Raise ``RunBusyError`` when a live driver owns the run (before this driver starts a cluster)."""
    RunLease.check_free(run_uri_of(cfg), timeout_s=cfg.train.owner_timeout_s)


def claim_run(cfg: TrainJobConfig, say: Callable[[str], None] = print) -> RunLease:
    """Take ownership of the run directory for this driver and prepare it for ``train.resume``.

    A live driver of the same run makes this raise ``RunBusyError``; a dead one's run is taken over.
    With ``train.resume=never`` everything an earlier run left in the directory is removed (it would
    otherwise be resumed by a retry or mixed into this run's checkpoints).

    Args:
        cfg: The job config (local paths absolute).
        say: Where messages go.

    Returns:
        The held lease; use it as a context manager around the run (it records the outcome).

    Raises:
        RunBusyError: another live driver owns the run.
        PreflightError: the run directory cannot be written.
    """
    run = run_uri_of(cfg)
    try:
        lease = RunLease.acquire(run, timeout_s=cfg.train.owner_timeout_s, describe_error=describe_failure, say=say)
    except OSError as exc:
        raise PreflightError([f"train.storage_path={cfg.train.storage_path}: cannot write the run directory "
                              f"({exc}); fix its permissions or credentials, or choose another path"]) from None
    fs, root = resolve(run)
    leftovers = [e for e in fs.get_file_info(pafs.FileSelector(root)) if e.base_name != STATUS_NAME]
    if cfg.train.resume == "never" and leftovers:
        ckpts = sum(1 for e in leftovers if e.base_name.startswith("checkpoint-step"))
        for e in leftovers:
            if e.type == pafs.FileType.Directory:
                fs.delete_dir(e.path)
            else:
                fs.delete_file(e.path)
        say(f"train.resume=never: run {cfg.train.run_name} starts afresh; removed what an earlier run left in "
            f"{run} ({ckpts} checkpoints, {len(leftovers) - ckpts} other entries)")
    elif any(e.base_name == RAY_SNAPSHOT_NAME for e in leftovers):
        _drop_legacy_ray_snapshot(fs, f"{root}/{RAY_SNAPSHOT_NAME}", say)
    return lease


RAY_SNAPSHOT_NAME = "checkpoint_manager_snapshot.json"
"""Ray Train's record of the checkpoints reported to it, kept in the run directory."""


def _drop_legacy_ray_snapshot(fs: pafs.FileSystem, path: str, say: Callable[[str], None]) -> None:
    # Runs written before the Checkpointer owned retention reported their checkpoints to Ray Train, whose
    # snapshot then still lists the ones pruned since; Ray refuses to start on it. Nothing of it is used
    # (checkpoints are found by listing the run directory), so such a snapshot is removed.
    with fs.open_input_stream(path) as f:
        legacy = b"checkpoint-step" in f.read()
    if legacy:
        fs.delete_file(path)
        say(f"removed {RAY_SNAPSHOT_NAME} left by an older version (it listed checkpoints that were pruned since)")


def run_training(cfg: TrainJobConfig, say: Callable[[str], None] = print) -> dict:
    """Run the job on the connected Ray cluster with a ``TorchTrainer``; returns the final metrics.

    After the cluster checks it claims the run directory (``claim_run``: a second live driver is
    refused, ``train.resume=never`` empties it) and holds it until the outcome is recorded. A failure
    that a retry could fix (a lost worker, node or connection) restarts the workers from the newest
    checkpoint, up to ``train.max_failures`` times; one that would fail the same way again (a full
    disk, missing permissions, a bad config found on a worker: ``runtime.errors.is_deterministic``)
    ends the run at once. A finished run gets its curves drawn into ``<run>/curves.png`` (``train.curves``).

    Args:
        cfg: The job config (Ray must already be initialised, see ``ray_session``).
        say: Where the retry messages go.

    Returns:
        The metrics of the last report (``final_metrics``): best valid, test, throughput, times.

    Raises:
        PreflightError: when the cluster or the paths cannot run the job (nothing started).
        RunBusyError: another live driver owns the run.
        RunFailedError: the workers failed; one line with the cause and whether it was retried.
    """
    cfg = absolute_paths(cfg)
    resources, num_nodes = cluster_view()
    preflight(cfg, resources=resources, num_nodes=num_nodes)
    with claim_run(cfg, say):  # one driver per run; the lease records the outcome in status.json
        done = finished_result(cfg)
        if done is not None:  # another driver finished the run while this one was starting
            say(finished_message(cfg, done))
            return done
        if cfg.train.resume == "never":
            # claim_run emptied the run directory: from here on every checkpoint in it is this run's
            # own, and a restarted worker group must resume from them, not start over.
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, resume="auto"))
        result = _fit_with_retries(cfg, say)
        save_run_curves(run_uri_of(cfg), say)  # <run>/curves.png; a failure is a warning, the run stays finished
        return result


def _fit_with_retries(cfg: TrainJobConfig, say: Callable[[str], None]) -> dict:
    from mvrec_dist.train.worker import config_payload, train_worker

    retries = cfg.train.max_failures
    for attempt in range(retries + 1):
        try:
            # A fresh attempt id per worker group: only its ranks may write the run's logs (train.run_logs).
            payload = {**config_payload(cfg), "attempt": start_attempt(cfg)}
            _fit(cfg, train_worker, payload, name=cfg.train.run_name, storage=cfg.train.storage_path)
            return read_result(cfg)
        except Exception as exc:  # noqa: BLE001 (every failure is classified, then re-raised or retried)
            cause, line = failure_cause(exc), describe_failure(exc)
            if isinstance(cause, tuple(user_error_types())):
                raise cause from exc  # its own line says what to fix; retrying would not
            if is_deterministic(cause):
                raise RunFailedError(f"{line} (not retried: a retry would fail the same way)") from exc
            if attempt == retries:
                raise RunFailedError(f"{line} (failed {retries + 1} times; train.max_failures={retries} "
                                     "retries used up; run the same command again to resume)") from exc
            say(f"training failed: {line}; restarting the workers from the newest checkpoint "
                f"(retry {attempt + 1} of train.max_failures={retries})")
    raise AssertionError("unreachable")


def run_evaluation(cfg: TrainJobConfig, checkpoint: str, split: str, output: str) -> dict:
    """Score a checkpoint on ``split`` with ``parallel.num_workers`` Ray Train workers.

    Args:
        cfg: The job config the checkpoint was trained with (plus any overrides); Ray initialised.
        checkpoint: The checkpoint directory (local path or URI every worker can read).
        split: ``valid`` or ``test``.
        output: Where rank 0 writes the metrics as JSON (Ray Train's own records go to a
            directory beside it, ``<output without .json>.ray/``, removed afterwards).

    Returns:
        The metrics (``run_eval_worker``'s dict).

    Raises:
        PreflightError: when the checkpoint, dataset, paths or cluster cannot run it.
    """
    from mvrec_dist.train.worker import config_payload, eval_worker

    cfg = absolute_paths(cfg)
    # Workers do not run in the driver's directory: local paths must be absolute.
    checkpoint, output = (os.path.abspath(p) if "://" not in p else p for p in (checkpoint, output))
    resources, num_nodes = cluster_view()
    preflight(cfg, resources=resources, num_nodes=num_nodes, evaluating=checkpoint)
    parent, _, stem = output.rstrip("/").rpartition("/")
    payload = {**config_payload(cfg), "checkpoint": checkpoint, "split": split, "output": output}
    records = f"{stem.removesuffix('.json')}.ray"
    run = os.path.dirname(checkpoint.rstrip("/"))  # the ranks' logs go to the logs/ of the checkpoint's run
    try:
        _fit(cfg, eval_worker, payload, name=records, storage=parent,
             log_dir=run_log_dir(os.path.dirname(run), os.path.basename(run)))
    finally:
        fs, root = resolve(f"{parent}/{records}")
        with contextlib.suppress(OSError):  # absent when Ray Train failed before writing anything
            fs.delete_dir(root)
    metrics = read_json(output)
    if metrics is None:
        raise RuntimeError(f"{output}: the evaluation finished but wrote no result")
    return metrics


def read_result(cfg: TrainJobConfig) -> dict:
    """The finished run's ``result.json`` (written by rank 0 into the run directory)."""
    uri = f"{run_uri_of(cfg)}/{RESULT_NAME}"
    result = read_json(uri)
    if result is None:
        raise RuntimeError(f"{uri}: the run finished but its result is missing or unreadable")
    return result
