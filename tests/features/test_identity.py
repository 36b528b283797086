"""Tests of mvrec_dist.features.identity: a store's identity, for video encoders and for any encoder with a
frozen part, without Ray (the pass itself is tests/features/test_trunk_cache.py)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pytest

from mvrec_dist.config import ConfigError, TrainJobConfig, load_config
from mvrec_dist.config.fields import setting
from mvrec_dist.config.load import config_to_dict
from mvrec_dist.config.model import ContentEncoderConfig, ContentKind, InBatchSoftmaxConfig, ModelConfig
from mvrec_dist.data.content_store import CONTENT_SECTIONS
from mvrec_dist.data.manifest import Manifest
from mvrec_dist.features import FeatureIdentityError, build_trunk_encoder, check_identity, features_identity
from mvrec_dist.features.trunk_cache import trunk_cache_problems
from mvrec_dist.models.builders import build_recommender
from mvrec_dist.models.item_encoders.video import trunk_and_top, trunk_digest, trunk_output_shape
from mvrec_dist.models.registry import CONTENT_ENCODERS
from tests.helpers.content import TINY_R3D
from tests.models.tiny_content import TinyTokenEncoder

VIDEO = ["model.item_tower=id+content", "model.loss.name=inbatch_softmax", *TINY_R3D,
         "model.content_encoder.finetune=top", "model.content_encoder.top_blocks=2",
         "model.content_encoder.cached_trunk=true", "data.content_features=/tmp/features"]


def _manifest(shape: list[int], dtype: str, kind: str | None) -> Manifest:
    """A dataset manifest with a content section of ``kind`` (nothing on disk: the identity reads the
    manifest only); ``kind=None`` is a frames section written before manifests said ``kind``."""
    name = CONTENT_SECTIONS[kind or "frames"]
    content = {"index": f"{name}/g0001/index.npy", "shape": shape, "dtype": dtype}
    if kind is not None:
        content["kind"] = kind
    return Manifest(root="/nonexistent/ds", data={
        "fingerprint": "f" * 64, name: content, "files": {content["index"]: {"sha256": "a" * 64}},
        "splits": {name: {"samples": 0, "shards": []}}, "counts": {"items": 3}})


def test_a_video_identity_is_the_one_stores_have_always_recorded():
    """Same keys and values as before content kinds existed, so stores on disk keep matching (and their
    fingerprints, the sha256 of this dict, stay the same)."""
    cfg = load_config(TrainJobConfig, None, VIDEO)
    enc = build_trunk_encoder(cfg)
    manifest = _manifest([2, 32, 32, 3], "uint8", kind=None)  # written before the manifest said "kind"
    before = {
        "dataset_fingerprint": "f" * 64, "content_index_sha256": "a" * 64, "trunk_digest": trunk_digest(enc),
        "top_blocks": trunk_and_top(enc)[2], "frames": 2, "size": 32, "shape": list(trunk_output_shape(enc, 2, 32)),
        "dtype": "float16",
        "encoder": {k: v for k, v in config_to_dict(cfg.model.content_encoder).items() if k != "cached_trunk"},
    }
    assert features_identity(cfg, manifest, enc, "float16") == before


def test_check_identity_compares_every_field_but_dtype_and_the_settings():
    cfg = load_config(TrainJobConfig, None, VIDEO)
    enc = build_trunk_encoder(cfg)
    expected = features_identity(cfg, _manifest([2, 32, 32, 3], "uint8", "frames"), enc, "float32")
    check_identity(dict(expected, dtype="float16", encoder={"other": 1}), expected, where="/f")
    with pytest.raises(FeatureIdentityError, match=r"/f: .*top_blocks: store 3 vs run 2.*trunk_cache.overwrite"):
        check_identity(dict(expected, top_blocks=3), expected, where="/f")


@pytest.mark.parametrize("overrides, message", [
    (["model.content_encoder.finetune=full", "model.content_encoder.cached_trunk=false"],
     "model.content_encoder.finetune: 'full' trains every block"),
    (["model.item_tower=id", "model.content_encoder=null", "model.loss.name=full_softmax"],
     "model.content_encoder: set the encoder whose frozen part's output is cached"),
])
def test_encoders_without_a_frozen_part_are_refused(overrides, message):
    cfg = load_config(TrainJobConfig, None, VIDEO + overrides + ["data.content_features=/tmp/f"])
    assert any(p.startswith(message) for p in trunk_cache_problems(cfg))
    with pytest.raises(FeatureIdentityError, match="cached features need an encoder with a frozen part"):
        build_trunk_encoder(cfg)


# ---------------------------------------------------------------- the same mechanism for another content kind
@dataclass(frozen=True, kw_only=True)
class _CachedTokensConfig(ContentEncoderConfig):
    """Test-only: ``TinyTokenEncoder`` over 4 token ids per item, its frozen embedding mean cacheable."""

    name: Literal["cached_tokens_test"] = setting("cached_tokens_test", doc="Test only.")
    cached: bool = setting(False, doc="Read the cached embedding means.")

    @property
    def content_kind(self) -> ContentKind:
        return "tokens"

    @property
    def content_shape(self) -> tuple[int, ...]:
        return (4,)

    @property
    def cached_features(self) -> bool:
        return self.cached

    def cache_problems(self) -> list[str]:
        return []


@CONTENT_ENCODERS.register(_CachedTokensConfig)
def _cached_tokens(cfg: _CachedTokensConfig) -> TinyTokenEncoder:
    return TinyTokenEncoder()


def test_a_token_encoder_with_a_frozen_part_uses_the_same_cache_mechanism():
    base = load_config(TrainJobConfig, None, ["data.content_features=/tmp/f"])
    model = ModelConfig(item_tower="content", content_encoder=_CachedTokensConfig(cached=True),
                        loss=InBatchSoftmaxConfig())
    cfg = dataclasses.replace(base, model=model)
    assert (model.uses_cached_features, model.content_kind) == (True, "features")
    with pytest.raises(ConfigError, match="data.content_features: must name the trunk-feature store"):
        dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, content_features=None))
    enc = build_trunk_encoder(cfg)
    ident = features_identity(cfg, _manifest([4], "int32", "tokens"), enc, "float32")
    assert ident == {"dataset_fingerprint": "f" * 64, "content_index_sha256": "a" * 64,
                     "embedding_sum": float(enc.embed.weight.sum()), "content_shape": [4], "shape": [3],
                     "dtype": "float32", "encoder": {"name": "cached_tokens_test", "cached": True}}
    tower = build_recommender(model, num_items=3, item_train_counts=np.ones(4, dtype=np.int64),
                              max_seq_len=4).dense.item_tower
    assert tower.cached_features
