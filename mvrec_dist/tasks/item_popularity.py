"""Item popularity regression: the smallest second task, of the shape MMRA has.

Predict ``log2(1 + c_i)`` of item i, where ``c_i`` is its interaction count in the dataset's train
split (``stats/item_train_counts.npy``), from its item representation (ID table through the item
tower) and a two-layer MLP head. Items 1..N are split at random (``task.split_seed``) into
train / valid / test with the configured fractions, the same split on every rank and every run.
Loss: squared error summed over the batch's items; metrics MAE and RMSE, lower is better.

It exists to show the task seam carries a task that is not next-item ranking: its own batch
(``ItemBatch``), target count (items), data stream with its own resumable state, evaluation and
lower-is-better selection, all through the one loop, Ray Train, checkpoints and the CLIs.

Training stream: each epoch permutes the train items with ``(train.seed, epoch)``; global step s
takes positions ``[s*B, (s+1)*B)`` (B = ``train.batch_size``) and rank r the r-th of W equal slices
of it. The stream's state is the number of steps taken in the epoch, which is the same on every
rank and independent of the world size (the global batch is), so a resume on any world size
continues with exactly the items not yet trained on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from mvrec_dist.data.batch import TensorBatch
from mvrec_dist.data.item_split import item_split  # moved there (torch-free); re-exported here
from mvrec_dist.data.loader import attach_content, load_item_train_counts
from mvrec_dist.eval.progress import EvalProgress
from mvrec_dist.models.recommender import TaskOutput
from mvrec_dist.tasks.base import Task

__all__ = ["ItemBatch", "ItemPopularityData", "ItemRegressionTower", "ItemPopularityTask", "item_split",
           "popularity_labels"]

SPLITS = ("train", "valid", "test")


@dataclass
class ItemBatch(TensorBatch):
    """One rank's items of a step and their labels.

    Attributes:
        items: ``LongTensor[B]`` item ids (B may be 0 on a rank past the end of the epoch).
        labels: ``FloatTensor[B]`` regression targets.
        unique_items: ``LongTensor[U]`` sorted unique ids to look up, ``unique_items[0] == 0`` (padding,
            so a batch of no items still looks something up, as every rank must).
        inverse: ``LongTensor[B]`` slot of each item in ``unique_items``.
        content: Content of the unique items that have it (content towers), or None.
        content_mask: ``BoolTensor[U]`` which unique items have content, or None.
        cursor: Global steps of the epoch taken once this batch is trained on (None for dummies).
    """

    items: Tensor
    labels: Tensor
    unique_items: Tensor
    inverse: Tensor
    content: Tensor | None = None
    content_mask: Tensor | None = None
    cursor: int | None = None

    @staticmethod
    def of(items: np.ndarray, labels: np.ndarray, cursor: int | None = None) -> "ItemBatch":
        """Collate item ids and labels (numpy) into a batch."""
        unique, inverse = np.unique(np.concatenate([[0], items]).astype(np.int64), return_inverse=True)
        return ItemBatch(items=torch.from_numpy(items.astype(np.int64)),
                         labels=torch.from_numpy(labels.astype(np.float32)),
                         unique_items=torch.from_numpy(unique), inverse=torch.from_numpy(inverse[1:].astype(np.int64)),
                         cursor=cursor)


def popularity_labels(item_train_counts: np.ndarray) -> np.ndarray:
    """``float32 [N+1]``: ``log2(1 + train interactions)`` of every item (row 0, padding, is 0)."""
    return np.log2(1.0 + item_train_counts.astype(np.float64)).astype(np.float32)


class ItemPopularityData:
    """One rank's data of the item-popularity task (see the module docstring).

    Args:
        cfg: The job config (``task`` is an ``ItemPopularityTaskConfig``).
        manifest: The dataset manifest.
        rank: This rank.
        world_size: Ranks.
        content_store: Item content for content towers (attached to every batch), or None.
        item_train_counts: ``int64 [N+1]`` counts the labels come from; default the manifest's
            ``stats/item_train_counts.npy``.
    """

    def __init__(self, cfg: Any, manifest: Any, *, rank: int, world_size: int, content_store: Any = None,
                 item_train_counts: np.ndarray | None = None):
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.num_items = manifest.num_items
        self.content_store = content_store
        self.labels, self.splits = self._labels_and_splits(manifest, item_train_counts)
        self.global_batch = cfg.train.batch_size
        self._epoch, self._steps, self._loaded_steps = 0, 0, 0

    def _labels_and_splits(self, manifest: Any, item_train_counts: np.ndarray | None
                           ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``(labels float32 [N+1], {"train", "valid", "test"} -> sorted ids)``: what the stream and evaluation read
        (a subclass for another label or split overrides this)."""
        counts = load_item_train_counts(manifest) if item_train_counts is None else item_train_counts
        t = self.cfg.task
        return popularity_labels(counts), item_split(self.num_items, valid_fraction=t.valid_fraction,
                                                     test_fraction=t.test_fraction, seed=t.split_seed)

    def make_batch(self, items: np.ndarray, cursor: int | None) -> Any:
        """The batch of ``items`` (the stream's, and the dummy's with none); a subclass builds its own batch type."""
        return attach_content(ItemBatch.of(items, self.labels[items], cursor=cursor), self.content_store)

    # ------------------------------------------------------------------ the stream and its state
    def _epoch_order(self, epoch: int) -> np.ndarray:
        train = self.splits["train"]
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(self.cfg.train.seed, spawn_key=(epoch, 2))))
        return train[rng.permutation(len(train))] if self.cfg.data.shuffle else train

    def train_batches(self, epoch: int) -> Iterator[ItemBatch]:
        """This rank's batches of (the rest of) ``epoch``."""
        start = self._loaded_steps if epoch == self._epoch else 0
        self._epoch, self._steps, self._loaded_steps = epoch, start, 0
        return self._stream(self._epoch_order(epoch), start)

    def _stream(self, order: np.ndarray, start: int) -> Iterator[ItemBatch]:
        per_rank = self.global_batch // self.world_size
        for step in range(start, -(-len(order) // self.global_batch)):
            part = order[step * self.global_batch:(step + 1) * self.global_batch]
            mine = part[self.rank * per_rank:(self.rank + 1) * per_rank]
            if len(mine) == 0:
                return  # only the last step can leave a rank without items
            yield self.make_batch(mine, step + 1)

    def record(self, batch: ItemBatch | None) -> None:
        """One more step of the epoch was taken (by every rank: a rank out of items records None)."""
        self._steps += 1

    def end_epoch(self) -> None:
        """The epoch is done; the stream stands at the next one's start."""
        self._epoch, self._steps = self._epoch + 1, 0

    def state_dict(self) -> dict[str, Any]:
        """``{"epoch", "steps", "global_batch"}`` (the same on every rank; no collective)."""
        return {"epoch": self._epoch, "steps": self._steps, "global_batch": self.global_batch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume where ``state_dict()`` was taken (any world size with the same global batch)."""
        if not state:
            return
        if int(state.get("global_batch", self.global_batch)) != self.global_batch:
            raise ValueError(f"the checkpoint's item stream used train.batch_size={state['global_batch']}, this run "
                             f"{self.global_batch}; resume with the same global batch size")
        self._epoch, self._loaded_steps = int(state["epoch"]), int(state["steps"])

    def describe_state(self) -> str:
        """The loaded position, for the resume message."""
        return f"{self._loaded_steps} steps into epoch {self._epoch}" if self._loaded_steps else "at an epoch start"

    def dummy_batch(self) -> ItemBatch:
        """No items (only the padding id is looked up)."""
        return self.make_batch(np.zeros(0, dtype=np.int64), None)

    def estimated_steps_per_epoch(self) -> int:
        """Global steps per epoch."""
        return max(1, -(-len(self.splits["train"]) // self.global_batch))

    def eval_items(self, split: str) -> np.ndarray:
        """This rank's contiguous slice of ``split``'s items."""
        items = self.splits[split]
        n = len(items)
        return items[n * self.rank // self.world_size:n * (self.rank + 1) // self.world_size]


class ItemRegressionTower(nn.Module):
    """Item tower + MLP head; ``forward(id_emb, batch)`` is the step's squared-error sum.

    Args:
        item_tower: ``ItemTower`` (``[U, D]`` representations).
        embedding_dim: D.
        hidden_dim: Width of the head's hidden layer.
    """

    def __init__(self, *, item_tower: nn.Module, embedding_dim: int, hidden_dim: int):
        super().__init__()
        self.item_tower = item_tower
        self.head = nn.Sequential(nn.Linear(embedding_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, 1))

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def item_representations(self, id_emb: Tensor | None, content: Tensor | None,
                             content_mask: Tensor | None = None, item_ids: Tensor | None = None) -> Tensor:
        """``[U, D]`` representations (as ``DenseTower.item_representations``)."""
        if id_emb is not None and id_emb.is_floating_point():
            id_emb = id_emb.to(self._dtype())
        return self.item_tower(id_emb, content, content_mask, item_ids)

    def predict(self, item_repr: Tensor) -> Tensor:
        """``[K]`` predicted labels from ``[K, D]`` representations."""
        return self.head(item_repr.to(self._dtype())).squeeze(-1)

    def forward(self, embeddings: dict[str, Tensor], batch: ItemBatch) -> TaskOutput:
        """Squared error summed over ``batch.items`` (each item's representation computed once)."""
        from mvrec_dist.models.recommender import ITEM_FEATURE

        reprs = self.item_representations(embeddings.get(ITEM_FEATURE), batch.content, batch.content_mask,
                                          batch.unique_items)
        preds = self.predict(reprs)[batch.inverse]
        loss_sum = (preds.float() - batch.labels.float()).pow(2).sum()
        n = torch.tensor(batch.items.numel(), device=loss_sum.device)
        return TaskOutput(loss_sum, n, n.detach())


class ItemPopularityTask(Task):
    """``task.name=item_popularity``: see the module docstring."""

    examples_key = "items"

    def build_model(self, manifest: Any, *, device: str | torch.device) -> nn.Module:
        """The item table (as the next-item task's) and an ``ItemRegressionTower`` over an ID item tower."""
        from mvrec_dist.models.item_tower import ItemTower
        from mvrec_dist.models.recommender import SequentialRecommender
        from mvrec_dist.models.tables import EmbeddingTables

        m = self.cfg.model
        # The head draws from the global RNG, which the rank setup seeded (as build_recommender's dense parts).
        dense = ItemRegressionTower(item_tower=ItemTower(mode="id", embedding_dim=m.embedding_dim),
                                    embedding_dim=m.embedding_dim, hidden_dim=self.cfg.task.hidden_dim)
        # ``SequentialRecommender`` is only the (tables, dense tower) pair here: its step is
        # ``dense(lookups of sparse_features(batch), batch)`` for any batch.
        return SequentialRecommender(tables=EmbeddingTables(self.table_specs(manifest), device=device), dense=dense,
                                     features=self.sparse_features)

    def build_data(self, manifest: Any, *, rank: int, world_size: int, pin_memory: bool, content_store: Any,
                   gather: Callable[[Tensor], Tensor] | None) -> ItemPopularityData:
        """The rank's ``ItemPopularityData``."""
        return ItemPopularityData(self.cfg, manifest, rank=rank, world_size=world_size, content_store=content_store)

    def count(self, batch: ItemBatch) -> tuple[int, int]:
        """Targets and examples are the batch's items."""
        n = int(batch.items.numel())
        return n, n

    def evaluate(self, model: Any, data: ItemPopularityData, split: str, log: Any | None = None) -> dict[str, float]:
        """MAE and RMSE of the predicted labels over ``split``'s items (each rank scores its slice)."""
        start = time.perf_counter()
        items = data.eval_items(split)
        progress = EvalProgress(log, split, data.world_size, "items") if log is not None else None
        with model.evaluating():
            reprs = model.item_representations(data.num_items)  # N+1,D (collective)
            if progress is not None:
                progress(0, len(items))
            ids = torch.from_numpy(items).to(reprs.device)
            err = model.dense.predict(reprs[ids]).float().cpu() - torch.from_numpy(data.labels[items])
            sums = torch.tensor([err.abs().sum(), err.pow(2).sum(), len(items)], dtype=torch.float64)
            total = model.sum_over_ranks(sums).cpu()
        n = int(total[2])
        return {"mae": float(total[0]) / max(n, 1), "rmse": float((total[1] / max(n, 1)).sqrt()), "items": n,
                "seconds": time.perf_counter() - start}
