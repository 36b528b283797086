"""Title-text item towers through the real training path: 2 gloo ranks, TorchRec + DeepSpeed ZeRO-2.

A random-weight BERT of the all-MiniLM-L6-v2 architecture, tiny (``TINY_TEXT``), over title token ids
that ingestion wrote with the real tokenizer (tests/helpers/content.py ``make_text_dataset``: one
item has no title and one a blank title, so both stay without text).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mvrec_dist.data.pretrained_text import PretrainedTextError, model_dir
from tests.helpers.content import (BLANK_TITLE, NO_TITLE, TINY_TEXT, initial_dense, last_checkpoint,
                                   make_text_dataset, train_rank)
from tests.helpers.dist import run_ranks

pytestmark = pytest.mark.integration

try:
    model_dir("all-minilm-l6-v2")
except PretrainedTextError as exc:  # the tokenizer wrote the ids: without its package there is no dataset
    pytest.skip(f"title tokens need the tokenizer's package: {exc}", allow_module_level=True)

BASE = ["model.embedding_dim=16", "model.user_encoder.dropout=0.0", "model.user_encoder.attention_dropout=0.0",
        "train.batch_size=32", "train.log_every_steps=1", "train.quiet=true", "train.lr=0.003",
        "data.loader_workers=0", "data.shuffle_block=64", "parallel.zero_stage=2", "eval.content_batch_size=16",
        "trunk_cache.progress=false", *TINY_TEXT]


@pytest.fixture(scope="module")
def dataset(ray_local, tmp_path_factory) -> Path:
    return make_text_dataset(tmp_path_factory.mktemp("text-train"))


def _overrides(dataset: Path, runs: Path, name: str, *extra: str) -> list[str]:
    return BASE + [f"data.dataset_dir={dataset}", f"train.storage_path={runs}", f"train.run_name={name}", *extra]


def test_two_ranks_id_plus_text_top_layer_live(dataset, tmp_path):
    """ID+Text, the top BERT layer fine-tuned live with the in-batch softmax: only that layer moves.
    With the content fallback on (ID dropout, never-trained items by their text alone): the item ids
    reach the item tower in the sharded training step and in the ranks' split of evaluation."""
    runs = tmp_path / "runs"
    overrides = _overrides(dataset, runs, "idt", "model.item_tower=id+content", "model.loss.name=inbatch_softmax",
                           "model.content_encoder.finetune=top", "model.content_encoder.top_blocks=1",
                           "model.id_dropout=0.2", "model.cold_items=content", "train.epochs=2")
    out = run_ranks(train_rank, 2, overrides)
    assert out[0]["step"] == out[1]["step"] > 0
    assert out[0]["test"]["users"] == out[0]["valid"]["users"] == 200
    same = [k for k in out[0]["valid"] if "@" in k]
    assert [out[0]["valid"][k] for k in same] == [out[1]["valid"][k] for k in same]
    assert len(out[0]["losses"]) >= 2 and np.isfinite(out[0]["losses"]).all()
    before, model = initial_dense(overrides)
    after = last_checkpoint(runs, "idt")
    enc = model.dense.item_tower.content_encoder
    frozen = {n for n, p in model.dense.named_parameters() if not p.requires_grad}
    top = {f"item_tower.content_encoder.{n}" for n, p in enc.named_parameters() if p.requires_grad}
    assert frozen and top and not frozen & top
    assert all(".bert.layers.1." in n for n in top)  # the top one of the two layers, nothing else of BERT
    assert all(f"dense/dense.{n}" not in after for n in frozen)  # frozen layers are not in the optimizer
    assert {n for n in top if not torch.equal(after[f"dense/dense.{n}"], before[n])} == top


def test_two_ranks_text_only_on_cached_features_with_the_full_softmax(dataset, tmp_path):
    """Text only, frozen BERT cached by the Ray Data pass, full softmax: items without a title rank
    through the learned no-text vector, and a store of another encoder is refused."""
    from mvrec_dist.config import TrainJobConfig, load_config
    from mvrec_dist.data.content_store import ContentStore
    from mvrec_dist.data.manifest import load_manifest
    from mvrec_dist.data.verify import verify_dataset
    from mvrec_dist.features.trunk_cache import run_trunk_cache

    runs, features = tmp_path / "runs", tmp_path / "features"
    common = ["model.item_tower=content", "model.loss.name=full_softmax", "model.content_encoder.finetune=frozen",
              "model.content_encoder.cached_trunk=true", "model.content_encoder.adapter_hidden=8",
              f"data.content_features={features}", "train.epochs=1", "trunk_cache.dtype=float32",
              "trunk_cache.batch_size=8"]
    cfg = load_config(TrainJobConfig, None, _overrides(dataset, runs, "t", *common))
    assert not run_trunk_cache(cfg).reused and verify_dataset(str(features)) == []
    store = ContentStore.from_features(str(features))
    m = load_manifest(str(dataset))
    items = np.load(m.path("maps/items.npy"))
    without = np.searchsorted(items[1:], [NO_TITLE, BLANK_TITLE]) + 1
    assert store.shape == (16,) and store.items_with_content == 58 and not store.has(without).any()
    out = run_ranks(train_rank, 2, _overrides(dataset, runs, "t", *common))
    assert out[0]["test"]["users"] == 200 and np.isfinite(out[0]["losses"]).all()
    after = last_checkpoint(runs, "t")
    assert not any(k.startswith("sparse/") for k in after)  # no ID table
    assert after["dense/dense.item_tower.no_content"].abs().sum() > 0  # the no-title vector trained
    assert not any("content_encoder.bert." in k for k in after if k.startswith("dense/dense."))  # frozen BERT
    with pytest.raises(Exception, match="trunk_digest"):  # another random BERT (seed) must not use these features
        run_ranks(train_rank, 1, _overrides(dataset, runs, "other", *common, "train.seed=7"))
