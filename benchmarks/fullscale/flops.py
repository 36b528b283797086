"""FLOPs of a training step, counted by ``torch.utils.flop_counter`` on the modules the job builds.

* Dense tower (user encoder + loss, ID item tower): one forward and backward of the real
  ``DenseTower`` on a real collated batch, divided by its sequences. Matmuls, attention and
  convolutions are counted; element-wise work is not (as is usual for FLOP figures).
* Video encoders: ``mvrec_dist.models.item_encoders.video.flops`` per item, for each fine-tuning
  mode, at the configured frames and size (paper: 5 frames of 224 x 224).
* MTIN: one forward and backward of the MTIN task's real dense tower (``MTINTower``: routing,
  temporal masks, interest mask, memory update, scorer, Eq. 12 and the memory's write-back) on a real
  ``MTINBatch``, divided by its examples.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["dense_flops_per_sequence", "mtin_flops_per_example", "video_encoder_flops"]


def dense_flops_per_sequence(model_cfg: Any, *, num_items: int, batch: Any) -> dict:
    """Forward + backward FLOPs of the dense tower per sequence of ``batch`` (a ``SequenceBatch``).

    Args:
        model_cfg: The ``ModelConfig`` (user encoder, loss, D).
        num_items: N (loss buffers).
        batch: A collated batch of the workload (its negatives and unique items are what a step has).

    Returns:
        ``forward``, ``backward`` and ``total`` FLOPs per sequence, and ``dense_params``.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from mvrec_dist.models.builders import build_recommender
    from mvrec_dist.models.recommender import ITEM_FEATURE

    counts = np.ones(num_items + 1, dtype=np.int64)
    counts[0] = 0
    torch.manual_seed(0)
    model = build_recommender(model_cfg, num_items=num_items, item_train_counts=counts,
                              max_seq_len=batch.items.shape[1] - 1, device="meta")
    dense = model.dense.train()
    id_emb = torch.randn(batch.unique_items.numel(), model_cfg.embedding_dim, requires_grad=True)
    with FlopCounterMode(display=False) as fwd:
        out = dense({ITEM_FEATURE: id_emb}, batch)
    with FlopCounterMode(display=False) as bwd:
        out.loss_sum.backward()
    b = int((batch.lengths > 0).sum())
    f, g = fwd.get_total_flops() / b, bwd.get_total_flops() / b
    return {"forward": f, "backward": g, "total": f + g, "dense_params": sum(p.numel() for p in dense.parameters())}


def mtin_flops_per_example(cfg: Any, *, num_items: int, num_users: int, batch: Any) -> dict:
    """Forward + backward FLOPs of the MTIN task's dense tower per example of ``batch`` (an ``MTINBatch``).

    The model is the one the trainer builds (``build_task(cfg).build_model`` with the tables on
    ``meta``); the lookups are random rows of the right shapes: ``[U, D]`` items and ``2 s`` memory
    rows of D per example. The backward runs from the loss sum plus the write-back, as the step does.

    Args:
        cfg: The MTIN job config (``task.name=mtin``).
        num_items: N.
        num_users: Users (memory table rows; does not change the FLOPs).
        batch: A collated batch of the workload.

    Returns:
        ``forward``, ``backward`` and ``total`` FLOPs per example, ``dense_params`` (all) and
        ``trainable_params`` (what the dense gradient synchronisation carries).
    """
    import types

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from mvrec_dist.models.recommender import ITEM_FEATURE
    from mvrec_dist.models.user_encoders.mtin import USER_FEATURE, memory_row_ids
    from mvrec_dist.tasks import build_task

    torch.manual_seed(0)
    model = build_task(cfg).build_model(types.SimpleNamespace(num_items=num_items, num_users=num_users),
                                        device="meta")
    dense = model.dense.train()
    d = cfg.model.embedding_dim
    embeddings = {ITEM_FEATURE: torch.randn(batch.unique_items.numel(), d, requires_grad=True),
                  USER_FEATURE: torch.randn(memory_row_ids(batch.users, cfg.task.mtin).numel(), d, requires_grad=True)}
    with FlopCounterMode(display=False) as fwd:
        out = dense(embeddings, batch)
    with FlopCounterMode(display=False) as bwd:
        (out.loss_sum + out.write_back).backward()
    b = int(batch.real_rows.sum())
    f, g = fwd.get_total_flops() / b, bwd.get_total_flops() / b
    return {"forward": f, "backward": g, "total": f + g, "dense_params": sum(p.numel() for p in dense.parameters()),
            "trainable_params": sum(p.numel() for p in dense.parameters() if p.requires_grad), "examples": b}


def video_encoder_flops(variants: dict[str, Any], *, modes: tuple[str, ...] = ("frozen", "top", "full")) -> dict:
    """Per-item FLOPs of each video encoder: forward, and one training step per fine-tuning mode.

    Args:
        variants: name -> video encoder config (``mvrec_dist.config.content``), at full size for the
            plan (random weights: FLOPs do not depend on them).
        modes: Fine-tuning modes (``top`` uses each config's ``top_blocks``); ``frozen`` and ``top`` are
            also counted with a cached trunk.

    Returns:
        name -> ``{"forward": F, "train": {mode: F, mode+"_cached_trunk": F}, "params": P}``.
    """
    import dataclasses

    import torch

    from mvrec_dist.models.item_encoders.video import apply_finetune, encoder_flops, train_step_flops
    from mvrec_dist.models.registry import CONTENT_ENCODERS

    out = {}
    for name, cfg in variants.items():
        torch.manual_seed(0)
        enc = CONTENT_ENCODERS.build(cfg)
        fwd = encoder_flops(enc, frames=cfg.frames, size=cfg.size)
        train = {}
        for mode in modes:
            c = dataclasses.replace(cfg, finetune=mode)
            apply_finetune(enc, c.finetune, c.top_blocks)
            train[mode] = train_step_flops(enc, frames=cfg.frames, size=cfg.size)
            if mode != "full":
                train[f"{mode}_cached_trunk"] = train_step_flops(enc, frames=cfg.frames, size=cfg.size, cached_trunk=True)
        out[name] = {"forward": fwd.total, "train": train, "params": sum(p.numel() for p in enc.parameters()),
                     "frames": cfg.frames, "size": cfg.size, "top_blocks": cfg.top_blocks}
        del enc
    return out
