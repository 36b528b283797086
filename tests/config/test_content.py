"""Content-encoder config variants: defaults are the real sizes, checks name their keys, YAML selects by
name, and every variant answers what it reads and whether its features are cached."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from mvrec_dist.config.content import FrameCNNConfig, R2Plus1D18Config, R3D18Config, VideoMAEConfig
from mvrec_dist.config.fields import ConfigError, setting
from mvrec_dist.config.jobs import TrainJobConfig
from mvrec_dist.config.load import build_config, load_config
from mvrec_dist.config.model import (ContentEncoderConfig, ContentKind, FullSoftmaxConfig, InBatchSoftmaxConfig,
                                     ModelConfig)


def test_defaults_are_the_public_models():
    r3d = R3D18Config()
    assert (r3d.widths, r3d.layers, r3d.stem_width, r3d.num_blocks) == ((64, 128, 256, 512), (2, 2, 2, 2), 64, 5)
    assert R2Plus1D18Config().stem_mid_width == 45
    mae = VideoMAEConfig()
    assert (mae.embed_dim, mae.depth, mae.num_heads, mae.mlp_dim, mae.patch, mae.tubelet) == (768, 12, 12, 3072, 16, 2)
    assert mae.num_blocks == 13
    for cfg in (r3d, mae, FrameCNNConfig()):
        assert (cfg.finetune, cfg.top_blocks, cfg.frames, cfg.size, cfg.checkpoint, cfg.cached_trunk) == (
            "top", 2, 5, 224, None, False)


def _problems(cls, **kw) -> list[str]:
    with pytest.raises(ConfigError) as e:
        cls(**kw)
    return e.value.problems


def test_checks_name_their_keys():
    assert _problems(R3D18Config, top_blocks=6) == [
        "top_blocks: must be in [1, 5] (this encoder has 5 blocks), got 6"]
    assert _problems(R3D18Config, finetune="full", cached_trunk=True)[0].startswith("cached_trunk: needs finetune")
    problems = _problems(FrameCNNConfig, widths=(8, 16), layers=(1,), frames=0)
    assert [p.split(":")[0] for p in problems] == ["frames", "layers"]
    problems = _problems(VideoMAEConfig, embed_dim=20, num_heads=3, patch=10, tubelet=6, checkpoint=" ")
    assert sorted(p.split(":")[0] for p in problems) == ["checkpoint", "num_heads", "patch", "tubelet"]
    assert _problems(VideoMAEConfig, depth=3, top_blocks=5) == [
        "top_blocks: must be in [1, 4] (this encoder has 4 blocks), got 5"]


def test_top_blocks_only_matters_in_top_mode():
    assert R3D18Config(finetune="frozen", top_blocks=99, cached_trunk=True).top_blocks == 99
    assert R3D18Config(finetune="full", top_blocks=0).finetune == "full"


def test_yaml_selects_a_variant_by_name(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text(
        "model:\n  item_tower: content\n  loss: {name: inbatch_softmax}\n"
        "  content_encoder:\n    name: r2plus1d18\n    finetune: top\n    top_blocks: 3\n    widths: [8, 8]\n"
        "    layers: [1, 1]\n    checkpoint: /weights/r2plus1d_18-91a641e6.pth\n")
    cfg = load_config(TrainJobConfig, preset, ["model.content_encoder.frames=8"])
    enc = cfg.model.content_encoder
    assert isinstance(enc, R2Plus1D18Config)
    assert (enc.top_blocks, enc.widths, enc.frames, enc.checkpoint) == (3, (8, 8), 8, "/weights/r2plus1d_18-91a641e6.pth")


def test_build_config_reports_variant_problems_with_their_keys():
    with pytest.raises(ConfigError, match=r"patch: must divide size 224, got 15"):
        build_config(VideoMAEConfig, {"patch": 15})


# ---------------------------------------------------------------- what any content encoder answers
def test_video_encoders_read_frames_of_their_frames_and_size():
    for cls in (R3D18Config, R2Plus1D18Config, FrameCNNConfig, VideoMAEConfig):
        cfg = cls(frames=3, size=32, patch=16) if cls is VideoMAEConfig else cls(frames=3, size=32)
        assert (cfg.content_kind, cfg.content_shape, cfg.cached_features) == ("frames", (3, 32, 32, 3), False)
        assert cls(frames=3, size=32, finetune="frozen", cached_trunk=True, **(
            {"patch": 16} if cls is VideoMAEConfig else {})).cached_features


def test_video_cache_problems_and_identity():
    assert R3D18Config(finetune="top").cache_problems() == [] == R3D18Config(finetune="frozen").cache_problems()
    assert R3D18Config(finetune="full").cache_problems()[0].startswith("finetune: 'full' trains every block")
    ident = R3D18Config(frames=2, size=16, cached_trunk=True).cache_identity()
    # The keys feature stores have always recorded; the caching switch is no part of the identity.
    assert (ident["frames"], ident["size"], set(ident)) == (2, 16, {"frames", "size", "encoder"})
    assert "cached_trunk" not in ident["encoder"] and ident["encoder"]["name"] == "r3d18"
    assert ident == R3D18Config(frames=2, size=16, cached_trunk=False).cache_identity()


@dataclass(frozen=True, kw_only=True)
class _TokensConfig(ContentEncoderConfig):
    """A content encoder that says only what every variant must: its kind."""

    name: Literal["tokens_test"] = setting("tokens_test", doc="Test only.")
    max_tokens: int = setting(8, doc="T.")

    @property
    def content_kind(self) -> ContentKind:
        return "tokens"


def test_the_base_defaults_describe_an_encoder_without_a_cache():
    cfg = _TokensConfig()
    assert (cfg.content_kind, cfg.content_shape, cfg.cached_features) == ("tokens", None, False)
    assert cfg.cache_problems() == ["name: 'tokens_test' has no frozen part whose output could be cached"]
    assert cfg.cache_identity() == {"content_shape": None, "encoder": {"name": "tokens_test", "max_tokens": 8}}
    with pytest.raises(NotImplementedError, match="must say which content kind"):
        ContentEncoderConfig().content_kind  # noqa: B018


@pytest.mark.parametrize("tower, cached, expected", [
    ("id", False, (True, False, False, None)),
    ("content", False, (False, True, False, "frames")),
    ("id+content", False, (True, True, False, "frames")),
    ("content", True, (False, True, True, "features")),
    ("id+content", True, (True, True, True, "features")),
])
def test_model_properties_replace_the_mode_strings(tower, cached, expected):
    enc = None if tower == "id" else R3D18Config(finetune="frozen", cached_trunk=cached)
    loss = FullSoftmaxConfig() if tower == "id" else InBatchSoftmaxConfig()
    m = ModelConfig(item_tower=tower, content_encoder=enc, loss=loss)
    assert (m.uses_id_table, m.uses_content, m.uses_cached_features, m.content_kind) == expected


TRAIN_PRESETS = sorted(p for p in (Path(__file__).resolve().parents[2] / "jobs" / "configs").rglob("*.yaml")
                       if not p.name.startswith("ingest"))


@pytest.mark.parametrize("path", TRAIN_PRESETS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_presets_mean_what_the_mode_strings_and_cached_trunk_meant(path):
    m = load_config(TrainJobConfig, path).model
    assert m.uses_id_table == (m.item_tower != "content")
    assert m.uses_content == (m.item_tower != "id")
    assert m.uses_cached_features == (m.item_tower != "id" and getattr(m.content_encoder, "cached_trunk", False))
