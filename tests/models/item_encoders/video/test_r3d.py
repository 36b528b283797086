"""R3D-18 / R(2+1)D-18: sizes against torchvision's published counts, torchvision checkpoint round trip."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import mvrec_dist.models.item_encoders  # noqa: F401  (registers the builders)
from mvrec_dist.config.content import R2Plus1D18Config, R3D18Config
from mvrec_dist.models.item_encoders.video import VideoResNet
from mvrec_dist.models.registry import CONTENT_ENCODERS

from .conftest import TINY

_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def torchvision_video_resnet_keys(layers, *, r2plus1d: bool, stem_width: int, widths) -> list[str]:
    """Every state-dict key of torchvision's VideoResNet (``torchvision/models/video/resnet.py``)."""
    keys = []
    for conv, bn in ([(0, 1), (3, 4)] if r2plus1d else [(0, 1)]):
        keys += [f"stem.{conv}.weight"] + [f"stem.{bn}.{x}" for x in _BN]
    inplanes = stem_width
    for i, (n, planes) in enumerate(zip(layers, widths), start=1):
        for j in range(n):
            b = f"layer{i}.{j}"
            for c in ("conv1", "conv2"):
                if r2plus1d:  # Conv2Plus1D = Sequential(Conv3d, BatchNorm3d, ReLU, Conv3d)
                    keys += [f"{b}.{c}.0.0.weight"] + [f"{b}.{c}.0.1.{x}" for x in _BN] + [f"{b}.{c}.0.3.weight"]
                else:
                    keys += [f"{b}.{c}.0.weight"]
                keys += [f"{b}.{c}.1.{x}" for x in _BN]
            if j == 0 and (i > 1 or inplanes != planes):
                keys += [f"{b}.downsample.0.weight"] + [f"{b}.downsample.1.{x}" for x in _BN]
        inplanes = planes
    return keys + ["fc.weight", "fc.bias"]


@pytest.mark.parametrize("conv,params", [("3d", 33_371_472), ("2plus1d", 31_505_325)])
def test_full_size_matches_torchvision(conv, params):
    # torchvision's R3D_18_Weights / R2Plus1D_18_Weights list 33,371,472 / 31,505,325 parameters,
    # including the 512 -> 400 classifier (205,200) that the encoder leaves to the item tower.
    with torch.device("meta"):
        cfg = R3D18Config()
        enc = VideoResNet(conv=conv, widths=cfg.widths, layers=cfg.layers, stem_width=cfg.stem_width)
    assert sum(p.numel() for p in enc.parameters()) == params - (512 * 400 + 400)
    assert enc.out_dim == 512
    assert set(enc.state_dict()) == set(torchvision_video_resnet_keys(
        cfg.layers, r2plus1d=conv == "2plus1d", stem_width=64, widths=cfg.widths)) - {"fc.weight", "fc.bias"}


@pytest.mark.parametrize("name", ["r3d18", "r2plus1d18"])
def test_torchvision_checkpoint_round_trip(tmp_path, name):
    cfg = TINY[name]
    keys = torchvision_video_resnet_keys(cfg.layers, r2plus1d=name == "r2plus1d18", stem_width=cfg.stem_width,
                                         widths=cfg.widths)
    torch.manual_seed(0)
    shapes = {k: v.shape for k, v in CONTENT_ENCODERS.build(cfg).state_dict().items()}
    g = torch.Generator().manual_seed(7)
    public = {}
    for k in keys:
        if k == "fc.weight":
            public[k] = torch.randn(400, cfg.widths[-1], generator=g)
        elif k == "fc.bias":
            public[k] = torch.randn(400, generator=g)
        elif k.endswith("num_batches_tracked"):
            public[k] = torch.randint(0, 1000, (), generator=g)
        elif k.endswith("running_var"):
            public[k] = torch.rand(shapes[k], generator=g) + 0.5
        else:
            public[k] = torch.randn(shapes[k], generator=g)
    path = tmp_path / f"{name}.pth"
    torch.save(public, path)
    torch.manual_seed(1)  # a different random init, so a tensor not loaded would show
    enc = CONTENT_ENCODERS.build(dataclasses.replace(cfg, checkpoint=str(path)))
    state = enc.state_dict()
    assert set(state) == set(keys) - {"fc.weight", "fc.bias"}
    for k, v in state.items():
        assert torch.equal(v, public[k]), k
    assert enc.frozen_blocks == len(enc.blocks()) - 2  # the config's mode is applied after loading
