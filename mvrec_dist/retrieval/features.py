"""One retrieval vector per item, from the cached content features (the one cached-feature mechanism).

Sources: feature stores written by ``jobs/cache_trunk_features.py`` (``ContentStore.from_features``):
the title's sentence vector (a text encoder in ``finetune: frozen``: all-MiniLM's mean-pooled
``[384]``) and the pooled frame features (a video encoder in ``finetune: frozen``: its pooled
``[C]`` output over the frames). A store must hold one vector per item (1-D); a store of a ``top``
cut (``[T, H+1]`` hidden states, ``[C, T, H, W]`` maps) is refused, because how to pool it is the
encoder's business, not the retriever's.

**The rule.** Each modality's vector is L2-normalised and scaled by ``sqrt(weight)``; the blocks are
concatenated and the whole is L2-normalised again. For two items that both have every modality the
cosine of the concatenations is the weighted mean of the per-modality cosines
(``sum_m w_m cos_m / sum_m w_m``); MMRA instead embeds one text (title + BLIP captions of 10 frames)
with one text model (ICDM-UESTC/MMRA ``data/MicroLens-100k/retrieval_preprocess/``), which needs a
captioning model this project does not have.

**Missing features are never made up.** With ``retrieval.on_missing: error`` (the default) an item
without a vector in a configured store stops the job, naming the item and the store. With
``partial`` a missing modality's block is zeros (the item is compared on what it has: a title-only
item against an item with a title and a video scores ``w_t cos_t / sqrt(w_t (w_t + w_f))``), and an
item with no feature at all gets no vector: it is in no index and has no neighbours (listed in the
neighbour manifest). Items without a video thus get *no* frame features, not synthetic ones. A
dataset ingested with ``video.synthetic_missing`` has noise frames, whose features the retriever
cannot tell from real ones: do not give it such a store (the MicroLens-50K preset uses titles only).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np

from mvrec_dist.data.content_store import ContentStore, ContentStoreError
from mvrec_dist.data.fs import open_input_file
from mvrec_dist.data.manifest import Manifest

__all__ = ["RetrievalError", "ItemFeatures", "assemble_item_features", "combine_modalities", "open_feature_store", "RULE"]

RULE = ("per modality: L2-normalise, scale by sqrt(weight); concatenate; L2-normalise the whole "
        "(cosine = weighted mean of per-modality cosines; a missing modality contributes a zero block)")
GATHER_CHUNK = 65536
"""Items read from a store at once (bounds the temporary copy at 1M+ items)."""


class RetrievalError(ValueError):
    """The retriever cannot run on this input; the message names the item, store or setting."""


@dataclass
class ItemFeatures:
    """Every item's retrieval vector.

    Attributes:
        vectors: ``float32 [N+1, D]`` L2-normalised rows; row 0 (padding) and items without any
            feature are zeros.
        present: ``bool [N+1]`` which items have a vector.
        modalities: Per source: name, store, dims, weight, items with a feature, the store's fingerprint.
        missing: ``{item: reason}`` of items without any vector (``on_missing: partial`` only).
    """

    vectors: np.ndarray
    present: np.ndarray
    modalities: list[dict]
    missing: dict[int, str] = field(default_factory=dict)

    @property
    def dims(self) -> int:
        """D, the concatenated width."""
        return int(self.vectors.shape[1])


def _raw_items(manifest: Manifest) -> np.ndarray | None:
    """``maps/items.npy`` for messages (raw id of each dense id), None when unreadable."""
    try:
        with open_input_file(manifest.path(manifest.data["maps"]["items"])) as f:
            return np.load(io.BytesIO(f.read()), allow_pickle=False)
    except (OSError, KeyError, ValueError):
        return None


def _name(item: int, raw: np.ndarray | None) -> str:
    return f"item {item}" + (f" (raw id {int(raw[item])})" if raw is not None and item < len(raw) else "")


def open_feature_store(name: str, path: str, manifest: Manifest) -> ContentStore:
    """The feature store at ``path`` of modality ``name`` (``title``: ``[C]`` per item; ``frames``: ``[C]`` or
    per-frame ``[F, C]``), checked to belong to ``manifest``'s dataset; ``RetrievalError`` otherwise."""
    try:
        store = ContentStore.from_features(path)
    except ContentStoreError as exc:
        raise RetrievalError(f"retrieval.{'text' if name == 'title' else 'frame'}_features: {exc}") from None
    ident = store.manifest.get("identity", {})
    if ident.get("dataset_fingerprint") != manifest.data.get("fingerprint"):
        raise RetrievalError(f"{path}: {name} features were computed for another dataset (fingerprint "
                             f"{str(ident.get('dataset_fingerprint'))[:12]}..., {manifest.root} has "
                             f"{str(manifest.data.get('fingerprint'))[:12]}...); recompute them with "
                             "jobs/cache_trunk_features.py on this dataset")
    if store.num_items != manifest.num_items:
        raise RetrievalError(f"{path}: {store.num_items} items, the dataset has {manifest.num_items}")
    if len(store.shape) != 1 and not (name == "frames" and len(store.shape) == 2):
        raise RetrievalError(f"{path}: {name} features of shape {list(store.shape)} per item; the retriever needs "
                             "one vector per item (cache the encoder with finetune=frozen, whose output is pooled)"
                             + ("" if name == "title" else ", or per-frame vectors [F, C], which it averages"))
    return store


