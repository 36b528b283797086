"""The content a run's item tower reads: which store, checked against the model before training.

* live trunk: the dataset's ``content`` split (``uint8 [F, S, S, 3]`` frames), whose F and S must
  be the encoder's ``frames`` and ``size``;
* cached trunk (``content_encoder.cached_trunk``): the trunk-feature store ``data.content_features``,
  whose identity (dataset content, trunk digest, cut, frames) must be this run's
  (``mvrec_dist.features.identity``).

``content_problems`` runs on the driver before any worker starts; ``open_content_store`` runs on
every rank and also hands evaluation its ``content_fn``.
"""

from __future__ import annotations

from typing import Callable

import torch

from mvrec_dist.config.jobs import TrainJobConfig
from mvrec_dist.data.content_store import ContentStore, ContentStoreError, load_features_manifest
from mvrec_dist.data.manifest import Manifest, ManifestError, load_manifest

__all__ = ["ContentSetupError", "content_problems", "open_content_store", "content_fn"]


class ContentSetupError(ValueError):
    """The content the model needs is absent or does not fit it; the message says what to run."""


def _cached(cfg: TrainJobConfig) -> bool:
    return cfg.model.item_tower != "id" and bool(getattr(cfg.model.content_encoder, "cached_trunk", False))


def content_problems(cfg: TrainJobConfig) -> list[str]:
    """Driver-side checks of a content tower's data (empty for ID-only runs or when all is in place).

    A missing dataset is reported by the dataset check itself; a missing feature store is fine
    when ``trunk_cache.build_if_missing`` will build it.
    """
    if cfg.model.item_tower == "id":
        return []
    try:
        manifest = load_manifest(cfg.data.dataset_dir)
    except ManifestError:
        return []
    if not manifest.has_split("content"):
        return [f"model.item_tower={cfg.model.item_tower!r} needs video content but {cfg.data.dataset_dir} has "
                "none; run jobs/ingest_microlens.py with video.enabled=true video.videos=<dir> on it"]
    if _cached(cfg) and not cfg.trunk_cache.build_if_missing:
        try:
            load_features_manifest(cfg.data.content_features)
        except ContentStoreError as exc:
            return [f"data.content_features: {exc}"]
    shape = manifest.data["content"]["shape"]
    enc = cfg.model.content_encoder
    if not _cached(cfg) and hasattr(enc, "frames") and shape != [enc.frames, enc.size, enc.size, 3]:
        return [f"model.content_encoder takes frames={enc.frames} size={enc.size} but the dataset's content "
                f"holds {shape[0]} frames of {shape[1]}x{shape[2]}; set them to match or re-ingest the videos"]
    return []


def open_content_store(cfg: TrainJobConfig, manifest: Manifest, encoder: torch.nn.Module | None
                       ) -> ContentStore | None:
    """The store the item tower reads (None for an ID-only tower), checked against the model.

    Args:
        cfg: The job config.
        manifest: The dataset's manifest.
        encoder: The model's content encoder, before the parallel layer moves or casts it.

    Returns:
        Frames of the dataset, or the cached trunk features.

    Raises:
        ContentSetupError: when the content is absent or belongs to another encoder setting.
    """
    if cfg.model.item_tower == "id":
        return None
    try:
        if _cached(cfg):
            from mvrec_dist.features.identity import FeatureIdentityError, check_identity, features_identity

            store = ContentStore.trunk_features(cfg.data.content_features)
            try:
                expected = features_identity(cfg, manifest, encoder, store.manifest["dtype"])
                check_identity(store.manifest["identity"], expected, where=cfg.data.content_features)
            except FeatureIdentityError as exc:
                raise ContentSetupError(str(exc)) from None
            return store
        store = ContentStore.frames(manifest)
    except ContentStoreError as exc:
        raise ContentSetupError(str(exc)) from None
    enc = cfg.model.content_encoder
    if hasattr(enc, "frames") and store.shape != (enc.frames, enc.size, enc.size, 3):
        raise ContentSetupError(f"{manifest.root}: content frames are {list(store.shape)}, model.content_encoder "
                                f"takes [{enc.frames}, {enc.size}, {enc.size}, 3]")
    return store


def content_fn(store: ContentStore) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """``ids -> (content of the ids that have it, mask)`` for ``ParallelModel.set_content_source``."""

    def load(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ids_np = ids.numpy()
        mask = store.has(ids_np)
        return torch.from_numpy(store.gather(ids_np[mask])), torch.from_numpy(mask)

    return load
