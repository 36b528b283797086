"""Where a training step's time goes: ``ParallelModel.train_step`` run phase by phase with timers.

``phased_step`` performs exactly the operations of ``ParallelModel.train_step``, in the same order,
with wall-clock marks between them (a CUDA synchronise before each mark on GPU, so kernels are
charged to the phase that launched them). Two marks fall inside ``engine.backward``: a gradient
hook on the looked-up embeddings fires when the dense tower's backward has produced their
gradient (what follows is TorchRec's backward: the gradient all-to-all and the fused sparse
optimizer update), and DeepSpeed's ``_backward_epilogue`` (the ZeRO gradient reduction) is
wrapped for the step. The equivalence with ``train_step`` is checked (``tests/benchmarks``): the
same batches give bitwise identical parameters.

``CollectiveCounter`` counts the bytes of every ``all_to_all_single`` (TorchRec's input and output
distribution call it through ``torch.distributed``) per phase, for the cost model's all-to-all
volume.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Iterator

import torch
import torch.distributed as dist

__all__ = ["PHASES", "PhaseClock", "phased_step", "CollectiveCounter"]

PHASES = ("data", "step_sync", "lookup_fwd", "dense_fwd", "dense_bwd", "embedding_bwd", "dense_grad_reduce",
          "optimizer", "loss_reduce")
"""Phases in step order: loader + collation; the per-step all-reduce of counts; sharded ID lookup
(input all-to-all, table read, output all-to-all); dense tower and loss forward; dense backward up
to the embeddings' gradient; embedding backward (gradient all-to-all + fused row-wise Adagrad);
DeepSpeed's gradient reduction; the dense optimizer step (clipping, AdamW, ZeRO gathers); the
all-reduce of the loss for reporting."""


class PhaseClock:
    """Accumulates wall-clock seconds per phase; ``mark(phase)`` closes the phase running since the last mark."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.seconds: dict[str, float] = {p: 0.0 for p in PHASES}
        self.current = "data"
        self._t = time.perf_counter()

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def start(self) -> None:
        """Begin timing (the first phase is ``data``)."""
        self.current = "data"
        self._t = self._now()

    def mark(self, finished: str, following: str) -> None:
        """Charge the time since the last mark to ``finished``; ``following`` runs from now."""
        now = self._now()
        self.seconds[finished] += now - self._t
        self.current = following
        self._t = now

    def reset(self) -> None:
        """Zero every phase (after warm-up)."""
        self.seconds = {p: 0.0 for p in PHASES}


def phased_step(pm: Any, batch: Any, *, global_targets: int, clock: PhaseClock) -> float:
    """``pm.train_step(batch, ...)`` with phase marks; returns the global mean loss.

    Args:
        pm: A ``ParallelModel``.
        batch: This rank's ``SequenceBatch`` (already through ``sync_step``).
        global_targets: Targets of the step over all ranks.
        clock: Marks are charged here; the caller has just marked ``step_sync`` done.

    Returns:
        The loss ``train_step`` would report.
    """
    from mvrec_dist.parallel.process_groups import all_reduce_sum

    engine, ctx = pm.engine, pm.ctx
    engine.train()
    batch = batch.to(ctx.device, non_blocking=True)
    id_emb = pm.lookup(batch.unique_items) if pm.sparse is not None else None
    clock.mark("lookup_fwd", "dense_fwd")
    scale = torch.tensor(ctx.world_size / max(global_targets, 1), device=ctx.device)
    loss, out = engine(id_emb, batch, scale)
    clock.mark("dense_fwd", "dense_bwd")
    handle = None
    if id_emb is not None and id_emb.requires_grad:
        def _reached(grad: torch.Tensor) -> None:
            clock.mark("dense_bwd", "embedding_bwd")
        handle = id_emb.register_hook(_reached)
    inner = engine._backward_epilogue

    def _epilogue() -> None:
        clock.mark(clock.current, "dense_grad_reduce")
        inner()

    engine._backward_epilogue = _epilogue  # this instance, this step only
    try:
        engine.backward(loss)
    finally:
        del engine._backward_epilogue
        if handle is not None:
            handle.remove()
    clock.mark(clock.current, "optimizer")
    engine.step()
    clock.mark("optimizer", "loss_reduce")
    loss_sum = all_reduce_sum(out.loss_sum.detach().float().reshape(1), ctx)
    clock.mark("loss_reduce", "data")
    return float(loss_sum) / max(global_targets, 1)


class CollectiveCounter:
    """Counts ``torch.distributed.all_to_all_single`` traffic of this process, per phase of a clock.

    Bytes *sent to other ranks* are counted: the input's rows for other ranks (from
    ``input_split_sizes``, or an even split) times the bytes of a row.
    """

    def __init__(self, clock: PhaseClock, rank: int, world_size: int):
        self.clock = clock
        self.rank = rank
        self.world_size = world_size
        self.bytes: dict[str, dict[str, int]] = {}
        self.calls = 0

    def _count(self, output: torch.Tensor, input: torch.Tensor, output_split_sizes=None,
               input_split_sizes=None, *args: Any, **kwargs: Any) -> None:
        rows = input.shape[0] if input.dim() else input.numel()
        row_bytes = input.numel() * input.element_size() // max(rows, 1)
        if input_split_sizes:
            remote_rows = sum(int(n) for r, n in enumerate(input_split_sizes) if r != self.rank)
        else:
            remote_rows = rows * (self.world_size - 1) // self.world_size
        kind = "float" if input.is_floating_point() else "index"
        per = self.bytes.setdefault(self.clock.current, {})
        per[kind] = per.get(kind, 0) + remote_rows * row_bytes
        self.calls += 1

    @contextlib.contextmanager
    def counting(self) -> Iterator["CollectiveCounter"]:
        """Patch ``torch.distributed.all_to_all_single`` in this process for the duration."""
        original = dist.all_to_all_single

        def counted(output, input, *args, **kwargs):
            self._count(output, input, *args, **kwargs)
            return original(output, input, *args, **kwargs)

        dist.all_to_all_single = counted
        try:
            yield self
        finally:
            dist.all_to_all_single = original
