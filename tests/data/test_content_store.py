"""Tests of mvrec_dist.data.content_store: items' arrays by dense id, local (mmap) and URI (range reads)."""

from __future__ import annotations

import hashlib
import pickle

import numpy as np
import pytest

from mvrec_dist.config.model import CONTENT_KINDS
from mvrec_dist.data.content_store import (CONTENT_KIND_RULES, CONTENT_SECTIONS, ContentSpec, ContentStore,
                                           ContentStoreError, content_section, content_spec)
from mvrec_dist.data.ingest.array_shards import build_index, npy_bytes, render_array_shard
from mvrec_dist.data.ingest.tar_writer import write_bytes
from mvrec_dist.data.manifest import Manifest

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
    return ContentStore(root=root, shards=paths, shard_bytes=sizes, index=build_index(N, entries), kind="frames",
                        shape=SHAPE, dtype="uint8", name="test store", **kwargs)


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
                  kind="frames", shape=SHAPE, dtype="uint8", name="bad")
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


# ---------------------------------------------------------------- content kinds
def _dataset(root: str, arrays: dict[int, np.ndarray], *, kind: str | None) -> Manifest:
    """A dataset manifest whose content split of ``kind`` (one shard, written by the ingestion's writers)
    holds ``arrays`` by dense id; ``kind=None`` writes a frames section without ``kind``, as older versions did."""
    name = CONTENT_SECTIONS[kind or "frames"]
    ids = sorted(arrays)
    data, offsets = render_array_shard(ids, "x.npy", [arrays[i] for i in ids], [{"item": i} for i in ids])
    shard = write_bytes(f"{root}/{name}/c-0.tar", data)
    index = write_bytes(f"{root}/{name}/index.npy", npy_bytes(build_index(N, [(0, ids, offsets)])))
    first = arrays[ids[0]]
    section = {"index": f"{name}/index.npy", "member": "x.npy", "shape": list(first.shape), "dtype": str(first.dtype)}
    if kind is not None:
        section["kind"] = kind
    return Manifest(root=root, data={
        "counts": {"items": N}, "files": {f"{name}/index.npy": index}, name: section,
        "splits": {name: {"samples": len(ids), "shards": [{"path": f"{name}/c-0.tar", "samples": len(ids),
                                                            "bytes": shard["bytes"], "sha256": shard["sha256"]}]}},
    })


def test_every_content_kind_has_rules():
    assert set(CONTENT_KIND_RULES) == set(CONTENT_KINDS) == {"frames", "tokens", "features"}


def test_a_manifest_without_a_kind_serves_frames(tmp_path):
    m = _dataset(str(tmp_path), {i: _frames(i) for i in (1, 4)}, kind=None)
    assert content_spec(m) == ContentSpec("frames", SHAPE, "uint8")
    store = ContentStore.from_dataset(m)
    assert store.kind == "frames" and store.spec.describe() == "2 frames of 4x4"
    np.testing.assert_array_equal(store.gather(np.array([4, 1])), np.stack([_frames(4), _frames(1)]))


def test_a_token_id_store_serves_padded_ids(tmp_path):
    tokens = {i: np.pad(np.arange(1, i + 1, dtype=np.int32) + 100 * i, (0, 8 - i)) for i in (2, 3, 7)}  # T=8, 0 = pad
    m = _dataset(str(tmp_path), tokens, kind="tokens")
    assert content_section(m, "frames") is None and content_section(m, "tokens")["kind"] == "tokens"
    with pytest.raises(ContentStoreError, match="no video content"):
        ContentStore.from_dataset(m)  # frames, the default kind
    store = ContentStore.from_dataset(m, "tokens")
    assert (store.kind, store.shape, store.dtype) == ("tokens", (8,), np.dtype(np.int32))
    out = store.gather(np.array([7, 2, 7]))
    assert out.dtype == np.int32 and out.shape == (3, 8)
    np.testing.assert_array_equal(out, np.stack([tokens[7], tokens[2], tokens[7]]))
    assert store.has(np.arange(N + 1)).tolist() == [i in tokens for i in range(N + 1)]
    assert store.spec.describe() == "8 token ids"
    clone = pickle.loads(pickle.dumps(store))
    assert clone.kind == "tokens"
    np.testing.assert_array_equal(clone.gather(np.array([3]))[0], tokens[3])


