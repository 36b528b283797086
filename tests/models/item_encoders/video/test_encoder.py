"""The video-encoder interface on every family at tiny size: shapes, dtypes, prepare, blocks, split."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import mvrec_dist.models.item_encoders  # noqa: F401  (registers the builders)
from mvrec_dist.config.content import FrameCNNConfig, R2Plus1D18Config, R3D18Config, VideoMAEConfig
from mvrec_dist.models.registry import CONTENT_ENCODERS

from .conftest import FRAMES, SIZE, TINY


def _build(cfg, **changes):
    torch.manual_seed(0)
    return CONTENT_ENCODERS.build(dataclasses.replace(cfg, **changes))


def _frames(u: int = 3, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (u, FRAMES, SIZE, SIZE, 3), dtype=torch.uint8, generator=g)


def test_every_family_is_registered():
    assert {R3D18Config, R2Plus1D18Config, FrameCNNConfig, VideoMAEConfig} <= set(CONTENT_ENCODERS.variants())


def test_forward_shapes_and_dtypes(tiny_cfg):
    enc = _build(tiny_cfg, finetune="full")
    x = enc.prepare(_frames(u=3))
    assert x.dtype == torch.float32 and x.shape == (3, FRAMES, 3, SIZE, SIZE)
    y = enc(x)
    assert y.shape == (3, enc.out_dim) and y.dtype == torch.float32
    assert enc.out_dim == (tiny_cfg.embed_dim if isinstance(tiny_cfg, VideoMAEConfig) else tiny_cfg.widths[-1])
    assert torch.isfinite(y).all()
    y.sum().backward()  # one gradient step's worth: every parameter gets a gradient in 'full' mode
    assert all(p.grad is not None for p in enc.parameters())


def test_items_are_encoded_independently_in_eval(tiny_cfg):
    enc = _build(tiny_cfg).eval()
    x = enc.prepare(_frames(u=4))
    torch.testing.assert_close(enc(x)[1:3], enc(x[1:3]), rtol=1e-5, atol=1e-6)


def test_prepare_normalises_with_the_checkpoint_constants(tiny_cfg):
    enc = _build(tiny_cfg)
    frames = _frames(u=2)
    x = enc.prepare(frames)
    mean = enc.pixel_mean.flatten().tolist()
    std = enc.pixel_std.flatten().tolist()
    u, f, i, j, c = 1, 2, 5, 7, 2
    want = (frames[u, f, i, j, c].item() / 255 - mean[c]) / std[c]
    assert x[u, f, c, i, j].item() == pytest.approx(want, rel=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        enc.prepare(frames.float())
    with pytest.raises(ValueError, match=r"\[U, F, 3, S, S\]"):
        enc(torch.zeros(2, FRAMES, SIZE, SIZE, 3))


def test_blocks_own_every_parameter_once(tiny_cfg):
    enc = _build(tiny_cfg)
    in_blocks = [id(p) for b in enc.blocks() for p in b.parameters()]
    assert len(in_blocks) == len(set(in_blocks))
    assert set(in_blocks) == {id(p) for p in enc.parameters()}
    assert len(enc.blocks()) == tiny_cfg.num_blocks


@pytest.mark.parametrize("training", [False, True])
def test_split_top_of_trunk_equals_forward(tiny_cfg, training):
    enc = _build(tiny_cfg, finetune="full")
    enc.train(training)
    x = enc.prepare(_frames(u=3))
    for k in range(len(enc.blocks()) + 1):
        trunk, top = enc.split(k)
        feature = trunk(x)
        assert feature.shape[0] == 3  # a per-item feature, storable by item
        torch.testing.assert_close(top(feature), enc(x), rtol=0, atol=0)
    trunk, top = enc.split(0)
    assert len(top) == 0 and trunk(x).shape == (3, enc.out_dim)  # frozen mode caches the final feature
    with pytest.raises(ValueError, match="top_blocks"):
        enc.split(len(enc.blocks()) + 1)


def test_split_shares_parameters_with_the_encoder(tiny_cfg):
    enc = _build(tiny_cfg)
    trunk, top = enc.split(2)
    ids = {id(p) for p in enc.parameters()}
    assert {id(p) for p in top.parameters()} == {id(p) for b in enc.blocks()[-2:] for p in b.parameters()}
    assert {id(p) for p in trunk.parameters()} | {id(p) for p in top.parameters()} == ids


def test_videomae_rejects_frames_it_was_not_built_for():
    enc = _build(TINY["videomae"])
    with pytest.raises(ValueError, match="configured frames and size"):
        enc(torch.zeros(1, FRAMES + 2, 3, SIZE, SIZE))
