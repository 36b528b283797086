"""Video-encoder config variants: defaults are the real sizes, checks name their keys, YAML selects by name."""

from __future__ import annotations

import pytest

from mvrec_dist.config.content import FrameCNNConfig, R2Plus1D18Config, R3D18Config, VideoMAEConfig
from mvrec_dist.config.fields import ConfigError
from mvrec_dist.config.jobs import TrainJobConfig
from mvrec_dist.config.load import build_config, load_config


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
