"""Tests of mvrec_dist.models.item_tower (the content path uses a tiny test-only encoder)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mvrec_dist.models.item_encoders import cached_features
from mvrec_dist.models.item_tower import ItemTower
from mvrec_dist.models.registry import CONTENT_ENCODERS
from tests.models.tiny_content import TinyContentConfig, TinyTokenEncoder

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


# ---------------------------------------------------------------- the content-encoder protocol
TOKENS = torch.tensor([[3, 4, 0, 0], [5, 0, 0, 0], [6, 7, 8, 9]], dtype=torch.int32)  # U=3,T=4; 0 = pad


def test_the_tower_prepares_content_with_the_encoder_and_keeps_integer_input():
    enc = TinyTokenEncoder()
    tower = ItemTower(mode="content", embedding_dim=D, content_encoder=enc)
    out = tower(None, TOKENS)
    pooled = torch.stack([enc.embed.weight[[3, 4]].mean(0), enc.embed.weight[5], enc.embed.weight[6:10].mean(0)])
    expected = tower.projection(enc.head(pooled))
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)
    assert enc.prepared == 1


@pytest.mark.parametrize("mode", ["content", "id+content"])
def test_cached_features_of_any_encoder_give_the_live_output(mode):
    live_enc, cached_enc = TinyTokenEncoder(), TinyTokenEncoder()
    torch.manual_seed(1)
    live = ItemTower(mode=mode, embedding_dim=D, content_encoder=live_enc)
    torch.manual_seed(1)
    cached = ItemTower(mode=mode, embedding_dim=D, content_encoder=cached_enc, cached_features=True)
    cached.load_state_dict(live.state_dict())
    mask, emb = torch.tensor([False, True, True, True]), (torch.randn(4, D) if mode != "content" else None)
    features = cached_features(cached_enc, TOKENS)  # what a feature store would hold
    assert features.dtype == torch.float32 and features.shape == (3, 3)
    torch.testing.assert_close(cached(emb, features, mask), live(emb, TOKENS, mask), atol=1e-6, rtol=1e-6)
    assert cached_enc.prepared == 1  # by cached_features only: the cached tower runs the head alone
    with pytest.raises(ValueError, match="float trunk features"):
        cached(emb, TOKENS, mask)


def test_the_protocol_is_checked_when_the_tower_is_built():
    linear = nn.Linear(2, 2)
    linear.out_dim = 2  # has out_dim, but no prepare: not a content encoder
    with pytest.raises(ValueError, match="must be a ContentEncoder"):
        ItemTower(mode="content", embedding_dim=D, content_encoder=linear)
    with pytest.raises(ValueError, match="TinyContentEncoder has no frozen part whose output could be cached"):
        ItemTower(mode="content", embedding_dim=D, content_encoder=CONTENT_ENCODERS.build(TinyContentConfig()),
                  cached_features=True)
    with pytest.raises(ValueError, match="cached_features needs a content encoder"):
        ItemTower(mode="id", embedding_dim=D, cached_features=True)


# ---------------------------------------------------------------- falling back to content (cold items)
def _fallback_tower(fusion: str = "sum", **kw) -> tuple[ItemTower, nn.Module]:
    enc = CONTENT_ENCODERS.build(TinyContentConfig(out_dim=5))
    return ItemTower(mode="id+content", embedding_dim=D, content_encoder=enc, fusion=fusion, **kw), enc


@pytest.mark.parametrize("fusion", ["sum", "concat"])
def test_content_only_items_are_represented_by_their_content_alone(fusion):
    # ids 0..5 in slot order; ids 2, 3 and 4 never trained; id 3 has no content, so it keeps its ID row
    unseen = torch.tensor([False, False, True, True, True, False, False, False])  # N+1 = 8
    tower, _ = _fallback_tower(fusion, content_only_items=unseen)
    ids = torch.tensor([0, 1, 2, 3, 4, 5])
    full, emb = _content(), torch.randn(6, D)
    content = full[MASK]
    out = tower(emb, content, MASK, ids)
    plain = ItemTower(mode="id+content", embedding_dim=D, content_encoder=tower.content_encoder, fusion=fusion)
    plain.load_state_dict(tower.state_dict())
    zeroed = emb.clone()
    zeroed[[2, 4]] = 0.0  # the unseen items that have content (slots 2 and 4 of MASK)
    torch.testing.assert_close(out, plain(zeroed, content, MASK), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out[[0, 1, 3, 5]], plain(emb, content, MASK)[[0, 1, 3, 5]], atol=1e-6, rtol=1e-6)
    if fusion == "sum":  # content alone: the projection of the feature, nothing of the ID row
        feature = tower.content_encoder.linear(full[[2, 4]].mean(1))
        expected = feature @ tower.projection.weight.T + tower.projection.bias
        torch.testing.assert_close(out[[2, 4]], expected, atol=1e-6, rtol=1e-6)
    emb.requires_grad_(True)
    tower(emb, content, MASK, ids).sum().backward()
    assert emb.grad[[2, 4]].abs().sum() == 0 and emb.grad[[0, 1, 3, 5]].abs().min() > 0
    tower.eval()  # the same in evaluation: it is the items' representation, not a regulariser
    torch.testing.assert_close(tower(emb.detach(), content, MASK, ids), out.detach(), atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="needs the ids of the 6 items"):
        tower(emb, content, MASK)
    assert "content_only_items" not in tower.state_dict()  # derived from the train split, not state


def test_id_dropout_drops_about_its_share_in_training_only():
    p, u = 0.3, 4000
    tower, enc = _fallback_tower(id_dropout=p)
    content = torch.randn(u, 2, 3, generator=torch.Generator().manual_seed(1))
    emb = torch.randn(u, D, generator=torch.Generator().manual_seed(2))
    mask = torch.arange(u) % 4 != 0  # every 4th item has no content and must keep its ID row
    projected = tower.projection(enc.linear(content[mask].mean(1)))  # U_c,D
    torch.manual_seed(0)
    out = tower(emb, content[mask], mask)
    dropped = torch.zeros(u, dtype=torch.bool)
    dropped[mask] = torch.isclose(out[mask], projected, atol=1e-6).all(1)
    kept = torch.isclose(out[mask], emb[mask] + projected, atol=1e-6).all(1)
    assert bool((dropped[mask] ^ kept).all())  # every row is exactly one of the two
    share = float(dropped[mask].float().mean())
    assert abs(share - p) < 0.03, share  # 3000 Bernoulli(0.3) draws: std 0.008
    assert not dropped[~mask].any()
    torch.testing.assert_close(out[~mask], emb[~mask])
    torch.manual_seed(0)
    torch.testing.assert_close(tower(emb, content[mask], mask), out)  # seeded: the same draw
    tower.eval()
    torch.testing.assert_close(tower(emb, content[mask], mask)[mask], emb[mask] + projected, atol=1e-6, rtol=1e-6)


def test_fallback_settings_need_an_id_plus_content_tower():
    enc = CONTENT_ENCODERS.build(TinyContentConfig(out_dim=5))
    with pytest.raises(ValueError, match="need mode 'id\\+content'"):
        ItemTower(mode="content", embedding_dim=D, content_encoder=enc, id_dropout=0.1)
    with pytest.raises(ValueError, match="need mode 'id\\+content'"):
        ItemTower(mode="id", embedding_dim=D, content_only_items=torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="id_dropout must be in"):
        _fallback_tower(id_dropout=1.0)
    with pytest.raises(ValueError, match="bool \\[N\\+1\\]"):
        _fallback_tower(content_only_items=torch.zeros(3))
