"""FLOPs per item: counter totals against hand-derived counts, trunk/top split, training-step counts."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

import mvrec_dist.models.item_encoders  # noqa: F401  (registers the builders)
from mvrec_dist.models.item_encoders.video import encoder_flops, train_step_flops
from mvrec_dist.models.registry import CONTENT_ENCODERS

from .conftest import FRAMES, SIZE, TINY


def _conv_flops_by_hooks(enc, x) -> int:
    """2 * output elements * (input channels / groups) * kernel volume, summed over every convolution."""
    total = 0

    def hook(m, inp, out):
        nonlocal total
        total += 2 * out.numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size)

    handles = [m.register_forward_hook(hook) for m in enc.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]
    with torch.no_grad():
        enc(x)
    for h in handles:
        h.remove()
    return total


@pytest.mark.parametrize("name", ["r3d18", "r2plus1d18", "frame_cnn"])
def test_cnn_flops_are_the_convolutions(name):
    torch.manual_seed(0)
    enc = CONTENT_ENCODERS.build(TINY[name]).eval()
    f = encoder_flops(enc, frames=FRAMES, size=SIZE)
    assert f.total == _conv_flops_by_hooks(enc, torch.zeros(1, FRAMES, 3, SIZE, SIZE))
    assert f.top == 0  # split(0): all in the trunk
    g = encoder_flops(enc, frames=FRAMES, size=SIZE, top_blocks=2)
    assert g.total == f.total and 0 < g.top < g.total


def test_videomae_flops_by_formula():
    cfg = TINY["videomae"]
    torch.manual_seed(0)
    enc = CONTENT_ENCODERS.build(cfg)
    n = (cfg.frames // cfg.tubelet) * (cfg.size // cfg.patch) ** 2
    d, m = cfg.embed_dim, cfg.mlp_dim
    patch = 2 * n * d * 3 * cfg.tubelet * cfg.patch ** 2
    layer = 2 * n * d * 3 * d + 2 * 2 * n * n * d + 2 * n * d * d + 2 * 2 * n * d * m  # qkv, QK^T and AV, proj, MLP
    f = encoder_flops(enc, frames=cfg.frames, size=cfg.size, top_blocks=1)
    assert (f.trunk, f.top) == (patch + (cfg.depth - 1) * layer, layer)


@pytest.mark.parametrize("name", ["r3d18", "videomae"])
def test_training_step_flops_per_mode(name):
    cfg = TINY[name]
    torch.manual_seed(0)
    enc = CONTENT_ENCODERS.build(dataclasses.replace(cfg, finetune="full"))
    fwd = encoder_flops(enc, frames=FRAMES, size=SIZE, top_blocks=2)
    full = train_step_flops(enc, frames=FRAMES, size=SIZE)
    # Backward costs about two forwards per layer (input and weight gradients), none for the input
    # of the first layer, and 2.5 for attention (torch's formula recomputes the scores).
    assert 2 * fwd.total < full < 4 * fwd.total
    enc = CONTENT_ENCODERS.build(dataclasses.replace(cfg, finetune="top", top_blocks=2))
    live = train_step_flops(enc, frames=FRAMES, size=SIZE)
    cached = train_step_flops(enc, frames=FRAMES, size=SIZE, cached_trunk=True)
    assert live == fwd.trunk + cached  # the cache removes exactly the trunk's forward
    assert 2 * fwd.top < cached < 4 * fwd.top
    enc = CONTENT_ENCODERS.build(dataclasses.replace(cfg, finetune="frozen"))
    assert train_step_flops(enc, frames=FRAMES, size=SIZE, cached_trunk=True) == 0
    assert train_step_flops(enc, frames=FRAMES, size=SIZE) == fwd.total


def test_counting_leaves_the_encoder_unchanged():
    torch.manual_seed(0)
    enc = CONTENT_ENCODERS.build(dataclasses.replace(TINY["frame_cnn"], finetune="full")).train()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    train_step_flops(enc, frames=FRAMES, size=SIZE)
    encoder_flops(enc, frames=FRAMES, size=SIZE)
    assert enc.training and all(p.grad is None for p in enc.parameters())
    assert all(torch.equal(v, before[k]) for k, v in enc.state_dict().items())  # BN statistics untouched
