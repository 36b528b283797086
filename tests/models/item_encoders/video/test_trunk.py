"""Tests of mvrec_dist.models.item_encoders.video.trunk, and that a cached trunk gives the live tower's output."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mvrec_dist.models.item_encoders.video import trunk_and_top, trunk_digest, trunk_features, trunk_output_shape
from mvrec_dist.models.item_tower import ItemTower
from mvrec_dist.models.registry import CONTENT_ENCODERS
from tests.models.item_encoders.video.conftest import FRAMES, SIZE, TINY


def _frames(u: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    return torch.randint(0, 256, (u, FRAMES, SIZE, SIZE, 3), generator=g, dtype=torch.uint8)


def _build(cfg):
    torch.manual_seed(0)
    return CONTENT_ENCODERS.build(cfg)


@pytest.mark.parametrize("finetune", ["frozen", "top"])
def test_trunk_output_feeds_the_top_to_the_live_output(tiny_cfg, finetune):
    enc = _build(dataclasses.replace(tiny_cfg, finetune=finetune))
    trunk, top, k = trunk_and_top(enc)
    assert k == (0 if finetune == "frozen" else 2)
    frames = _frames()
    enc.eval()
    with torch.no_grad():
        live = enc(enc.prepare(frames))
        cached = top(trunk_features(enc, frames))
    torch.testing.assert_close(cached, live, atol=1e-5, rtol=1e-5)
    assert trunk_output_shape(enc, FRAMES, SIZE) == tuple(trunk_features(enc, frames).shape[1:])


def test_digest_covers_the_frozen_blocks_only():
    cfg = dataclasses.replace(TINY["r3d18"], finetune="top", top_blocks=2)
    a, b = _build(cfg), _build(cfg)
    assert trunk_digest(a) == trunk_digest(b)
    with torch.no_grad():
        b.layer4[0].conv1[0].weight.add_(1.0)  # a trainable block: the trunk is unchanged
    assert trunk_digest(a) == trunk_digest(b)
    with torch.no_grad():
        b.stem[0].weight.add_(1e-3)  # a frozen block
    assert trunk_digest(a) != trunk_digest(b)
    b2 = _build(cfg)
    b2.stem[1].running_mean.add_(0.5)  # frozen BatchNorm statistics are part of the function
    assert trunk_digest(a) != trunk_digest(b2)
    assert trunk_digest(_build(dataclasses.replace(cfg, top_blocks=3))) != trunk_digest(a)


@pytest.mark.parametrize("name", ["r3d18", "videomae"])
@pytest.mark.parametrize("mode", ["content", "id+content"])
def test_cached_trunk_tower_equals_the_live_tower_in_training_mode(name, mode):
    """Same weights, same batch: the loss-side output (and the top's gradients) agree within 1e-5."""
    cfg = dataclasses.replace(TINY[name], finetune="top", top_blocks=2)
    live_enc = _build(cfg)
    cached_enc = _build(dataclasses.replace(cfg, cached_trunk=True))
    torch.manual_seed(1)
    live = ItemTower(mode=mode, embedding_dim=8, content_encoder=live_enc)
    torch.manual_seed(1)
    cached = ItemTower(mode=mode, embedding_dim=8, content_encoder=cached_enc, cached_features=True)
    assert trunk_and_top(cached_enc)[2] == 2  # the head that runs is the top 2 blocks
    cached.load_state_dict(live.state_dict())
    live.train()
    cached.train()
    frames, mask = _frames(4), torch.tensor([False, True, True, True, True])
    emb = torch.randn(5, 8) if mode != "content" else None
    features = trunk_features(cached_enc, frames)  # what the feature store holds (float32)
    out_live = live(emb, frames, mask)
    out_cached = cached(emb, features, mask)
    torch.testing.assert_close(out_cached, out_live, atol=1e-5, rtol=1e-5)
    out_live.square().sum().backward()
    out_cached.square().sum().backward()
    for (n, p), (_, q) in zip(live.named_parameters(), cached.named_parameters()):
        if p.requires_grad:
            torch.testing.assert_close(q.grad, p.grad, atol=1e-5, rtol=1e-4, msg=n)
        else:
            assert p.grad is None and q.grad is None
    with pytest.raises(ValueError, match="float trunk features"):
        cached(emb, frames, mask)
