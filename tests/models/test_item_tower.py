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


# ---------------------------------------------------------------- items without content (mask)
MASK = torch.tensor([False, True, True, False, True, False])  # U=6; slot 0 is the padding id


@pytest.mark.parametrize("mode, fusion", [("content", "sum"), ("id+content", "sum"), ("id+content", "concat")])
def test_items_without_content_get_no_encoder_row(mode, fusion):
    enc = CONTENT_ENCODERS.build(TinyContentConfig(out_dim=5))
    tower = ItemTower(mode=mode, embedding_dim=D, content_encoder=enc, fusion=fusion)
    with torch.no_grad():
        if tower.no_content is not None:
            tower.no_content.normal_(generator=torch.Generator().manual_seed(3))
    full, emb = _content(), torch.randn(6, D)
    content = full[MASK]  # only the rows that have content: 3 of 6
    out = tower(None if mode == "content" else emb, content, MASK)
    dense = tower(None if mode == "content" else emb, full)  # every item with content, as a reference
    torch.testing.assert_close(out[MASK], dense[MASK], atol=1e-6, rtol=1e-6)
    w, b = tower.projection.weight, tower.projection.bias
    missing = ~MASK
    if mode == "content":
        expected = tower.no_content.expand(int(missing.sum()), D)
    elif fusion == "sum":
        expected = emb[missing]  # ID only, nothing added
    else:
        expected = torch.cat([emb[missing], tower.no_content.expand(int(missing.sum()), 5)], 1) @ w.T + b
    torch.testing.assert_close(out[missing], expected, atol=1e-6, rtol=1e-6)
    out.sum().backward()
    if tower.no_content is not None:
        assert tower.no_content.grad is not None and tower.no_content.grad.abs().sum() > 0


def test_no_content_vector_starts_at_zero_and_consumes_no_rng():
    enc = CONTENT_ENCODERS.build(TinyContentConfig(out_dim=5))
    torch.manual_seed(0)
    with_vector = ItemTower(mode="content", embedding_dim=D, content_encoder=enc)
    after_with = torch.rand(3)
    torch.manual_seed(0)
    without = ItemTower(mode="id+content", embedding_dim=D, content_encoder=enc, fusion="sum")
    after_without = torch.rand(3)
    assert with_vector.no_content is not None and without.no_content is None
    assert torch.equal(with_vector.no_content.detach(), torch.zeros(D))
    assert torch.equal(after_with, after_without)  # modules built after the tower start alike


def test_a_batch_where_no_item_has_content_still_runs_the_encoder():
    enc = CONTENT_ENCODERS.build(TinyContentConfig(out_dim=5))
    tower = ItemTower(mode="id+content", embedding_dim=D, content_encoder=enc)
    emb = torch.randn(2, D)
    out = tower(emb, _content(2)[:0], torch.zeros(2, dtype=torch.bool))
    torch.testing.assert_close(out, emb)
    out.sum().backward()
    # zeros, not None: every rank's dense gradients cover the same parameters (ZeRO reductions)
    assert enc.linear.weight.grad is not None and enc.linear.weight.grad.abs().sum() == 0


def test_mask_and_content_must_agree():
    enc = CONTENT_ENCODERS.build(TinyContentConfig(out_dim=5))
    tower = ItemTower(mode="id+content", embedding_dim=D, content_encoder=enc)
    with pytest.raises(ValueError, match="content for 6 items but the mask marks 3"):
        tower(torch.zeros(6, D), _content(), MASK)
    with pytest.raises(ValueError, match="5 ID embeddings but a content mask of 6"):
        tower(torch.zeros(5, D), _content()[MASK], MASK)
