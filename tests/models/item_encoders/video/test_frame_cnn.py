"""Per-frame 2D CNN: temporal pooling, size against torchvision's resnet18, checkpoint round trip."""

from __future__ import annotations

import dataclasses

import torch

import mvrec_dist.models.item_encoders  # noqa: F401  (registers the builders)
from mvrec_dist.config.content import FrameCNNConfig
from mvrec_dist.models.item_encoders.video import FrameCNN, load_public_checkpoint, torchvision_resnet_key_map
from mvrec_dist.models.registry import CONTENT_ENCODERS

from .conftest import FRAMES, SIZE, TINY

_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def torchvision_resnet_keys(layers, *, stem_width: int, widths, batches_tracked: bool = True) -> list[str]:
    """Every state-dict key of torchvision's 2D ResNet with basic blocks (``torchvision/models/resnet.py``)."""
    bn = _BN if batches_tracked else _BN[:4]
    keys = ["conv1.weight"] + [f"bn1.{x}" for x in bn]
    inplanes = stem_width
    for i, (n, planes) in enumerate(zip(layers, widths), start=1):
        for j in range(n):
            b = f"layer{i}.{j}"
            keys += [f"{b}.conv1.weight"] + [f"{b}.bn1.{x}" for x in bn]
            keys += [f"{b}.conv2.weight"] + [f"{b}.bn2.{x}" for x in bn]
            if j == 0 and (i > 1 or inplanes != planes):
                keys += [f"{b}.downsample.0.weight"] + [f"{b}.downsample.1.{x}" for x in bn]
        inplanes = planes
    return keys + ["fc.weight", "fc.bias"]


def test_full_size_matches_torchvision_resnet18():
    # torchvision's ResNet18_Weights list 11,689,512 parameters, including the 512 -> 1000 classifier.
    cfg = FrameCNNConfig()
    with torch.device("meta"):
        enc = FrameCNN(widths=cfg.widths, layers=cfg.layers, stem_width=cfg.stem_width)
    assert sum(p.numel() for p in enc.parameters()) == 11_689_512 - (512 * 1000 + 1000)


def test_features_are_the_mean_over_frames():
    torch.manual_seed(0)
    enc = CONTENT_ENCODERS.build(TINY["frame_cnn"]).eval()
    x = torch.randn(2, FRAMES, 3, SIZE, SIZE)
    per_frame = torch.stack([enc(x[:, f:f + 1]) for f in range(FRAMES)], dim=1)  # U,F,C: one frame at a time
    torch.testing.assert_close(enc(x), per_frame.mean(dim=1), rtol=1e-5, atol=1e-6)


def _public_state(cfg, enc_state, *, batches_tracked: bool, seed: int = 7) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    public = {}
    for k in torchvision_resnet_keys(cfg.layers, stem_width=cfg.stem_width, widths=cfg.widths,
                                     batches_tracked=batches_tracked):
        ours = "stem." + k if k.split(".")[0] in ("conv1", "bn1") else k
        if k == "fc.weight":
            public[k] = torch.randn(1000, cfg.widths[-1], generator=g)
        elif k == "fc.bias":
            public[k] = torch.randn(1000, generator=g)
        elif k.endswith("num_batches_tracked"):
            public[k] = torch.randint(0, 1000, (), generator=g)
        else:
            public[k] = torch.rand(enc_state[ours].shape, generator=g) + 0.1
    return public


def test_torchvision_checkpoint_round_trip(tmp_path):
    cfg = TINY["frame_cnn"]
    torch.manual_seed(0)
    shapes = CONTENT_ENCODERS.build(cfg).state_dict()
    public = _public_state(cfg, shapes, batches_tracked=True)
    path = tmp_path / "resnet18.pth"
    torch.save(public, path)
    torch.manual_seed(1)
    enc = CONTENT_ENCODERS.build(dataclasses.replace(cfg, checkpoint=str(path)))
    for k, v in enc.state_dict().items():
        theirs = k[len("stem."):] if k.startswith("stem.") else k
        assert torch.equal(v, public[theirs]), k
    assert len(enc.state_dict()) == len(public) - 2  # all but fc.weight, fc.bias


def test_old_checkpoint_without_num_batches_tracked(tmp_path):
    # resnet18-5c106cde.pth predates BatchNorm's num_batches_tracked: those buffers keep their value.
    cfg = TINY["frame_cnn"]
    torch.manual_seed(0)
    enc = CONTENT_ENCODERS.build(dataclasses.replace(cfg, finetune="full"))
    public = _public_state(cfg, enc.state_dict(), batches_tracked=False)
    torch.save(public, tmp_path / "old.pth")
    report = load_public_checkpoint(enc, tmp_path / "old.pth", torchvision_resnet_key_map(enc))
    assert report.kept and all(k.endswith("num_batches_tracked") for k in report.kept)
    assert set(report.ignored) == {"fc.weight", "fc.bias"}
    assert len(report.loaded) + len(report.kept) == len(enc.state_dict())


def test_per_frame_output_is_the_spatial_mean_of_each_frame_and_averages_to_the_pooled_output():
    torch.manual_seed(0)
    mean = FrameCNN(widths=(4, 8), layers=(1, 1), stem_width=4).eval()
    per_frame = FrameCNN(widths=(4, 8), layers=(1, 1), stem_width=4, frame_pool="none").eval()
    per_frame.load_state_dict(mean.state_dict())
    frames = torch.randint(0, 256, (3, 4, 32, 32, 3), dtype=torch.uint8)
    with torch.no_grad():
        pooled, each = mean(mean.prepare(frames)), per_frame(per_frame.prepare(frames))
    assert each.shape == (3, 4, 8) and pooled.shape == (3, 8)
    torch.testing.assert_close(each.mean(dim=1), pooled, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(each[:, 0], each[:, 1])  # frames differ, so their vectors do


def test_per_frame_pooling_is_cached_whole_and_only_for_mmra():
    import pytest

    from mvrec_dist.config import TrainJobConfig, load_config
    from mvrec_dist.config.fields import ConfigError

    top = FrameCNNConfig(frame_pool="none", finetune="top")
    assert any("frame_pool" in p for p in top.cache_problems())
    assert FrameCNNConfig(frame_pool="none", finetune="frozen").cache_problems() == []
    # The stores cached before the setting existed keep their identity; per-frame stores get another.
    assert "frame_pool" not in FrameCNNConfig().cache_identity()["encoder"]
    assert FrameCNNConfig(frame_pool="none").cache_identity()["encoder"]["frame_pool"] == "none"
    with pytest.raises(ConfigError, match="frame_pool"):
        load_config(TrainJobConfig, None, ["data.dataset_dir=x", "model.item_tower=id+content",
                                           "model.loss.name=inbatch_softmax", "model.content_encoder.name=frame_cnn",
                                           "model.content_encoder.frame_pool=none"])
