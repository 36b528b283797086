"""The one training step: lookup of the step's ids, dense forward with the loss scale, backward, update.

``models.recommender.step_forward`` is the forward half; ``run_train_step`` adds the backward and
the update over a training path's ``TrainStepParts``. Every path runs it:

* ``StepModule`` (this module): the sharded ID table and the DeepSpeed ZeRO engine. It is
  ``ParallelModel``'s simple step, and the ``sparse_dist`` pipeline (``pipeline.py``) calls its
  ``forward`` (``step_forward``), ``backward`` and ``update`` from TorchRec's ``progress``;
* ``train.reference.PlainTrainer``: ``nn.Embedding`` and torch optimizers, one process;
* the benchmark's phase timing runs ``ParallelModel.train_step`` with a ``StepObserver``.

The loss scale (``loss_scale``) is ``W / N``; ``facade.py`` explains why that makes 1 rank and W
ranks agree exactly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, Sequence

import torch
from torch import Tensor, nn
from torchrec.streamable import Pipelineable

from mvrec_dist.models.recommender import StepParts, TaskOutput, scaled_loss, step_forward
from mvrec_dist.models.tables import table_inputs

__all__ = ["GradScale", "ScaledDense", "loss_scale", "SyncedStep", "StepInput", "TrainStepParts",
           "StepObserver", "run_train_step", "StepModule"]


TABLE_KINDS = ("sequence", "pooled", "weighted")
"""The ``EmbeddingTables`` inputs a step carries, one ``KeyedJaggedTensor`` (or None) each."""


class GradScale(torch.autograd.Function):
    """Identity forward; multiplies the gradient by ``scale`` on the way back."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad * ctx.scale, None


class ScaledDense(nn.Module):
    """What DeepSpeed wraps: the dense tower's ``scaled_loss``, with the sparse-gradient scale on the ID embeddings.

    The loss scale is applied inside the engine's forward so that DeepSpeed back-propagates the very
    tensor its forward returned.

    State features (tables with ``TableSpec.state``) get ``W`` times that scale: their only gradient
    is the write-back (``TaskOutput.write_back``), and the ranks' writes must *add up* on a row's
    owner where learnt rows take the ranks' average (TorchRec divides by W, see ``facade.py``).

    Args:
        dense: The dense tower (``forward(embeddings, batch) -> TaskOutput``).
        sparse_grad_scale: Factor of the ID embeddings' gradient (``sharding.sparse_gradient_scale``).
        state_features: Features of the state tables.
        world_size: W.
    """

    def __init__(self, dense: nn.Module, sparse_grad_scale: float, *, state_features: tuple[str, ...] = (),
                 world_size: int = 1):
        super().__init__()
        self.dense = dense
        self.sparse_grad_scale = sparse_grad_scale
        self.scales = {f: sparse_grad_scale * world_size for f in state_features}

    def forward(self, embeddings: dict[str, Tensor], batch: Any, loss_scale: Tensor) -> tuple[Tensor, TaskOutput]:
        """``scaled_loss(dense, embeddings, batch, loss_scale)``: ``(scaled loss [+ write_back], TaskOutput)``."""
        scaled = {}
        for k, v in embeddings.items():
            scale = self.scales.get(k, self.sparse_grad_scale)
            scaled[k] = GradScale.apply(v, scale) if scale != 1.0 and v.requires_grad else v
        return scaled_loss(self.dense, scaled, batch, loss_scale)


def loss_scale(global_targets: int, world_size: int) -> float:
    """Factor of each rank's loss sum: ``W / N`` (see ``facade.py``), N clamped to >= 1."""
    return world_size / max(global_targets, 1)


class SyncedStep(NamedTuple):
    """One rank's batch for one step, after the step's counts were all-reduced."""

    source: Any
    """The loader's batch, or None on a rank whose data ran out."""
    batch: Any
    """What this rank trains on: ``source``, or a dummy batch without targets."""
    global_targets: int
    """Targets of the step over all ranks."""
    global_sequences: int
    """Real sequences of the step over all ranks."""


