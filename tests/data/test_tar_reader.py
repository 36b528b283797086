"""The tar parser under ``ShardReader`` (``mvrec_dist.data.tar_reader.TarCursor``), through per-item splits.

Per-item splits (``content``) keep one tar sample per row, so they exercise the generic parser
directly: tar variants (pax, GNU, ustar prefixes, directories), members larger than the read
size, and every structural error, each named by shard file and sample key.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from mvrec_dist.data.reader import Chunk, ShardFormatError, ShardReader, eval_plan, iter_indices
from tests.helpers.shards import encode, sample_members, train_samples, user_key, write_manifest, write_split, write_tar


def content_reader(root: Path, members, samples: int | None = None, **manifest_fix) -> ShardReader:
    entry = write_tar(root, "content/content-00000.tar", members)
    if samples is not None:
        entry["samples"] = samples
    entry.update(manifest_fix)
    write_manifest(root, {"content": [entry]})
    return ShardReader(str(root), "content")


def read_all(reader: ShardReader) -> list:
    return list(reader.iter_chunks(eval_plan(reader.shard_counts, num_consumers=1)[0]))


def members_of(*users: int) -> list[tuple[str, bytes]]:
    samples = dict(train_samples(max(users), seed=0))
    return [m for u in users for m in sample_members(user_key(u), samples[user_key(u)])]


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_tar_variants_and_large_members(tmp_path, fmt):
    """Long names (pax / GNU records) and members larger than the read block, decoded and skipped."""
    big = np.arange(5000, dtype=np.int64).reshape(100, 50)
    long_ext = "x" * (60 if fmt == tarfile.USTAR_FORMAT else 120) + ".txt"
    samples = [(user_key(1), {"big.npy": big, long_ext: "héllo"}), (user_key(2), {"big.npy": big[:3], "json": [1]})]
    members = [m for key, value in samples for m in sample_members(key, value)]
    entry = write_tar(tmp_path, "content/content-00000.tar", members, fmt=fmt)
    with tarfile.open(tmp_path / entry["path"]) as tar:
        assert len(tar.getmembers()) == 4
    write_manifest(tmp_path, {"content": [entry]})
    for wanted in (None, {"json", long_ext}):
        got = [s for _, s in ShardReader(str(tmp_path), "content", members=wanted,
                                         block_bytes=4096).iter_chunks([Chunk(0, 2, None, 0, 2)])]
        if wanted is None:
            np.testing.assert_array_equal(got[0].members["big.npy"], big)
            assert got[0].members["big.npy"].flags.writeable
            np.testing.assert_array_equal(got[1].members["big.npy"], big[:3])
        assert got[0].members[long_ext] == "héllo" and got[1].members["json"] == [1]


def test_directory_entries_prefixed_names_and_fortran_arrays(tmp_path):
    fortran = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4))
    key = "d" * 90 + "/" + user_key(1)  # over 100 characters: ustar splits it into prefix and name
    path = tmp_path / "content" / "content-00000.tar"
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
    write_manifest(tmp_path, {"content": [{"path": "content/content-00000.tar", "samples": 1, "bytes": len(raw),
                                           "sha256": "-"}]})
    (_, sample), = ShardReader(str(tmp_path), "content").iter_chunks([Chunk(0, 1, None, 0, 1)])
    assert sample.key == key
    np.testing.assert_array_equal(sample.members["a.npy"], fortran)
    assert sample.members["json"] == {"k": 1}


def test_per_item_splits_read_sample_by_sample(tmp_path):
    samples = train_samples(9, seed=5)
    write_manifest(tmp_path, {"content": write_split(tmp_path, "content", samples, [4, 5])})
    reader = ShardReader(str(tmp_path), "content", members={"json"})
    got = list(reader.iter_chunks([Chunk(4, 9, 7, 1, 3), Chunk(0, 4, None, 1, 2)]))
    assert [g for g, _ in got] == list(iter_indices([Chunk(4, 9, 7, 1, 3), Chunk(0, 4, None, 1, 2)]))
    assert all(s.members == {"json": samples[g][1]["json"]} for g, s in got)
    with pytest.raises(ValueError, match="not blocked"):
        list(reader.iter_blocks())


def test_non_adjacent_members_are_refused(tmp_path):
    a, b = members_of(1), members_of(2)
    reader = content_reader(tmp_path, [a[0]] + b + [a[1]], samples=2)
    with pytest.raises(ShardFormatError, match=r"content-00000\.tar: sample u0000000001 has members that are not "
                                               r"adjacent"):
        read_all(reader)


def test_keys_out_of_order_are_refused(tmp_path):
    reader = content_reader(tmp_path, members_of(1, 3) + members_of(2))
    with pytest.raises(ShardFormatError, match=r"content-00000\.tar: sample u0000000002 comes after sample "
                                               r"u0000000003: keys are not in ascending order"):
        read_all(reader)


@pytest.mark.parametrize("claimed, message", [
    (4, r"content-00000\.tar: ends after 3 samples, the manifest says 4"),
    (2, r"content-00000\.tar: sample u0000000003 has more than the manifest's 2 samples"),
])
def test_sample_count_must_match_the_manifest(tmp_path, claimed, message):
    reader = content_reader(tmp_path, members_of(1, 2, 3), samples=claimed)
    with pytest.raises(ShardFormatError, match=message):
        read_all(reader)


def test_pickled_npy_is_refused(tmp_path):
    out = io.BytesIO()
    np.save(out, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    reader = content_reader(tmp_path, members_of(1) + [("u0000000002.items.npy", out.getvalue())])
    with pytest.raises(ShardFormatError, match=r"content-00000\.tar: sample u0000000002 member 'items\.npy': .* "
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
    reader = content_reader(tmp_path, members_of(1) + [member])
    with pytest.raises(ShardFormatError, match=r"content-00000\.tar: " + message):
        read_all(reader)


def test_duplicate_members_and_unsafe_extensions_are_refused_even_when_skipped(tmp_path):
    a = members_of(1)
    reader = content_reader(tmp_path, a + [a[1]], samples=1)
    with pytest.raises(ShardFormatError, match=r"sample u0000000001 member 'json' appears twice"):
        read_all(reader)
    content_reader(tmp_path, a + [("u0000000001.pkl", b"x")])
    reader = ShardReader(str(tmp_path), "content", members={"json"})
    with pytest.raises(ShardFormatError, match=r"sample u0000000001 member 'pkl': extension 'pkl'"):
        read_all(reader)


def test_truncated_or_replaced_shards_are_refused(tmp_path):
    reader = content_reader(tmp_path, members_of(1, 2))
    path = tmp_path / "content" / "content-00000.tar"
    raw = path.read_bytes()
    path.write_bytes(raw[:1536])
    with pytest.raises(ShardFormatError, match=r"content-00000\.tar: 1536 bytes, the manifest says \d+ \(truncated"):
        read_all(reader)
    # a manifest that agrees with the short file: the parser itself must notice
    for cut in (1536, 1000, 1700):
        path.write_bytes(raw[:cut])
        write_manifest(tmp_path, {"content": [{"path": "content/content-00000.tar", "samples": 2, "bytes": cut,
                                               "sha256": "-"}]})
        with pytest.raises(ShardFormatError, match=r"content-00000\.tar: while reading sample u0000000001: "
                                                   r"truncated"):
            read_all(ShardReader(str(tmp_path), "content"))
    # end-of-archive blocks are optional, as for tarfile: a file cut right after its last member reads
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        last = tar.getmembers()[-1]
    end = last.offset_data + (last.size + 511) // 512 * 512
    assert len(raw) - end >= 1024 and raw[end:] == bytes(len(raw) - end)
    path.write_bytes(raw[:end])
    write_manifest(tmp_path, {"content": [{"path": "content/content-00000.tar", "samples": 2, "bytes": end,
                                           "sha256": "-"}]})
    assert [s.key for _, s in read_all(ShardReader(str(tmp_path), "content"))] == [user_key(1), user_key(2)]
