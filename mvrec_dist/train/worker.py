"""The per-worker functions: training and evaluation, under Ray Train or any torch.distributed group.

``build_rank`` assembles a rank's pieces (manifest, model, ``ParallelModel``, ``TrainData``), the
same for both. ``run_worker`` adds the ``Checkpointer`` and ``MetricsLog`` and runs the one
``Trainer``; ``run_eval_worker`` loads a checkpoint's weights and scores one split. Both need only
an initialised process group, so tests and benchmarks drive them without Ray; ``train_worker`` and
``eval_worker`` adapt them to Ray Train (process group from Ray, results through ``ray.train.report``).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from mvrec_dist.config.jobs import TrainJobConfig
from mvrec_dist.config.load import build_config, config_to_dict
from mvrec_dist.data.manifest import Manifest, load_manifest
from mvrec_dist.parallel.facade import ParallelModel
from mvrec_dist.parallel.process_groups import DistContext, all_gather_variable, current_context
from mvrec_dist.runtime.console import Sink, run_log_dir, worker_sink
from mvrec_dist.tasks import Task, TaskData, build_task
from mvrec_dist.train.checkpointing import Checkpointer
from mvrec_dist.train.content import content_fn, open_content_store
from mvrec_dist.train.loop import FitResult, Trainer
from mvrec_dist.train.metrics_log import MetricsLog
from mvrec_dist.train.run_logs import RunLogs
from mvrec_dist.train.runs import RESULT_NAME
from mvrec_dist.train.state import TrainState

__all__ = ["RankSetup", "build_rank", "run_worker", "run_eval_worker", "train_worker", "eval_worker", "run_logs_dir",
           "final_metrics", "write_result", "config_payload"]


def run_logs_dir(cfg: TrainJobConfig) -> str:
    """Local directory of the run's metrics and log files (inside the run dir when storage is local)."""
    return run_log_dir(cfg.train.storage_path, cfg.train.run_name)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@dataclass
class RankSetup:
    """One rank's assembled pieces, the same for training and evaluation."""

    manifest: Manifest
    """The dataset manifest."""
    task: Task
    """What the run learns."""
    model: torch.nn.Module
    """The unsharded model (its ID table lives in ``parallel``)."""
    data: TaskData
    """This rank's data."""
    parallel: ParallelModel
    """The model spread over the ranks."""

    def describe(self, cfg: TrainJobConfig, ctx: DistContext) -> str:
        """One progress line: ranks, device, dataset and model size."""
        dense_params = sum(p.numel() for p in self.model.dense.parameters())
        return (f"{ctx.world_size} ranks on {ctx.device.type} ({ctx.backend}); {self.manifest.num_items:,} items, "
                f"{self.manifest.num_users:,} users; dense tower {dense_params:,} params, "
                f"ZeRO-{cfg.parallel.zero_stage} {cfg.parallel.precision}")


def build_rank(cfg: TrainJobConfig, ctx: DistContext) -> RankSetup:
    """Build this rank's manifest, model, ``ParallelModel`` and data (every rank calls it).

    Seeds: the model is initialised identically on every rank from ``train.seed``; afterwards each
    rank gets its own seed, so dropout masks differ between ranks.

    Args:
        cfg: The job config.
        ctx: This rank's process group and device.

    Returns:
        The ``RankSetup``.
    """
    if not ctx.is_cuda:
        torch.set_num_threads(cfg.parallel.cpus_per_worker)
    _seed_everything(cfg.train.seed)
    manifest = load_manifest(cfg.data.dataset_dir)
    task = build_task(cfg)
    model = task.build_model(manifest, device="meta")
    # Tasks without an item tower (MMRA reads feature stores of its own) have no content encoder, and no
    # content reaches their model through the tower's store (MMRA's preset may still name an encoder: the one
    # whose per-frame output jobs/cache_trunk_features.py caches for it).
    tower = getattr(model.dense, "item_tower", None)
    store = None if tower is None else open_content_store(cfg, manifest, getattr(tower, "content_encoder", None))
    data = task.build_data(manifest, rank=ctx.rank, world_size=ctx.world_size, pin_memory=ctx.is_cuda,
                           content_store=store, gather=lambda rows: all_gather_variable(rows, ctx))
    pm = ParallelModel(model, cfg, ctx, total_steps=data.estimated_steps_per_epoch() * cfg.train.epochs)
    if store is not None:
        pm.set_content_source(content_fn(store), cfg.eval.content_batch_size)
    # Identical model init above; from here on each rank draws its own dropout masks.
    _seed_everything(cfg.train.seed + 7919 * (ctx.rank + 1))
    return RankSetup(manifest=manifest, task=task, model=model, data=data, parallel=pm)


