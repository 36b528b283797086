"""Leave-one-out samples and shard completeness checks of the user-split writer."""

import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mvrec_dist.data.ingest.errors import IngestError
from mvrec_dist.data.ingest.shard_writer import UserShard, npy_header, render_user_shards, write_user_shards


def read_tar(data):
    out = {}
    with tarfile.open(fileobj=io.BytesIO(bytes(data))) as tar:
        for info in tar:
            key, _, ext = info.name.partition(".")
            blob = tar.extractfile(info).read()
            out.setdefault(key, {})[ext] = np.load(io.BytesIO(blob), allow_pickle=False) \
                if ext.endswith("npy") else json.loads(blob)
    return out


def reference_split(seq):
    """MicroLens leave-one-out, spelled out: train all but the last two; valid/test targets."""
    return {"train": seq[:-2], "valid": (seq[:-2], seq[-2]), "test": (seq[:-1], seq[-1])}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(1, 10**6), min_size=3, max_size=40), min_size=1, max_size=12),
       st.booleans(), st.integers(1, 10**6))
def test_leave_one_out_split_matches_reference(seqs, with_ts, first_user):
    n = np.array([len(s) for s in seqs])
    offsets = np.r_[0, np.cumsum(n)]
    users = np.arange(first_user, first_user + len(seqs))
    ts = np.arange(offsets[-1], dtype=np.int64) * 7 if with_ts else None
    shard = UserShard(index=0, users=users, raw_users=users * 3, n=n, offsets=offsets,
                      items=np.concatenate(seqs).astype(np.int32), ts=ts)
    tars = {k: read_tar(v) for k, v in render_user_shards(shard).items()}
    for k, seq in enumerate(seqs):
        key = f"u{users[k]:010d}"
        ref = reference_split(seq)
        meta = {"user": int(users[k]), "raw_user": int(users[k] * 3), "n": len(seq)}
        assert tars["train"][key]["items.npy"].tolist() == ref["train"]
        assert tars["train"][key]["items.npy"].dtype == np.int32
        assert tars["valid"][key]["history.npy"].tolist() == ref["valid"][0]
        assert tars["valid"][key]["target.npy"].tolist() == [ref["valid"][1]]
        assert tars["test"][key]["history.npy"].tolist() == ref["test"][0]
        assert tars["test"][key]["target.npy"].tolist() == [ref["test"][1]]
        assert tars["train"][key]["json"] == tars["valid"][key]["json"] == tars["test"][key]["json"] == meta
        if with_ts:
            assert tars["train"][key]["ts.npy"].tolist() == ts[offsets[k]:offsets[k + 1] - 2].tolist()
        else:
            assert "ts.npy" not in tars["train"][key]
    for split in tars:  # keys ascending, members adjacent
        assert list(tars[split]) == sorted(tars[split])


def test_npy_header_matches_np_save():
    for dtype, length in ((np.dtype("<i4"), 0), (np.dtype("<i4"), 3), (np.dtype("<i8"), 10**7)):
        bio = io.BytesIO()
        np.save(bio, np.zeros(length, dtype), allow_pickle=False)
        assert bio.getvalue().startswith(npy_header(dtype, length))
        assert len(bio.getvalue()) == len(npy_header(dtype, length)) + length * dtype.itemsize


def dense_rows(users, shard_size):
    users = np.asarray(users, dtype=np.int64)
    offsets = np.arange(len(users) + 1, dtype=np.int64) * 3
    return pa.table({"shard": (users - 1) // shard_size, "user": users, "raw_user": users + 100,
                     "n": np.full(len(users), 3),
                     "items": pa.LargeListArray.from_arrays(offsets, np.ones(3 * len(users), np.int32))})


def test_write_user_shards_names_shards_by_id_range(tmp_path):
    entries = write_user_shards(dense_rows([5, 3, 4, 1, 2], 2), root=str(tmp_path), shard_size=2, num_users=5,
                                with_ts=False)
    assert sorted((e["split"], e["index"], e["samples"]) for e in entries if e["split"] == "train") == \
        [("train", 0, 2), ("train", 1, 2), ("train", 2, 1)]
    assert (tmp_path / "valid" / "valid-00002.tar").exists()
    assert list(read_tar((tmp_path / "test" / "test-00001.tar").read_bytes())) == ["u0000000003", "u0000000004"]


@pytest.mark.parametrize("users, reason", [([1, 3, 4], "shard 0 received 1 users"),
                                           ([1, 2, 2, 3, 4], "shard 0 received 3 users")])
def test_write_user_shards_refuses_incomplete_or_duplicated_shards(tmp_path, users, reason):
    with pytest.raises(IngestError, match=reason):
        write_user_shards(dense_rows(users, 2), root=str(tmp_path), shard_size=2, num_users=4, with_ts=False)
