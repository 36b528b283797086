"""``ShardReader`` against tiny spec-conformant shards (``tests/helpers/shards.py``), and broken ones."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from mvrec_dist.data.manifest import load_manifest
from mvrec_dist.data.reader import (Chunk, ShardFormatError, ShardReader, epoch_plan, eval_plan, iter_indices,
                                    redistribute, skip_consumed)
from tests.helpers.shards import (encode, sample_members, train_dataset, train_samples, user_key, write_manifest,
                                  write_split, write_tar)

COUNTS = [7, 0, 5, 9]


@pytest.fixture()
def dataset(tmp_path: Path):
    return tmp_path, train_dataset(tmp_path, COUNTS, seed=3)


def assert_same(sample, expected) -> None:
    key, members = expected
    assert sample.key == key
    assert set(sample.members) == set(members)
    np.testing.assert_array_equal(sample.members["items.npy"], members["items.npy"])
    assert sample.members["items.npy"].dtype == np.int32
    assert sample.members["json"] == members["json"]


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


def test_members_not_asked_for_are_skipped_undecoded(dataset):
    root, samples = dataset
    reader = ShardReader(str(root), "train", members={"json"})
    got = list(reader.iter_chunks([Chunk(7, 12, None, 1, 3)]))
    assert [g for g, _ in got] == [8, 9, 10]
    assert [s.members for _, s in got] == [{"json": samples[g][1]["json"]} for g in (8, 9, 10)]
    assert reader.stats.skipped == 1


def test_chunks_in_any_order_including_backwards(dataset):
    """Chunks that go back inside a shard re-open it; a partial shuffled chunk decodes only its samples."""
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
    chunk = Chunk(12, 21, 5, 2, 3)
    offsets = chunk.offsets()
    list(reader.iter_chunks([chunk]))
    assert reader.stats.decoded == 3
    assert reader.stats.skipped == offsets.max() - 3 + 1


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
    ours = [s for _, s in reader.iter_chunks(eval_plan(COUNTS, num_consumers=1)[0])]
    urls = [str(root / s.path) for s in reader.shards if s.samples]
    theirs = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert [s.key for s in ours] == [t["__key__"] for t in theirs]
    for s, t in zip(ours, theirs):
        np.testing.assert_array_equal(s.members["items.npy"], np.load(io.BytesIO(t["items.npy"]), allow_pickle=False))
        assert encode("json", s.members["json"]) == t["json"]


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_tar_variants_and_large_members(tmp_path, fmt):
    """Long names (pax / GNU records) and members larger than the read block, decoded and skipped."""
    big = np.arange(5000, dtype=np.int64).reshape(100, 50)
    long_ext = "x" * (60 if fmt == tarfile.USTAR_FORMAT else 120) + ".txt"
    samples = [(user_key(1), {"big.npy": big, long_ext: "héllo"}), (user_key(2), {"big.npy": big[:3], "json": [1]})]
    members = [m for key, value in samples for m in sample_members(key, value)]
    entry = write_tar(tmp_path, "train/train-00000.tar", members, fmt=fmt)
    with tarfile.open(tmp_path / entry["path"]) as tar:
        assert len(tar.getmembers()) == 4
    write_manifest(tmp_path, {"train": [entry]})
    for wanted in (None, {"json", long_ext}):
        got = [s for _, s in ShardReader(str(tmp_path), "train", members=wanted,
                                         block_bytes=4096).iter_chunks([Chunk(0, 2, None, 0, 2)])]
        if wanted is None:
            np.testing.assert_array_equal(got[0].members["big.npy"], big)
            assert got[0].members["big.npy"].flags.writeable
            np.testing.assert_array_equal(got[1].members["big.npy"], big[:3])
        assert got[0].members[long_ext] == "héllo" and got[1].members["json"] == [1]


def test_directory_entries_prefixed_names_and_fortran_arrays(tmp_path):
    fortran = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4))
    key = "d" * 90 + "/" + user_key(1)  # over 100 characters: ustar splits it into prefix and name
    path = tmp_path / "train" / "train-00000.tar"
    path.parent.mkdir()
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        directory = tarfile.TarInfo("d" * 90)
        directory.type = tarfile.DIRTYPE
        tar.addfile(directory)
        for name, data in sample_members(key, {"a.npy": fortran, "json": {"k": 1}}):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = path.read_bytes()
    write_manifest(tmp_path, {"train": [{"path": "train/train-00000.tar", "samples": 1, "bytes": len(raw),
                                         "sha256": "-"}]})
    (_, sample), = ShardReader(str(tmp_path), "train").iter_chunks([Chunk(0, 1, None, 0, 1)])
    assert sample.key == key
    np.testing.assert_array_equal(sample.members["a.npy"], fortran)
    assert sample.members["json"] == {"k": 1}


# --- broken shards: each error names the shard file and the sample key ---------------------------------

def broken_shard(root: Path, members, samples: int | None = None, **manifest_fix) -> ShardReader:
    entry = write_tar(root, "train/train-00000.tar", members)
    if samples is not None:
        entry["samples"] = samples
    entry.update(manifest_fix)
    write_manifest(root, {"train": [entry]})
    return ShardReader(str(root), "train")


def read_all(reader: ShardReader) -> list:
    return list(reader.iter_chunks(eval_plan(reader.shard_counts, num_consumers=1)[0]))


def members_of(*users: int) -> list[tuple[str, bytes]]:
    samples = dict(train_samples(max(users), seed=0))
    return [m for u in users for m in sample_members(user_key(u), samples[user_key(u)])]


def test_non_adjacent_members_are_refused(tmp_path):
    a, b = members_of(1), members_of(2)
    reader = broken_shard(tmp_path, [a[0]] + b + [a[1]], samples=2)
    with pytest.raises(ShardFormatError, match=r"train-00000\.tar: sample u0000000001 has members that are not "
                                               r"adjacent"):
        read_all(reader)


def test_keys_out_of_order_are_refused(tmp_path):
    reader = broken_shard(tmp_path, members_of(1, 3) + members_of(2))
    with pytest.raises(ShardFormatError, match=r"train-00000\.tar: sample u0000000002 comes after sample "
                                               r"u0000000003: keys are not in ascending order"):
        read_all(reader)


@pytest.mark.parametrize("claimed, message", [
    (4, r"train-00000\.tar: ends after 3 samples, the manifest says 4"),
    (2, r"train-00000\.tar: sample u0000000003 has more than the manifest's 2 samples"),
])
def test_sample_count_must_match_the_manifest(tmp_path, claimed, message):
    reader = broken_shard(tmp_path, members_of(1, 2, 3), samples=claimed)
    with pytest.raises(ShardFormatError, match=message):
        read_all(reader)


def test_pickled_npy_is_refused(tmp_path):
    out = io.BytesIO()
    np.save(out, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    reader = broken_shard(tmp_path, members_of(1) + [("u0000000002.items.npy", out.getvalue())])
    with pytest.raises(ShardFormatError, match=r"train-00000\.tar: sample u0000000002 member 'items\.npy': .* "
                                               r"only pickle can load; refused"):
        read_all(reader)


@pytest.mark.parametrize("member, message", [
    (("u0000000002.json", b"{not json"), r"sample u0000000002 member 'json': invalid JSON"),
    (("u0000000002.txt", b"\xff\xfe"), r"sample u0000000002 member 'txt': text is not valid UTF-8"),
    (("u0000000002.items.npy", encode("npy", np.arange(4, dtype=np.int32))[:-4]),
     r"sample u0000000002 member 'items\.npy': \.npy data is 12 bytes, header says 4 x 4"),
    (("u0000000002.pickle", b"\x80\x04K\x01."), r"sample u0000000002 member 'pickle': extension 'pickle' is not "
                                                r"a safe shard encoding"),
    (("u0000000002", b"{}"), r"while reading sample u0000000001: member 'u0000000002' has no "
                                       r"<key>\.<extension> name"),
])
def test_bad_members_are_refused_with_shard_and_key(tmp_path, member, message):
    reader = broken_shard(tmp_path, members_of(1) + [member])
    with pytest.raises(ShardFormatError, match=r"train-00000\.tar: " + message):
        read_all(reader)


def test_duplicate_members_and_unsafe_extensions_are_refused_even_when_skipped(tmp_path):
    a = members_of(1)
    reader = broken_shard(tmp_path, a + [a[1]], samples=1)
    with pytest.raises(ShardFormatError, match=r"sample u0000000001 member 'json' appears twice"):
        read_all(reader)
    reader = broken_shard(tmp_path, a + [("u0000000001.pkl", b"x")])
    reader = ShardReader(str(tmp_path), "train", members={"json"})
    with pytest.raises(ShardFormatError, match=r"sample u0000000001 member 'pkl': extension 'pkl'"):
        read_all(reader)


def test_truncated_or_replaced_shards_are_refused(tmp_path):
    reader = broken_shard(tmp_path, members_of(1, 2))
    path = tmp_path / "train" / "train-00000.tar"
    raw = path.read_bytes()
    path.write_bytes(raw[:1536])
    with pytest.raises(ShardFormatError, match=r"train-00000\.tar: 1536 bytes, the manifest says \d+ \(truncated"):
        read_all(reader)
    # a manifest that agrees with the short file: the parser itself must notice
    for cut, what in [(1536, "json"), (1000, "items.npy"), (1700, "json")]:
        path.write_bytes(raw[:cut])
        write_manifest(tmp_path, {"train": [{"path": "train/train-00000.tar", "samples": 2, "bytes": cut,
                                             "sha256": "-"}]})
        with pytest.raises(ShardFormatError, match=r"train-00000\.tar: while reading sample u0000000001: truncated"):
            read_all(ShardReader(str(tmp_path), "train"))
    # end-of-archive blocks are optional, as for tarfile: a file cut right after its last member reads
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        last = tar.getmembers()[-1]
    end = last.offset_data + (last.size + 511) // 512 * 512
    assert len(raw) - end >= 1024 and raw[end:] == bytes(len(raw) - end)
    path.write_bytes(raw[:end])
    write_manifest(tmp_path, {"train": [{"path": "train/train-00000.tar", "samples": 2, "bytes": end, "sha256": "-"}]})
    assert [s.key for _, s in read_all(ShardReader(str(tmp_path), "train"))] == [user_key(1), user_key(2)]


def test_chunks_must_lie_inside_one_shard(dataset):
    root, _ = dataset
    reader = ShardReader(str(root), "train", manifest=load_manifest(str(root)))
    for chunk in (Chunk(5, 9, None, 0, 4), Chunk(20, 22, None, 0, 2)):
        with pytest.raises(ValueError, match="not inside one shard of split 'train'"):
            list(reader.iter_chunks([chunk]))


def test_helper_writes_deterministic_shards(tmp_path):
    samples = train_samples(6, seed=4)
    first = write_split(tmp_path / "a", "train", samples, [4, 2])
    second = write_split(tmp_path / "b", "train", samples, [4, 2])
    assert [e["sha256"] for e in first] == [e["sha256"] for e in second]
    with tarfile.open(tmp_path / "a" / first[0]["path"]) as tar:
        infos = tar.getmembers()
    assert [i.name for i in infos[:2]] == ["u0000000001.items.npy", "u0000000001.json"]
    assert all((i.mtime, i.uid, i.gid, i.uname, i.gname) == (0, 0, 0, "", "") for i in infos)
