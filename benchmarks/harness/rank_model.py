"""Build a rank's training pieces the way ``mvrec_dist.train.worker.run_worker`` does, for rank-pool tasks.

Benchmark tasks that drive ``ParallelModel`` directly (phase timing, checkpoint I/O, evaluation)
start from exactly the objects a job's worker has: the manifest, the recommender built on
``meta``, ``TrainData`` and the ``ParallelModel``, seeded identically.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any, Iterator, Sequence

import numpy as np
import torch

__all__ = ["RankModel", "build_rank_model", "epoch_batches"]


@dataclasses.dataclass
class RankModel:
    """One rank's config, manifest, data and parallel model."""

    cfg: Any
    manifest: Any
    data: Any
    pm: Any


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def build_rank_model(ctx: Any, preset: str | None, overrides: Sequence[str], *,
                     num_items: int | None = None) -> RankModel:
    """Config, data and ``ParallelModel`` of this rank (collective: every rank calls it).

    Args:
        ctx: The rank's ``DistContext``.
        preset: Job preset (None: config defaults).
        overrides: ``section.key=value`` settings (``parallel.num_workers`` is set to the world size).
        num_items: Build the item table with this many items instead of the dataset's (checkpoint
            sizes); the training data then cannot be used.

    Returns:
        The ``RankModel``.
    """
    from mvrec_dist.config import TrainJobConfig, load_config
    from mvrec_dist.data.loader import TrainData, load_item_train_counts
    from mvrec_dist.data.manifest import load_manifest
    from mvrec_dist.models.builders import build_recommender
    from mvrec_dist.parallel.facade import ParallelModel
    from mvrec_dist.train.launch import absolute_paths

    cfg = absolute_paths(load_config(TrainJobConfig, preset, [*overrides, f"parallel.num_workers={ctx.world_size}"]))
    if not ctx.is_cuda:
        torch.set_num_threads(cfg.parallel.cpus_per_worker)
    _seed(cfg.train.seed)
    manifest, data = None, None
    if num_items is None:
        manifest = load_manifest(cfg.data.dataset_dir)
        counts = load_item_train_counts(manifest)
        n = manifest.num_items
        data = TrainData(cfg, manifest, rank=ctx.rank, world_size=ctx.world_size, pin_memory=ctx.is_cuda)
        steps = data.estimated_steps_per_epoch() * cfg.train.epochs
    else:
        n = num_items
        counts = np.ones(n + 1, dtype=np.int64)
        counts[0] = 0
        steps = 1000
    model = build_recommender(cfg.model, num_items=n, item_train_counts=counts, max_seq_len=cfg.data.max_seq_len,
                              seed=cfg.train.seed, device="meta")
    pm = ParallelModel(model, cfg, ctx, total_steps=steps)
    _seed(cfg.train.seed + 7919 * (ctx.rank + 1))  # as run_worker: per-rank dropout streams
    return RankModel(cfg=cfg, manifest=manifest, data=data, pm=pm)


def epoch_batches(rm: RankModel, epoch: int = 0) -> Iterator[Any]:
    """This rank's training batches of ``epoch`` from its start (the loop's canonical plan)."""
    data = rm.data
    return data.train_batches(epoch)
