"""The sequential recommender: an ID table (for the parallel layer to shard) and a dense tower.

``SequentialRecommender`` has exactly two children that matter to ``mvrec_dist.parallel``:

* ``item_ids``: a TorchRec ``EmbeddingCollection`` with one table ``item`` (N+1 rows, dim D) read
  by one feature ``item_id``; None for a content-only item tower. The parallel layer shards it.
* ``dense``: a ``DenseTower`` (item tower, user encoder, loss), an ordinary module that the parallel
  layer hands to DeepSpeed.

One step is ``dense(lookup(batch.unique_items), batch)``: every unique item of the batch is looked up
and represented once, then gathered into ``[B, L+1, D]`` sequences (the TorchRec two-tower example's
split between injected tables and a task wrapper that adds the loss).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torchrec import EmbeddingCollection, KeyedJaggedTensor

from mvrec_dist.data.batch import SequenceBatch

__all__ = ["ITEM_TABLE", "ITEM_FEATURE", "TaskOutput", "DenseTower", "SequentialRecommender"]

ITEM_TABLE = "item"
ITEM_FEATURE = "item_id"


class TaskOutput(NamedTuple):
    """What one training step of the dense tower returns."""

    loss_sum: Tensor
    """``[]`` fp32 loss summed over the batch's targets (divide by the global ``num_targets``)."""
    num_targets: Tensor
    """``[]`` int64 targets in the batch."""
    num_sequences: Tensor
    """``[]`` int64 real rows in the batch (dummy rows excluded); detached, for throughput."""


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
                             content_mask: Tensor | None = None) -> Tensor:
        """Represent items (training: the batch's unique items; evaluation: chunks of all items).

        Args:
            id_emb: ``[U, D]`` ID embeddings of the items, or None for a content-only tower.
            content: Content of the items that have it (``[U_c, ...]``, in item order), or None for an
                ID-only tower; the item tower casts/normalises it.
            content_mask: ``bool [U]`` which items have content; None means all of them (U_c = U).

        Returns:
            ``[U, D]`` in the tower's parameter dtype.
        """
        return self.item_tower(self._cast(id_emb), content, content_mask)

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

    def forward(self, id_emb: Tensor | None, batch: SequenceBatch) -> TaskOutput:
        """One training step's loss.

        Args:
            id_emb: ``[U, D]`` ID embeddings of ``batch.unique_items`` in that order (None for a
                content-only tower).
            batch: The step's sequences.

        Returns:
            ``TaskOutput`` with the loss summed over every target of the batch.
        """
        return self.task(self.item_representations(id_emb, batch.content, batch.content_mask), batch)

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


class SequentialRecommender(nn.Module):
    """ID table + dense tower; ``forward`` is the whole unsharded step.

    Args:
        item_ids: ``EmbeddingCollection`` with table ``item`` / feature ``item_id``, or None
            (content-only item tower).
        dense: The ``DenseTower``.
    """

    def __init__(self, *, item_ids: EmbeddingCollection | None, dense: DenseTower) -> None:
        super().__init__()
        self.item_ids = item_ids
        self.dense = dense

    @staticmethod
    def id_features(ids: Tensor) -> KeyedJaggedTensor:
        """The ``EmbeddingCollection`` input that looks up ``ids``, one id per bag, in order.

        Args:
            ids: ``LongTensor[U]`` item ids.

        Returns:
            A ``KeyedJaggedTensor`` with key ``item_id``, values ``ids`` and all lengths 1; the
            collection's output ``[ITEM_FEATURE].values()`` is then ``[U, D]`` in the order of ``ids``.
        """
        return KeyedJaggedTensor(keys=[ITEM_FEATURE], values=ids,
                                 lengths=torch.ones(ids.shape[0], dtype=torch.int32, device=ids.device))

    def lookup(self, ids: Tensor) -> Tensor | None:
        """ID embeddings ``[U, D]`` of ``ids`` (None for a content-only tower)."""
        if self.item_ids is None:
            return None
        return self.item_ids(self.id_features(ids))[ITEM_FEATURE].values()  # U,D

    def forward(self, batch: SequenceBatch) -> TaskOutput:
        """The unsharded training step: look up ``batch.unique_items``, then the dense tower.

        Args:
            batch: The step's sequences.

        Returns:
            ``TaskOutput`` (loss summed over targets, target count, real rows).
        """
        return self.dense(self.lookup(batch.unique_items), batch)
