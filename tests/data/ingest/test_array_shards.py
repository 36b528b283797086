"""Tests of mvrec_dist.data.ingest.array_shards: per-item array tars and their offset index."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import numpy as np
import pytest

from mvrec_dist.data.ingest.array_shards import build_index, npy_bytes, npy_prefix, render_array_shard, write_npy


def _arrays(k: int, shape=(2, 4, 4, 3), dtype=np.uint8) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, size=shape).astype(dtype) for _ in range(k)]


def test_npy_prefix_is_what_np_save_writes_and_aligns_the_data():
    a = _arrays(1, shape=(5, 7, 7, 3))[0]
    bio = io.BytesIO()
    np.save(bio, a, allow_pickle=False)
    prefix = npy_prefix(a.shape, a.dtype)
    assert bio.getvalue()[:len(prefix)] == prefix and len(prefix) % 64 == 0


@pytest.mark.parametrize("texts", [None, ["a", "b\u00e9", ""]])
def test_rendered_tar_reads_back_and_offsets_point_at_each_array(texts):
    arrays = _arrays(3)
    ids = [4, 9, 10]
    data, offsets = render_array_shard(ids, "frames.npy", arrays, [{"item": i} for i in ids], texts)
    with tarfile.open(fileobj=io.BytesIO(bytes(data))) as tf:
        names = tf.getnames()
        expected = []
        for i in ids:
            expected += [f"i{i:010d}.frames.npy", f"i{i:010d}.json"] + ([f"i{i:010d}.txt"] if texts else [])
        assert names == expected
        for j, i in enumerate(ids):
            got = np.load(io.BytesIO(tf.extractfile(f"i{i:010d}.frames.npy").read()), allow_pickle=False)
            np.testing.assert_array_equal(got, arrays[j])
            assert json.loads(tf.extractfile(f"i{i:010d}.json").read()) == {"item": i}
            if texts:
                assert tf.extractfile(f"i{i:010d}.txt").read().decode() == texts[j]
    n = arrays[0].nbytes
    for j, off in enumerate(offsets.tolist()):
        assert off % 64 == 0
        assert bytes(data[off:off + n]) == arrays[j].tobytes()


def test_same_input_gives_identical_bytes():
    arrays = _arrays(2, dtype=np.float16)
    a, _ = render_array_shard([1, 2], "feature.npy", arrays, [{"item": 1}, {"item": 2}])
    b, _ = render_array_shard([1, 2], "feature.npy", [x.copy() for x in arrays], [{"item": 1}, {"item": 2}])
    assert a == b


def test_bad_shards_are_refused():
    arrays = _arrays(2)
    with pytest.raises(ValueError, match="ascending"):
        render_array_shard([2, 1], "frames.npy", arrays, [{}, {}])
    with pytest.raises(ValueError, match="differs from the shard"):
        render_array_shard([1, 2], "frames.npy", [arrays[0], arrays[1][:1]], [{}, {}])
    with pytest.raises(ValueError, match="2 ids, 1 arrays"):
        render_array_shard([1, 2], "frames.npy", arrays[:1], [{}, {}])


def test_empty_shard_is_a_valid_empty_tar():
    data, offsets = render_array_shard([], "frames.npy", [], [])
    with tarfile.open(fileobj=io.BytesIO(bytes(data))) as tf:
        assert tf.getnames() == []
    assert offsets.shape == (0,)


def test_index_places_every_item_once():
    index = build_index(6, [(0, [1, 3], [512, 2048]), (1, [5], [640])])
    assert index.dtype == np.int64 and index.shape == (7, 2)
    assert index[[1, 3, 5]].tolist() == [[0, 512], [0, 2048], [1, 640]]
    assert (index[[0, 2, 4, 6]] == -1).all()
    with pytest.raises(ValueError, match="two shards"):
        build_index(6, [(0, [1], [512]), (1, [1], [512])])
    with pytest.raises(ValueError, match="outside 1..6"):
        build_index(6, [(0, [7], [512])])


@pytest.mark.parametrize("array", [np.arange(-1, 70_000, dtype=np.int64), np.zeros((3, 0), np.float32),
                                   np.arange(12, dtype=np.int32).reshape(3, 4).T])  # the last one is not contiguous
def test_write_npy_streams_exactly_what_np_save_writes(tmp_path, array):
    entry = write_npy(str(tmp_path / "d" / "a.npy"), array)
    data = (tmp_path / "d" / "a.npy").read_bytes()
    # np.save writes a Fortran-ordered array as such; write_npy writes C order (what every map here is).
    assert data == npy_bytes(np.ascontiguousarray(array))
    assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert np.array_equal(np.load(tmp_path / "d" / "a.npy"), array)
