"""MMRA popularity prediction (``task.name=mmra``): the system's second task, through the one loop.

Label and split come with the dataset (``mvrec_dist.data.item_split``: ``log2`` of the item's interaction
count, or of a counts file's column; items without one are in no split; 80/10/10 with a fixed seed).
Each example is an item: its per-frame features and title vector (feature stores, the one cached-feature
mechanism), and its first ``task.retrieved`` neighbours from the retriever's store (``jobs/build_neighbours.py``:
train and valid items only, never the item itself) with their similarities, labels, titles and frames.
The model (``models/mmra.py``) is dense only: no embedding tables; DeepSpeed holds it.

The training stream is ``ItemPopularityData``'s (a permutation of the train items per epoch, global step s
takes ``[s*B, (s+1)*B)``, state = steps into the epoch, so a resume on any world size continues with the
items not yet trained on); only the labels, the split and the batch differ. Evaluation: each rank predicts
its slice of the split, the predictions are summed into one full-split vector on every rank (one
all-reduce), and the metrics (``eval/regression.py``) are computed there, whole-set and per batch of
``task.eval_batch`` in item-id order. Baselines on the same test items: the train labels' mean, and the
retrieval-only estimate (the neighbours' labels under MMRA's softmax-of-similarity weights, the aggregated
label MMRA itself embeds).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from mvrec_dist.data.batch import TensorBatch
from mvrec_dist.eval.progress import EvalProgress
from mvrec_dist.eval.regression import batched_regression_metrics, regression_metrics
from mvrec_dist.models.mmra import MMRA
from mvrec_dist.models.recommender import SequentialRecommender, TaskOutput
from mvrec_dist.tasks.base import Task
from mvrec_dist.tasks.item_popularity import ItemPopularityData

__all__ = ["PopularityBatch", "MMRAData", "MMRATower", "MMRATask", "ItemInputs"]


@dataclass
class PopularityBatch(TensorBatch):
    """One rank's items of a step with everything MMRA reads (B items, R neighbours, F frames).

    Attributes:
        items: ``LongTensor[B]``.
        labels: ``FloatTensor[B]``.
        frames: ``[B, F, Cv]`` per-frame features.
        text: ``[B, Ct]`` title features.
        similarities: ``[B, R]``.
        neighbour_frames: ``[B, R, F, Cv]``.
        neighbour_text: ``[B, R, Ct]``.
        neighbour_labels: ``[B, R]``.
        neighbour_mask: ``BoolTensor[B, R]`` real neighbour slots.
        unique_items: ``LongTensor[B]`` the items (the batch protocol's name for what it reads).
        cursor: Global steps of the epoch taken once this batch is trained on (None for dummies).
    """

    items: Tensor
    labels: Tensor
    frames: Tensor
    text: Tensor
    similarities: Tensor
    neighbour_frames: Tensor
    neighbour_text: Tensor
    neighbour_labels: Tensor
    neighbour_mask: Tensor
    unique_items: Tensor
    cursor: int | None = None


class ItemInputs:
    """What MMRA reads of any item: features from the two stores, neighbours and labels (CPU, numpy).

    Args:
        text_store: Title features (``ContentStore``, ``[Ct]`` per item).
        frame_store: Frame features (``[F', Cv]`` or ``[Cv]`` per item).
        neighbour_ids: ``int64 [N+1, k]`` (0 = no neighbour in that slot).
        neighbour_sims: ``float32 [N+1, k]``.
        neighbour_counts: ``int64 [N+1]`` stored neighbours per item.
        labels: ``float32 [N+1]`` (NaN: no label).
        frames: F, the frames read (the first F of the store's).
        retrieved: R, the neighbours read (the first R of k).
    """

    def __init__(self, *, text_store: Any, frame_store: Any, neighbour_ids: np.ndarray, neighbour_sims: np.ndarray,
                 neighbour_counts: np.ndarray, labels: np.ndarray, frames: int, retrieved: int,
                 zero_missing_frames: bool = False):
        self.text_store, self.frame_store = text_store, frame_store
        self.zero_missing_frames = zero_missing_frames
        self.ids, self.sims = neighbour_ids[:, :retrieved], neighbour_sims[:, :retrieved]
        self.mask = np.arange(retrieved)[None, :] < np.minimum(neighbour_counts, retrieved)[:, None]
        self.labels, self.frames, self.retrieved = labels, frames, retrieved

    def _frames(self, ids: np.ndarray) -> np.ndarray:
        if self.zero_missing_frames:  # items without a video read zeros (task.missing_frames=zeros)
            has = self.frame_store.has(ids)
            f, cv = self.frame_shape
            out = np.zeros((len(ids), f, cv), np.float32)
            out[has] = self._frames_present(ids[has])
            return out
        return self._frames_present(ids)

    def _frames_present(self, ids: np.ndarray) -> np.ndarray:
        x = self.frame_store.gather(ids).astype(np.float32)
        return x[:, None, :] if x.ndim == 2 else x[:, :self.frames]

    def without_frames(self, items: np.ndarray) -> int:
        """How many of ``items`` have no frame features (read as zeros)."""
        return int((~self.frame_store.has(np.asarray(items, dtype=np.int64))).sum())

    def batch(self, items: np.ndarray, cursor: int | None) -> PopularityBatch:
        """The batch of ``items`` (each distinct item's features read once; empty slots are zeros)."""
        items = np.asarray(items, dtype=np.int64)
        nb, mask = self.ids[items], self.mask[items]  # B,R
        b, r = nb.shape
        f, cv = self.frame_shape
        ct = self.text_store.shape[-1]
        text, frames = np.zeros((b, ct), np.float32), np.zeros((b, f, cv), np.float32)
        nb_text, nb_frames = np.zeros((b, r, ct), np.float32), np.zeros((b, r, f, cv), np.float32)
        if b:
            wanted = np.unique(np.concatenate([items, nb[mask]]))
            w_text, w_frames = self.text_store.gather(wanted).astype(np.float32), self._frames(wanted)
            pos, nb_pos = np.searchsorted(wanted, items), np.searchsorted(wanted, nb[mask])
            text, frames = w_text[pos], w_frames[pos]
            nb_text[mask], nb_frames[mask] = w_text[nb_pos], w_frames[nb_pos]
        nb_labels = np.where(mask, np.nan_to_num(self.labels[nb]), 0).astype(np.float32)

        def t(a: np.ndarray) -> Tensor:
            return torch.from_numpy(np.ascontiguousarray(a))

        return PopularityBatch(items=t(items), labels=t(self.labels[items].astype(np.float32)), frames=t(frames),
                               text=t(text), similarities=t(self.sims[items].astype(np.float32)),
                               neighbour_frames=t(nb_frames), neighbour_text=t(nb_text), neighbour_labels=t(nb_labels),
                               neighbour_mask=t(mask), unique_items=t(items), cursor=cursor)

    @property
    def frame_shape(self) -> tuple[int, int]:
        """``(F, Cv)`` of one item's frames as the model reads them."""
        s = self.frame_store.shape
        return (1, s[0]) if len(s) == 1 else (min(self.frames, s[0]), s[1])


class MMRAData(ItemPopularityData):
    """One rank's data of the MMRA task: the item stream of ``ItemPopularityData`` over the dataset's split.

    Args:
        cfg: The job config (``task`` is an ``MMRATaskConfig``).
        manifest: The dataset manifest.
        rank: This rank.
        world_size: Ranks.
        inputs: The ``ItemInputs`` (feature stores and neighbours).
        labels: ``float32 [N+1]`` (NaN: no label).
        splits: ``{"train", "valid", "test"}`` -> sorted ids.
    """

    def __init__(self, cfg: Any, manifest: Any, *, rank: int, world_size: int, inputs: ItemInputs,
                 labels: np.ndarray, splits: dict[str, np.ndarray]):
        self._given = (labels, splits)
        self.inputs = inputs
        super().__init__(cfg, manifest, rank=rank, world_size=world_size, content_store=None)

    def _labels_and_splits(self, manifest: Any, item_train_counts: np.ndarray | None
                           ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return self._given

    def make_batch(self, items: np.ndarray, cursor: int | None) -> PopularityBatch:
        """MMRA's batch of ``items``."""
        return self.inputs.batch(items, cursor)


class MMRATower(nn.Module):
    """The dense tower of the task: MMRA and its loss; ``predict`` maps outputs to labels.

    Args:
        model: The ``MMRA`` module.
        loss: ``mse`` or ``bce`` (``MMRATaskConfig.loss``).
        label_scale: The train labels' maximum (BCE's targets are ``label / label_scale``).
    """

    def __init__(self, model: MMRA, *, loss: str, label_scale: float):
        super().__init__()
        self.model, self.loss = model, loss
        self.register_buffer("label_scale", torch.tensor(float(label_scale)), persistent=False)

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def outputs(self, batch: PopularityBatch) -> Tensor:
        """``[B]`` raw outputs of the model."""
        dt = self._dtype()
        return self.model(batch.frames.to(dt), batch.text.to(dt), batch.similarities, batch.neighbour_frames.to(dt),
                          batch.neighbour_text.to(dt), batch.neighbour_labels, batch.neighbour_mask).float()

    def predict(self, batch: PopularityBatch) -> Tensor:
        """``[B]`` predicted labels."""
        out = self.outputs(batch)
        return torch.sigmoid(out) * self.label_scale if self.loss == "bce" else out

    def forward(self, embeddings: dict[str, Tensor], batch: PopularityBatch) -> TaskOutput:
        """The loss summed over the batch's items (squared error, or BCE against label / scale)."""
        out = self.outputs(batch)
        labels = batch.labels.float()
        if self.loss == "bce":
            loss_sum = nn.functional.binary_cross_entropy_with_logits(out, labels / self.label_scale, reduction="sum")
        else:
            loss_sum = (out - labels).pow(2).sum()
        n = torch.tensor(batch.items.numel(), device=loss_sum.device)
        return TaskOutput(loss_sum, n, n.detach())


def _open_inputs(cfg: Any, manifest: Any, labels: np.ndarray) -> ItemInputs:
    from mvrec_dist.retrieval.features import open_feature_store
    from mvrec_dist.retrieval.store import load_neighbours

    r, t = cfg.retrieval, cfg.task
    nb = load_neighbours(r.output_dir)
    return ItemInputs(text_store=open_feature_store("title", r.text_features, manifest),
                      frame_store=open_feature_store("frames", r.frame_features, manifest),
                      neighbour_ids=nb.ids, neighbour_sims=nb.sims, neighbour_counts=nb.counts, labels=labels,
                      frames=t.frames, retrieved=t.retrieved, zero_missing_frames=t.missing_frames == "zeros")


def _labels_and_split(manifest: Any) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    from mvrec_dist.data.item_split import load_item_counts, load_item_split, popularity_labels_from_counts

    return popularity_labels_from_counts(load_item_counts(manifest)), load_item_split(manifest)


class MMRATask(Task):
    """``task.name=mmra``: see the module docstring."""

    examples_key = "items"

    def table_specs(self, manifest: Any) -> tuple:
        """None: MMRA reads features, not ids."""
        return ()

    def sparse_features(self, batch: Any) -> dict[str, Any]:
        """Nothing to look up."""
        return {}

    def dataset_problems(self, manifest: Any) -> list[str]:
        """The dataset's labels and split, the feature stores and the neighbour store, checked against each other."""
        from mvrec_dist.data.manifest import ManifestError
        from mvrec_dist.retrieval.features import RetrievalError, open_feature_store
        from mvrec_dist.data.item_split import split_sha256
        from mvrec_dist.retrieval.store import load_neighbours_manifest

        r, t, out = self.cfg.retrieval, self.cfg.task, []
        try:
            labels, split = _labels_and_split(manifest)
        except (ManifestError, OSError, ValueError) as exc:
            return [str(exc)]
        try:
            nb = load_neighbours_manifest(r.output_dir)
            ident = nb.get("identity", {})
            if ident.get("dataset_fingerprint") != manifest.data.get("fingerprint"):
                out.append(f"retrieval.output_dir: {r.output_dir} holds neighbours of another dataset; rebuild them "
                           "with jobs/build_neighbours.py and this preset")
            elif ident.get("split", {}).get("sha256") != split_sha256(split):
                out.append(f"retrieval.output_dir: {r.output_dir} was built over another item split than the "
                           f"dataset's saved one ({manifest.root}); rebuild it with jobs/build_neighbours.py and this preset")
        except RetrievalError as exc:
            out.append(str(exc))
        for name, path in (("title", r.text_features), ("frames", r.frame_features)):
            try:
                store = open_feature_store(name, path, manifest)
            except RetrievalError as exc:
                out.append(str(exc))
                continue
            if name == "frames" and len(store.shape) == 2 and store.shape[0] < t.frames:
                out.append(f"task.frames: {t.frames} frames read, {path} holds {store.shape[0]} per item")
            if name == "frames" and len(store.shape) == 1 and t.frames != 1:
                out.append(f"task.frames: {path} holds one pooled vector per item; set task.frames=1")
            missing = [s for s in ("train", "valid", "test") if (~store.has(split[s])).any()]
            if missing and not (name == "frames" and t.missing_frames == "zeros"):
                out.append(f"retrieval.{'text' if name == 'title' else 'frame'}_features: {path} lacks features of "
                           f"{', '.join(missing)} items; MMRA needs both modalities of every labelled item"
                           + (" (or task.missing_frames=zeros: all-zero frames for items without a video, counted "
                              "in every evaluation)" if name == "frames" else ""))
        return out

    def build_model(self, manifest: Any, *, device: str | torch.device) -> nn.Module:
        """MMRA over the stores' widths in an ``MMRATower``; no tables."""
        from mvrec_dist.data.content_store import load_features_manifest

        t, r = self.cfg.task, self.cfg.retrieval
        text_dim = int(load_features_manifest(r.text_features)["shape"][-1])
        frame_dim = int(load_features_manifest(r.frame_features)["shape"][-1])
        labels, split = _labels_and_split(manifest)
        # The dense parts draw from the global RNG, which the rank setup seeded (as every task's dense tower).
        model = MMRA(text_dim=text_dim, frame_dim=frame_dim, d=t.feature_dim or text_dim, alpha=t.alpha,
                     use_retrieval=t.use_retrieval)
        scale = float(np.max(labels[split["train"]])) if len(split["train"]) else 1.0
        return SequentialRecommender(tables=None, dense=MMRATower(model, loss=t.loss, label_scale=max(scale, 1e-6)),
                                     features=self.sparse_features)

    def build_data(self, manifest: Any, *, rank: int, world_size: int, pin_memory: bool, content_store: Any,
                   gather: Callable[[Tensor], Tensor] | None) -> MMRAData:
        """The rank's ``MMRAData`` (its own handles on the stores)."""
        labels, split = _labels_and_split(manifest)
        inputs = _open_inputs(self.cfg, manifest, labels)
        if self.cfg.task.use_retrieval:
            labelled = np.concatenate([split[s] for s in ("train", "valid", "test")])
            lonely = labelled[~inputs.mask[labelled].any(axis=1)]
            if len(lonely):
                raise ValueError(f"{self.cfg.retrieval.output_dir}: {len(lonely)} labelled items have no neighbour "
                                 f"(first: dense ids {lonely[:5].tolist()}); MMRA's aggregation needs at least one "
                                 "(their features are missing from the stores the neighbours were built from)")
        return MMRAData(self.cfg, manifest, rank=rank, world_size=world_size, inputs=inputs, labels=labels,
                        splits=split)

    def count(self, batch: PopularityBatch) -> tuple[int, int]:
        """Targets and examples are the batch's items."""
        n = int(batch.items.numel())
        return n, n

    def _split_predictions(self, model: Any, data: MMRAData, split: str, log: Any | None) -> np.ndarray:
        """Every item of ``split``'s prediction, on every rank (each rank predicts its slice; one all-reduce)."""
        items, mine = data.splits[split], data.eval_items(split)
        lo = int(np.searchsorted(items, mine[0])) if len(mine) else 0
        full = torch.zeros(len(items), dtype=torch.float64)
        progress = EvalProgress(log, split, data.world_size, "items") if log is not None else None
        step = self.cfg.task.eval_batch
        with model.evaluating():
            for start in range(0, len(mine), step):
                chunk = mine[start:start + step]
                batch = data.make_batch(chunk, None).to(model.ctx.device)
                full[lo + start:lo + start + len(chunk)] = model.dense.predict(batch).double().cpu()
                if progress is not None:
                    progress(start + len(chunk), len(mine))
            return model.sum_over_ranks(full).cpu().numpy()

    def evaluate(self, model: Any, data: MMRAData, split: str, log: Any | None = None) -> dict[str, float]:
        """nMSE, SRC, MAE (and MAE + nMSE) over ``split``'s items, and MMRA's per-batch averages (``*_b``)."""
        start = time.perf_counter()
        pred = self._split_predictions(model, data, split, log)
        labels = data.labels[data.splits[split]].astype(np.float64)
        out = {**regression_metrics(pred, labels), **batched_regression_metrics(pred, labels, self.cfg.task.eval_batch)}
        return {**out, "items": len(labels), "no_frames": data.inputs.without_frames(data.splits[split]),
                "seconds": time.perf_counter() - start}

    def baselines(self, model: Any, data: MMRAData, split: str) -> dict[str, dict[str, float]]:
        """``train_mean`` (the train labels' mean for every item) and ``retrieval`` (softmax-of-similarity
        weighted neighbour labels); the same on every rank, no collective needed."""
        items = data.splits[split]
        labels = data.labels[items].astype(np.float64)
        mean = np.full(len(items), float(np.mean(data.labels[data.splits["train"]])))
        inp = data.inputs
        sims = np.where(inp.mask[items], inp.sims[items].astype(np.float64), -np.inf)
        w = np.exp(sims - sims.max(axis=1, keepdims=True))
        w /= w.sum(axis=1, keepdims=True)
        retrieval = (w * np.where(inp.mask[items], np.nan_to_num(data.labels[inp.ids[items]]), 0)).sum(axis=1)
        out = {}
        for name, pred in (("train_mean", mean), ("retrieval", retrieval)):
            out[name] = {**regression_metrics(pred, labels),
                         **batched_regression_metrics(pred, labels, self.cfg.task.eval_batch), "items": len(items)}
        return out
