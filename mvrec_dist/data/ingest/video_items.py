"""One content shard: decode the videos of a range of dense items, render and write the tar.

Per item ``i`` with raw id ``r`` the video is ``<video.videos>/<r>.mp4``, decoded by
``mvrec_dist.data.video`` (keyframe seeks, ``sample_timestamps`` of ``video.mode``,
``resize_center_crop`` to ``video.size``). A video that cannot be used leaves the item ID-only
with a reason, classified as ``missing`` (no such file), ``empty`` (0 bytes, zero duration, no
frames) or ``unreadable`` (anything else the decoder refuses); with ``video.on_missing=error``
the first one stops the job naming the file. With ``video.synthetic_missing`` an item whose file
does not exist gets seeded noise frames instead (``source: "synthetic"``): they exercise the
content path end to end in CI-sized runs but carry no information about any video.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from mvrec_dist.data.ingest.array_shards import render_array_shard
from mvrec_dist.data.ingest.errors import IngestError
from mvrec_dist.data.ingest.tar_writer import write_bytes
from mvrec_dist.data.video import VideoDecodeError, VideoReader, sample_timestamps

__all__ = ["ShardResult", "reason_kind", "synthetic_frames", "decode_item", "write_content_shard",
           "content_shard_path", "FRAMES_MEMBER"]

FRAMES_MEMBER = "frames.npy"


def content_shard_path(content_dir: str, index: int) -> str:
    """Relative path of content shard ``index`` inside the generation directory ``content_dir``."""
    return f"{content_dir}/content-{index:05d}.tar"


def reason_kind(reason: str) -> str:
    """Classify a ``VideoDecodeError`` reason as ``missing``, ``empty`` or ``unreadable``."""
    if reason == "file not found":
        return "missing"
    if reason.startswith(("empty file", "zero-length", "the video stream holds no frames")):
        return "empty"
    return "unreadable"


def synthetic_frames(seed: int, raw_item: int, frames: int, size: int) -> np.ndarray:
    """Deterministic noise frames for an item without a video file (``video.synthetic_missing``).

    Args:
        seed: ``video.synthetic_seed``.
        raw_item: Raw item id (so the frames do not depend on the dense numbering).
        frames: F.
        size: S.

    Returns:
        ``uint8 [F, S, S, 3]``, uniform noise: no content signal, only a fixed per-item pattern.
    """
    rng = np.random.default_rng([int(seed), int(raw_item)])
    return rng.integers(0, 256, size=(frames, size, size, 3), dtype=np.uint8)


def decode_item(uri: str, name: str, video: dict) -> tuple[np.ndarray, dict]:
    """Decode one video's frames as ``video`` (a ``VideoIngestConfig`` as a dict) asks.

    Args:
        uri: The file (local path or URI).
        name: File name for the sample's ``source`` and for errors.
        video: The video ingest settings.

    Returns:
        ``(uint8 [F, S, S, 3] frames, json fields)``.

    Raises:
        VideoDecodeError: naming the file and the reason.
    """
    with VideoReader(uri, name=name) as reader:
        ts = sample_timestamps(reader.info, frames=video["frames"], mode=video["mode"], clips=video["clips"],
                               frames_per_clip=video["frames_per_clip"])
        frames = reader.frames_at(ts, video["size"])
        info = reader.info
    # Exact floats (json keeps the shortest round-tripping repr): a timestamp can sit exactly on a
    # frame's start (uniform sampling of a 862-frame, 30 fps video puts one at 431/30 s), and any
    # rounding would move it onto the next frame.
    return frames, {"timestamps_s": [float(t) for t in ts], "mode": video["mode"], "source": name,
                    "duration_s": round(info.duration, 6), "codec": info.codec}


@dataclass
class ShardResult:
    """What one content shard task did."""

    shard: int
    entry: dict
    """Manifest shard entry: path, samples, bytes, sha256."""
    ids: list[int]
    """Dense ids with content, ascending."""
    offsets: list[int]
    """Byte offset of each one's frame data in the tar."""
    decoded: int = 0
    synthetic: int = 0
    id_only: list[dict] = field(default_factory=list)
    """``{"item", "raw_item", "source", "kind", "reason"}`` per item left ID-only."""
    seconds: float = 0.0


def write_content_shard(*, root: str, content_dir: str, shard: int, first: int, raw_items: np.ndarray,
                        titles: list[str], video: dict) -> ShardResult:
    """Decode the items ``first .. first + len(raw_items) - 1`` and write their content shard.

    Args:
        root: Dataset directory.
        content_dir: Generation directory relative to ``root`` (``content/g0001``).
        shard: Shard index.
        first: Dense id of the first item of the shard's range.
        raw_items: Raw id of every item of the range, int64 [K].
        titles: Title of every item of the range (the items split's ``txt``).
        video: ``VideoIngestConfig`` as a dict.

    Returns:
        The ``ShardResult``.

    Raises:
        IngestError: with ``on_missing='error'``, naming the first unusable file and why.
    """
    t0 = time.perf_counter()
    videos = video["videos"].rstrip("/")
    frames_per_item = video["frames"] if video["mode"] == "uniform" else video["clips"] * video["frames_per_clip"]
    ids, arrays, metas, texts = [], [], [], []
    result = ShardResult(shard=shard, entry={}, ids=[], offsets=[])
    for k, raw in enumerate(np.asarray(raw_items).tolist()):
        dense = first + k
        name = f"{raw}.mp4"
        uri = f"{videos}/{name}"
        try:
            frames, meta = decode_item(uri, uri, video)
            meta["source"] = name
            result.decoded += 1
        except VideoDecodeError as exc:
            kind = reason_kind(exc.reason)
            if kind == "missing" and video["synthetic_missing"]:
                frames = synthetic_frames(video["synthetic_seed"], raw, frames_per_item, video["size"])
                meta = {"timestamps_s": [], "mode": "synthetic", "source": "synthetic",
                        "synthetic_seed": video["synthetic_seed"]}
                result.synthetic += 1
            elif video["on_missing"] == "error":
                raise IngestError(f"{uri}: {exc.reason} (item {dense}, raw item {raw}); video.on_missing=error "
                                  "stops the job (set video.on_missing=id_only to keep such items ID-only)") from None
            else:
                result.id_only.append({"item": dense, "raw_item": raw, "source": name, "kind": kind,
                                       "reason": exc.reason})
                continue
        ids.append(dense)
        arrays.append(frames)
        metas.append({"item": dense, "raw_item": raw, **meta})
        texts.append(titles[k])
    data, offsets = render_array_shard(ids, FRAMES_MEMBER, arrays, metas, texts)
    path = content_shard_path(content_dir, shard)
    result.entry = {"path": path, "samples": len(ids), **write_bytes(f"{root.rstrip('/')}/{path}", data)}
    result.ids, result.offsets = ids, offsets.tolist()
    result.seconds = time.perf_counter() - t0
    return result