def _normalised(store: ContentStore, name: str, raw: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """``(ids with a feature, their float32 L2-normalised vectors)``; non-finite or zero vectors raise."""
    ids = np.nonzero(store.index[:, 0] >= 0)[0]
    out = np.empty((len(ids), store.shape[-1]), dtype=np.float32)
    for lo in range(0, len(ids), GATHER_CHUNK):
        chunk = ids[lo:lo + GATHER_CHUNK]
        x = store.gather(chunk).astype(np.float32)
        if x.ndim == 3:  # per-frame features [F, C] (MMRA's frame store): the item's vector is their mean
            x = x.mean(axis=1)
        bad = ~np.isfinite(x).all(axis=1)
        if bad.any():
            raise RetrievalError(f"{store.layout.root}: {_name(int(chunk[bad][0]), raw)} has a non-finite {name} feature")
        norms = np.linalg.norm(x, axis=1)
        if (norms == 0).any():
            raise RetrievalError(f"{store.layout.root}: {_name(int(chunk[norms == 0][0]), raw)} has an all-zero "
                                 f"{name} feature (no direction to compare)")
        out[lo:lo + len(chunk)] = x / norms[:, None]
    return ids, out


def combine_modalities(blocks: list[tuple[np.ndarray, np.ndarray, float]], num_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``RULE`` to per-modality vectors.

    Args:
        blocks: Per modality ``(ids, L2-normalised vectors [len(ids), d_m], weight)``.
        num_items: N.

    Returns:
        ``(vectors float32 [N+1, sum d_m], present bool [N+1])``; items with no modality (or only
        zero-weight ones) are zero rows and not present.
    """
    dims = [b[1].shape[1] for b in blocks]
    out = np.zeros((num_items + 1, sum(dims)), dtype=np.float32)
    total = np.zeros(num_items + 1, dtype=np.float64)
    col = 0
    for (ids, vecs, weight), d in zip(blocks, dims):
        out[ids, col:col + d] = vecs * np.float32(np.sqrt(weight))
        total[ids] += weight
        col += d
    present = total > 0
    out[present] /= np.sqrt(total[present]).astype(np.float32)[:, None]
    return out, present


def assemble_item_features(manifest: Manifest, modalities: list[tuple[str, str, float]],
                           on_missing: str = "error") -> ItemFeatures:
    """Every item's retrieval vector from the configured feature stores (see the module docstring).

    Args:
        manifest: The dataset the stores were computed from (checked by fingerprint).
        modalities: ``(name, store directory, weight)`` (``RetrievalConfig.modalities``).
        on_missing: ``'error'`` or ``'partial'``.

    Returns:
        The ``ItemFeatures``.

    Raises:
        RetrievalError: naming the store (wrong dataset, wrong shape, missing) or the item (a missing,
            non-finite or all-zero feature).
    """
    if not modalities:
        raise RetrievalError("retrieval: no feature store is set; give retrieval.text_features and/or "
                             "retrieval.frame_features")
    n = manifest.num_items
    raw = _raw_items(manifest)
    blocks, described = [], []
    for name, path, weight in modalities:
        store = open_feature_store(name, path, manifest)
        ids, vecs = _normalised(store, name, raw)
        if on_missing == "error" and len(ids) < n:
            has = np.zeros(n + 1, dtype=bool)
            has[ids] = True
            first = int(np.nonzero(~has[1:])[0][0]) + 1
            raise RetrievalError(f"{path}: {_name(first, raw)} has no {name} feature ({n - len(ids)} of {n} items "
                                 "lack one); with retrieval.on_missing=partial such items are compared on their "
                                 "other features")
        blocks.append((ids, vecs, weight))
        described.append({"modality": name, "store": path, "dims": int(vecs.shape[1]), "weight": float(weight),
                          "items": int(len(ids)), "store_fingerprint": store.manifest.get("fingerprint")})
    vectors, present = combine_modalities(blocks, n)
    # With on_missing=error every store covered every item (checked above), so this is empty then.
    missing = {int(i): "no feature in any configured store" for i in np.nonzero(~present[1:])[0] + 1}
    return ItemFeatures(vectors=vectors, present=present, modalities=described, missing=missing)
