"""The item-popularity task's pieces: the item split, the resumable stream, the batch and the loss."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mvrec_dist.config import TrainJobConfig, load_config
from mvrec_dist.tasks.item_popularity import (ItemBatch, ItemPopularityData, ItemRegressionTower, item_split,
                                              popularity_labels)

N = 103


def _data(rank, world, overrides=()):
    cfg = load_config(TrainJobConfig, None, ["task.name=item_popularity", "train.batch_size=12",
                                             f"parallel.num_workers={world}", *overrides])
    counts = np.arange(N + 1, dtype=np.int64) % 7
    counts[0] = 0
    return ItemPopularityData(cfg, SimpleNamespace(num_items=N), rank=rank, world_size=world,
                              item_train_counts=counts)


@pytest.mark.parametrize("n, seed", [(3, 0), (10, 1), (103, 2), (1000, 3)])
def test_the_item_split_partitions_items_and_is_fixed_by_its_seed(n, seed):
    split = item_split(n, valid_fraction=0.1, test_fraction=0.1, seed=seed)
    every = np.concatenate([split["train"], split["valid"], split["test"]])
    assert sorted(every.tolist()) == list(range(1, n + 1))
    assert len(split["valid"]) == max(1, round(0.1 * n)) and len(split["test"]) == max(1, round(0.1 * n))
    again = item_split(n, valid_fraction=0.1, test_fraction=0.1, seed=seed)
    assert all(np.array_equal(split[k], again[k]) for k in split)


def test_labels_are_log2_of_one_plus_the_count():
    assert popularity_labels(np.array([0, 1, 3, 7])).tolist() == [0.0, 1.0, 2.0, 3.0]


def _epoch_items(datas, epoch, stop_after=None):
    """Items each step trains on (all ranks), as the loop drives the streams in lock step."""
    streams = [d.train_batches(epoch) for d in datas]
    steps = []
    while stop_after is None or len(steps) < stop_after:
        batches = [next(s, None) for s in streams]
        if all(b is None for b in batches):
            break
        for d, b in zip(datas, batches):
            d.record(b)
        steps.append(sorted(x for b in batches if b is not None for x in b.items.tolist()))
    return steps


def test_one_epoch_trains_on_every_train_item_once_on_any_world_size():
    for world in (1, 2, 3):
        datas = [_data(r, world) for r in range(world)]
        steps = _epoch_items(datas, epoch=0)
        flat = sorted(x for s in steps for x in s)
        assert flat == datas[0].splits["train"].tolist()
        assert len(steps) == datas[0].estimated_steps_per_epoch()
    # The global batch fixes each step's items: the same steps on 1 and 2 ranks.
    assert _epoch_items([_data(0, 1)], 1) == _epoch_items([_data(r, 2) for r in range(2)], 1)


@pytest.mark.parametrize("world_before, world_after", [(2, 2), (2, 3), (3, 1)])
def test_a_resumed_stream_continues_with_exactly_the_items_not_trained_on(world_before, world_after):
    whole = _epoch_items([_data(0, 1)], epoch=2)
    before = [_data(r, world_before) for r in range(world_before)]
    done = _epoch_items(before, epoch=2, stop_after=3)
    state = before[0].state_dict()
    assert all(d.state_dict() == state for d in before) and state["steps"] == 3 and state["epoch"] == 2
    after = [_data(r, world_after) for r in range(world_after)]
    for d in after:
        d.load_state_dict(state)
    assert "3 steps into epoch 2" in after[0].describe_state()
    assert done + _epoch_items(after, epoch=2) == whole
    after[0].end_epoch()
    assert after[0].state_dict() == {"epoch": 3, "steps": 0, "global_batch": 12}


def test_a_state_of_another_global_batch_is_refused():
    state = _data(0, 1).state_dict()
    with pytest.raises(ValueError, match="train.batch_size=12, this run 24"):
        _data(0, 1, ["train.batch_size=24"]).load_state_dict(state)


def test_the_batch_looks_up_each_item_once_and_a_dummy_looks_up_padding_only():
    batch = ItemBatch.of(np.array([5, 3, 5]), np.array([1.0, 2.0, 1.0]))
    assert batch.unique_items.tolist() == [0, 3, 5]
    assert batch.unique_items[batch.inverse].tolist() == [5, 3, 5]
    dummy = _data(0, 2).dummy_batch()
    assert dummy.items.numel() == 0 and dummy.unique_items.tolist() == [0]


def test_the_loss_is_the_squared_error_sum_and_a_dummy_adds_nothing():
    from mvrec_dist.models.item_tower import ItemTower

    torch.manual_seed(0)
    tower = ItemRegressionTower(item_tower=ItemTower(mode="id", embedding_dim=4), embedding_dim=4, hidden_dim=3)
    batch = ItemBatch.of(np.array([2, 1, 2]), np.array([0.5, 1.0, 0.5]))
    emb = torch.randn(3, 4)
    out = tower({"item_id": emb}, batch)
    preds = tower.predict(emb)[batch.inverse]
    torch.testing.assert_close(out.loss_sum, ((preds - batch.labels) ** 2).sum(), rtol=1e-6, atol=1e-7)
    assert int(out.num_targets) == 3
    dummy = ItemBatch.of(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))
    empty = tower({"item_id": torch.randn(1, 4, requires_grad=True)}, dummy)
    assert float(empty.loss_sum.detach()) == 0.0 and int(empty.num_targets) == 0
    empty.loss_sum.backward()  # a rank out of items still runs the backward
