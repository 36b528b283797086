"""The sequential recommender: an ID table (for the parallel layer to shard) and a dense tower.

``SequentialRecommender`` has exactly two children that matter to ``mvrec_dist.parallel``:

* ``tables``: the model's ``EmbeddingTables`` (``models.tables``) — for next-item the one sequence
  table ``item`` (N+1 rows, dim D) read by feature ``item_id``; None for a content-only item tower.
  The parallel layer shards it.
* ``dense``: the dense tower (for next-item a ``DenseTower``: item tower, user encoder, loss), an
  ordinary module that the parallel layer hands to DeepSpeed. It takes the step's lookups by feature
  name (``forward(embeddings, batch) -> TaskOutput``).

One step's forward is ``step_forward``: every unique item of the batch is looked up and represented
once, then gathered into ``[B, L+1, D]`` sequences (the TorchRec two-tower example's split between
injected tables and a task wrapper that adds the loss). Every training path runs that same function
over its own parts (``StepParts``): this unsharded model, ``train.reference.PlainTrainer`` and the
sharded table with the ZeRO engine (``parallel.step``), which adds backward and update.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Protocol

import torch
from torch import Tensor, nn

from mvrec_dist.data.batch import SequenceBatch
from mvrec_dist.models.tables import EmbeddingTables, table_inputs

__all__ = ["ITEM_TABLE", "ITEM_FEATURE", "TaskOutput", "DenseTower", "SequentialRecommender", "StepParts",
           "scaled_loss", "step_forward", "item_features"]

ITEM_TABLE = "item"
ITEM_FEATURE = "item_id"


def item_features(batch: Any) -> dict[str, Tensor]:
    """The sparse features of a batch that looks up its unique items: ``{"item_id": batch.unique_items}``."""
    return {ITEM_FEATURE: batch.unique_items}


class TaskOutput(NamedTuple):
    """What one training step of the dense tower returns."""

    loss_sum: Tensor
    """``[]`` fp32 loss summed over the batch's targets (divide by the global ``num_targets``)."""
    num_targets: Tensor
    """``[]`` int64 targets in the batch."""
    num_sequences: Tensor
    """``[]`` int64 real rows in the batch (dummy rows excluded); detached, for throughput."""
    write_back: Tensor | None = None
    """``[]`` the write-back of state tables (``TableSpec.state``), or None: a zero-valued term whose
    gradient on each looked-up state row is minus that row's update (``-<rows, delta.detach()>``).
    It is back-propagated as is, outside the loss scale, so with the state table's SGD at learning
    rate 1 the step adds exactly the updates to the rows (``parallel/`` undoes the ranks' gradient
    average on state features, so the updates of every rank add up)."""


