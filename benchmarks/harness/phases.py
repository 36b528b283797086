"""Where a training step's time goes: ``ParallelModel.train_step`` run phase by phase with timers.

``phased_step`` runs ``ParallelModel.train_step`` itself, with a ``StepObserver``
(``mvrec_dist.parallel.step``) that puts wall-clock marks between the step's stages (a CUDA
synchronise before each mark on GPU, so kernels are charged to the phase that launched them). Two
marks fall inside ``engine.backward``: a gradient hook on the looked-up embeddings fires when the
dense tower's backward has produced their gradient (what follows is TorchRec's backward: the
gradient all-to-all and the fused sparse optimizer update), and DeepSpeed's ``_backward_epilogue``
(the ZeRO gradient reduction) is wrapped for the step (``_dense_grad_reduce_marked``). The
observer must not change the step: ``tests/benchmarks`` checks that the same batches give bitwise
identical parameters with and without it.

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


class _PhaseMarks:
    """The ``StepObserver`` that charges each stage of a train step to its phase of ``clock``."""

    def __init__(self, clock: PhaseClock):
        self.clock = clock
        self._hooks: list[Any] = []

    def looked_up(self, embeddings: dict[str, torch.Tensor]) -> None:
        self.clock.mark("lookup_fwd", "dense_fwd")

        # Fires when the dense backward has produced the first table's gradient; TorchRec's backward follows.
        def _reached(grad: torch.Tensor) -> None:
            if self.clock.current == "dense_bwd":
                self.clock.mark("dense_bwd", "embedding_bwd")
        self._hooks = [e.register_hook(_reached) for e in embeddings.values() if e.requires_grad]

    def forwarded(self) -> None:
        self.clock.mark("dense_fwd", "dense_bwd")

    def backwarded(self) -> None:
        self.clock.mark(self.clock.current, "optimizer")
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def updated(self) -> None:
        self.clock.mark("optimizer", "loss_reduce")


@contextlib.contextmanager
def _dense_grad_reduce_marked(engine: Any, clock: PhaseClock) -> Iterator[None]:
    """Mark ``dense_grad_reduce`` where DeepSpeed's backward epilogue (the ZeRO gradient reduction) starts.

    DeepSpeed has no public hook there: its engine timers (``wall_clock_breakdown``) time the
    reduction but need a different engine config than the run's, and the ZeRO optimizer's
    ``register_grad_acc_post_hook`` fires before the epilogue (and not at ZeRO stage 0). So the
    private ``_backward_epilogue`` of this engine instance is wrapped for the duration, here only.
    """
    inner = engine._backward_epilogue

    def _epilogue() -> None:
        clock.mark(clock.current, "dense_grad_reduce")
        inner()

    engine._backward_epilogue = _epilogue
    try:
        yield
    finally:
        del engine._backward_epilogue


def phased_step(pm: Any, batch: Any, *, global_targets: int, clock: PhaseClock) -> float:
    """``pm.train_step(batch, ...)`` with phase marks; returns the global mean loss.

    Args:
        pm: A ``ParallelModel``.
        batch: This rank's ``SequenceBatch`` (already through ``sync_step``).
        global_targets: Targets of the step over all ranks.
        clock: Marks are charged here; the caller has just marked ``step_sync`` done.

    Returns:
        The loss ``train_step`` reports.
    """
    with _dense_grad_reduce_marked(pm.engine, clock):
        # global_sequences only feeds the step's report, which the phase timing does not use.
        stats = pm.train_step(batch, global_targets=global_targets, global_sequences=0, observer=_PhaseMarks(clock))
    clock.mark("loss_reduce", "data")
    return stats.loss


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