@pytest.mark.parametrize("root", ["local", "uri"])
def test_a_float_feature_store_serves_features(tmp_path, root):
    rng = np.random.default_rng(0)
    feats = {i: rng.standard_normal((3, 2, 2)).astype(np.float16) for i in (1, 5, 6)}
    where = str(tmp_path) if root == "local" else f"memory://{tmp_path.name}-features"
    frames = _dataset(where, {i: _frames(i) for i in feats}, kind="frames")  # the tar layout, reused
    ids = sorted(feats)
    data, offsets = render_array_shard(ids, "x.npy", [feats[i] for i in ids], [{"item": i} for i in ids])
    shard = write_bytes(f"{where}/features/f-0.tar", data)
    store = ContentStore(root=where, shards=["features/f-0.tar"], shard_bytes=[shard["bytes"]],
                         index=build_index(N, [(0, ids, offsets)]), kind="features", shape=(3, 2, 2),
                         dtype="float16", name="features")
    with pytest.raises(ContentStoreError, match="holds no 'features' content"):
        content_section(frames, "features")
    assert (store.kind, store.shape, store.dtype) == ("features", (3, 2, 2), np.dtype(np.float16))
    np.testing.assert_array_equal(store.gather(np.array([6, 1])), np.stack([feats[6], feats[1]]))


@pytest.mark.parametrize("kind, shape, dtype, message", [
    ("frames", (2, 4, 4, 3), "float32", "frames content must be uint8"),
    ("frames", (2, 4, 4), "uint8", "frames content must be uint8"),
    ("tokens", (2, 8), "int64", "tokens content must be int"),
    ("tokens", (8,), "float32", "tokens content must be int"),
    ("features", (4,), "uint8", "features content must be float"),
    ("video", (2, 4, 4, 3), "uint8", "unknown content kind 'video'"),
])
def test_arrays_that_do_not_fit_their_kind_are_refused(tmp_path, kind, shape, dtype, message):
    good = _store(str(tmp_path))
    with pytest.raises(ContentStoreError, match=message):
        ContentStore(root=str(tmp_path), shards=list(good.layout.shards), shard_bytes=list(good.layout.shard_bytes),
                     index=good.index, kind=kind, shape=shape, dtype=dtype, name="bad")


def test_a_dataset_without_content_or_with_a_stale_index_is_refused(tmp_path):
    m = _dataset(str(tmp_path), {1: _frames(1)}, kind="frames")
    with pytest.raises(ContentStoreError, match="has no video content"):
        ContentStore.from_dataset(Manifest(root=m.root, data={**m.data, "splits": {}}))
    (tmp_path / "content" / "index.npy").write_bytes(npy_bytes(build_index(N, [])))
    assert hashlib.sha256((tmp_path / "content" / "index.npy").read_bytes()).hexdigest() != \
        m.data["files"]["content/index.npy"]["sha256"]
    with pytest.raises(ContentStoreError, match="stale or rewritten index"):
        ContentStore.from_dataset(m)


def test_a_small_store_is_read_once_and_served_from_memory(tmp_path):
    """Below resident_bytes the first gather reads every item once; later gathers index that copy and
    give what item-by-item reads give (fresh arrays); a pickled store reads its own copy."""
    rng = np.random.default_rng(3)
    feats = {i: rng.standard_normal(4).astype(np.float32) for i in (1, 2, 5, 7)}
    m = _dataset(str(tmp_path), {i: (f * 100).astype(np.int32) for i, f in feats.items()}, kind="tokens")
    small = ContentStore.from_dataset(m, "tokens")
    off = ContentStore.from_dataset(m, "tokens", resident_bytes=0)
    ids = np.array([7, 1, 7, 5, 2])
    assert small._resident is None
    first = small.gather(ids)
    assert small._resident is not None and small._resident.shape == (N + 1, 4)
    np.testing.assert_array_equal(first, off.gather(ids))
    assert off._resident is None  # turned off: always item by item
    first[0] = -1  # a fresh array: the resident copy is untouched
    np.testing.assert_array_equal(small.gather(ids), off.gather(ids))
    with pytest.raises(ContentStoreError, match="item 3 has no content"):
        small.gather(np.array([3]))
    clone = pickle.loads(pickle.dumps(small))
    assert clone._resident is None
    np.testing.assert_array_equal(clone.gather(ids), off.gather(ids))
    tiny_budget = ContentStore.from_dataset(m, "tokens", resident_bytes=4 * 4 * 4 - 1)  # one byte short
    tiny_budget.gather(ids)
    assert tiny_budget._resident is None