@dataclass
class StepInput(Pipelineable):
    """One rank's input to one step: what ``run_train_step`` and TorchRec's pipeline move and run.

    Attributes:
        batch: The batch this rank trains on (a dummy batch once its data ran out).
        sequence: Input of the sequence tables (``tables.table_inputs``), or None.
        pooled: Input of the unweighted pooled tables, or None.
        weighted: Input of the weighted pooled tables, or None.
        loss_scale: ``[]`` fp32 ``W / N`` (``loss_scale``).
        source: The loader's batch, or None when ``batch`` is a dummy; its cursor is the loop's.
        global_targets: Targets of the step over all ranks.
        global_sequences: Real sequences of the step over all ranks.
    """

    batch: Any
    sequence: Any
    pooled: Any
    weighted: Any
    loss_scale: Tensor
    source: Any
    global_targets: int
    global_sequences: int

    @classmethod
    def of(cls, synced: SyncedStep, parts: StepParts, *, world_size: int) -> "StepInput":
        """The step input of a synced step (on the batch's device, normally CPU).

        Args:
            synced: The batch and the step's global counts.
            parts: The training path (its ``sparse_inputs``).
            world_size: W, for the loss scale.

        Returns:
            The ``StepInput``.
        """
        inputs = parts.sparse_inputs(synced.batch)
        return cls(batch=synced.batch, sequence=inputs.get("sequence"), pooled=inputs.get("pooled"),
                   weighted=inputs.get("weighted"), loss_scale=torch.tensor(loss_scale(synced.global_targets, world_size)), source=synced.source,
                   global_targets=synced.global_targets, global_sequences=synced.global_sequences)

    def to(self, device: torch.device, non_blocking: bool = False) -> "StepInput":
        """A copy with every tensor on ``device`` (``source`` stays the loader's object).

        Args:
            device: Target device.
            non_blocking: Asynchronous copies from pinned memory.

        Returns:
            The moved ``StepInput``.
        """
        moved = {k: None if getattr(self, k) is None else getattr(self, k).to(device, non_blocking=non_blocking)
                 for k in TABLE_KINDS}
        return dataclasses.replace(self, batch=self.batch.to(device, non_blocking=non_blocking), **moved,
                                   loss_scale=self.loss_scale.to(device, non_blocking=non_blocking))

    @property
    def inputs(self) -> dict[str, Any]:
        """The tables' inputs by kind (``EmbeddingTables.forward``'s keyword arguments)."""
        return {k: getattr(self, k) for k in TABLE_KINDS}

    def record_stream(self, stream: torch.Stream) -> None:
        """Mark every tensor as used by ``stream`` (CUDA caching allocator; TorchRec calls it on CUDA).

        Args:
            stream: The stream that will read the tensors.
        """
        self.batch.record_stream(stream)
        for k in TABLE_KINDS:
            if getattr(self, k) is not None:
                getattr(self, k).record_stream(stream)
        self.loss_scale.record_stream(stream)


class TrainStepParts(StepParts, Protocol):
    """A training path's parts: the forward half (``StepParts``), then backward and update."""

    def backward(self, loss: Tensor) -> None:
        """Gradients of ``loss`` (the step's scaled loss; earlier gradients are dropped)."""

    def update(self) -> None:
        """Every optimiser step of the step (the ID table's may already have happened in ``backward``)."""


class StepObserver(Protocol):
    """Told when each stage of ``run_train_step`` ends (phase timing); it must not change the step."""

    def looked_up(self, embeddings: dict[str, Tensor]) -> None:
        """The lookup is done (the lookups by feature name); the dense forward starts."""

    def forwarded(self) -> None:
        """The dense forward is done; the backward starts (after the last input's forward)."""

    def backwarded(self) -> None:
        """The backward is done; the update starts."""

    def updated(self) -> None:
        """The update is done."""


