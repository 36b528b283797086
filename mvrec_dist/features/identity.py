"""Which trunk, content and cut a trunk-feature store was computed with, and the check training does.

A store is valid for a run exactly when the run would compute the same features live: the same
dataset content (fingerprint and content index checksum), the same trunk function
(``trunk_digest``: weights, buffers, normalisation, cut), and the same input frames (F, S). Any
difference fails the run before training with the fields that differ and the command that fixes it.
"""

from __future__ import annotations

import torch

from mvrec_dist.config.jobs import TrainJobConfig
from mvrec_dist.config.load import config_to_dict
from mvrec_dist.data.manifest import Manifest
from mvrec_dist.models.item_encoders.video import VideoEncoder, trunk_and_top, trunk_digest, trunk_output_shape
from mvrec_dist.models.registry import CONTENT_ENCODERS

__all__ = ["FeatureIdentityError", "build_trunk_encoder", "features_identity", "check_identity", "IDENTITY_KEYS"]

IDENTITY_KEYS = ("dataset_fingerprint", "content_index_sha256", "trunk_digest", "top_blocks", "frames", "size",
                 "shape", "dtype")
"""Fields that must agree between a store and the run using it (``encoder`` is informative)."""


class FeatureIdentityError(ValueError):
    """A trunk-feature store does not belong to this run's dataset content or trunk."""


def build_trunk_encoder(cfg: TrainJobConfig) -> VideoEncoder:
    """The run's video encoder, initialised exactly as ``build_recommender`` does in the workers.

    The workers seed torch with ``train.seed`` and build the content encoder first, so a randomly
    initialised trunk is the same here; pretrained weights come from ``checkpoint`` either way.

    Args:
        cfg: The training job config (``model.content_encoder`` a video encoder).

    Returns:
        The encoder on CPU, fine-tuning mode applied.
    """
    enc_cfg = cfg.model.content_encoder
    if enc_cfg is None or not hasattr(enc_cfg, "cached_trunk"):
        raise FeatureIdentityError(f"model.content_encoder: trunk features need a video encoder, got "
                                   f"{type(enc_cfg).__name__}")
    torch.manual_seed(cfg.train.seed)
    return CONTENT_ENCODERS.build(enc_cfg)


def features_identity(cfg: TrainJobConfig, manifest: Manifest, encoder: VideoEncoder, dtype: str) -> dict:
    """What a feature store for this run and dataset must record.

    Args:
        cfg: The training job config.
        manifest: The dataset's manifest (with content).
        encoder: The run's encoder (``build_trunk_encoder`` or the model's, before any cast).
        dtype: Stored feature dtype.

    Returns:
        The identity dict (``IDENTITY_KEYS`` plus ``encoder``, the encoder config for reference).
    """
    content = manifest.data.get("content")
    if content is None:
        raise FeatureIdentityError(f"{manifest.root}: the dataset has no video content to compute features from")
    enc_cfg = cfg.model.content_encoder
    _, _, k = trunk_and_top(encoder)
    return {
        "dataset_fingerprint": manifest.data.get("fingerprint"),
        "content_index_sha256": manifest.data["files"][content["index"]]["sha256"],
        "trunk_digest": trunk_digest(encoder),
        "top_blocks": k,
        "frames": enc_cfg.frames,
        "size": enc_cfg.size,
        "shape": list(trunk_output_shape(encoder, enc_cfg.frames, enc_cfg.size)),
        "dtype": dtype,
        "encoder": {k2: v for k2, v in config_to_dict(enc_cfg).items() if k2 != "cached_trunk"},
    }


def check_identity(stored: dict, expected: dict, *, where: str) -> None:
    """Raise when a store's identity differs from the run's in any ``IDENTITY_KEYS`` field (dtype aside).

    Args:
        stored: The store manifest's ``identity``.
        expected: ``features_identity`` of the run (its ``dtype`` is ignored: either dtype serves).
        where: The store directory, for the message.
    """
    keys = [k for k in IDENTITY_KEYS if k != "dtype"]
    differ = [k for k in keys if stored.get(k) != expected.get(k)]
    if differ:
        shown = "; ".join(f"{k}: store {stored.get(k)!r} vs run {expected.get(k)!r}" for k in differ)
        raise FeatureIdentityError(
            f"{where}: the trunk features were computed for another dataset content or trunk ({shown}); "
            "recompute them with jobs/cache_trunk_features.py (trunk_cache.overwrite=true)")
