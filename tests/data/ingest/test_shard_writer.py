"""Leave-one-out blocks and shard completeness checks of the user-split writer.

The tars are read back with ``tarfile`` and ``np.load`` (not the project's reader), and each user's
rows are cut out of the block columns by hand.
"""

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


def read_blocks(data):
    """``{block key: {member: value}}`` in file order."""
    out = {}
    with tarfile.open(fileobj=io.BytesIO(bytes(data))) as tar:
        for info in tar:
            key, _, ext = info.name.partition(".")
            blob = tar.extractfile(info).read()
            out.setdefault(key, {})[ext] = np.load(io.BytesIO(blob), allow_pickle=False) \
                if ext.endswith("npy") else json.loads(blob)
    return out


def per_user(blocks, seq):
    """``{dense user: (raw user, sequence, target or None)}`` from blocks, by hand."""
    out = {}
    for members in blocks.values():
        offsets = members["offsets.npy"]
        for i, user in enumerate(members["users.npy"].tolist()):
            target = int(members["targets.npy"][i]) if "targets.npy" in members else None
            out[user] = (int(members["raw_users.npy"][i]), members[seq][offsets[i]:offsets[i + 1]].tolist(), target)
    return out


def reference_split(seq):
    """MicroLens leave-one-out, spelled out: train all but the last two; valid/test targets."""
    return {"train": seq[:-2], "valid": (seq[:-2], seq[-2]), "test": (seq[:-1], seq[-1])}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(1, 10**6), min_size=3, max_size=40), min_size=1, max_size=12),
       st.booleans(), st.integers(0, 50), st.integers(1, 5), st.integers(0, 3),
       st.none() | st.lists(st.integers(0, 4), min_size=12, max_size=12))
