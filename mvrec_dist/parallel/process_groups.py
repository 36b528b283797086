"""Process groups: created once here and passed explicitly; nothing else calls ``init_process_group``.

Under Ray Train the group already exists (Ray's ``TorchConfig`` creates it with gloo on CPU and
nccl on GPU); tests and the plain benchmarks create it here. Either way the result is a
``DistContext`` that the rest of ``parallel/`` receives as an argument.
"""

from __future__ import annotations

import datetime
import logging
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistContext", "init_distributed", "current_context", "destroy_distributed", "exit_rank_process",
           "all_reduce_sum", "all_gather_variable", "barrier"]


@dataclass(frozen=True)
class DistContext:
    """Who this process is in the job and where it computes."""

    rank: int
    """Global rank."""
    world_size: int
    """Number of ranks."""
    local_rank: int
    """Rank on this node (selects the GPU)."""
    device: torch.device
    """``cuda:<local_rank>`` on GPU workers, ``cpu`` otherwise."""
    backend: str
    """``nccl`` or ``gloo``."""
    group: object
    """The process group all collectives of the job use."""

    @property
    def is_cuda(self) -> bool:
        """Whether this rank computes on a GPU."""
        return self.device.type == "cuda"


def _device_for(use_gpu: bool, local_rank: int) -> torch.device:
    if use_gpu:
        if not torch.cuda.is_available():
            raise RuntimeError("parallel.use_gpu=true but this worker sees no CUDA device; "
                               "set parallel.use_gpu=false or run on GPU nodes")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(*, use_gpu: bool, timeout_s: int = 1800, rank: int | None = None,
                     world_size: int | None = None, local_rank: int | None = None) -> DistContext:
    """Create (or adopt) the default process group.

    Args:
        use_gpu: nccl + CUDA device per local rank when true, gloo + CPU otherwise.
        timeout_s: Collective timeout.
        rank: Global rank; defaults to ``$RANK``.
        world_size: World size; defaults to ``$WORLD_SIZE``.
        local_rank: Local rank; defaults to ``$LOCAL_RANK`` or 0.

    Returns:
        The ``DistContext`` of this process.
    """
    if dist.is_initialized():
        return current_context(use_gpu=use_gpu)
    rank = int(os.environ["RANK"]) if rank is None else rank
    world_size = int(os.environ["WORLD_SIZE"]) if world_size is None else world_size
    local_rank = int(os.environ.get("LOCAL_RANK", 0)) if local_rank is None else local_rank
    device = _device_for(use_gpu, local_rank)
    backend = "nccl" if use_gpu else "gloo"
    dist.init_process_group(backend=backend, rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout_s),
                            device_id=device if use_gpu else None)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device,
                       backend=backend, group=dist.group.WORLD)


def current_context(*, use_gpu: bool) -> DistContext:
    """Describe an already initialised default group (e.g. the one Ray Train created)."""
    if not dist.is_initialized():
        raise RuntimeError("torch.distributed is not initialised")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = _device_for(use_gpu, local_rank)
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                       device=device, backend=dist.get_backend(), group=dist.group.WORLD)


def destroy_distributed() -> None:
    """Destroy the default group if this module created one (Ray Train destroys its own).

    This does not stop the groups' gloo threads: ``destroy_process_group`` unregisters every group,
    but a ``ProcessGroupGloo`` (its two ``pt_gloo_runloop`` workers and its ``gloo_tcp_loop``) lives
    on while Python still refers to it, and DeepSpeed keeps its clone of the world group in
    ``deepspeed.utils.groups`` and on the engine, optimizer and parameters. A process that owns the
    group should end with ``exit_rank_process`` (see there why).
    """
    if dist.is_initialized():
        dist.destroy_process_group()


def exit_rank_process(code: int = 0) -> None:
    """End a rank process that created its group here: destroy the group, flush, ``os._exit(code)``.

    Why not a normal interpreter exit: a gloo worker thread (``pt_gloo_runloop``) that completed a
    collective still owns the finished ``AsyncWork`` for a moment after the caller was woken. When
    it drops it after Python has let go of the work's tensors, it releases their Python objects and
    takes the GIL to do so (``~AsyncWork`` -> ``TensorImpl::decref_pyobject`` ->
    ``gil_scoped_acquire``). If that happens while the interpreter finalizes, CPython ends the
    thread with ``pthread_exit``; its forced unwind meets the ``noexcept`` destructor and libstdc++
    calls ``std::terminate``: "terminate called without an active exception", SIGABRT. After the
    last collective only milliseconds pass before finalization, so it takes a worker thread
    preempted at that point, which is what a loaded machine does now and then (test_resume's
    zero2-bf16 case, once). The gloo threads outlive ``destroy_distributed`` (see there), so the
    only exit that never runs into them is one without finalization. Ray Train workers are ended
    by ``ray.kill`` and need none of this.

    Args:
        code: The process exit status.
    """
    destroy_distributed()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken: nothing more to flush
            pass
    os._exit(code)


def all_reduce_sum(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum ``values`` over ranks (returns a new tensor on ``values``' device)."""
    out = values.clone()
    if ctx.world_size > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=ctx.group)
    return out


def all_gather_variable(rows: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Concatenate ``rows`` [R_r, ...] of every rank in rank order; R_r may differ per rank."""
    if ctx.world_size == 1:
        return rows
    n = torch.tensor([rows.shape[0]], dtype=torch.long, device=rows.device)
    sizes = [torch.zeros_like(n) for _ in range(ctx.world_size)]
    dist.all_gather(sizes, n, group=ctx.group)
    most = int(max(int(s) for s in sizes))
    padded = rows.new_zeros((most,) + tuple(rows.shape[1:]))
    padded[: rows.shape[0]] = rows
    parts = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(parts, padded, group=ctx.group)
    return torch.cat([p[: int(s)] for p, s in zip(parts, sizes)])


def barrier(ctx: DistContext) -> None:
    """Wait for every rank."""
    if ctx.world_size > 1:
        dist.barrier(group=ctx.group)
