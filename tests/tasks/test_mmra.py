"""The MMRA task's batch and baselines (``tasks/mmra.py``) on hand-made feature stores and neighbours."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mvrec_dist.data.content_store import ContentStore
from mvrec_dist.tasks.mmra import ItemInputs
from tests.retrieval.conftest import feature_store, item_dataset

N, K, F, CT, CV = 12, 4, 3, 5, 2


@pytest.fixture
def inputs(tmp_path) -> ItemInputs:
    ds = item_dataset(tmp_path / "ds", N)
    rng = np.random.default_rng(0)
    text = feature_store(tmp_path / "text", ds, {i: rng.normal(size=CT).astype(np.float32) for i in range(1, N + 1)})
    frames = feature_store(tmp_path / "frames", ds,
                           {i: rng.normal(size=(F + 1, CV)).astype(np.float32) for i in range(1, N + 1)})
    ids = np.zeros((N + 1, K), dtype=np.int64)
    sims = np.zeros((N + 1, K), dtype=np.float32)
    counts = np.zeros(N + 1, dtype=np.int64)
    for i in range(1, N + 1):
        c = 2 if i == 5 else K  # item 5 has only two neighbours
        ids[i, :c] = [(i + j) % N + 1 for j in range(c)]
        sims[i, :c] = np.linspace(0.9, 0.5, c)
        counts[i] = c
    labels = np.log2(np.arange(N + 1, dtype=np.float64) + 1).astype(np.float32)
    labels[0] = np.nan
    return ItemInputs(text_store=ContentStore.from_features(text), frame_store=ContentStore.from_features(frames),
                      neighbour_ids=ids, neighbour_sims=sims, neighbour_counts=counts, labels=labels, frames=F,
                      retrieved=3)


def test_batch_holds_each_item_and_its_first_r_neighbours(inputs):
    items = np.array([5, 2, 2])  # a repeated item and one with fewer neighbours than R
    b = inputs.batch(items, cursor=7)
    text, frames = inputs.text_store, inputs.frame_store
    assert b.cursor == 7 and b.items.tolist() == [5, 2, 2]
    np.testing.assert_array_equal(b.text.numpy(), text.gather(items))
    np.testing.assert_array_equal(b.frames.numpy(), frames.gather(items)[:, :F])  # the first F of the store's frames
    assert b.neighbour_mask.tolist() == [[True, True, False], [True, True, True], [True, True, True]]
    for row, item in enumerate(items):
        for slot in range(3):
            nb = inputs.ids[item, slot]
            if b.neighbour_mask[row, slot]:
                np.testing.assert_array_equal(b.neighbour_text[row, slot].numpy(), text.gather(np.array([nb]))[0])
                np.testing.assert_array_equal(b.neighbour_frames[row, slot].numpy(), frames.gather(np.array([nb]))[0, :F])
                assert b.neighbour_labels[row, slot] == pytest.approx(np.log2(nb + 1))
            else:  # empty slots are zeros, masked out of the model's softmax
                assert not b.neighbour_text[row, slot].any() and not b.neighbour_frames[row, slot].any()
                assert b.neighbour_labels[row, slot] == 0
    assert b.labels.tolist() == pytest.approx(np.log2(items + 1).tolist())


def test_empty_batch_has_the_shapes_of_a_full_one(inputs):
    b = inputs.batch(np.zeros(0, dtype=np.int64), None)
    assert b.frames.shape == (0, F, CV) and b.text.shape == (0, CT)
    assert b.neighbour_frames.shape == (0, 3, F, CV) and b.neighbour_text.shape == (0, 3, CT)
    assert b.similarities.shape == b.neighbour_labels.shape == b.neighbour_mask.shape == (0, 3)
    assert b.to(torch.device("cpu")).items.numel() == 0


def test_baselines_are_the_train_mean_and_the_softmax_weighted_neighbour_labels(inputs):
    from types import SimpleNamespace

    from mvrec_dist.config import TrainJobConfig, load_config
    from mvrec_dist.tasks.mmra import MMRATask

    cfg = load_config(TrainJobConfig, None, ["task.name=mmra", "retrieval.text_features=t", "retrieval.frame_features=f",
                                             "retrieval.output_dir=o", "task.eval_batch=2"])
    splits = {"train": np.array([1, 2, 3, 4, 6, 7, 8]), "valid": np.array([9, 10]), "test": np.array([5, 11, 12])}
    data = SimpleNamespace(splits=splits, labels=inputs.labels, inputs=inputs)
    out = MMRATask(cfg).baselines(None, data, "test")
    labels = inputs.labels[splits["test"]].astype(np.float64)
    mean = np.mean(inputs.labels[splits["train"]])
    assert out["train_mean"]["mae"] == pytest.approx(np.mean(np.abs(labels - mean)), abs=1e-6)
    expected = []
    for item in splits["test"]:
        c = min(int(inputs.mask[item].sum()), 3)
        w = np.exp(inputs.sims[item, :c].astype(np.float64))
        expected.append(float((w / w.sum() * inputs.labels[inputs.ids[item, :c]]).sum()))
    assert out["retrieval"]["mae"] == pytest.approx(np.mean(np.abs(np.array(expected) - labels)), abs=1e-6)
    assert out["retrieval"]["items"] == 3 and out["retrieval"]["batches"] == 2


def test_items_without_frames_read_zeros_when_asked_and_are_counted(tmp_path):
    """task.missing_frames=zeros: an item absent from the frame store (no video) reads all-zero frames, as
    item and as neighbour; the others read their own; ``without_frames`` counts the absent."""
    ds = item_dataset(tmp_path / "ds", N)
    rng = np.random.default_rng(1)
    text = feature_store(tmp_path / "text", ds, {i: rng.normal(size=CT).astype(np.float32) for i in range(1, N + 1)})
    with_video = {2, 3, 7}
    frames = feature_store(tmp_path / "frames", ds, {i: rng.normal(size=(F, CV)).astype(np.float32) for i in with_video})
    ids = np.zeros((N + 1, K), dtype=np.int64)
    ids[1:, 0], ids[1:, 1] = 3, 4
    sims, counts = np.full((N + 1, K), 0.5, np.float32), np.full(N + 1, 2, np.int64)
    labels = np.ones(N + 1, np.float32)
    store = ContentStore.from_features(frames)
    common = dict(text_store=ContentStore.from_features(text), frame_store=store, neighbour_ids=ids,
                  neighbour_sims=sims, neighbour_counts=counts, labels=labels, frames=F, retrieved=2)
    with pytest.raises(Exception, match="no content"):
        ItemInputs(**common).batch(np.array([1, 2]), None)  # the default: nothing read as zeros unasked
    inputs = ItemInputs(**common, zero_missing_frames=True)
    b = inputs.batch(np.array([1, 2, 7]), None)
    assert not b.frames[0].any()
    np.testing.assert_array_equal(b.frames[1:].numpy(), store.gather(np.array([2, 7])))
    np.testing.assert_array_equal(b.neighbour_frames[:, 0].numpy(), np.repeat(store.gather(np.array([3])), 3, 0))
    assert not b.neighbour_frames[:, 1].any()  # neighbour 4 has no video
    assert inputs.without_frames(np.arange(1, N + 1)) == N - len(with_video)
