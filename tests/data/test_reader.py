"""``ShardReader`` against tiny spec-conformant shards (``tests/helpers/shards.py``), and broken ones.

Blocked splits: per-user (per-item) samples built from blocks must equal the rows the helper wrote,
for chunks inside and across blocks, shuffled or not, resumed and re-planned. The generic tar
parser under it (per-item splits, tar variants, structural errors) is tested in ``test_tar_reader``.
"""

from __future__ import annotations

import io
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mvrec_dist.data.manifest import load_manifest
from mvrec_dist.data.reader import (Chunk, ShardFormatError, ShardReader, consumer_index, epoch_plan, eval_plan,
                                    iter_indices, num_consumers, redistribute, skip_consumed)
from tests.helpers.shards import (block_members, encode, eval_samples, item_samples, train_dataset, train_samples,
                                  write_blocked_split, write_manifest, write_tar)

COUNTS = [7, 0, 5, 9]  # with 4 users per block: blocks of 4+3, -, 4+1, 4+4+1


@pytest.fixture()
def dataset(tmp_path: Path):
    return tmp_path, train_dataset(tmp_path, COUNTS, seed=3)


def assert_same(sample, expected) -> None:
    key, members = expected
    assert sample.key == key
    assert set(sample.members) == set(members)
    for name, value in members.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(sample.members[name], value)
            assert sample.members[name].dtype == value.dtype
        else:
            assert sample.members[name] == value


@pytest.mark.parametrize("shuffle", [False, True])
def test_every_consumer_reads_exactly_its_planned_samples(dataset, shuffle):
    root, samples = dataset
    reader = ShardReader(str(root), "train")
    assert reader.shard_counts == COUNTS and reader.num_samples == 21
    plan = epoch_plan(reader.shard_counts, epoch=1, seed=9, shuffle=shuffle, shuffle_block=3, num_consumers=3)
    seen = []
    for chunks in plan:
        opens = reader.stats.opens
        got = list(reader.iter_chunks(chunks))
        assert [g for g, _ in got] == list(iter_indices(chunks))
        for g, sample in got:
            assert_same(sample, samples[g])
            assert sample.members["items.npy"].flags.writeable
        # consecutive chunks of one shard share one pass: one open per shard the part touches
        shards = {np.searchsorted(np.cumsum(COUNTS), c.start, side="right") for c in chunks}
        assert reader.stats.opens - opens == len(shards)
        seen += [g for g, _ in got]
    assert sorted(seen) == list(range(21))


def split_dataset(root: Path, counts: list[int], block_size: int, seed: int) -> dict[str, list]:
    """Every blocked split (train with timestamps, valid, test, items) of ``sum(counts)`` rows."""
    train = train_samples(sum(counts), seed=seed, with_ts=True)
    rows = {"train": train, "valid": eval_samples(train, "valid", seed=seed),
            "test": eval_samples(train, "test", seed=seed), "items": item_samples(sum(counts), seed=seed)}
    write_manifest(root, {split: write_blocked_split(root, split, r, counts, block_size) for split, r in rows.items()},
                   block_size)
    return rows


@settings(max_examples=40, deadline=None)
@given(counts=st.lists(st.integers(0, 11), min_size=1, max_size=4).filter(lambda c: sum(c) > 0),
       block_size=st.integers(1, 5), world=st.integers(1, 3), shuffle_block=st.integers(1, 7),
       seed=st.integers(0, 2**32), shuffle=st.booleans(), consumed=st.integers(0, 40),
       split=st.sampled_from(["train", "valid", "test", "items"]))
def test_plans_resume_and_replans_read_exactly_the_written_rows(counts, block_size, world, shuffle_block, seed,
                                                                 shuffle, consumed, split):
    """Chunks start and end anywhere relative to blocks; every emitted row equals the written one."""
    with tempfile.TemporaryDirectory() as tmp:
        rows = split_dataset(Path(tmp), counts, block_size, seed % 1000)[split]
        reader = ShardReader(tmp, split)
        plan = epoch_plan(counts, epoch=seed % 3, seed=seed, shuffle=shuffle, shuffle_block=shuffle_block,
                          num_consumers=world)
        streams = []
        for chunks in plan:
            got = list(reader.iter_chunks(chunks))
            assert [g for g, _ in got] == list(iter_indices(chunks))
            for g, sample in got:
                assert_same(sample, rows[g])
            streams.append([g for g, _ in got])
        assert sorted(g for s in streams for g in s) == list(range(sum(counts)))
        done = [min(consumed, len(s)) for s in streams]
        assert [g for g, _ in reader.iter_chunks(skip_consumed(plan[0], done[0]))] == streams[0][done[0]:]
        rest = [g for chunks in redistribute(plan, done, world + 1) for g, _ in reader.iter_chunks(chunks)]
        assert rest == [g for s, n in zip(streams, done) for g in s[n:]]


