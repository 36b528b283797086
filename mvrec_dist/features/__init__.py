"""Precomputed item features: the frozen part of a content encoder (video: its trunk), run once per item (Ray Data).

Any content encoder whose config declares cached features takes this path. ``identity`` says which
frozen part, dataset content and cut a feature store belongs to (training checks it); ``trunk_cache``
is the Ray Data pass that writes the store (``jobs/cache_trunk_features.py``).
"""

from mvrec_dist.features.identity import FeatureIdentityError, build_trunk_encoder, check_identity, features_identity

__all__ = ["FeatureIdentityError", "build_trunk_encoder", "check_identity", "features_identity"]
