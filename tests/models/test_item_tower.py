"""Tests of mvrec_dist.models.item_tower (the content path uses a tiny test-only encoder)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mvrec_dist.models.item_tower import ItemTower
from mvrec_dist.models.registry import CONTENT_ENCODERS
from tests.models.tiny_content import TinyContentConfig

D = 4


def _content(u: int = 6) -> torch.Tensor:
    return torch.randn(u, 2, 3, generator=torch.Generator().manual_seed(0))  # U,F,3


def test_id_mode_passes_id_embeddings_through():
    tower = ItemTower(mode="id", embedding_dim=D)
    emb = torch.randn(6, D)
    assert tower(emb, None) is emb
    assert list(tower.parameters()) == []


def test_content_mode_projects_the_encoder_output():
    enc = CONTENT_ENCODERS.build(TinyContentConfig(out_dim=5))
    tower = ItemTower(mode="content", embedding_dim=D, content_encoder=enc)
    content = _content()
    feature = enc.linear(content.mean(1))
    expected = feature @ tower.projection.weight.T + tower.projection.bias
    torch.testing.assert_close(tower(None, content), expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("fusion", ["sum", "concat"])
def test_id_plus_content_fusion(fusion):
    enc = CONTENT_ENCODERS.build(TinyContentConfig(out_dim=5))
    tower = ItemTower(mode="id+content", embedding_dim=D, content_encoder=enc, fusion=fusion)
    content, emb = _content(), torch.randn(6, D)
    feature = enc.linear(content.mean(1))
    w, b = tower.projection.weight, tower.projection.bias
    if fusion == "sum":
        assert w.shape == (D, 5)
        expected = emb + feature @ w.T + b
    else:
        assert w.shape == (D, D + 5)
        expected = torch.cat([emb, feature], 1) @ w.T + b
    torch.testing.assert_close(tower(emb, content), expected, atol=1e-6, rtol=1e-6)
    out = tower(emb, content)
    out.sum().backward()
    assert enc.linear.weight.grad is not None and w.grad is not None


def test_bad_construction_and_inputs_fail_clearly():
    enc = CONTENT_ENCODERS.build(TinyContentConfig())
    with pytest.raises(ValueError, match="needs a content encoder"):
        ItemTower(mode="content", embedding_dim=D)
    with pytest.raises(ValueError, match="takes no content encoder"):
        ItemTower(mode="id", embedding_dim=D, content_encoder=enc)
    with pytest.raises(ValueError, match="out_dim"):
        ItemTower(mode="content", embedding_dim=D, content_encoder=nn.Linear(2, 2))
    with pytest.raises(ValueError, match="mode"):
        ItemTower(mode="video", embedding_dim=D)
    tower = ItemTower(mode="id+content", embedding_dim=D, content_encoder=enc)
    with pytest.raises(ValueError, match="needs item content"):
        tower(torch.zeros(6, D), None)
    with pytest.raises(ValueError, match="needs ID embeddings"):
        tower(None, _content())
    with pytest.raises(ValueError, match="5 ID embeddings but content for 6"):
        tower(torch.zeros(5, D), _content())