def test_resumed_and_redistributed_plans_read_the_rest(dataset):
    root, samples = dataset
    reader = ShardReader(str(root), "train")
    plan = epoch_plan(reader.shard_counts, epoch=0, seed=1, shuffle=True, shuffle_block=4, num_consumers=2)
    full = [g for g, _ in reader.iter_chunks(plan[0])]
    assert [g for g, _ in reader.iter_chunks(skip_consumed(plan[0], 5))] == full[5:]
    new = redistribute(plan, [5, 2], 3)
    got = [(g, sample) for chunks in new for g, sample in reader.iter_chunks(chunks)]
    for g, sample in got:
        assert_same(sample, samples[g])
    assert [g for g, _ in got] == full[5:] + [g for g, _ in reader.iter_chunks(plan[1])][2:]


def test_eval_slices_are_contiguous_in_key_order(dataset):
    root, samples = dataset
    reader = ShardReader(str(root), "train")
    keys = [[s.key for _, s in reader.iter_chunks(chunks)] for chunks in eval_plan(reader.shard_counts, num_consumers=2)]
    assert keys == [[k for k, _ in samples[:11]], [k for k, _ in samples[11:]]]


def test_eval_and_item_samples_keep_the_per_row_contract(tmp_path):
    rows = split_dataset(tmp_path, [6, 3], 4, seed=2)
    for split in ("valid", "test", "items"):
        got = [s for _, s in ShardReader(str(tmp_path), split).iter_chunks(eval_plan([6, 3], num_consumers=1)[0])]
        assert len(got) == 9
        for sample, expected in zip(got, rows[split]):
            assert_same(sample, expected)
    sample = next(ShardReader(str(tmp_path), "valid").iter_chunks([Chunk(0, 6, None, 2, 1)]))[1]
    assert sample.members["target.npy"].shape == (1,) and sample.members["json"]["n"] == \
        len(sample.members["history.npy"]) + 2
    test = next(ShardReader(str(tmp_path), "test").iter_chunks([Chunk(0, 6, None, 2, 1)]))[1]
    assert test.members["json"]["n"] == len(test.members["history.npy"]) + 1 == sample.members["json"]["n"]


def test_members_not_asked_for_are_not_decoded(tmp_path):
    """With members={'json'} the block's items.npy is passed over: a corrupt one goes unnoticed."""
    samples = train_samples(6, seed=0)
    members = block_members("train", 0, [m for _, m in samples[:4]]) + block_members("train", 1, [m for _, m in samples[4:]])
    members = [(n, b"\x93NUMPY-garbage" if n == "b0000000001.items.npy" else b) for n, b in members]
    entry = write_tar(tmp_path, "train/train-00000.tar", members)
    entry.update(samples=6, blocks=2)
    write_manifest(tmp_path, {"train": [entry]})
    reader = ShardReader(str(tmp_path), "train", members={"json"})
    got = list(reader.iter_chunks([Chunk(0, 6, None, 1, 5)]))
    assert [s.members for _, s in got] == [{"json": samples[g][1]["json"]} for g in range(1, 6)]
    assert reader.stats.decoded == 2 and reader.stats.rows == 5
    with pytest.raises(ShardFormatError, match=r"train-00000\.tar: sample b0000000001 member 'items\.npy'"):
        list(ShardReader(str(tmp_path), "train").iter_chunks([Chunk(0, 6, None, 0, 6)]))
    with pytest.raises(ValueError, match=r"split 'train' has no per-row member \['history.npy'\]"):
        ShardReader(str(tmp_path), "train", members={"history.npy"})


