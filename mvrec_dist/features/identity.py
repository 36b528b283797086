"""Which frozen encoder part, content and cut a feature store was computed with, and the check training does.

A store is valid for a run exactly when the run would compute the same features live: the same
dataset content (fingerprint and content index checksum), the same frozen part of the content
encoder (its module's ``cache_identity``; video: ``trunk_digest`` of weights, buffers,
normalisation, cut), and the same input (its config's ``cache_identity``; video: frames F and size
S). Any difference fails the run before training with the fields that differ and the command that
fixes it. This works for any content encoder whose config declares cached features.
"""

from __future__ import annotations

import numpy as np
import torch

from mvrec_dist.config.jobs import TrainJobConfig
from mvrec_dist.data.content_store import ContentStoreError, content_section, content_spec
from mvrec_dist.data.manifest import Manifest
from mvrec_dist.models.item_encoders.base import ContentEncoder, cached_feature_shape
from mvrec_dist.models.registry import CONTENT_ENCODERS

__all__ = ["FeatureIdentityError", "build_trunk_encoder", "features_identity", "check_identity"]

_INFORMATIVE = ("dtype", "encoder")
"""Identity fields that may differ between a store and its run: either stored dtype serves, and
``encoder`` (the settings) is for reference; every other field must agree."""


class FeatureIdentityError(ValueError):
    """A feature store does not belong to this run's dataset content or frozen encoder part."""


def build_trunk_encoder(cfg: TrainJobConfig) -> ContentEncoder:
    """The run's content encoder, initialised exactly as ``build_recommender`` does in the workers.

    The workers seed torch with ``train.seed`` and build the content encoder first, so a randomly
    initialised frozen part is the same here; pretrained weights come from ``checkpoint`` either way.

    Args:
        cfg: The training job config (``model.content_encoder`` one with a frozen part: a video encoder
            in 'frozen' or 'top' mode).

    Returns:
        The encoder on CPU, fine-tuning mode applied.
    """
    enc_cfg = cfg.model.content_encoder
    if enc_cfg is None or enc_cfg.cache_problems():
        why = "none is set" if enc_cfg is None else "; ".join(enc_cfg.cache_problems())
        raise FeatureIdentityError(f"model.content_encoder: cached features need an encoder with a frozen part "
                                   f"(a video or text encoder in 'frozen' or 'top' mode): {why}")
    torch.manual_seed(cfg.train.seed)
    return CONTENT_ENCODERS.build(enc_cfg)


def features_identity(cfg: TrainJobConfig, manifest: Manifest, encoder: ContentEncoder, dtype: str) -> dict:
    """What a feature store for this run and dataset must record.

    Args:
        cfg: The training job config.
        manifest: The dataset's manifest (with content).
        encoder: The run's encoder (``build_trunk_encoder`` or the model's, before any cast).
        dtype: Stored feature dtype.

    Returns:
        The identity dict: dataset fingerprint and content index checksum, the encoder module's and
        config's ``cache_identity``, the feature ``shape`` and ``dtype`` (for a video encoder the
        keys stores have always had: ``trunk_digest``, ``top_blocks``, ``frames``, ``size``, and
        ``encoder``, the settings for reference).
    """
    enc_cfg = cfg.model.content_encoder
    try:
        spec = content_spec(manifest, enc_cfg.content_kind)
    except ContentStoreError as exc:
        raise FeatureIdentityError(f"cannot compute features: {exc}") from None
    content = content_section(manifest, enc_cfg.content_kind)
    # The shape the encoder is configured for (the run refuses content of another shape).
    item_shape = enc_cfg.content_shape or spec.shape
    return {
        "dataset_fingerprint": manifest.data.get("fingerprint"),
        "content_index_sha256": manifest.data["files"][content["index"]]["sha256"],
        **encoder.cache_identity(),
        **enc_cfg.cache_identity(),
        "shape": list(cached_feature_shape(encoder, item_shape, torch.from_numpy(np.zeros(0, spec.dtype)).dtype)),
        "dtype": dtype,
    }


def check_identity(stored: dict, expected: dict, *, where: str) -> None:
    """Raise when a store's identity differs from the run's in any field but ``dtype`` and ``encoder``.

    Args:
        stored: The store manifest's ``identity``.
        expected: ``features_identity`` of the run (its ``dtype`` is ignored: either dtype serves).
        where: The store directory, for the message.
    """
    differ = [k for k in expected if k not in _INFORMATIVE and stored.get(k) != expected.get(k)]
    if differ:
        shown = "; ".join(f"{k}: store {stored.get(k)!r} vs run {expected.get(k)!r}" for k in differ)
        raise FeatureIdentityError(
            f"{where}: the trunk features were computed for another dataset content or trunk ({shown}); "
            "recompute them with jobs/cache_trunk_features.py (trunk_cache.overwrite=true)")
