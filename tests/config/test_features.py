"""Tests of the trunk-cache settings and the cached-trunk cross-checks of TrainJobConfig."""

from __future__ import annotations

import pytest

from mvrec_dist.config import ConfigError, TrainJobConfig, TrunkCacheConfig, load_config

VIDEO = ["model.item_tower=id+content", "model.loss.name=inbatch_softmax", "model.content_encoder.name=frame_cnn"]


def test_defaults_and_ranges():
    assert TrunkCacheConfig().dtype == "float16" and not TrunkCacheConfig().build_if_missing
    with pytest.raises(ConfigError, match="batch_size: must be >= 1"):
        TrunkCacheConfig(batch_size=0)
    with pytest.raises(ConfigError, match="trunk_cache.dtype"):
        load_config(TrainJobConfig, None, ["trunk_cache.dtype=bfloat16"])


def test_a_cached_trunk_needs_a_feature_store_directory():
    with pytest.raises(ConfigError, match="data.content_features: must name the trunk-feature store"):
        load_config(TrainJobConfig, None, VIDEO + ["model.content_encoder.cached_trunk=true"])
    cfg = load_config(TrainJobConfig, None, VIDEO + ["model.content_encoder.cached_trunk=true",
                                                     "data.content_features=/tmp/f"])
    assert cfg.model.content_encoder.cached_trunk and cfg.data.content_features == "/tmp/f"


def test_eval_content_batch_size_is_checked():
    with pytest.raises(ConfigError, match="eval.content_batch_size: must be >= 1"):
        load_config(TrainJobConfig, None, ["eval.content_batch_size=0"])
