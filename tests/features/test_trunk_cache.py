"""The cached-trunk pass (mvrec_dist.features.trunk_cache) and cached-vs-live equality on real batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mvrec_dist.config import TrainJobConfig, load_config
from mvrec_dist.data.content_store import ContentStore
from mvrec_dist.data.loader import TrainData, load_item_train_counts
from mvrec_dist.data.manifest import load_manifest
from mvrec_dist.data.verify import verify_dataset
from mvrec_dist.features import build_trunk_encoder
from mvrec_dist.features.trunk_cache import run_trunk_cache
from mvrec_dist.models.builders import build_recommender
from mvrec_dist.models.item_encoders.video import trunk_features
from mvrec_dist.train.content import ContentSetupError, content_problems, open_content_store
from tests.helpers.content import TINY_R3D, make_video_dataset

pytestmark = pytest.mark.integration

# Stated tolerances of the cached path against the live trunk on the same batch (loss summed over targets):
# float32 features are the live activations, so only summation order differs; float16 rounds each
# activation to 11 significant bits (relative error <= 2^-11 ~ 4.9e-4 per value).
TOLERANCE = {"float32": 1e-5, "float16": 2e-3}
# Gradients of the trainable top and everything above it, as ||cached - live|| / ||live|| per tensor:
# the first top convolution's weight gradient is the (rounded) features times upstream gradients.
GRAD_TOLERANCE = {"float32": 1e-4, "float16": 2e-2}


@pytest.fixture(scope="module")
def dataset(ray_local, microlens_videos, tmp_path_factory) -> Path:
    return make_video_dataset(tmp_path_factory.mktemp("trunk-cache"), microlens_videos, users=60)


def _cfg(dataset: Path, features: Path, *extra: str) -> TrainJobConfig:
    return load_config(TrainJobConfig, None, [
        f"data.dataset_dir={dataset}", f"data.content_features={features}", "data.loader_workers=0",
        "model.item_tower=id+content", "model.embedding_dim=16", "model.loss.name=inbatch_softmax",
        "model.user_encoder.dropout=0.0", "model.user_encoder.attention_dropout=0.0", *TINY_R3D,
        "model.content_encoder.finetune=top", "model.content_encoder.top_blocks=2",
        "model.content_encoder.cached_trunk=true", "parallel.num_workers=1", "train.batch_size=24",
        "trunk_cache.progress=false", "trunk_cache.batch_size=7", "trunk_cache.concurrency=2", *extra])


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_stored_features_are_the_trunk_output_and_verify(dataset, tmp_path, dtype):
    cfg = _cfg(dataset, tmp_path / "f", f"trunk_cache.dtype={dtype}")
    result = run_trunk_cache(cfg)
    assert not result.reused and verify_dataset(str(tmp_path / "f")) == []
    features = ContentStore.from_features(str(tmp_path / "f"))
    frames = ContentStore.from_dataset(load_manifest(str(dataset)))
    assert features.items_with_content == frames.items_with_content
    ids = np.nonzero(frames.has(np.arange(frames.num_items + 1)))[0]
    expected = trunk_features(build_trunk_encoder(cfg), torch.from_numpy(frames.gather(ids))).numpy()
    got = features.gather(ids)
    assert got.dtype == np.dtype(dtype) and got.shape == expected.shape
    np.testing.assert_allclose(got.astype(np.float32), expected, rtol=TOLERANCE[dtype] / 2, atol=1e-6)
    assert result.manifest["identity"]["top_blocks"] == 2


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_cached_and_live_trunk_give_the_same_loss_on_the_same_batch(dataset, tmp_path, dtype):
    cached_cfg = _cfg(dataset, tmp_path / "f", f"trunk_cache.dtype={dtype}")
    live_cfg = _cfg(dataset, tmp_path / "f", "model.content_encoder.cached_trunk=false")
    run_trunk_cache(cached_cfg)
    manifest = load_manifest(str(dataset))
    counts = load_item_train_counts(manifest)
    outs = {}
    for name, cfg in (("live", live_cfg), ("cached", cached_cfg)):
        torch.manual_seed(cfg.train.seed)  # as run_worker does before building
        model = build_recommender(cfg.model, num_items=manifest.num_items, item_train_counts=counts,
                                  max_seq_len=cfg.data.max_seq_len, seed=cfg.train.seed)
        store = open_content_store(cfg, manifest, model.dense.item_tower.content_encoder)
        data = TrainData(cfg, manifest, rank=0, world_size=1, content_store=store)
        batch = next(data.train_batches(0))
        assert batch.content.dtype == (torch.uint8 if name == "live" else getattr(torch, dtype))
        model.train()
        out = model(batch)
        out.loss_sum.backward()
        outs[name] = (out.loss_sum.detach(), {n: p.grad.clone() for n, p in model.dense.named_parameters()
                                              if p.grad is not None}, batch.unique_items)
    (live_loss, live_grads, live_ids), (cached_loss, cached_grads, cached_ids) = outs["live"], outs["cached"]
    assert torch.equal(live_ids, cached_ids)
    torch.testing.assert_close(cached_loss, live_loss, rtol=TOLERANCE[dtype], atol=0)
    assert set(cached_grads) == set(live_grads)
    errors = {n: float((cached_grads[n] - g).norm() / g.norm().clamp(min=1e-12)) for n, g in live_grads.items()}
    worst = max(errors, key=errors.get)
    assert errors[worst] < GRAD_TOLERANCE[dtype], f"{worst}: relative gradient error {errors[worst]:.2e}"


def test_features_of_another_trunk_or_no_store_are_refused(dataset, tmp_path):
    cfg = _cfg(dataset, tmp_path / "f", "trunk_cache.dtype=float32")
    assert content_problems(cfg) and "cache_trunk_features" in content_problems(cfg)[0]  # no store yet
    run_trunk_cache(cfg)
    assert content_problems(cfg) == []
    other = _cfg(dataset, tmp_path / "f", "train.seed=7")  # a randomly initialised trunk of another seed
    manifest = load_manifest(str(dataset))
    torch.manual_seed(7)
    model = build_recommender(other.model, num_items=manifest.num_items, item_train_counts=load_item_train_counts(manifest),
                              max_seq_len=10, seed=7)
    with pytest.raises(ContentSetupError, match="trunk_digest"):
        open_content_store(other, manifest, model.dense.item_tower.content_encoder)
    wrong_frames = _cfg(dataset, tmp_path / "f", "model.content_encoder.cached_trunk=false",
                        "model.content_encoder.frames=3")
    assert "holds 2 frames of 32x32" in content_problems(wrong_frames)[0]


def test_per_frame_features_for_mmra_are_one_vector_per_decoded_frame(dataset, tmp_path):
    """The frame CNN, frozen, with frame_pool=none caches [F, C] per item (MMRA's frame input) through the
    same pass: the real videos' decoded frames and the synthetic ones, each frame its own vector; ID-only
    items have none."""
    from tests.helpers.content import TINY_FRAME_CNN

    out = tmp_path / "frames"
    cfg = load_config(TrainJobConfig, None, [
        f"data.dataset_dir={dataset}", f"data.content_features={out}", "data.loader_workers=0", "task.name=mmra",
        f"retrieval.text_features={tmp_path / 'titles'}", f"retrieval.frame_features={out}",
        f"retrieval.output_dir={tmp_path / 'neighbours'}", "model.item_tower=content", *TINY_FRAME_CNN, "model.content_encoder.finetune=frozen",
        "model.content_encoder.frame_pool=none", "model.content_encoder.cached_trunk=true",
        "parallel.num_workers=1", "trunk_cache.progress=false", "trunk_cache.batch_size=7",
        "trunk_cache.concurrency=2"])
    run_trunk_cache(cfg)
    assert verify_dataset(str(out)) == []
    features = ContentStore.from_features(str(out))
    frames = ContentStore.from_dataset(load_manifest(str(dataset)))
    assert features.shape == (2, 8) and features.items_with_content == frames.items_with_content
    ids = np.nonzero(frames.has(np.arange(frames.num_items + 1)))[0]
    expected = trunk_features(build_trunk_encoder(cfg), torch.from_numpy(frames.gather(ids))).numpy()
    got = features.gather(ids)
    assert got.dtype == np.float16  # the pass's default dtype
    np.testing.assert_allclose(got.astype(np.float32), expected, rtol=TOLERANCE["float16"] / 2, atol=1e-6)
    assert (np.abs(got[:, 0] - got[:, 1]).max(axis=1) > 0).all()  # two frames, two vectors
