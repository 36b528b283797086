"""DeepSpeed ZeRO for the dense parameters: config, optimizer, schedule, engine.

Only the dense tower goes into the engine; the ID table is TorchRec's (``sharding.py``). The
engine averages dense gradients over ranks; ``facade.py`` scales the loss so that the average
equals the gradient of the global-batch mean.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mvrec_dist.config.parallel import ParallelConfig
from mvrec_dist.config.train import TrainConfig
from mvrec_dist.parallel.process_groups import DistContext

__all__ = ["deepspeed_config", "lr_lambda", "build_engine"]


def deepspeed_config(parallel: ParallelConfig, train: TrainConfig, *, micro_batch: int,
                     num_params: int = 0) -> dict:
    """The DeepSpeed JSON config for the dense engine.

    Args:
        parallel: ZeRO stage, precision and offload.
        train: Gradient clipping.
        micro_batch: Sequences per rank per step (DeepSpeed's bookkeeping only; batches may vary).
        num_params: Trainable dense parameters (sizes the communication buckets).

    Returns:
        A DeepSpeed config dict.
    """
    # DeepSpeed's default buckets hold 5e8 elements and are zero-filled as gradients arrive: for a
    # dense tower of 50K parameters that fill, not the model, dominated the step (~70% on CPU).
    # A multiple of 512: ZeRO-1/2 assert the all-gather bucket is a multiple of their alignment factor
    # (2 or 4 elements by dtype), and an odd parameter count (MMRA's dense tower) would not be.
    bucket = -(-int(min(5e8, max(1 << 22, num_params))) // 512) * 512
    zero: dict = {"stage": parallel.zero_stage, "reduce_bucket_size": bucket, "allgather_bucket_size": bucket}
    if parallel.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": parallel.use_gpu}
    if parallel.zero_stage == 3:
        # Small dense towers: gather whole modules rather than prefetching tiny buckets.
        zero.update({"stage3_param_persistence_threshold": 0, "stage3_prefetch_bucket_size": bucket})
    cfg: dict = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": 1,
        "zero_optimization": zero,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
    }
    if train.grad_clip > 0:
        cfg["gradient_clipping"] = train.grad_clip
    if parallel.precision == "bf16":
        cfg["bf16"] = {"enabled": True}
    elif parallel.precision == "bf16_autocast":
        cfg["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    return cfg


def lr_lambda(train: TrainConfig, total_steps: int):
    """Multiplier of the peak learning rate at each step: linear warm-up, then constant or cosine."""
    warmup = train.warmup_steps

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if train.lr_schedule == "constant" or total_steps <= warmup:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


def build_engine(dense: nn.Module, parallel: ParallelConfig, train: TrainConfig, ctx: DistContext, *,
                 micro_batch: int, total_steps: int):
    """Wrap ``dense`` in a DeepSpeed engine with AdamW and the configured schedule.

    Args:
        dense: The dense tower (any module; parameters with ``requires_grad=False`` are left out).
        parallel: ZeRO stage, precision, offload.
        train: Learning rate, betas, weight decay, clipping, schedule.
        ctx: Process group and device (DeepSpeed adopts the existing default group).
        micro_batch: Sequences per rank per step.
        total_steps: Planned optimiser steps (for the cosine schedule).

    Returns:
        The ``DeepSpeedEngine``.
    """
    import deepspeed

    dense = dense.to(ctx.device)
    params = [p for p in dense.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the dense tower has no trainable parameters")
    # Fused AdamW on CUDA is torch's multi-tensor CUDA kernel; on CPU the plain implementation.
    optimizer = torch.optim.AdamW(params, lr=train.lr, betas=tuple(train.betas),
                                  weight_decay=train.weight_decay, fused=ctx.is_cuda or None)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(train, total_steps))
    engine, _, _, _ = deepspeed.initialize(
        model=dense, optimizer=optimizer, lr_scheduler=schedule,
        config=deepspeed_config(parallel, train, micro_batch=micro_batch, num_params=sum(p.numel() for p in params)),
        dist_init_required=False)
    return engine
