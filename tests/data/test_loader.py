"""Tests of mvrec_dist.data.loader's content path: each unique item's content loaded once per batch."""

from __future__ import annotations

import numpy as np
import torch

from mvrec_dist.data.batch import collate_train, dummy_batch
from mvrec_dist.data.content_store import ContentStore
from mvrec_dist.data.ingest.array_shards import build_index, render_array_shard
from mvrec_dist.data.ingest.tar_writer import write_bytes
from mvrec_dist.data.loader import attach_content

N, SHAPE = 9, (2, 4, 4, 3)
WITHOUT = (4, 7)  # items whose video was unusable at ingestion


class _CountingStore(ContentStore):
    def gather(self, ids):
        self.asked = getattr(self, "asked", []) + [np.asarray(ids).tolist()]
        return super().gather(ids)


def _store(root) -> _CountingStore:
    ids = [i for i in range(1, N + 1) if i not in WITHOUT]
    arrays = [np.full(SHAPE, i, dtype=np.uint8) for i in ids]
    data, offsets = render_array_shard(ids, "frames.npy", arrays, [{"item": i} for i in ids])
    info = write_bytes(f"{root}/c.tar", data)
    return _CountingStore(root=str(root), shards=["c.tar"], shard_bytes=[info["bytes"]],
                          index=build_index(N, [(0, ids, offsets)]), kind="frames", shape=SHAPE, dtype="uint8",
                          name="t")


def test_each_unique_item_is_loaded_once_and_items_without_content_get_no_row(tmp_path):
    store = _store(tmp_path)
    windows = [np.array([1, 2, 1, 4]), np.array([2, 2, 3]), np.array([7, 1])]
    batch = attach_content(collate_train(windows, [1, 2, 3], max_seq_len=4, num_items=N), store)
    assert batch.unique_items.tolist() == [0, 1, 2, 3, 4, 7]
    assert batch.content_mask.tolist() == [False, True, True, True, False, False]
    assert store.asked == [[1, 2, 3]]  # once each, however often they occur; 0, 4 and 7 never
    assert batch.content.dtype == torch.uint8 and tuple(batch.content.shape) == (3, *SHAPE)
    assert batch.content[:, 0, 0, 0, 0].tolist() == [1, 2, 3]


def test_a_dummy_batch_carries_an_empty_content_tensor_of_the_right_kind(tmp_path):
    batch = attach_content(dummy_batch(4), _store(tmp_path))
    assert batch.content_mask.tolist() == [False]
    assert batch.content.dtype == torch.uint8 and tuple(batch.content.shape) == (0, *SHAPE)
    moved = batch.to("cpu")
    assert moved.content_mask.dtype == torch.bool and moved.content.shape == batch.content.shape


def test_without_a_store_batches_are_unchanged():
    batch = collate_train([np.array([1, 2])], [1], max_seq_len=4, num_items=N)
    assert attach_content(batch, None).content is None and batch.content_mask is None
