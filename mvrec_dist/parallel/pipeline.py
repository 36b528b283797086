"""The ``sparse_dist`` train step: TorchRec's ``TrainPipelineSparseDist`` around the sharded table and the ZeRO engine.

``TrainPipelineSparseDist`` (``torchrec/distributed/train_pipeline/train_pipelines.py``) keeps up to
three steps in flight: step i runs (ID lookup, dense forward, backward, updates) while the input
dist of step i+1 (the all-to-all that sends each id to the rank holding its row) is under way and
step i+2 is copied to the device. It finds the sharded table by FX-tracing ``StepModule``
(``_rewrite_model`` in ``train_pipeline/utils.py``) and swaps the table's forward for a
``PipelinedForward`` that takes the ids the input dist already delivered.

What differs from TorchRec's default (``progress`` calls ``optimizer.zero_grad()``, ``_backward``
and ``_optimizer_step``): the step is ``step.StepModule``'s, as in the simple step: its ``forward``
is ``step_forward``, ``_backward`` is its ``backward`` (``engine.backward``: DeepSpeed reduces and
partitions the dense gradients in its backward hooks and epilogue) and ``_optimizer_step`` its
``update`` (``engine.step``). The DeepSpeed engine is passed as the optimizer, so ``zero_grad()``
is ``DeepSpeedEngine.zero_grad`` (gradients to None, already so after a step). The fused sparse
optimizer updates the table inside the backward. Each step's loss scale needs the global target
count, so ``ParallelModel`` all-reduces the counts of a batch when the pipeline *fetches* it (two
steps ahead), not when it runs.

On CPU the pipeline has no streams (``_memcpy_stream`` and ``_data_dist_stream`` are None, waits
return at once) and the device copy is a no-op: input dists are gloo all-to-alls issued one step
early, and the numbers are those of the simple step. On CUDA the copy and the input dist run on
TorchRec's side streams.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

from mvrec_dist.models.recommender import TaskOutput
from mvrec_dist.parallel.step import StepInput, StepModule

__all__ = ["DeepSpeedSparseDist", "pipelined_steps"]


class DeepSpeedSparseDist(TrainPipelineSparseDist):
    """``TrainPipelineSparseDist`` running ``StepModule``'s step (``optimizer`` is the engine).

    Args:
        model: The ``StepModule``; the pipeline calls its engine's ``zero_grad``.
        device: Where the steps compute.
    """

    def __init__(self, model: StepModule, device: torch.device):
        # execute_all_batches: the steps still in flight when the iterator ends are run, not dropped.
        super().__init__(model, model.engine, device, execute_all_batches=True)
        self._step = model

    def _backward(self, losses: Tensor) -> None:
        # TorchRec's default is ``losses.sum().backward()``; DeepSpeed must see the backward to
        # reduce and partition the dense gradients (ZeRO) before the update.
        self._step.backward(losses)

    def _optimizer_step(self) -> None:
        # TorchRec's default is ``optimizer.step()``: the same ``engine.step()``, named by the step's parts.
        self._step.update()


def pipelined_steps(module: StepModule, device: torch.device,
                    steps: Iterator[StepInput]) -> Iterator[tuple[TaskOutput, StepInput]]:
    """Run every step of ``steps`` through ``DeepSpeedSparseDist``; yield each after its update.

    Args:
        module: The ``StepModule`` (put in train mode here).
        device: Where the steps compute.
        steps: The synced step inputs, on CPU; it must end on every rank at the same step.

    Returns:
        An iterator of ``(TaskOutput, StepInput)`` in step order, each yielded after the step's
        backward and optimizer steps. On exit (exhausted or closed early) the table's own forward
        is restored, so evaluation and checkpoints call it as usual; steps still in flight when it
        is closed early were fetched but not run.
    """
    module.train()
    pipeline = DeepSpeedSparseDist(module, device)
    try:
        while True:
            try:
                out, step = pipeline.progress(steps)
            except StopIteration:
                return
            yield out, step
    finally:
        pipeline.detach()