def run_worker(cfg: TrainJobConfig, ctx: DistContext, *,
               report: Callable[[dict], None] = lambda metrics: None, sink: Sink | None = None,
               attempt: str | None = None) -> FitResult:
    """Train, validate and test on this rank (every rank of the group calls it).

    Args:
        cfg: The job config.
        ctx: This rank's process group and device.
        report: Where metric-only reports go.
        sink: Where rank 0's progress lines and bars go (the driver's console); None prints them here.
        attempt: The driver's id of this attempt (``run_logs.start_attempt``): on remote storage the log uploads
            stop once another attempt has replaced it; None: not fenced.

    Returns:
        The ``FitResult`` (the same on every rank).
    """
    setup = build_rank(cfg, ctx)
    pm = setup.parallel
    logs = RunLogs(cfg, ctx.rank, attempt)
    seeded = logs.seed()  # before MetricsLog appends to metrics.jsonl: the earlier attempts' records first
    log = MetricsLog(run_logs_dir(cfg), quiet=cfg.train.quiet, enabled=ctx.rank == 0, sink=sink)
    checkpointer = Checkpointer(cfg, ctx)
    try:
        state = checkpointer.restore(pm)
        for uri in checkpointer.skipped:
            log.progress(f"skipped checkpoint {uri}: it does not verify (partial or corrupt)", always=True)
        trainer = Trainer(cfg, pm, setup.data, checkpointer, log, state or TrainState(), report, task=setup.task,
                          after_checkpoint=logs.upload_metrics)
        if seeded:
            log.progress(f"continuing the run's metrics.jsonl and TensorBoard logs from {cfg.train.storage_path}")
        if state is not None:
            log.progress(f"resumed from {checkpointer.restored_from}: step {state.step} (epoch {state.epoch}, "
                         f"data {setup.data.describe_state()})", always=True)
        if pm.sparse is not None:
            log.progress(f"item table: {pm.sparse.plan_text}")
        log.progress(setup.describe(cfg, ctx))
        store = setup.data.content_store
        if store is not None:
            log.progress(f"item content: {store.name}, {store.items_with_content:,} of {store.num_items:,} items, "
                         f"{store.dtype} {list(store.shape)} each")
        return trainer.fit()
    finally:
        log.close()
        checkpointer.close()
        logs.upload_all()


def run_eval_worker(cfg: TrainJobConfig, ctx: DistContext, checkpoint: str, split: str, *,
                    sink: Sink | None = None) -> dict:
    """Evaluate a checkpoint's weights on ``split`` on this rank (every rank of the group calls it).

    Args:
        cfg: The job config (normally the checkpoint's own ``config.json`` with overrides).
        ctx: This rank's process group and device.
        checkpoint: The checkpoint directory (local path or URI every rank can read).
        split: ``valid`` or ``test``.
        sink: Where rank 0's progress lines and bars go (the driver's console); None prints them here.

    Returns:
        ``{"hr@K": ..., "ndcg@K": ..., "users", "seconds", "split", "checkpoint", "step",
        "recorded_valid"}`` (the same on every rank); ``recorded_valid`` holds the validation
        metrics the run recorded at the checkpoint's step, if it validated there.
    """
    setup = build_rank(cfg, ctx)
    log = MetricsLog(None, quiet=cfg.train.quiet, enabled=ctx.rank == 0, sink=sink)
    checkpointer = Checkpointer(cfg, ctx)
    try:
        log.progress(setup.describe(cfg, ctx))
        state = TrainState.from_json(checkpointer.load_weights(setup.parallel, checkpoint))
        log.progress(f"loaded {checkpoint} (step {state.step}); scoring {split}")
        metrics = setup.task.evaluate(setup.parallel, setup.data, split, log)
        shown = " ".join(f"{k} {v:.4f}" for k, v in setup.task.metric_values(metrics).items())
        noun = setup.task.examples_key
        log.progress(f"{split}: {shown} ({metrics[noun]:,} {noun} in {metrics['seconds']:.1f}s, "
                     f"{metrics[noun] / max(metrics['seconds'], 1e-9):,.0f} {noun}/s)", always=True)
    finally:
        log.close()
        checkpointer.close()
    recorded = next((h["metrics"] for h in state.history if h["step"] == state.step), None)
    return {**metrics, "split": split, "checkpoint": checkpoint, "step": state.step, "recorded_valid": recorded}


