"""Content towers through the real training path: 2 gloo ranks, TorchRec + DeepSpeed ZeRO-2, video content.

The dataset (tests/helpers/content.py) mixes the three real MicroLens videos, synthetic frames and
ID-only items (garbage files); every run here is ``run_worker`` on real ranks (tests/helpers/dist.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers.content import (ID_ONLY, TINY_FRAME_CNN, TINY_R3D, initial_dense, last_checkpoint,
                                   make_video_dataset, train_rank)
from tests.helpers.dist import run_ranks

pytestmark = pytest.mark.integration

BASE = ["model.embedding_dim=16", "model.user_encoder.dropout=0.0", "model.user_encoder.attention_dropout=0.0",
        "model.loss.name=inbatch_softmax", "train.batch_size=32", "train.log_every_steps=1", "train.quiet=true",
        "train.lr=0.003", "data.loader_workers=0", "data.shuffle_block=64", "parallel.zero_stage=2",
        "eval.content_batch_size=16", "trunk_cache.progress=false"]


@pytest.fixture(scope="module")
def dataset(ray_local, microlens_videos, tmp_path_factory) -> Path:
    return make_video_dataset(tmp_path_factory.mktemp("video-train"), microlens_videos)


def _overrides(dataset: Path, runs: Path, name: str, *extra: str) -> list[str]:
    return BASE + [f"data.dataset_dir={dataset}", f"train.storage_path={runs}", f"train.run_name={name}", *extra]


def test_two_ranks_zero2_tiny_video_encoder_id_plus_video(dataset, tmp_path):
    """ID+V, R3D top-2 over 2 frames of 32x32: trains, evaluates every item once, freezes what it says."""
    runs = tmp_path / "runs"
    overrides = _overrides(dataset, runs, "idv", "model.item_tower=id+content", *TINY_R3D,
                           "model.content_encoder.finetune=top", "model.content_encoder.top_blocks=2",
                           "train.epochs=2")
    out = run_ranks(train_rank, 2, overrides)
    assert out[0]["step"] == out[1]["step"] > 0
    assert out[0]["test"]["users"] == out[0]["valid"]["users"] == 200
    same = [k for k in out[0]["valid"] if "@" in k]
    assert [out[0]["valid"][k] for k in same] == [out[1]["valid"][k] for k in same]  # every rank, every item once
    assert 0 <= out[0]["test"]["ndcg@10"] <= 1
    losses = out[0]["losses"]
    assert len(losses) >= 2 and np.isfinite(losses).all()
    before, model = initial_dense(overrides)
    after = last_checkpoint(runs, "idv")
    enc = model.dense.item_tower.content_encoder
    frozen = {n for n, p in model.dense.named_parameters() if not p.requires_grad}
    top = {f"item_tower.content_encoder.{n}" for n, p in enc.named_parameters() if p.requires_grad}
    assert frozen and top and not frozen & top
    assert all(f"dense/dense.{n}" not in after for n in frozen)  # frozen blocks are not even in the optimizer
    changed = {n for n in top if not torch.equal(after[f"dense/dense.{n}"], before[n])}
    assert changed == top  # every trainable top-block parameter moved
    bn = [k for k in after if k.startswith("dense/buffers/") and "running_mean" in k and "layer4" in k]
    assert bn and any(after[k].abs().sum() > 0 for k in bn)  # trainable BatchNorm statistics were saved


def test_two_ranks_video_only_tower_with_id_only_items(dataset, tmp_path):
    """V (no ID table): items whose video was unusable train and rank through the learned no-video vector."""
    runs = tmp_path / "runs"
    # One loader worker process per rank: content is gathered in the worker (its own mmaps).
    overrides = _overrides(dataset, runs, "v", "model.item_tower=content", *TINY_FRAME_CNN,
                           "model.content_encoder.finetune=full", "train.epochs=1", "data.loader_workers=1")
    out = run_ranks(train_rank, 2, overrides)
    assert out[0]["test"]["users"] == 200 and np.isfinite(out[0]["losses"]).all()
    after = last_checkpoint(runs, "v")
    assert not any(k.startswith("sparse/") for k in after)  # no ID table at all
    assert after["dense/dense.item_tower.no_content"].abs().sum() > 0  # ID-only items' vector trained
    from mvrec_dist.data.content_store import ContentStore
    from mvrec_dist.data.manifest import load_manifest

    m = load_manifest(str(dataset))
    items = np.load(m.path("maps/items.npy"))
    assert not ContentStore.from_dataset(m).has(np.searchsorted(items[1:], ID_ONLY) + 1).any()


def test_cached_trunk_training_uses_the_feature_store_and_refuses_another_trunk(dataset, tmp_path):
    from mvrec_dist.config import TrainJobConfig, load_config
    from mvrec_dist.data.verify import verify_dataset
    from mvrec_dist.features.trunk_cache import run_trunk_cache

    runs, features = tmp_path / "runs", tmp_path / "features"
    common = ["model.item_tower=id+content", *TINY_R3D, "model.content_encoder.finetune=top",
              "model.content_encoder.top_blocks=2", "model.content_encoder.cached_trunk=true",
              f"data.content_features={features}", "train.epochs=1", "trunk_cache.dtype=float32",
              "trunk_cache.batch_size=8"]
    cfg = load_config(TrainJobConfig, None, _overrides(dataset, runs, "cached", *common))
    result = run_trunk_cache(cfg)
    assert not result.reused and verify_dataset(str(features)) == []
    assert run_trunk_cache(cfg).reused  # same trunk and content: nothing recomputed
    out = run_ranks(train_rank, 2, _overrides(dataset, runs, "cached", *common))
    assert out[0]["test"]["users"] == 200 and np.isfinite(out[0]["losses"]).all()
    # A different random trunk (another seed) must not train on these features.
    with pytest.raises(Exception, match="trunk_digest"):
        run_ranks(train_rank, 1, _overrides(dataset, runs, "other", *common, "train.seed=7"))
