"""The content a run's item tower reads: which store, checked against the model before training.

What the store must hold is a property of the model config (``ModelConfig.content_kind``):

* live encoder: the dataset's content of the encoder's ``content_kind`` (``content`` split: video
  frames; ``text`` split: title token ids) and, when the encoder fixes one, its ``content_shape``
  (video: ``uint8 [F, S, S, 3]`` frames whose F and S are the encoder's ``frames`` and ``size``;
  text: ``int32 [T]`` ids), written the way the encoder reads them (``source_problems``: text, the
  same tokenizer);
* cached features (``content_encoder.cached_features``; video: ``cached_trunk``): the feature store
  ``data.content_features``, whose identity (dataset content, frozen part's digest, cut, input)
  must be this run's (``mvrec_dist.features.identity``).

``content_problems`` runs on the driver before any worker starts; ``open_content_store`` runs on
every rank and also hands evaluation its ``content_fn``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from mvrec_dist.config.jobs import TrainJobConfig
from mvrec_dist.config.model import ContentEncoderConfig, FullSoftmaxConfig
from mvrec_dist.data.content_store import (CONTENT_KIND_RULES, ContentSpec, ContentStore, ContentStoreError,
                                           content_section, content_spec, load_features_manifest)
from mvrec_dist.data.manifest import Manifest, ManifestError, load_manifest

__all__ = ["ContentSetupError", "content_problems", "open_content_store", "content_fn"]


class ContentSetupError(ValueError):
    """The content the model needs is absent or does not fit it; the message says what to run."""


def _mismatch(enc: ContentEncoderConfig, spec: ContentSpec, section: dict) -> str | None:
    """Why the dataset's content (``spec``, its manifest ``section``) cannot feed the live encoder ``enc``, or None."""
    if spec.kind != enc.content_kind:
        return (f"model.content_encoder reads {enc.content_kind} content but the dataset's content holds "
                f"{spec.kind}; pick an encoder for it or ingest {CONTENT_KIND_RULES[enc.content_kind].noun} content")
    if enc.content_shape is not None and spec.shape != tuple(enc.content_shape):
        rules = CONTENT_KIND_RULES[spec.kind]
        return (f"model.content_encoder takes {rules.describe(enc.content_shape)} but the dataset's content holds "
                f"{spec.describe()}; set them to match or re-ingest the content")
    problems = enc.source_problems(section)
    return "; ".join(problems) if problems else None


def content_problems(cfg: TrainJobConfig) -> list[str]:
    """Driver-side checks of a content tower's data (empty for ID-only runs or when all is in place).

    A missing dataset is reported by the dataset check itself; a missing feature store is fine
    when ``trunk_cache.build_if_missing`` will build it.
    """
    model = cfg.model
    if not model.uses_content:
        return []
    try:
        manifest = load_manifest(cfg.data.dataset_dir)
    except ManifestError:
        return []
    enc = model.content_encoder
    section = content_section(manifest, enc.content_kind)
    if section is None:
        rules = CONTENT_KIND_RULES[enc.content_kind]
        return [f"model.item_tower={model.item_tower!r} needs {rules.noun} content but {cfg.data.dataset_dir} has "
                f"none; run {rules.ingest} on it"]
    if model.uses_cached_features:
        # The live path checks how the content was written in _mismatch; cached features were computed
        # from that content too, so a tokenizer the encoder cannot read is refused here as well.
        source = enc.source_problems(section)
        if source:
            return [f"model.content_encoder: {p}" for p in source]
        try:
            store = load_features_manifest(cfg.data.content_features)
        except ContentStoreError as exc:
            return [] if cfg.trunk_cache.build_if_missing else [f"data.content_features: {exc}"]
        return _all_items_problems(cfg, store)
    try:
        problem = _mismatch(enc, content_spec(manifest, enc.content_kind), section)
    except ContentStoreError as exc:
        return [f"data.dataset_dir: {exc}"]
    return [] if problem is None else [problem]


FULL_SOFTMAX_CONTENT_BYTES = 1 << 30
"""Most bytes of cached features a full-softmax step may gather (every item's, every step)."""


def _all_items_problems(cfg: TrainJobConfig, features: dict) -> list[str]:
    """A full softmax on cached features reads every item's features each step: refuse when they are large."""
    if not isinstance(cfg.model.loss, FullSoftmaxConfig):
        return []
    per_item = int(np.prod(features["shape"])) * np.dtype(features["dtype"]).itemsize
    total = per_item * int(features["counts"]["with_features"])
    if total <= FULL_SOFTMAX_CONTENT_BYTES:
        return []
    return [f"model.loss.name: full_softmax gathers every item's cached features each step, {total / 2**30:.1f} GiB "
            f"here ({features['shape']} {features['dtype']} per item); cache a smaller part (e.g. finetune=frozen) "
            "or use inbatch_softmax / sampled_softmax"]


def open_content_store(cfg: TrainJobConfig, manifest: Manifest, encoder: torch.nn.Module | None
                       ) -> ContentStore | None:
    """The store the item tower reads (None for an ID-only tower), checked against the model.

    Args:
        cfg: The job config.
        manifest: The dataset's manifest.
        encoder: The model's content encoder, before the parallel layer moves or casts it.

    Returns:
        The dataset's content split, or the feature store of the encoder's cached frozen part.

    Raises:
        ContentSetupError: when the content is absent or belongs to another encoder setting.
    """
    model = cfg.model
    if not model.uses_content:
        return None
    try:
        if model.uses_cached_features:
            from mvrec_dist.features.identity import FeatureIdentityError, check_identity, features_identity

            store = ContentStore.from_features(cfg.data.content_features)
            try:
                expected = features_identity(cfg, manifest, encoder, store.manifest["dtype"])
                check_identity(store.manifest["identity"], expected, where=cfg.data.content_features)
            except FeatureIdentityError as exc:
                raise ContentSetupError(str(exc)) from None
            return store
        store = ContentStore.from_dataset(manifest, model.content_encoder.content_kind)
    except ContentStoreError as exc:
        raise ContentSetupError(str(exc)) from None
    problem = _mismatch(model.content_encoder, store.spec, content_section(manifest, store.kind))
    if problem is not None:
        raise ContentSetupError(f"{manifest.root}: {problem}")
    return store


def content_fn(store: ContentStore) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """``ids -> (content of the ids that have it, mask)`` for ``ParallelModel.set_content_source``."""

    def load(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ids_np = ids.numpy()
        mask = store.has(ids_np)
        return torch.from_numpy(store.gather(ids_np[mask])), torch.from_numpy(mask)

    return load
