"""The per-worker training function: under Ray Train (``train_worker``) or any torch.distributed group.

``run_worker`` assembles a rank's pieces (manifest, model, ``ParallelModel``, ``TrainData``,
``Checkpointer``, ``MetricsLog``) and runs the one ``Trainer``. It needs only an initialised process
group, so tests and benchmarks drive it without Ray; ``train_worker`` adapts it to Ray Train
(process group from Ray, checkpoints and metrics through ``ray.train.report``).
"""

from __future__ import annotations

import os
import random
from typing import Callable

import numpy as np
import torch

from mvrec_dist.config.jobs import TrainJobConfig
from mvrec_dist.config.load import build_config, config_to_dict
from mvrec_dist.data.fs import is_local
from mvrec_dist.data.loader import TrainData, load_item_train_counts
from mvrec_dist.data.manifest import load_manifest
from mvrec_dist.models.builders import build_recommender
from mvrec_dist.parallel.facade import ParallelModel
from mvrec_dist.parallel.process_groups import DistContext, current_context
from mvrec_dist.train.checkpointing import Checkpointer
from mvrec_dist.train.content import content_fn, open_content_store
from mvrec_dist.train.loop import FitResult, Trainer
from mvrec_dist.train.metrics_log import MetricsLog
from mvrec_dist.train.state import TrainState

__all__ = ["run_worker", "train_worker", "run_logs_dir", "final_metrics", "write_result"]


def run_logs_dir(cfg: TrainJobConfig) -> str:
    """Local directory of the run's metrics files (inside the run dir when storage is local)."""
    if is_local(cfg.train.storage_path):
        return os.path.join(cfg.train.storage_path, cfg.train.run_name, "logs")
    return os.path.join("runs-local", cfg.train.run_name, "logs")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def run_worker(cfg: TrainJobConfig, ctx: DistContext, *,
               publish: Callable[[str, str, dict], None] | None = None,
               report: Callable[[dict], None] = lambda metrics: None) -> FitResult:
    """Train, validate and test on this rank (every rank of the group calls it).

    Args:
        cfg: The job config.
        ctx: This rank's process group and device.
        publish: How a written checkpoint part is published (Ray Train report); None copies to storage.
        report: Where metric-only reports go.

    Returns:
        The ``FitResult`` (the same on every rank).
    """
    if not ctx.is_cuda:
        torch.set_num_threads(cfg.parallel.cpus_per_worker)
    _seed_everything(cfg.train.seed)
    manifest = load_manifest(cfg.data.dataset_dir)
    counts = load_item_train_counts(manifest)
    model = build_recommender(cfg.model, num_items=manifest.num_items, item_train_counts=counts,
                              max_seq_len=cfg.data.max_seq_len, seed=cfg.train.seed, device="meta")
    store = open_content_store(cfg, manifest, model.dense.item_tower.content_encoder)
    data = TrainData(cfg, manifest, rank=ctx.rank, world_size=ctx.world_size, pin_memory=ctx.is_cuda,
                     content_store=store)
    pm = ParallelModel(model, cfg, ctx, total_steps=data.estimated_steps_per_epoch() * cfg.train.epochs)
    if store is not None:
        pm.set_content_source(content_fn(store), cfg.eval.content_batch_size)
    # Identical model init above; from here on each rank draws its own dropout masks.
    _seed_everything(cfg.train.seed + 7919 * (ctx.rank + 1))
    log = MetricsLog(run_logs_dir(cfg), quiet=cfg.train.quiet, enabled=ctx.rank == 0)
    checkpointer = Checkpointer(cfg, ctx, publish)
    try:
        state = checkpointer.restore(pm)
        for uri in checkpointer.skipped:
            log.progress(f"skipped checkpoint {uri}: it does not verify (partial or corrupt)", always=True)
        if state is None:
            state = TrainState(world_size=ctx.world_size, loader_workers=cfg.data.loader_workers)
        else:
            log.progress(f"resumed from {checkpointer.restored_from}: step {state.step} (epoch {state.epoch}, "
                         f"{len(state.cursors)} consumer cursors, written by {state.world_size} ranks)", always=True)
        if pm.sparse is not None:
            log.progress(f"item table: {pm.sparse.plan_text}")
        dense_params = sum(p.numel() for p in model.dense.parameters())
        if store is not None:
            log.progress(f"item content: {store.name}, {store.items_with_content:,} of {store.num_items:,} items, "
                         f"{store.dtype} {list(store.shape)} each")
        log.progress(f"{ctx.world_size} ranks on {ctx.device.type} ({ctx.backend}); {manifest.num_items:,} items, "
                     f"{manifest.num_users:,} users; dense tower {dense_params:,} params, "
                     f"ZeRO-{cfg.parallel.zero_stage} {cfg.parallel.precision}")
        trainer = Trainer(cfg, pm, data, checkpointer, log, state, report)
        return trainer.fit()
    finally:
        log.close()
        checkpointer.close()


def final_metrics(result: FitResult) -> dict:
    """The flat metrics dict a finished run reports (``valid/…``, ``test/…``, throughput, times)."""
    st = result.state
    out = {"final": True, "epochs": st.epoch, "steps": st.step, "best_epoch": st.best_epoch,
           "train_seconds": st.train_seconds, "seconds_to_best": st.seconds_to_best,
           "elapsed_seconds": st.elapsed_seconds, **result.throughput, **result.memory}
    out.update({f"valid/{k}": v for k, v in result.valid.items()})
    if result.test is not None:
        out.update({f"test/{k}": v for k, v in result.test.items()})
    return out


def train_worker(loop_config: dict) -> None:
    """Ray Train's ``train_loop_per_worker``: ``loop_config = {"config": <resolved config dict>}``."""
    import ray.train

    cfg = build_config(TrainJobConfig, loop_config["config"])
    ctx = current_context(use_gpu=cfg.parallel.use_gpu)

    def publish(local_dir: str, name: str, metrics: dict) -> None:
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(local_dir),
                         checkpoint_dir_name=name)

    result = run_worker(cfg, ctx, publish=publish, report=lambda m: ray.train.report(m))
    metrics = final_metrics(result)
    if ctx.rank == 0:
        write_result(cfg, metrics)
    ray.train.report(metrics)


def write_result(cfg: TrainJobConfig, metrics: dict) -> None:
    """Write the run's final metrics to ``<storage_path>/<run_name>/result.json`` (rank 0)."""
    import json

    from mvrec_dist.data.fs import open_output_stream
    from mvrec_dist.train.launch import RESULT_NAME

    uri = f"{cfg.train.storage_path.rstrip('/')}/{cfg.train.run_name}/{RESULT_NAME}"
    with open_output_stream(uri) as f:
        f.write(json.dumps(metrics, indent=1, sort_keys=True).encode("utf-8"))


def config_payload(cfg: TrainJobConfig) -> dict:
    """What the driver hands every worker (plain data: Ray ships it without pickling our classes)."""
    return {"config": config_to_dict(cfg)}
