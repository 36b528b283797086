"""The video stage of ingestion (mvrec_dist.data.ingest.content) on the three real MicroLens videos.

A tiny interaction file whose items include the real videos' ids (1002, 10034, 10040), a garbage
file (7), a zero-length file (8) and items without any file; the videos directory holds links to
the real files in ../shared (nothing is copied) and the two bad files written here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from mvrec_dist.config import IngestJobConfig, load_config
from mvrec_dist.data.content_store import ContentStore
from mvrec_dist.data.ingest import IngestError, run_ingest_job
from mvrec_dist.data.manifest import load_manifest
from mvrec_dist.data.plan import Chunk
from mvrec_dist.data.reader import ShardReader
from mvrec_dist.data.verify import verify_dataset
from mvrec_dist.data.video import decode_frames

pytestmark = pytest.mark.integration

REAL = (1002, 10034, 10040)
ITEMS = (3, 7, 8, 9, 11, 1002, 10034, 10040)  # 3, 9, 11 have no file; 7 garbage; 8 empty
F, S = 3, 32


def _raw(root: Path, videos_src: Path) -> tuple[Path, Path, Path]:
    rng = np.random.default_rng(0)
    pairs = root / "pairs.tsv"
    pairs.write_text("".join(f"{u}\t{' '.join(map(str, rng.permutation(ITEMS)[:5]))}\n" for u in range(1, 41)))
    titles = root / "titles.csv"
    titles.write_text("item,title\n" + "".join(f'{i},"title of {i}"\n' for i in ITEMS if i != 9))
    videos = root / "videos"
    videos.mkdir()
    for i in REAL:
        os.symlink(videos_src / f"{i}.mp4", videos / f"{i}.mp4")
    (videos / "7.mp4").write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (videos / "8.mp4").write_bytes(b"")
    return pairs, titles, videos


def _cfg(root: Path, pairs: Path, titles: Path, videos: Path, *extra: str) -> IngestJobConfig:
    return load_config(IngestJobConfig, None, [
        f"ingest.input={pairs}", f"ingest.titles={titles}", f"ingest.output_dir={root / 'ds'}",
        "ingest.progress=false", "ingest.shard_max_samples=3", "video.enabled=true", f"video.videos={videos}",
        f"video.frames={F}", f"video.size={S}", "video.shard_max_samples=3", *extra])


@pytest.fixture(scope="module")
def ingested(ray_local, microlens_videos, tmp_path_factory):
    root = tmp_path_factory.mktemp("content")
    raw = _raw(root, microlens_videos)
    result = run_ingest_job(_cfg(root, *raw))
    return root, raw, result


def _dense(manifest, raw_item: int) -> int:
    items = np.load(manifest.path("maps/items.npy"))
    return int(np.searchsorted(items[1:], raw_item) + 1)


def test_frames_written_equal_a_direct_decode_at_the_same_timestamps(ingested, microlens_videos):
    root, _, _ = ingested
    m = load_manifest(str(root / "ds"))
    reader = ShardReader(m.root, "content", manifest=m)
    samples = {s.key: s.members for _, s in reader.iter_chunks(
        [Chunk(a, a + sh.samples, None, 0, sh.samples)
         for a, sh in zip(np.cumsum([0] + [s.samples for s in m.shards("content")])[:-1].tolist(), m.shards("content"))
         if sh.samples])}
    assert len(samples) == 3
    for raw in REAL:
        members = samples[f"i{_dense(m, raw):010d}"]
        meta = members["json"]
        assert meta["raw_item"] == raw and meta["source"] == f"{raw}.mp4" and meta["mode"] == "uniform"
        assert len(meta["timestamps_s"]) == F and members["txt"] == f"title of {raw}"
        direct = decode_frames(str(microlens_videos / f"{raw}.mp4"), meta["timestamps_s"], S)
        assert members["frames.npy"].dtype == np.uint8 and members["frames.npy"].shape == (F, S, S, 3)
        np.testing.assert_array_equal(members["frames.npy"], direct)
        # ... and the training store reads the same bytes through the index
        np.testing.assert_array_equal(ContentStore.from_dataset(m).gather(np.array([_dense(m, raw)]))[0], direct)


def test_counts_reconcile_and_every_id_only_item_is_listed_with_its_reason(ingested):
    root, _, result = ingested
    c = result.manifest["content"]
    assert c["counts"] == {"items": 8, "with_content": 3, "decoded": 3, "synthetic": 0, "id_only": 5,
                           "id_only_by_kind": {"missing": 3, "empty": 1, "unreadable": 1}}
    listed = {e["raw_item"]: e for e in c["id_only_items"]}
    assert set(listed) == {3, 7, 8, 9, 11}
    assert listed[3]["kind"] == "missing" and listed[3]["reason"] == "file not found"
    assert listed[8]["kind"] == "empty" and "0 bytes" in listed[8]["reason"]
    assert listed[7]["kind"] == "unreadable" and listed[7]["source"] == "7.mp4"
    m = load_manifest(str(root / "ds"))
    assert m.data["splits"]["content"]["samples"] == 3
    assert [s.path for s in m.shards("content")] == [f"content/g0001/content-{j:05d}.tar" for j in range(3)]
    store = ContentStore.from_dataset(m)
    assert store.has(np.arange(9)).sum() == 3 and not store.has(np.array([0]))[0]
    assert verify_dataset(str(root / "ds")) == []


def test_verify_catches_a_damaged_content_shard(ingested, tmp_path):
    import shutil

    root, _, _ = ingested
    copy = tmp_path / "ds"
    shutil.copytree(root / "ds", copy, symlinks=True)
    m = load_manifest(str(copy))
    shard = next(s for s in m.shards("content") if s.samples)
    data = bytearray((copy / shard.path).read_bytes())
    data[2048] ^= 0xFF
    (copy / shard.path).write_bytes(bytes(data))
    problems = verify_dataset(str(copy))
    assert any(shard.path in p and "sha256" in p for p in problems), problems


def test_content_is_added_to_an_existing_dataset_and_replaced_atomically(ray_local, microlens_videos, tmp_path):
    raw = _raw(tmp_path, microlens_videos)
    plain = load_config(IngestJobConfig, None, [f"ingest.input={raw[0]}", f"ingest.titles={raw[1]}",
                                                f"ingest.output_dir={tmp_path / 'ds'}", "ingest.progress=false",
                                                "ingest.shard_max_samples=3"])
    run_ingest_job(plain)
    before = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    train_shard = tmp_path / "ds" / before["splits"]["train"]["shards"][0]["path"]
    mtime = train_shard.stat().st_mtime_ns
    first = run_ingest_job(_cfg(tmp_path, *raw, "video.on_missing=id_only"))
    assert "reused" in first.timings and train_shard.stat().st_mtime_ns == mtime  # interactions not redone
    after = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert {k: v for k, v in after.items() if k not in ("splits", "content", "files", "config")} == \
        {k: v for k, v in before.items() if k not in ("splits", "content", "files", "config")}
    assert after["splits"]["train"] == before["splits"]["train"] and after["content"]["generation"] == 1
    assert verify_dataset(str(tmp_path / "ds")) == []
    # Again with other frames: a new generation replaces the old one, which is deleted afterwards.
    second = run_ingest_job(_cfg(tmp_path, *raw, "video.frames=2"))
    assert second.manifest["content"]["generation"] == 2 and second.manifest["content"]["shape"][0] == 2
    assert not (tmp_path / "ds" / "content" / "g0001").exists()
    assert verify_dataset(str(tmp_path / "ds")) == []


def test_on_missing_error_stops_naming_the_file_and_leaves_the_dataset_unchanged(ray_local, microlens_videos,
                                                                                  tmp_path):
    raw = _raw(tmp_path, microlens_videos)
    with pytest.raises(IngestError, match=r"videos/(3|7|8|9|11)\.mp4: .*video.on_missing=error"):
        run_ingest_job(_cfg(tmp_path, *raw, "video.on_missing=error"))
    m = load_manifest(str(tmp_path / "ds"))  # the interactions were published; no content was added
    assert not m.has_split("content") and "content" not in m.data
    assert not (tmp_path / "ds" / "content").exists() or not any((tmp_path / "ds" / "content").iterdir())


def test_synthetic_frames_stand_in_for_absent_files_only(ray_local, microlens_videos, tmp_path):
    raw = _raw(tmp_path, microlens_videos)
    result = run_ingest_job(_cfg(tmp_path, *raw, "video.synthetic_missing=true", "video.mode=clips",
                                 "video.clips=2", "video.frames_per_clip=2"))
    c = result.manifest["content"]
    assert c["shape"] == [4, S, S, 3]  # clips x frames_per_clip
    assert c["counts"]["decoded"] == 3 and c["counts"]["synthetic"] == 3  # items 3, 9, 11
    assert c["counts"]["id_only_by_kind"] == {"missing": 0, "empty": 1, "unreadable": 1}
    m = load_manifest(str(tmp_path / "ds"))
    store = ContentStore.from_dataset(m)
    again = store.gather(np.array([_dense(m, 3)]))[0]
    from mvrec_dist.data.ingest.video_items import synthetic_frames

    np.testing.assert_array_equal(again, synthetic_frames(0, 3, 4, S))
    assert verify_dataset(str(tmp_path / "ds")) == []
