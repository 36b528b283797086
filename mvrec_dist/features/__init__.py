"""Precomputed item features: the frozen trunk of a video encoder, run once per item (Ray Data).

``identity`` says which trunk, dataset content and cut a feature store belongs to (training checks
it); ``trunk_cache`` is the Ray Data pass that writes the store (``jobs/cache_trunk_features.py``).
"""

from mvrec_dist.features.identity import FeatureIdentityError, build_trunk_encoder, check_identity, features_identity

__all__ = ["FeatureIdentityError", "build_trunk_encoder", "check_identity", "features_identity"]
