"""The ``sparse_dist`` train step: TorchRec's ``TrainPipelineSparseDist`` around the sharded table and the ZeRO engine.

``TrainPipelineSparseDist`` (``torchrec/distributed/train_pipeline/train_pipelines.py``) keeps up to
three steps in flight: step i runs (ID lookup, dense forward, backward, updates) while the input
dist of step i+1 (the all-to-all that sends each id to the rank holding its row) is under way and
step i+2 is copied to the device. It finds the sharded table by FX-tracing ``StepModule``
(``_rewrite_model`` in ``train_pipeline/utils.py``) and swaps the table's forward for a
``PipelinedForward`` that takes the ids the input dist already delivered.

What differs from TorchRec's default (``progress`` calls ``optimizer.zero_grad()``, ``_backward``
and ``_optimizer_step``): ``_backward`` is ``engine.backward`` (DeepSpeed reduces and partitions the
dense gradients in its backward hooks and epilogue), and the DeepSpeed engine is passed as the
optimizer, so ``zero_grad()`` and ``step()`` are ``DeepSpeedEngine.zero_grad`` (gradients to None,
already so after a step) and ``DeepSpeedEngine.step``. The fused sparse optimizer updates the table
inside the backward, as in the simple step. Each step's loss scale needs the global target count,
so ``ParallelModel`` all-reduces the counts of a batch when the pipeline *fetches* it (two steps
ahead), not when it runs.

On CPU the pipeline has no streams (``_memcpy_stream`` and ``_data_dist_stream`` are None, waits
return at once) and the device copy is a no-op: input dists are gloo all-to-alls issued one step
early, and the numbers are those of the simple step. On CUDA the copy and the input dist run on
TorchRec's side streams.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import Tensor, nn
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from torchrec.streamable import Pipelineable

from mvrec_dist.data.batch import SequenceBatch
from mvrec_dist.models.recommender import ITEM_FEATURE
from mvrec_dist.parallel.facade import SyncedStep, loss_scale
from mvrec_dist.parallel.sharding import lookup_features

__all__ = ["StepInput", "StepModule", "DeepSpeedSparseDist", "pipelined_steps"]


@dataclass
class StepInput(Pipelineable):
    """One rank's input to one step, after the step's counts were all-reduced.

    Attributes:
        batch: The ``SequenceBatch`` this rank trains on (a dummy batch once its data ran out).
        features: ``batch.unique_items`` as the sharded table's input (``lookup_features``).
        loss_scale: ``[]`` fp32 ``W / N`` (world size over the step's global target count).
        source: The loader's batch, or None when ``batch`` is a dummy; its cursor is the loop's.
        global_targets: Targets of the step over all ranks.
        global_sequences: Real sequences of the step over all ranks.
    """

    batch: SequenceBatch
    features: KeyedJaggedTensor
    loss_scale: Tensor
    source: SequenceBatch | None
    global_targets: int
    global_sequences: int

    @classmethod
    def of(cls, synced: SyncedStep, *, world_size: int) -> "StepInput":
        """The step input of a synced step (on CPU).

        Args:
            synced: The batch and the step's global counts (``ParallelModel._synced_steps``).
            world_size: W, for the loss scale.

        Returns:
            The ``StepInput``.
        """
        return cls(batch=synced.batch, features=lookup_features(synced.batch.unique_items),
                   loss_scale=torch.tensor(loss_scale(synced.global_targets, world_size)), source=synced.source,
                   global_targets=synced.global_targets, global_sequences=synced.global_sequences)

    def to(self, device: torch.device, non_blocking: bool = False) -> "StepInput":
        """A copy with every tensor on ``device`` (``source`` stays the loader's object).

        Args:
            device: Target device.
            non_blocking: Asynchronous copies from pinned memory.

        Returns:
            The moved ``StepInput``.
        """
        return dataclasses.replace(self, batch=self.batch.to(device, non_blocking=non_blocking),
                                   features=self.features.to(device, non_blocking=non_blocking),
                                   loss_scale=self.loss_scale.to(device, non_blocking=non_blocking))

    def record_stream(self, stream: torch.Stream) -> None:
        """Mark every tensor as used by ``stream`` (CUDA caching allocator; TorchRec calls it on CUDA).

        Args:
            stream: The stream that will read the tensors.
        """
        self.batch.record_stream(stream)
        self.features.record_stream(stream)
        self.loss_scale.record_stream(stream)


class StepModule(nn.Module):
    """What the pipeline traces and calls: the sharded lookup of a step's items, then the engine.

    Args:
        sparse: The ``DistributedModelParallel`` around the item table.
        engine: The DeepSpeed engine around the dense tower (``engine(id_emb, batch, loss_scale)``).
    """

    def __init__(self, sparse: nn.Module, engine: nn.Module):
        super().__init__()
        self.sparse = sparse
        self.engine = engine

    def forward(self, step: StepInput) -> tuple[Tensor, tuple[Any, StepInput]]:
        """The step's scaled loss, and (``TaskOutput``, the step's input) for the caller.

        Args:
            step: The step's input on the device.

        Returns:
            ``(loss, (TaskOutput, step))``: the pipeline back-propagates ``loss`` and returns the pair.
        """
        # The pipeline replaces this call by the lookup of the ids its input dist already sent.
        id_emb = self.sparse(step.features)[ITEM_FEATURE].values()  # U,D
        loss, out = self.engine(id_emb, step.batch, step.loss_scale)
        return loss, (out, step)


class DeepSpeedSparseDist(TrainPipelineSparseDist):
    """``TrainPipelineSparseDist`` whose backward is DeepSpeed's (``optimizer`` is the engine).

    Args:
        model: The ``StepModule``; the pipeline calls its engine's ``zero_grad`` and ``step``.
        device: Where the steps compute.
    """

    def __init__(self, model: StepModule, device: torch.device):
        # execute_all_batches: the steps still in flight when the iterator ends are run, not dropped.
        super().__init__(model, model.engine, device, execute_all_batches=True)
        self._engine = model.engine

    def _backward(self, losses: Tensor) -> None:
        # TorchRec's default is ``losses.sum().backward()``; DeepSpeed must see the backward to
        # reduce and partition the dense gradients (ZeRO) before ``engine.step()``.
        self._engine.backward(losses)


def pipelined_steps(module: StepModule, device: torch.device,
                    steps: Iterator[StepInput]) -> Iterator[tuple[Any, StepInput]]:
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