def test_leave_one_out_blocks_match_reference(seqs, with_ts, shard, block_size, spare, exposed):
    shard_size = len(seqs) + spare  # a full shard or the (shorter) last one
    n = np.array([len(s) for s in seqs])
    offsets = np.r_[0, np.cumsum(n)]
    users = np.arange(shard * shard_size + 1, shard * shard_size + 1 + len(seqs))
    ts = np.arange(offsets[-1], dtype=np.int64) * 7 if with_ts or exposed else None
    exp = {}
    if exposed is not None:  # labelled input: each user's exposures (items 10**7 + k, times -k)
        counts = np.array(exposed[:len(seqs)])
        total = int(counts.sum())
        exp = dict(exp_offsets=np.r_[0, np.cumsum(counts)], exp_items=(10**7 + np.arange(total)).astype(np.int32),
                   exp_ts=-np.arange(total, dtype=np.int64))
    with_ts = ts is not None
    s = UserShard(index=shard, users=users, raw_users=users * 3, n=n, offsets=offsets,
                  items=np.concatenate(seqs).astype(np.int32), ts=ts, **exp)
    tars = {k: read_blocks(v) for k, v in render_user_shards(s, shard_size=shard_size, block_size=block_size).items()}
    assert set(tars) == {"train", "valid", "test"} | ({"exposures"} if exp else set())
    per_shard = -(-shard_size // block_size)
    for split, blocks in tars.items():
        keys = list(blocks)
        assert keys == [f"b{shard * per_shard + k:010d}" for k in range(-(-len(seqs) // block_size))]
        for k, (key, members) in enumerate(blocks.items()):
            block_users = users[k * block_size:(k + 1) * block_size]
            assert members["users.npy"].tolist() == block_users.tolist() and members["users.npy"].dtype == np.int64
            assert members["json"] == {"block": int(key[1:]), "first_user": int(block_users[0]),
                                       "last_user": int(block_users[-1]), "n": len(block_users)}
            assert members["offsets.npy"][0] == 0 and members["offsets.npy"].dtype == np.int64
            times = {"ts.npy"} if with_ts else set()
            expected = {"json", "users.npy", "raw_users.npy", "offsets.npy"} | (
                {"items.npy"} | times if split in ("train", "exposures") else
                {"history.npy", "targets.npy"} | times | ({"targets_ts.npy"} if with_ts else set()))
            assert set(members) == expected
    train, valid, test = (per_user(tars["train"], "items.npy"), per_user(tars["valid"], "history.npy"),
                          per_user(tars["test"], "history.npy"))
    for k, seq in enumerate(seqs):
        user, ref = int(users[k]), reference_split(seq)
        assert train[user] == (user * 3, ref["train"], None)
        assert valid[user] == (user * 3, ref["valid"][0], ref["valid"][1])
        assert test[user] == (user * 3, ref["test"][0], ref["test"][1])
    if with_ts:
        got = [v for b in tars["train"].values() for v in b["ts.npy"].tolist()]
        assert got == [int(t) for k in range(len(seqs)) for t in ts[offsets[k]:offsets[k + 1] - 2]]
        # valid/test: the times of their histories and targets, the input's own
        for split, cut in (("valid", 2), ("test", 1)):
            hist = [v for b in tars[split].values() for v in b["ts.npy"].tolist()]
            assert hist == [int(t) for k in range(len(seqs)) for t in ts[offsets[k]:offsets[k + 1] - cut]]
            target = [v for b in tars[split].values() for v in b["targets_ts.npy"].tolist()]
            assert target == [int(ts[offsets[k + 1] - cut]) for k in range(len(seqs))]
    if exp:
        rows = per_user(tars["exposures"], "items.npy")
        e_off = exp["exp_offsets"]
        for k in range(len(seqs)):
            assert rows[int(users[k])] == (int(users[k]) * 3, exp["exp_items"][e_off[k]:e_off[k + 1]].tolist(), None)
        assert [v for b in tars["exposures"].values() for v in b["ts.npy"].tolist()] == exp["exp_ts"].tolist()
    assert all(b["items.npy"].dtype == np.int32 for b in tars["train"].values())


def test_npy_header_matches_np_save():
    for dtype, length in ((np.dtype("<i4"), 0), (np.dtype("<i4"), 3), (np.dtype("<i8"), 10**7), (np.dtype("|b1"), 5)):
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
    entries = write_user_shards(dense_rows([5, 3, 4, 1, 2], 2), root=str(tmp_path), shard_size=2, block_size=1,
                                num_users=5, with_ts=False)
    assert sorted((e["split"], e["index"], e["samples"], e["blocks"]) for e in entries if e["split"] == "train") == \
        [("train", 0, 2, 2), ("train", 1, 2, 2), ("train", 2, 1, 1)]
    assert (tmp_path / "valid" / "valid-00002.tar").exists()
    blocks = read_blocks((tmp_path / "test" / "test-00001.tar").read_bytes())
    assert list(blocks) == ["b0000000002", "b0000000003"]
    assert [b["users.npy"].tolist() for b in blocks.values()] == [[3], [4]]


def test_rendering_is_deterministic(tmp_path):
    for out in ("a", "b"):
        write_user_shards(dense_rows([1, 2, 3], 3), root=str(tmp_path / out), shard_size=3, block_size=2,
                          num_users=3, with_ts=False)
    for split in ("train", "valid", "test"):
        assert (tmp_path / "a" / split / f"{split}-00000.tar").read_bytes() == \
            (tmp_path / "b" / split / f"{split}-00000.tar").read_bytes()


@pytest.mark.parametrize("users, reason", [([1, 3, 4], "shard 0 received 1 users"),
                                           ([1, 2, 2, 3, 4], "shard 0 received 3 users")])
def test_write_user_shards_refuses_incomplete_or_duplicated_shards(tmp_path, users, reason):
    with pytest.raises(IngestError, match=reason):
        write_user_shards(dense_rows(users, 2), root=str(tmp_path), shard_size=2, block_size=2, num_users=4,
                          with_ts=False)
