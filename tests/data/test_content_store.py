"""Tests of mvrec_dist.data.content_store: items' arrays by dense id, local (mmap) and URI (range reads)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from mvrec_dist.data.content_store import ContentStore, ContentStoreError
from mvrec_dist.data.ingest.array_shards import build_index, render_array_shard
from mvrec_dist.data.ingest.tar_writer import write_bytes

N = 7
SHAPE = (2, 4, 4, 3)


def _frames(i: int) -> np.ndarray:
    return np.full(SHAPE, i, dtype=np.uint8) + np.arange(np.prod(SHAPE), dtype=np.uint8).reshape(SHAPE)


def _store(root: str, **kwargs) -> ContentStore:
    """Items 1, 2 in shard 0; 5, 6, 7 in shard 1; 3 and 4 without content."""
    groups = [(0, [1, 2]), (1, [5, 6, 7])]
    entries, paths, sizes = [], [], []
    for j, ids in groups:
        data, offsets = render_array_shard(ids, "frames.npy", [_frames(i) for i in ids], [{"item": i} for i in ids])
        path = f"content/c-{j}.tar"
        sizes.append(write_bytes(f"{root}/{path}", data)["bytes"])
        paths.append(path)
        entries.append((j, ids, offsets))
    return ContentStore(root=root, shards=paths, shard_bytes=sizes, index=build_index(N, entries), shape=SHAPE,
                        dtype="uint8", name="test store", **kwargs)


@pytest.fixture(params=["local", "uri"])
def store(request, tmp_path):
    root = str(tmp_path) if request.param == "local" else f"memory://{tmp_path.name}-store"
    return _store(root, max_open=1)  # max_open=1 also exercises closing and reopening shards


def test_gather_returns_each_item_in_order_with_repeats(store):
    ids = np.array([6, 1, 6, 2, 7, 5])
    out = store.gather(ids)
    assert out.shape == (6, *SHAPE) and out.dtype == np.uint8
    for row, i in zip(out, ids.tolist()):
        np.testing.assert_array_equal(row, _frames(i))
    assert store.has(np.arange(N + 1)).tolist() == [False, True, True, False, False, True, True, True]
    assert store.items_with_content == 5 and store.num_items == N


def test_items_without_content_are_refused_not_zero_filled(store):
    with pytest.raises(ContentStoreError, match="item 3 has no content"):
        store.gather(np.array([1, 3]))
    with pytest.raises(ContentStoreError, match="outside 0..7"):
        store.has(np.array([8]))
    assert store.gather(np.zeros(0, dtype=np.int64)).shape == (0, *SHAPE)


def test_a_pickled_store_opens_its_own_files(tmp_path):
    store = _store(str(tmp_path))
    store.gather(np.array([1, 5]))
    clone = pickle.loads(pickle.dumps(store))
    assert len(clone._open) == 0
    np.testing.assert_array_equal(clone.gather(np.array([7]))[0], _frames(7))


def test_a_rewritten_shard_is_detected(tmp_path):
    store = _store(str(tmp_path))
    with open(tmp_path / "content" / "c-1.tar", "ab") as f:
        f.write(b"\0" * 512)
    with pytest.raises(ContentStoreError, match="the manifest says"):
        store.gather(np.array([5]))


def test_bad_indexes_are_refused(tmp_path):
    good = _store(str(tmp_path))
    kwargs = dict(root=str(tmp_path), shards=list(good.layout.shards), shard_bytes=list(good.layout.shard_bytes),
                  shape=SHAPE, dtype="uint8", name="bad")
    with pytest.raises(ContentStoreError, match="int64"):
        ContentStore(index=good.index.astype(np.int32), **kwargs)
    bad = good.index.copy()
    bad[2, 0] = 5
    with pytest.raises(ContentStoreError, match="names shard 5"):
        ContentStore(index=bad, **kwargs)
    bad = good.index.copy()
    bad[0] = [0, 512]
    with pytest.raises(ContentStoreError, match="padding"):
        ContentStore(index=bad, **kwargs)