@pytest.mark.parametrize("shuffle", [False, True])
def test_a_worker_slice_resumes_mid_block_counting_users(tmp_path, shuffle):
    """Rank 0's loader worker 1 of 2 ranks x 2 workers: its part starts inside a block and crosses a
    shard end whose last block is short; resuming after one user reads exactly the rest of its
    stream, because positions count users (samples), not blocks."""
    counts = [10, 10, 3]  # 4 users per block: 4+4+2, 4+4+2, 3 (each shard's last block is shorter)
    rows = split_dataset(tmp_path, counts, 4, seed=6)["train"]
    c = consumer_index(rank=0, worker=1, loader_workers=2)
    plan = epoch_plan(counts, epoch=0, seed=5, shuffle=shuffle, shuffle_block=8,
                      num_consumers=num_consumers(world_size=2, loader_workers=2))
    full = list(ShardReader(str(tmp_path), "train").iter_chunks(plan[c]))
    assert len(full) == sum(chunk.take for chunk in plan[c]) == 6  # 23 users over 4 consumers: 6, 6, 6, 5
    for g, sample in full:
        assert_same(sample, rows[g])
    if not shuffle:
        assert [g for g, _ in full] == list(range(6, 12))  # from inside block 1 across the end of shard 0
    reader = ShardReader(str(tmp_path), "train")
    resumed = list(reader.iter_chunks(skip_consumed(plan[c], 1)))
    assert [g for g, _ in resumed] == [g for g, _ in full[1:]]
    for g, sample in resumed:
        assert_same(sample, rows[g])
    if not shuffle:  # g 7..11: block 0 of shard 0 passed over unread, blocks 1, 2 and shard 1's block 0 decoded
        assert (reader.stats.skipped, reader.stats.decoded, reader.stats.rows) == (1, 3, 5)


def test_a_long_history_beside_short_ones_in_one_block(tmp_path):
    """One user's 5,000 items (a member larger than the read size) between users of 1-3 items."""
    samples = train_samples(6, seed=1, max_len=3, with_ts=True)
    key, members = samples[2]
    long = np.arange(1, 5001, dtype=np.int32)
    samples[2] = (key, {"items.npy": long, "ts.npy": np.arange(5000, dtype=np.int64),
                        "json": dict(members["json"], n=len(long) + 2)})
    write_manifest(tmp_path, {"train": write_blocked_split(tmp_path, "train", samples, [6], 4)}, 4)
    reader = ShardReader(str(tmp_path), "train", block_bytes=4096)
    for chunks in ([Chunk(0, 6, None, 0, 6)], [Chunk(0, 6, 3, 0, 6)], [Chunk(0, 6, None, 2, 1)]):
        got = list(reader.iter_chunks(chunks))
        assert [g for g, _ in got] == list(iter_indices(chunks))
        for g, sample in got:
            assert_same(sample, samples[g])
    first, second = reader.iter_blocks()
    assert np.diff(first.arrays["offsets.npy"]).tolist() == [len(samples[g][1]["items.npy"]) for g in range(4)]
    assert len(first.arrays["items.npy"]) > 5000 and len(second) == 2


def test_samples_are_views_of_their_block(dataset):
    root, _ = dataset
    (_, a), (_, b) = ShardReader(str(root), "train").iter_chunks([Chunk(0, 7, None, 0, 2)])
    assert a.members["items.npy"].base is not None
    assert a.members["items.npy"].base is b.members["items.npy"].base


def test_chunks_in_any_order_including_backwards(dataset):
    """Chunks that go back before the kept blocks re-open the shard; blocks past are only skipped."""
    root, samples = dataset
    rng = np.random.Generator(np.random.PCG64(11))
    bounds = [(0, 7), (7, 12), (12, 21)]
    chunks = []
    for _ in range(30):
        a, b = bounds[rng.integers(3)]
        start, stop = sorted(rng.choice(np.arange(a, b + 1), size=2, replace=False).tolist())
        skip = int(rng.integers(stop - start))
        chunks.append(Chunk(start, stop, int(rng.integers(2**32)) if rng.random() < 0.5 else None, skip,
                            int(rng.integers(1, stop - start - skip + 1))))
    reader = ShardReader(str(root), "train")
    got = list(reader.iter_chunks(chunks))
    assert [g for g, _ in got] == list(iter_indices(chunks))
    for g, sample in got:
        assert_same(sample, samples[g])
    reader = ShardReader(str(root), "train")
    list(reader.iter_chunks([Chunk(16, 21, 5, 1, 2)]))  # shard 3 (12..20): blocks 1 and 2 at most
    assert reader.stats.skipped == 1 and reader.stats.decoded <= 2
    reader = ShardReader(str(root), "train")
    chunks = [Chunk(12, 16, None, 0, 4), Chunk(14, 18, None, 0, 4), Chunk(12, 13, None, 0, 1)]
    assert [g for g, _ in reader.iter_chunks(chunks)] == list(iter_indices(chunks))
    assert (reader.stats.opens, reader.stats.decoded) == (1, 2)  # blocks from the last chunk's first are kept
    chunks = [Chunk(12, 16, None, 0, 4), Chunk(16, 21, None, 0, 5), Chunk(14, 15, None, 0, 1)]
    assert [g for g, _ in reader.iter_chunks(chunks)] == list(iter_indices(chunks))
    assert (reader.stats.opens, reader.stats.decoded) == (3, 6)  # the 3rd chunk goes back: a new pass


