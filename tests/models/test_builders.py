"""Tests of mvrec_dist.models.builders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mvrec_dist.config.model import (FullSoftmaxConfig, GRU4RecConfig, InBatchSoftmaxConfig, ModelConfig,
                                     NextItNetConfig, SampledSoftmaxConfig, SASRecConfig)
from mvrec_dist.data.batch import negative_sampling_probs
from mvrec_dist.models import (GRU4Rec, InBatchSoftmaxLoss, NextItNet, SampledSoftmaxLoss, SASRec,
                               build_recommender, collate_options)
from mvrec_dist.models.tables import init_rows_
from mvrec_dist.models.losses import FullSoftmaxLoss
from tests.models.tiny_content import TinyContentConfig

COUNTS = np.r_[0, np.arange(1, 2001)]


@pytest.mark.parametrize("encoder, encoder_cls", [(SASRecConfig(), SASRec), (GRU4RecConfig(), GRU4Rec),
                                                  (NextItNetConfig(), NextItNet)])
@pytest.mark.parametrize("loss, loss_cls", [(FullSoftmaxConfig(), FullSoftmaxLoss),
                                            (InBatchSoftmaxConfig(), InBatchSoftmaxLoss),
                                            (SampledSoftmaxConfig(), SampledSoftmaxLoss)])
def test_builds_each_variant(encoder, encoder_cls, loss, loss_cls):
    cfg = ModelConfig(embedding_dim=16, user_encoder=encoder, loss=loss)
    model = build_recommender(cfg, num_items=2000, item_train_counts=COUNTS, max_seq_len=10)
    assert isinstance(model.dense.user_encoder, encoder_cls) and isinstance(model.dense.loss, loss_cls)
    (table,) = model.tables.sequence.embedding_configs()
    assert (table.name, table.feature_names, table.num_embeddings, table.embedding_dim) == ("item", ["item_id"], 2001, 16)


def test_id_rows_are_normal_with_zero_padding_row_and_seeded():
    cfg = ModelConfig(embedding_dim=32, init_std=0.05)
    torch.manual_seed(3)
    weight = build_recommender(cfg, num_items=2000, item_train_counts=COUNTS, max_seq_len=10).tables.sequence.embeddings["item"].weight
    assert (weight[0] == 0).all()
    assert weight[1:].std().item() == pytest.approx(0.05, rel=0.02)  # 64,000 draws
    assert abs(weight[1:].mean().item()) < 0.002
    torch.manual_seed(3)
    again = build_recommender(cfg, num_items=2000, item_train_counts=COUNTS, max_seq_len=10)
    torch.testing.assert_close(again.tables.sequence.embeddings["item"].weight, weight, atol=0, rtol=0)


def test_init_on_a_shard_leaves_its_first_row_random():
    shard = init_rows_(torch.empty(10, 4), std=1.0, num_rows=100, seed=0)
    assert (shard[0] != 0).all()


def test_meta_device_builds_the_table_on_meta_and_dense_on_cpu():
    model = build_recommender(ModelConfig(), num_items=2000, item_train_counts=COUNTS, max_seq_len=10, device="meta")
    assert model.tables.sequence.embeddings["item"].weight.device.type == "meta"
    assert all(p.device.type == "cpu" for p in model.dense.parameters())


def test_content_tower_has_no_id_table():
    cfg = ModelConfig(item_tower="content", content_encoder=TinyContentConfig(), loss=InBatchSoftmaxConfig())
    model = build_recommender(cfg, num_items=2000, item_train_counts=COUNTS, max_seq_len=10)
    assert model.tables is None and model.dense.item_tower.projection.in_features == 5


def test_bad_arguments_fail_clearly():
    with pytest.raises(ValueError, match=r"shape \[N\+1\] = \[2001\]"):
        build_recommender(ModelConfig(), num_items=2000, item_train_counts=COUNTS[:-1], max_seq_len=10)
    with pytest.raises(ValueError, match="integer array"):
        build_recommender(ModelConfig(), num_items=2000, item_train_counts=COUNTS.astype(float), max_seq_len=10)
    with pytest.raises(ValueError, match="num_items"):
        build_recommender(ModelConfig(), num_items=0, item_train_counts=COUNTS[:1], max_seq_len=10)
    with pytest.raises(ValueError, match="max_seq_len"):
        build_recommender(ModelConfig(), num_items=2000, item_train_counts=COUNTS, max_seq_len=0)


def test_collate_options_follow_the_loss():
    assert collate_options(ModelConfig(loss=FullSoftmaxConfig()), COUNTS) == \
        {"all_items": True, "negatives": 0, "sampler_probs": None}
    assert collate_options(ModelConfig(loss=InBatchSoftmaxConfig()), COUNTS) == \
        {"all_items": False, "negatives": 0, "sampler_probs": None}
    opts = collate_options(ModelConfig(loss=SampledSoftmaxConfig(num_negatives=9, sampler="popularity")), COUNTS)
    assert opts["negatives"] == 9 and not opts["all_items"]
    np.testing.assert_array_equal(opts["sampler_probs"], negative_sampling_probs("popularity", COUNTS))


def test_dense_init_does_not_depend_on_where_the_table_is_built():
    from mvrec_dist.models.embedding_init import init_table_block

    cfg = ModelConfig()
    torch.manual_seed(5)
    on_cpu = build_recommender(cfg, num_items=2000, item_train_counts=COUNTS, max_seq_len=10, seed=9)
    torch.manual_seed(5)
    on_meta = build_recommender(cfg, num_items=2000, item_train_counts=COUNTS, max_seq_len=10, seed=9, device="meta")
    for (name, a), (_, b) in zip(on_cpu.dense.named_parameters(), on_meta.dense.named_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    table = on_cpu.tables.sequence.embeddings["item"].weight.detach()
    expected = init_table_block(row_start=0, row_end=2001, col_start=0, col_end=cfg.embedding_dim,
                                dim=cfg.embedding_dim, std=cfg.init_std, seed=9)
    torch.testing.assert_close(table, expected, rtol=0, atol=0)


def test_cold_items_content_marks_the_items_without_train_interactions():
    counts = COUNTS.copy()
    counts[[5, 17, 1999]] = 0
    cfg = ModelConfig(item_tower="id+content", content_encoder=TinyContentConfig(), cold_items="content",
                      id_dropout=0.2, loss=InBatchSoftmaxConfig())
    tower = build_recommender(cfg, num_items=2000, item_train_counts=counts, max_seq_len=10).dense.item_tower
    expected = torch.from_numpy(counts == 0)
    expected[0] = False  # the padding id is never content-only
    assert torch.equal(tower.content_only_items, expected) and tower.id_dropout == 0.2
    plain = build_recommender(ModelConfig(item_tower="id+content", content_encoder=TinyContentConfig(),
                                          loss=InBatchSoftmaxConfig()),
                              num_items=2000, item_train_counts=counts, max_seq_len=10).dense.item_tower
    assert plain.content_only_items is None and plain.id_dropout == 0.0


@pytest.mark.parametrize("kw", [{"id_dropout": 0.1}, {"cold_items": "content"}])
def test_content_fallback_settings_are_refused_without_both_towers(kw):
    with pytest.raises(ValueError, match="needs item_tower 'id\\+content', got 'id'"):
        ModelConfig(**kw)
    with pytest.raises(ValueError, match="needs item_tower 'id\\+content', got 'content'"):
        ModelConfig(item_tower="content", content_encoder=TinyContentConfig(), loss=InBatchSoftmaxConfig(), **kw)
    with pytest.raises(ValueError, match="id_dropout"):
        ModelConfig(item_tower="id+content", content_encoder=TinyContentConfig(), loss=InBatchSoftmaxConfig(),
                    id_dropout=-0.1)