class DenseTower(nn.Module):
    """Everything but the ID table: item tower, user encoder and loss.

    Float inputs are cast to the tower's parameter dtype (DeepSpeed bf16 casts the whole module);
    losses compute in fp32.

    Args:
        item_tower: ``ItemTower`` (``forward(id_emb[U, D] | None, content | None) -> [U, D]``).
        user_encoder: Causal encoder, ``forward(seq[B, L, D], lengths[B]) -> [B, L, D]``.
        loss: A loss of ``mvrec_dist.models.losses``.
    """

    def __init__(self, *, item_tower: nn.Module, user_encoder: nn.Module, loss: nn.Module) -> None:
        super().__init__()
        self.item_tower = item_tower
        self.user_encoder = user_encoder
        self.loss = loss

    def _cast(self, x: Tensor | None) -> Tensor | None:
        if x is None or not x.is_floating_point():
            return x
        dtype = next(self.parameters()).dtype
        return x if x.dtype == dtype else x.to(dtype)

    def item_representations(self, id_emb: Tensor | None, content: Tensor | None,
                             content_mask: Tensor | None = None, item_ids: Tensor | None = None) -> Tensor:
        """Represent items (training: the batch's unique items; evaluation: chunks of all items).

        Args:
            id_emb: ``[U, D]`` ID embeddings of the items, or None for a content-only tower.
            content: Content of the items that have it (``[U_c, ...]``, in item order), or None for an
                ID-only tower; the item tower casts/normalises it.
            content_mask: ``bool [U]`` which items have content; None means all of them (U_c = U).
            item_ids: ``LongTensor [U]`` the items' ids (the item tower's content fallback reads them).

        Returns:
            ``[U, D]`` in the tower's parameter dtype.
        """
        return self.item_tower(self._cast(id_emb), content, content_mask, item_ids)

    def user_states(self, seq_repr: Tensor, lengths: Tensor) -> Tensor:
        """User state after each row's last valid item (evaluation).

        Args:
            seq_repr: ``[B, L, D]`` item representations of the right-padded histories.
            lengths: ``LongTensor[B]`` valid items per row (>= 1).

        Returns:
            ``[B, D]`` the encoder output at position ``lengths[b] - 1``.
        """
        states = self.user_encoder(self._cast(seq_repr), lengths)  # B,L,D
        last = (lengths - 1).clamp(min=0)
        return states[torch.arange(states.shape[0], device=states.device), last]  # B,D

    def forward(self, embeddings: Mapping[str, Tensor], batch: SequenceBatch) -> TaskOutput:
        """One training step's loss.

        Args:
            embeddings: The step's lookups by feature: ``item_id`` -> ``[U, D]`` ID embeddings of
                ``batch.unique_items`` in that order (absent for a content-only tower).
            batch: The step's sequences.

        Returns:
            ``TaskOutput`` with the loss summed over every target of the batch.
        """
        id_emb = embeddings.get(ITEM_FEATURE)
        return self.task(self.item_representations(id_emb, batch.content, batch.content_mask, batch.unique_items),
                         batch)

    def task(self, item_repr: Tensor, batch: SequenceBatch) -> TaskOutput:
        """The loss of a step given the representations of its unique items (``forward`` after the item tower).

        Args:
            item_repr: ``[U, D]`` representations of ``batch.unique_items``, in that order.
            batch: The step's sequences.

        Returns:
            ``TaskOutput`` with the loss summed over every target of the batch.
        """
        inputs = batch.inverse[:, :-1]  # B,L
        length = inputs.shape[1]
        states = self.user_encoder(item_repr[inputs], batch.lengths.clamp(max=length))  # B,L,D
        positions = torch.arange(length, device=inputs.device)
        rows, cols = (positions[None, :] + 1 < batch.lengths[:, None]).nonzero(as_tuple=True)  # T, T
        labels = batch.inverse[rows, cols + 1]  # T
        out = self.loss(states[rows, cols], item_repr, labels, rows, batch)
        return TaskOutput(out.loss_sum, out.num_targets, (batch.lengths >= 2).sum().detach())


def scaled_loss(dense: nn.Module, embeddings: Mapping[str, Tensor], batch: Any,
                loss_scale: Tensor | float) -> tuple[Tensor, TaskOutput]:
    """A dense tower's step output and the loss that a training step back-propagates.

    Args:
        dense: Any dense tower (``forward(embeddings, batch) -> TaskOutput``; a ``DenseTower`` for next-item).
        embeddings: The step's lookups by feature name (empty without tables).
        batch: The step's batch.
        loss_scale: Factor of the loss sum (``[]`` fp32 or a number): ``W / N`` on W ranks with N
            targets in the global step (``parallel.step.loss_scale``), 1 for the sum itself.

    Returns:
        ``(loss_sum * loss_scale + write_back, TaskOutput)``: the state tables' write-back (if any)
        is added after the scale (``TaskOutput.write_back``).
    """
    out = dense(embeddings, batch)
    loss = out.loss_sum * loss_scale
    return (loss if out.write_back is None else loss + out.write_back), out