def test_iter_blocks_covers_unshuffled_chunks_with_column_slices(dataset):
    root, samples = dataset
    reader = ShardReader(str(root), "train")
    blocks = list(reader.iter_blocks([Chunk(0, 7, None, 2, 5), Chunk(12, 21, None, 3, 6)]))
    assert [(b.first, len(b)) for b in blocks] == [(2, 2), (4, 3), (15, 1), (16, 4), (20, 1)]
    for block in blocks:
        offsets = block.arrays["offsets.npy"]
        assert offsets[0] == 0 and len(offsets) == len(block) + 1
        for i in range(len(block)):
            g = block.first + i
            assert block.ids[i] == g + 1
            np.testing.assert_array_equal(block.arrays["items.npy"][offsets[i]:offsets[i + 1]],
                                          samples[g][1]["items.npy"])
    assert sum(len(b) for b in reader.iter_blocks()) == 21
    with pytest.raises(ValueError, match="unshuffled chunks only"):
        list(reader.iter_blocks([Chunk(0, 7, 3, 0, 7)]))


def test_file_uri(dataset):
    root, samples = dataset
    assert [s.key for _, s in ShardReader(f"file://{root}", "train").iter_chunks([Chunk(0, 7, 5, 0, 7)])] \
        == [samples[g][0] for g in Chunk(0, 7, 5, 0, 7).indices()]


def test_fsspec_filesystem(dataset):
    fsspec = pytest.importorskip("fsspec")
    root, samples = dataset
    memory = fsspec.filesystem("memory")
    for path in root.rglob("*"):
        if path.is_file():
            memory.pipe(f"/reader-test/{path.relative_to(root)}", path.read_bytes())
    try:
        reader = ShardReader("memory://reader-test", "train", block_bytes=1024)
        got = list(reader.iter_chunks(epoch_plan(COUNTS, epoch=0, seed=0, shuffle=True, shuffle_block=5,
                                                 num_consumers=1)[0]))
        for g, sample in got:
            assert_same(sample, samples[g])
        assert sorted(g for g, _ in got) == list(range(21))
    finally:
        memory.rm("/reader-test", recursive=True)


def test_agrees_with_webdataset(dataset):
    wds = pytest.importorskip("webdataset")
    root, _ = dataset
    reader = ShardReader(str(root), "train")
    ours = list(reader.iter_blocks())
    urls = [str(root / s.path) for s in reader.shards if s.samples]
    theirs = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert [b.key for b in ours] == [t["__key__"] for t in theirs]
    for b, t in zip(ours, theirs):
        np.testing.assert_array_equal(b.ids, np.load(io.BytesIO(t["users.npy"]), allow_pickle=False))
        np.testing.assert_array_equal(b.arrays["items.npy"], np.load(io.BytesIO(t["items.npy"]), allow_pickle=False))


def test_a_schema_1_dataset_asks_to_re_ingest(dataset):
    root, _ = dataset
    text = (root / "manifest.json").read_text().replace('"schema_version": 2', '"schema_version": 1')
    (root / "manifest.json").write_text(text)
    with pytest.raises(ValueError, match=r"schema_version 1 is an older shard format .* re-ingest the dataset"):
        ShardReader(str(root), "train")


# --- broken blocks: each error names the shard file and the block key ---------------------------------

