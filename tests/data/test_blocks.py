"""Block layouts, validation, per-row samples and slices (``mvrec_dist.data.blocks``), and the
packing round trip: the ingestion's writers pack rows into blocks, the reader unpacks the same rows."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mvrec_dist.data.blocks import (LAYOUTS, Block, BlockError, block_meta, block_sizes, encode_titles,
                                    needed_members, row_members)
from mvrec_dist.data.ingest.items import render_item_shard
from mvrec_dist.data.ingest.shard_writer import USER_SPLITS, shard_path, write_user_shards
from mvrec_dist.data.ingest.tar_writer import write_bytes
from mvrec_dist.data.reader import ShardReader, eval_plan
from tests.helpers.shards import write_manifest


def train_block(lengths, first=0, index=0) -> Block:
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    n = len(lengths)
    ids = np.arange(first + 1, first + n + 1, dtype=np.int64)
    members = {"json": block_meta(LAYOUTS["train"], index, first + 1, n), "users.npy": ids,
               "raw_users.npy": ids * 10, "offsets.npy": offsets,
               "items.npy": np.arange(offsets[-1], dtype=np.int32), "ts.npy": np.arange(offsets[-1], dtype=np.int64)}
    return Block.decode(LAYOUTS["train"], f"b{index:010d}", members, list(members), index=index, first=first, n=n)


def test_needed_members_follow_the_requested_row_members():
    assert row_members("train") == {"items.npy", "ts.npy", "play.npy", "duration.npy", "json"}
    assert row_members("exposures") == {"items.npy", "ts.npy", "json"}
    assert needed_members("train", frozenset({"items.npy"})) == {"json", "users.npy", "offsets.npy", "items.npy"}
    assert needed_members("valid", frozenset({"target.npy"})) == {"json", "users.npy", "offsets.npy", "targets.npy"}
    assert needed_members("items", frozenset({"txt"})) == {"json", "items.npy", "titles.json"}
    assert needed_members("test", None) == LAYOUTS["test"].members
    with pytest.raises(ValueError, match="has no per-row member"):
        needed_members("items", frozenset({"items.npy"}))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=12), st.integers(0, 1000), st.data())
def test_samples_and_slices_agree_with_the_offsets(lengths, first, data):
    block = train_block(lengths, first)
    offsets = block.arrays["offsets.npy"]
    lo = data.draw(st.integers(0, len(lengths) - 1))
    hi = data.draw(st.integers(lo + 1, len(lengths)))
    rows = data.draw(st.permutations(range(len(lengths))))
    for i, sample in zip(rows, block.samples(rows, None)):
        assert sample.key == f"u{first + i + 1:010d}"
        assert sample.members["items.npy"].tolist() == list(range(offsets[i], offsets[i + 1]))
        assert sample.members["ts.npy"].tolist() == list(range(offsets[i], offsets[i + 1]))
        assert sample.members["json"] == {"user": first + i + 1, "raw_user": 10 * (first + i + 1),
                                          "n": lengths[i] + 2}
    part = block.slice(lo, hi)
    assert part.first == first + lo and part.ids.tolist() == block.ids[lo:hi].tolist()
    assert part.arrays["offsets.npy"].tolist() == (offsets[lo:hi + 1] - offsets[lo]).tolist()
    assert [s.members["items.npy"].tolist() for s in part.samples(range(hi - lo), frozenset({"items.npy"}))] == \
        [s.members["items.npy"].tolist() for s in block.samples(range(lo, hi), frozenset({"items.npy"}))]


def test_item_rows_and_titles_round_trip_any_text():
    titles = ["", "ça", 'q"\\', "\n\t\u0000", "\U0001F600"]
    ids = np.arange(3, 8, dtype=np.int64)
    members = {"json": block_meta(LAYOUTS["items"], 0, 3, 5), "items.npy": ids, "raw_items.npy": ids * 2,
               "train_counts.npy": np.arange(5, dtype=np.int64), "has_title.npy": np.array([0, 1, 1, 1, 1], bool),
               "titles.json": json.loads(encode_titles(titles))}
    block = Block.decode(LAYOUTS["items"], "b0000000000", members, list(members), index=0, first=2, n=5)
    got = block.samples(range(5), None)
    assert [s.members["txt"] for s in got] == titles
    assert got[1].members["json"] == {"item": 4, "raw_item": 8, "train_count": 1, "has_title": True}
    with pytest.raises(BlockError, match="titles.json must be a JSON list of 5 strings"):
        Block.decode(LAYOUTS["items"], "b0000000000", dict(members, **{"titles.json": titles[:4]}), list(members),
                     index=0, first=2, n=5)


def test_test_histories_hold_at_least_two_items():
    lengths = np.array([2, 1])
    layout = LAYOUTS["test"]
    ids = np.array([1, 2], dtype=np.int64)
    members = {"json": block_meta(layout, 0, 1, 2), "users.npy": ids, "raw_users.npy": ids,
               "offsets.npy": np.array([0, 2, 3], dtype=np.int64), "history.npy": np.ones(3, np.int32),
               "targets.npy": np.ones(2, np.int32)}
    with pytest.raises(BlockError, match="grow by >= 2 per row"):
        Block.decode(layout, "b0000000000", members, list(members), index=0, first=0, n=len(lengths))


def test_block_sizes():
    assert block_sizes(0, 4) == [] and block_sizes(8, 4) == [4, 4] and block_sizes(9, 4) == [4, 4, 1]


def _read_rows(root: str, split: str) -> list:
    reader = ShardReader(root, split)
    return [s for _, s in reader.iter_chunks(eval_plan(reader.shard_counts, num_consumers=1)[0])]


@settings(max_examples=40, deadline=None)
@given(seqs=st.lists(st.lists(st.integers(1, 40), min_size=3, max_size=25), min_size=1, max_size=23),
       shard_size=st.integers(1, 9), block_size=st.integers(1, 5), with_ts=st.booleans())
def test_packed_user_blocks_unpack_to_the_per_user_rows(seqs, shard_size, block_size, with_ts):
    """``write_user_shards`` then ``ShardReader``: every user's train/valid/test row is its leave-one-out split."""
    users = np.arange(1, len(seqs) + 1, dtype=np.int64)
    n = np.array([len(q) for q in seqs], dtype=np.int64)
    offsets = np.r_[0, np.cumsum(n)]
    ts = [list(range(1000 * u, 1000 * u + len(q))) for u, q in zip(users.tolist(), seqs)]
    columns = {"shard": (users - 1) // shard_size, "user": users, "raw_user": users * 7 + 3, "n": n,
               "items": pa.LargeListArray.from_arrays(offsets, pa.array(np.concatenate(seqs), pa.int32()))}
    if with_ts:
        columns["ts"] = pa.LargeListArray.from_arrays(offsets, pa.array(np.concatenate(ts), pa.int64()))
    with tempfile.TemporaryDirectory() as tmp:
        entries = write_user_shards(pa.table(columns), root=tmp, shard_size=shard_size, block_size=block_size,
                                    num_users=len(seqs), with_ts=with_ts)
        write_manifest(Path(tmp), {split: sorted((e for e in entries if e["split"] == split), key=lambda e: e["index"])
                                   for split in USER_SPLITS}, block_size)
        train, valid, test = (_read_rows(tmp, split) for split in USER_SPLITS)
    assert len(train) == len(valid) == len(test) == len(seqs)
    for u, q, t, tr, va, te in zip(users.tolist(), seqs, ts, train, valid, test):
        meta = {"user": u, "raw_user": 7 * u + 3, "n": len(q)}
        assert tr.key == va.key == te.key == f"u{u:010d}"
        assert tr.members.pop("json") == va.members.pop("json") == te.members.pop("json") == meta
        assert {k: v.tolist() for k, v in tr.members.items()} == \
            {"items.npy": q[:-2], **({"ts.npy": t[:-2]} if with_ts else {})}
        assert (va.members["history.npy"].tolist(), va.members["target.npy"].tolist()) == (q[:-2], [q[-2]])
        assert (te.members["history.npy"].tolist(), te.members["target.npy"].tolist()) == (q[:-1], [q[-1]])