def final_metrics(result: FitResult) -> dict:
    """The flat metrics dict a finished run reports (``valid/…``, ``test/…``, ``baseline/<name>/test/…``,
    throughput, times)."""
    st = result.state
    out = {"final": True, "epochs": st.epoch, "steps": st.step, "best_epoch": st.best_epoch,
           "train_seconds": st.train_seconds, "seconds_to_best": st.seconds_to_best,
           "elapsed_seconds": st.elapsed_seconds, **result.throughput, **result.memory}
    out.update({f"valid/{k}": v for k, v in result.valid.items()})
    if result.test is not None:
        out.update({f"test/{k}": v for k, v in result.test.items()})
    for name, metrics in result.baselines.items():
        out.update({f"baseline/{name}/test/{k}": v for k, v in metrics.items()})
    return out


def train_worker(loop_config: dict) -> None:
    """The training job's per-worker function under Ray Train (``runtime.console.logged_worker`` calls it).

    ``loop_config = {"config": <resolved config dict>, "attempt": id or None, "console": ...}`` (``attempt``:
    ``run_logs.start_attempt``; ``console``: see ``logged_worker``).
    """
    import ray.train

    cfg = build_config(TrainJobConfig, loop_config["config"])
    ctx = current_context(use_gpu=cfg.parallel.use_gpu)

    result = run_worker(cfg, ctx, report=lambda m: ray.train.report(m), sink=worker_sink(loop_config, ctx.rank),
                        attempt=loop_config.get("attempt"))
    metrics = final_metrics(result)
    if ctx.rank == 0:
        write_result(cfg, metrics)
    ray.train.report(metrics)


def eval_worker(loop_config: dict) -> None:
    """The per-worker function of ``mvrec eval`` under Ray Train (``runtime.console.logged_worker`` calls it).

    ``loop_config = {"config": <resolved config dict>, "checkpoint": uri, "split": name, "output": uri,
    "console": ...}``; rank 0 writes the metrics as JSON to ``output``.
    """
    import ray.train

    cfg = build_config(TrainJobConfig, loop_config["config"])
    ctx = current_context(use_gpu=cfg.parallel.use_gpu)
    metrics = run_eval_worker(cfg, ctx, loop_config["checkpoint"], loop_config["split"],
                              sink=worker_sink(loop_config, ctx.rank))
    if ctx.rank == 0:
        _write_json(loop_config["output"], metrics)
    ray.train.report({k: v for k, v in metrics.items() if isinstance(v, (int, float))})


def _write_json(uri: str, data: dict) -> None:
    import json

    from mvrec_dist.data.fs import open_output_stream

    with open_output_stream(uri) as f:
        f.write(json.dumps(data, indent=1, sort_keys=True).encode("utf-8"))


def write_result(cfg: TrainJobConfig, metrics: dict) -> None:
    """Write the run's final metrics to ``<storage_path>/<run_name>/result.json`` (rank 0)."""
    _write_json(f"{cfg.train.storage_path.rstrip('/')}/{cfg.train.run_name}/{RESULT_NAME}", metrics)


def config_payload(cfg: TrainJobConfig) -> dict:
    """What the driver hands every worker (plain data: Ray ships it without pickling our classes)."""
    return {"config": config_to_dict(cfg)}