class StepParts(Protocol):
    """The forward half of a training step as each training path provides it (see ``step_forward``)."""

    def sparse_inputs(self, batch: Any) -> dict[str, Any]:
        """What ``embed`` takes to look up the batch's sparse features (``tables.table_inputs``: one
        ``KeyedJaggedTensor`` per table kind; built on CPU, moved with the batch)."""

    def embed(self, inputs: dict[str, Any]) -> dict[str, Tensor]:
        """The lookups of ``inputs`` by feature name (empty without tables)."""

    def dense_forward(self, embeddings: Mapping[str, Tensor], batch: Any,
                      loss_scale: Tensor | float) -> tuple[Tensor, TaskOutput]:
        """The dense tower on the step: ``scaled_loss`` (possibly inside an engine)."""


def step_forward(parts: StepParts, inputs: dict[str, Any], batch: Any, loss_scale: Tensor | float, *,
                 on_lookup: Callable[[dict[str, Tensor]], None] | None = None) -> tuple[Tensor, TaskOutput]:
    """One training step's forward: the lookup of the step's sparse features, then the dense tower and the loss.

    Args:
        parts: The training path's tables and dense tower.
        inputs: ``parts.sparse_inputs(batch)`` (on the step's device).
        batch: The step's batch.
        loss_scale: Factor of the loss sum (``scaled_loss``).
        on_lookup: Called with the lookups between the lookup and the dense forward (phase timing
            hooks the embeddings' gradients there).

    Returns:
        ``(loss_sum * loss_scale, TaskOutput)``: the first is what the step back-propagates.
    """
    embeddings = parts.embed(inputs)
    if on_lookup is not None:
        on_lookup(embeddings)
    return parts.dense_forward(embeddings, batch, loss_scale)


class SequentialRecommender(nn.Module):
    """Embedding tables + dense tower; ``forward`` is the whole unsharded step (``step_forward`` over this module).

    Args:
        tables: The model's ``EmbeddingTables`` (next-item: the ``item`` table read by ``item_id``),
            or None (content-only item tower).
        dense: The dense tower (``forward(embeddings, batch) -> TaskOutput``).
        features: The batch's sparse features by name (the task's ``sparse_features``; default:
            ``item_features``).
    """

    def __init__(self, *, tables: EmbeddingTables | None, dense: nn.Module,
                 features: Callable[[Any], dict[str, Any]] = item_features) -> None:
        super().__init__()
        self.tables = tables
        self.dense = dense
        self.sparse_features = features
        """The batch's sparse features by name (``Task.sparse_features``)."""

    def sparse_inputs(self, batch: Any) -> dict[str, Any]:
        """The tables' inputs of ``batch``'s sparse features (empty without tables)."""
        return table_inputs(self.tables.specs, self.sparse_features(batch)) if self.tables is not None else {}

    def embed(self, inputs: dict[str, Any]) -> dict[str, Tensor]:
        """The lookups of ``inputs`` by feature name (empty for a content-only tower)."""
        return self.tables(**inputs) if self.tables is not None else {}

    def lookup(self, ids: Tensor) -> Tensor | None:
        """ID embeddings ``[U, D]`` of item ``ids`` (None for a content-only tower)."""
        if self.tables is None:
            return None
        return self.tables(**table_inputs(self.tables.specs, {ITEM_FEATURE: ids}, partial=True))[ITEM_FEATURE]  # U,D

    def dense_forward(self, embeddings: Mapping[str, Tensor], batch: Any,
                      loss_scale: Tensor | float) -> tuple[Tensor, TaskOutput]:
        """``scaled_loss`` of the dense tower (the ``StepParts`` method)."""
        return scaled_loss(self.dense, embeddings, batch, loss_scale)

    def forward(self, batch: Any) -> TaskOutput:
        """The unsharded training step's forward: look up the batch's sparse features, then the dense tower.

        Args:
            batch: The step's batch.

        Returns:
            ``TaskOutput`` (loss summed over targets, target count, real rows).
        """
        _, out = step_forward(self, self.sparse_inputs(batch), batch, 1.0)
        return out