class _Unobserved:
    """The ``StepObserver`` of a step nobody watches."""

    def looked_up(self, embeddings: dict[str, Tensor]) -> None:
        pass

    def forwarded(self) -> None:
        pass

    def backwarded(self) -> None:
        pass

    def updated(self) -> None:
        pass


def run_train_step(parts: TrainStepParts, steps: Sequence[StepInput],
                   observer: StepObserver | None = None) -> list[TaskOutput]:
    """One training step: ``step_forward`` of each input, one backward of their summed losses, the update.

    Args:
        parts: The training path.
        steps: The step's inputs on the compute device: one on a rank; ``PlainTrainer`` passes the
            parts its global batch is made of, as W ranks would see them (their loss sums add up).
        observer: Told when each stage ends.

    Returns:
        Each input's ``TaskOutput``, in order.
    """
    watch = observer if observer is not None else _Unobserved()
    loss: Tensor | None = None
    outs = []
    for step in steps:
        step_loss, out = step_forward(parts, step.inputs, step.batch, step.loss_scale, on_lookup=watch.looked_up)
        watch.forwarded()
        loss = step_loss if loss is None else loss + step_loss
        outs.append(out)
    parts.backward(loss)
    watch.backwarded()
    parts.update()
    watch.updated()
    return outs


class StepModule(nn.Module):
    """The sharded tables and the ZeRO engine as a step's parts; the module TorchRec's pipeline traces.

    Args:
        sparse: The ``DistributedModelParallel`` around the model's ``EmbeddingTables``, or None
            (content-only tower).
        engine: The DeepSpeed engine around ``ScaledDense``.
        specs: The tables' ``TableSpec``s.
        features: The task's ``sparse_features(batch)``.
    """

    def __init__(self, sparse: nn.Module | None, engine: nn.Module, specs: tuple = (),
                 features: Any = None):
        super().__init__()
        self.sparse = sparse
        self.engine = engine
        self.specs = tuple(specs)
        self._features = features

    def sparse_inputs(self, batch: Any) -> dict[str, Any]:
        """The sharded tables' inputs of ``batch`` (``tables.table_inputs``; empty without tables)."""
        return table_inputs(self.specs, self._features(batch)) if self.sparse is not None else {}

    def embed(self, inputs: dict[str, Any]) -> dict[str, Tensor]:
        """The lookups by feature name through the sharded tables (collective); empty without tables."""
        if self.sparse is None:
            return {}
        # Under sparse_dist, TorchRec has swapped each sharded module's forward for one that takes the
        # ids its input dist already sent.
        return self.sparse(**inputs)

    def dense_forward(self, embeddings: dict[str, Tensor], batch: Any,
                      loss_scale: Tensor) -> tuple[Tensor, TaskOutput]:
        """The engine's forward (``ScaledDense``)."""
        return self.engine(embeddings, batch, loss_scale)

    def backward(self, loss: Tensor) -> None:
        """``engine.backward``: DeepSpeed reduces and partitions the dense gradients (ZeRO) in its backward
        hooks and epilogue; TorchRec's fused optimizer updates the table rows inside it."""
        self.engine.backward(loss)

    def update(self) -> None:
        """``engine.step``: clipping, AdamW and the schedule on the dense parameters."""
        self.engine.step()

    def forward(self, step: StepInput) -> tuple[Tensor, tuple[TaskOutput, StepInput]]:
        """The step's scaled loss, and (``TaskOutput``, the step's input): the form TorchRec's pipeline runs.

        Args:
            step: The step's input on the device.

        Returns:
            ``(loss, (TaskOutput, step))``: the pipeline back-propagates ``loss`` and returns the pair.
        """
        # Spelled out, not ``step.inputs``: the pipeline's FX trace must see each input as an attribute
        # of the step (its input dist replaces exactly those).
        inputs = {"sequence": step.sequence, "pooled": step.pooled, "weighted": step.weighted}
        loss, out = step_forward(self, inputs, step.batch, step.loss_scale)
        return loss, (out, step)
