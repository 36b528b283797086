"""Tests of mvrec_dist.models.recommender: the unsharded step, dedup, casting, eval helpers."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mvrec_dist.config.model import (FullSoftmaxConfig, InBatchSoftmaxConfig, ModelConfig, SampledSoftmaxConfig,
                                     SASRecConfig)
from mvrec_dist.data.batch import collate_train, dummy_batch, training_windows
from mvrec_dist.models import build_recommender, collate_options
from mvrec_dist.models.recommender import ITEM_FEATURE, SequentialRecommender
from tests.models.tiny_content import TinyContentConfig

N, L, D = 30, 5, 8
COUNTS = np.r_[0, np.arange(1, N + 1)]


def _model(loss=None, **kw) -> SequentialRecommender:
    torch.manual_seed(0)
    cfg = ModelConfig(embedding_dim=D, loss=loss or InBatchSoftmaxConfig(), **kw)
    return build_recommender(cfg, num_items=N, item_train_counts=COUNTS, max_seq_len=L).eval()


def _batch(cfg_loss=None, seed: int = 0):
    rng = np.random.default_rng(seed)
    windows = [w for _ in range(6) for w in training_windows(rng.integers(1, N + 1, size=rng.integers(2, 12)), L, "all")]
    cfg = ModelConfig(embedding_dim=D, loss=cfg_loss or InBatchSoftmaxConfig())
    return collate_train(windows, np.arange(len(windows)), max_seq_len=L, num_items=N,
                         generator=torch.Generator().manual_seed(seed), **collate_options(cfg, COUNTS))


@pytest.mark.parametrize("loss", [FullSoftmaxConfig(), InBatchSoftmaxConfig(), SampledSoftmaxConfig(num_negatives=7)])
def test_forward_equals_the_step_written_out_without_dedup(loss):
    model, batch = _model(loss), _batch(loss)
    out = model(batch)
    table = model.tables.sequence.embeddings["item"].weight
    states = model.dense.user_encoder(table[batch.items[:, :-1]], batch.lengths.clamp(max=L))  # no dedup
    rows, cols = [], []
    for b, n in enumerate(batch.lengths.tolist()):
        for j in range(n - 1):
            rows.append(b)
            cols.append(j)
    rows, cols = torch.tensor(rows), torch.tensor(cols)
    expected = model.dense.loss(states[rows, cols], table[batch.unique_items], batch.inverse[rows, cols + 1], rows, batch)
    torch.testing.assert_close(out.loss_sum, expected.loss_sum, atol=1e-5, rtol=1e-5)
    assert out.num_targets.item() == int((batch.lengths - 1).sum()) == len(rows)
    assert out.num_sequences.item() == batch.items.shape[0]


def test_sparse_inputs_and_lookup():
    model = _model()
    ids = torch.tensor([0, 5, 3, 5])
    kjt = model.sparse_inputs(SimpleNamespace(unique_items=ids))["sequence"]
    assert kjt.keys() == [ITEM_FEATURE] and kjt.lengths().tolist() == [4]  # one bag: a row per id, in order
    torch.testing.assert_close(model.lookup(ids), model.tables.sequence.embeddings["item"].weight[ids], atol=0, rtol=0)


def test_user_states_take_the_last_valid_position():
    model = _model()
    seq = torch.randn(3, L, D)
    lengths = torch.tensor([5, 2, 1])
    full = model.dense.user_encoder(seq, lengths)
    torch.testing.assert_close(model.dense.user_states(seq, lengths), full[torch.arange(3), lengths - 1])


def test_bf16_dense_tower_casts_inputs_and_keeps_the_loss_fp32():
    model, batch = _model(), _batch()
    ref = model(batch)
    model.dense.to(torch.bfloat16)
    out = model(batch)  # fp32 embeddings from the table, bf16 dense tower
    assert out.loss_sum.dtype == torch.float32
    assert out.loss_sum.item() == pytest.approx(ref.loss_sum.item(), rel=2e-2)
    seq = torch.randn(2, L, D)
    assert model.dense.user_states(seq, torch.tensor([3, 5])).dtype == torch.bfloat16


@pytest.mark.parametrize("loss", [FullSoftmaxConfig(), InBatchSoftmaxConfig(), SampledSoftmaxConfig(num_negatives=3)])
def test_dummy_batch_gives_zero_loss_and_zero_gradients(loss):
    model = _model(loss).train()
    batch = dummy_batch(L, num_items=N, all_items=isinstance(loss, FullSoftmaxConfig))
    out = model(batch)
    assert out.loss_sum.item() == 0.0 and out.num_targets.item() == 0 and out.num_sequences.item() == 0
    out.loss_sum.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and (p.grad == 0).all(), name


def test_training_step_updates_only_looked_up_rows():
    model, batch = _model().train(), _batch()
    out = model(batch)
    (out.loss_sum / out.num_targets).backward()
    grad = model.tables.sequence.embeddings["item"].weight.grad
    touched = (grad != 0).any(dim=1).nonzero().flatten()
    assert set(touched.tolist()) <= set(batch.unique_items.tolist()) - {0}


def test_content_only_tower_trains_end_to_end():
    torch.manual_seed(0)
    cfg = ModelConfig(embedding_dim=D, item_tower="content", content_encoder=TinyContentConfig(),
                      loss=InBatchSoftmaxConfig(), user_encoder=SASRecConfig(dropout=0.0, attention_dropout=0.0))
    model = build_recommender(cfg, num_items=N, item_train_counts=COUNTS, max_seq_len=L)
    assert model.tables is None and model.lookup(torch.tensor([1])) is None
    batch = _batch()
    frames = torch.randn(N + 1, 2, 3, generator=torch.Generator().manual_seed(1))
    batch.content = frames[batch.unique_items]  # U,F,3
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(3):
        out = model(batch)
        losses.append(out.loss_sum.item() / out.num_targets.item())
        opt.zero_grad()
        (out.loss_sum / out.num_targets).backward()
        opt.step()
    assert losses[2] < losses[1] < losses[0], losses
    batch.content = None
    with pytest.raises(ValueError, match="needs item content"):
        model(batch)


# ---------------------------------------------------------------- video content: each unique item encoded once
def _video_cfg(encoder, item_tower: str) -> ModelConfig:
    return ModelConfig(embedding_dim=D, item_tower=item_tower, content_encoder=encoder, loss=InBatchSoftmaxConfig(),
                       user_encoder=SASRecConfig(dropout=0.0, attention_dropout=0.0))


@pytest.mark.parametrize("item_tower", ["content", "id+content"])
@pytest.mark.parametrize("encoder", ["videomae-top", "frame_cnn-frozen"])
def test_dedup_gives_the_same_loss_as_encoding_every_occurrence(encoder, item_tower):
    """Every position of the batch encoded on its own gives the loss of one encoding per unique item.

    Exact for encoders whose output for an item does not depend on the rest of the batch in training
    mode: LayerNorm (VideoMAE) and frozen BatchNorm (eval statistics). A BatchNorm that trains
    normalises with the batch's statistics, so there dedup changes what each item is normalised
    with (repeats weigh an item more), which is the deduped batch's statistic by design.
    """
    from mvrec_dist.config.content import FrameCNNConfig, VideoMAEConfig

    enc = (VideoMAEConfig(embed_dim=16, depth=3, num_heads=2, mlp_dim=24, patch=8, tubelet=2, frames=2, size=16,
                          finetune="top", top_blocks=2) if encoder.startswith("videomae")
           else FrameCNNConfig(widths=(4, 8), layers=(1, 1), stem_width=4, frames=2, size=16, finetune="frozen"))
    torch.manual_seed(0)
    model = build_recommender(_video_cfg(enc, item_tower), num_items=N, item_train_counts=COUNTS, max_seq_len=L)
    model.train()
    rng = np.random.default_rng(3)
    frames = torch.from_numpy(rng.integers(0, 256, (N + 1, 2, 16, 16, 3), dtype=np.uint8))
    has = torch.from_numpy(rng.random(N + 1) < 0.8)
    has[0] = False
    batch = _batch()
    assert (batch.lengths < L + 1).any() and batch.unique_items.numel() < batch.items.numel()
    batch.content_mask = has[batch.unique_items]
    batch.content = frames[batch.unique_items[batch.content_mask]]  # U_c,F,S,S,3
    out = model(batch)

    positions = batch.items.reshape(-1)  # every occurrence, padding included
    id_emb = model.lookup(positions)
    reps = model.dense.item_representations(id_emb, frames[positions[has[positions]]], has[positions])  # P,D
    per_slot = torch.zeros(batch.unique_items.numel(), D).index_copy(0, batch.inverse.reshape(-1), reps)
    torch.testing.assert_close(reps, per_slot[batch.inverse.reshape(-1)], atol=1e-6, rtol=1e-6)
    no_dedup = model.dense.task(per_slot, batch)
    torch.testing.assert_close(no_dedup.loss_sum, out.loss_sum, atol=1e-5, rtol=1e-6)
    assert int(batch.content_mask.sum()) < int(has[positions].sum())  # dedup encoded fewer rows


def test_cached_trunk_model_takes_trunk_features_and_matches_the_live_model():
    from mvrec_dist.config.content import R3D18Config
    from mvrec_dist.models.item_encoders.video import trunk_and_top, trunk_features

    enc = R3D18Config(widths=(4, 8, 8, 8), layers=(1, 1, 1, 1), stem_width=4, frames=2, size=16, finetune="top",
                      top_blocks=2)
    torch.manual_seed(0)
    live = build_recommender(_video_cfg(enc, "id+content"), num_items=N, item_train_counts=COUNTS, max_seq_len=L)
    torch.manual_seed(0)
    cached = build_recommender(_video_cfg(dataclasses.replace(enc, cached_trunk=True), "id+content"), num_items=N,
                               item_train_counts=COUNTS, max_seq_len=L)
    assert cached.dense.item_tower.cached_features and not live.dense.item_tower.cached_features
    assert trunk_and_top(cached.dense.item_tower.content_encoder)[2] == 2  # the head is the top 2 blocks
    frames = torch.from_numpy(np.random.default_rng(4).integers(0, 256, (N + 1, 2, 16, 16, 3), dtype=np.uint8))
    batch = _batch()
    batch.content_mask = batch.unique_items > 0
    batch.content = frames[batch.unique_items[1:]]
    live_loss = live.train()(batch).loss_sum
    batch.content = trunk_features(cached.dense.item_tower.content_encoder, batch.content)
    cached_loss = cached.train()(batch).loss_sum
    torch.testing.assert_close(cached_loss, live_loss, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- title text: every user encoder, every tower
@pytest.mark.parametrize("user_encoder", ["sasrec", "gru4rec", "nextitnet"])
@pytest.mark.parametrize("item_tower, fusion", [("content", "sum"), ("id+content", "sum"), ("id+content", "concat")])
def test_text_towers_train_with_every_user_encoder(user_encoder, item_tower, fusion):
    """Text and ID+Text over a tiny random BERT: a cached frozen encoder under the full softmax gives the
    loss of the live encoder's features, and only the head, projection, IDs and user encoder get gradients."""
    from mvrec_dist.config.content import TextEncoderConfig
    from mvrec_dist.config.load import build_config
    from mvrec_dist.config.model import UserEncoderConfig
    from mvrec_dist.models.item_encoders.base import cached_features

    text = TextEncoderConfig(pretrained=None, hidden_size=8, num_layers=2, num_heads=2, intermediate_size=16,
                             max_positions=16, max_tokens=6, finetune="frozen", adapter_hidden=4)
    enc = build_config(UserEncoderConfig, {"name": user_encoder})
    models = []
    for cached in (False, True):
        torch.manual_seed(0)
        cfg = ModelConfig(embedding_dim=D, item_tower=item_tower, fusion=fusion, user_encoder=enc,
                          content_encoder=dataclasses.replace(text, cached_trunk=cached),
                          loss=FullSoftmaxConfig() if cached else InBatchSoftmaxConfig())
        models.append(build_recommender(cfg, num_items=N, item_train_counts=COUNTS, max_seq_len=L))
    live, cached = models
    ids = torch.from_numpy(np.random.default_rng(5).integers(1000, 2000, (N + 1, 6), dtype=np.int32))
    ids[:, 0], ids[:, 4], ids[:, 5] = 101, 102, 0  # [CLS] 3 words [SEP] [PAD]
    batch = _batch(FullSoftmaxConfig())
    batch.content_mask = batch.unique_items > 0
    batch.content = ids[batch.unique_items[1:]]
    tower = live.dense.item_tower
    features = cached_features(tower.content_encoder, batch.content)  # U_c,H
    expect = live.dense.item_representations(live.lookup(batch.unique_items), batch.content, batch.content_mask)
    got = cached.dense.item_representations(cached.lookup(batch.unique_items), features, batch.content_mask)
    torch.testing.assert_close(got, expect, atol=1e-6, rtol=1e-6)
    batch.content = features
    out = cached.train()(batch)
    assert torch.isfinite(out.loss_sum)
    out.loss_sum.backward()
    grads = {n for n, p in cached.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert not any(".bert." in n for n in grads)  # the frozen encoder never trains
    assert any("adapter" in n for n in grads) and any("projection" in n for n in grads)
    assert any("user_encoder" in n for n in grads)
    assert any(n.startswith("tables.") for n in grads) == (item_tower == "id+content")
