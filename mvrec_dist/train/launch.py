"""Driver side of training: check the job before anything starts, then run it under Ray Train.

Every check that can fail fast runs here, on the driver, before a worker starts: device support
of the sharding/optimizer choices, the dataset, the storage path, and the cluster's resources.
Each failure is one line naming the setting to change.
"""

from __future__ import annotations

import os

from mvrec_dist.config.jobs import TrainJobConfig
from mvrec_dist.parallel.sharding import sharding_problems
from mvrec_dist.runtime.paths import PathError, check_dataset_dir, check_storage_path
from mvrec_dist.train.content import content_problems

__all__ = ["PreflightError", "preflight", "prepare_dataset", "prepare_features", "absolute_paths", "run_training",
           "read_result", "RESULT_NAME"]

RESULT_NAME = "result.json"


class PreflightError(RuntimeError):
    """The job cannot start as configured; ``problems`` says why, each naming a setting."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("cannot start training:\n  - " + "\n  - ".join(problems))


def _cluster_problems(cfg: TrainJobConfig, resources: dict, num_nodes: int) -> list[str]:
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
    try:
        check_storage_path(cfg.train.storage_path, num_nodes=num_nodes)
    except PathError as exc:
        problems.append(str(exc))
    return problems


def preflight(cfg: TrainJobConfig, *, resources: dict | None = None, num_nodes: int = 1) -> None:
    """Raise ``PreflightError`` listing everything that would stop the job.

    Args:
        cfg: The job config.
        resources: ``ray.cluster_resources()``; None skips the cluster checks.
        num_nodes: Alive nodes of the cluster (a local storage path is fine on one node only).
    """
    problems = list(sharding_problems(cfg.parallel))
    if not cfg.data.prepare_with:
        try:
            check_dataset_dir(cfg.data.dataset_dir)
        except PathError as exc:
            problems.append(str(exc))
    problems.extend(content_problems(cfg))
    if resources is not None:
        problems.extend(_cluster_problems(cfg, resources, num_nodes))
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
    """Compute the cached trunk features when ``trunk_cache.build_if_missing`` and the store is absent.

    Needs a Ray session (the feature pass is a Ray Data job). An existing store is left alone; the
    workers check that it belongs to this run's trunk and content.
    """
    enc = cfg.model.content_encoder
    if cfg.model.item_tower == "id" or not getattr(enc, "cached_trunk", False) or not cfg.trunk_cache.build_if_missing:
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


def absolute_paths(cfg: TrainJobConfig) -> TrainJobConfig:
    """``cfg`` with local relative paths made absolute against the driver's working directory.

    Ray Train workers do not run in the driver's directory, so a relative ``data/shards/x`` would
    name nothing there; URIs are left as they are.
    """
    import dataclasses

    def fix(path: str | None) -> str | None:
        return os.path.abspath(path) if path and "://" not in path else path

    data = dataclasses.replace(cfg.data, dataset_dir=fix(cfg.data.dataset_dir),
                               content_features=fix(cfg.data.content_features), prepare_with=fix(cfg.data.prepare_with))
    train = dataclasses.replace(cfg.train, storage_path=fix(cfg.train.storage_path))
    resume = train.resume if train.resume in ("auto", "never") else fix(train.resume)
    return dataclasses.replace(cfg, data=data, train=dataclasses.replace(train, resume=resume))


def run_training(cfg: TrainJobConfig) -> dict:
    """Run the job on the connected Ray cluster with a ``TorchTrainer``; returns the final metrics.

    Args:
        cfg: The job config (Ray must already be initialised, see ``ray_session``).

    Returns:
        The metrics of the last report (``final_metrics``): best valid, test, throughput, times.
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from mvrec_dist.train.worker import config_payload, train_worker

    cfg = absolute_paths(cfg)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    preflight(cfg, resources=ray.cluster_resources(), num_nodes=len(nodes))
    p = cfg.parallel
    storage = cfg.train.storage_path
    resources = {"CPU": p.cpus_per_worker}
    if p.use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=config_payload(cfg),
        torch_config=TorchConfig(backend="nccl" if p.use_gpu else "gloo", timeout_s=p.timeout_s),
        scaling_config=ScalingConfig(num_workers=p.num_workers, use_gpu=p.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=cfg.train.run_name, storage_path=storage,
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            # Retention (newest K plus the best) is the Checkpointer's: Ray keeps what it is given.
            checkpoint_config=CheckpointConfig(num_to_keep=None),
            # Our own progress lines say what happens; Ray Train's per-report INFO lines repeat it.
            logging_config=LoggingConfig(log_level="WARNING"),
            # Ray Train's print patch tees worker prints that Ray already streams: every line twice.
            worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}}),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    return read_result(cfg)


def read_result(cfg: TrainJobConfig) -> dict:
    """The finished run's ``result.json`` (written by rank 0 into the run directory)."""
    import json

    from mvrec_dist.data.fs import open_input_file

    uri = f"{cfg.train.storage_path.rstrip('/')}/{cfg.train.run_name}/{RESULT_NAME}"
    with open_input_file(uri) as f:
        return json.loads(f.read().decode("utf-8"))