def broken_block(root: Path, fix, block_size: int = 4) -> ShardReader:
    """A one-shard train split of 6 users (blocks b0, b1) whose members pass through ``fix(name, value)``."""
    samples = train_samples(6, seed=0)
    members = []
    for index, lo in enumerate(range(0, 6, block_size)):
        members += block_members("train", index, [m for _, m in samples[lo:lo + block_size]])
    members = [m for m in (fix(n, b) for n, b in members) if m is not None]
    entry = write_tar(root, "train/train-00000.tar", members)
    entry.update(samples=6, blocks=-(-6 // block_size))
    write_manifest(root, {"train": [entry]}, block_size)
    return ShardReader(str(root), "train")


def replace(target: str, value):
    return lambda n, b: (n, encode(n, value) if isinstance(value, (np.ndarray, dict, list)) else value) \
        if n == target else (n, b)


@pytest.mark.parametrize("fix, message", [
    (replace("b0000000001.users.npy", np.array([5, 7], dtype=np.int64)),
     r"users\.npy holds ids \[5, 7\]\.\.\[7\], expected the consecutive ids 5\.\.6"),
    (replace("b0000000000.users.npy", np.arange(2, 6, dtype=np.int64)),
     r"users\.npy holds ids \[2, 3, 4\]\.\.\[5\], expected the consecutive ids 1\.\.4"),
    (replace("b0000000000.users.npy", np.arange(1, 5, dtype=np.int32)), r"member 'users\.npy' is int32 \[4\], "
                                                                      r"expected int64 \[4\]"),
    (replace("b0000000001.offsets.npy", np.array([0, 5, 3], dtype=np.int64)), r"offsets\.npy must start at 0 and grow"),
    (replace("b0000000001.items.npy", np.arange(40, dtype=np.int32)), r"member 'items\.npy' is int32 \[40\]"),
    (replace("b0000000001.json", {"block": 1, "first_user": 5, "last_user": 7, "n": 2}), r"json .* differs from"),
    (lambda n, b: None if n == "b0000000001.raw_users.npy" else (n, b), r"members \[.*\], expected"),
    (lambda n, b: (n.replace("b0000000001", "b0000000002"), b), r"found where block b0000000001 belongs"),
])
def test_broken_blocks_are_refused_naming_shard_and_block(tmp_path, fix, message):
    reader = broken_block(tmp_path, fix)
    with pytest.raises(ShardFormatError, match=r"train-00000\.tar: block b000000000\d: " + message):
        list(reader.iter_chunks([Chunk(0, 6, None, 0, 6)]))


def test_block_counts_must_match_the_manifest(tmp_path):
    reader = broken_block(tmp_path, lambda n, b: (n, b), block_size=4)
    entry = load_manifest(str(tmp_path)).data["splits"]["train"]["shards"][0]
    entry["blocks"] = 3
    write_manifest(tmp_path, {"train": [entry]}, 4)
    with pytest.raises(ValueError, match=r"train-00000\.tar lists 3 blocks; 6 samples at 4 per block make 2"):
        ShardReader(str(tmp_path), "train")
    reader = broken_block(tmp_path, lambda n, b: None if n.startswith("b0000000001") else (n, b))
    with pytest.raises(ShardFormatError, match=r"train-00000\.tar: ends after 1 samples, the manifest says 2"):
        list(reader.iter_chunks([Chunk(0, 6, None, 0, 6)]))


def test_chunks_must_lie_inside_one_shard(dataset):
    root, _ = dataset
    reader = ShardReader(str(root), "train", manifest=load_manifest(str(root)))
    for chunk in (Chunk(5, 9, None, 0, 4), Chunk(20, 22, None, 0, 2)):
        with pytest.raises(ValueError, match="not inside one shard of split 'train'"):
            list(reader.iter_chunks([chunk]))


def test_helper_writes_deterministic_shards(tmp_path):
    samples = train_samples(6, seed=4)
    first = write_blocked_split(tmp_path / "a", "train", samples, [4, 2])
    second = write_blocked_split(tmp_path / "b", "train", samples, [4, 2])
    assert [e["sha256"] for e in first] == [e["sha256"] for e in second]
    with tarfile.open(tmp_path / "a" / first[1]["path"]) as tar:
        infos = tar.getmembers()
    assert [i.name for i in infos[:2]] == ["b0000000001.json", "b0000000001.users.npy"]
    assert all((i.mtime, i.uid, i.gid, i.uname, i.gname) == (0, 0, 0, "", "") for i in infos)