@settings(max_examples=40, deadline=None)
@given(titles=st.lists(st.tuples(st.text(), st.booleans()), min_size=1, max_size=23),
       shard_size=st.integers(1, 9), block_size=st.integers(1, 5))
def test_packed_item_blocks_unpack_to_the_per_item_rows(titles, shard_size, block_size):
    """``render_item_shard`` then ``ShardReader``: every item's json and title come back."""
    k = len(titles)
    raw = np.arange(k, dtype=np.int64) * 5 + 2
    counts = np.arange(k, dtype=np.int64) % 4
    has = np.array([h for _, h in titles], dtype=bool)
    texts = [t if h else "" for t, h in titles]
    with tempfile.TemporaryDirectory() as tmp:
        entries = []
        for j in range(-(-k // shard_size)):
            lo, hi = j * shard_size, min((j + 1) * shard_size, k)
            data = render_item_shard(j, lo + 1, raw[lo:hi], counts[lo:hi], has[lo:hi], texts[lo:hi],
                                     shard_size=shard_size, block_size=block_size)
            entries.append({"path": shard_path("items", j), "samples": hi - lo,
                            "blocks": len(block_sizes(hi - lo, block_size)),
                            **write_bytes(f"{tmp}/{shard_path('items', j)}", data)})
        write_manifest(Path(tmp), {"items": entries}, block_size)
        got = _read_rows(tmp, "items")
    assert [s.key for s in got] == [f"i{i:010d}" for i in range(1, k + 1)]
    assert [s.members["txt"] for s in got] == texts
    assert [s.members["json"] for s in got] == [
        {"item": i + 1, "raw_item": int(raw[i]), "train_count": int(counts[i]), "has_title": bool(has[i])}
        for i in range(k)]
