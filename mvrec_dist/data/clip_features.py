"""FRAME's clip features: each video's clips as vectors of the video tower's cached per-frame features.

FRAME (SIGIR'23; released code tsinghua-fib-lab/FRAME, ``modeling_gcn.py``) starts its clip embeddings from
the clips' visual features and trains them, with a projection ``T`` after them. Here the video is ingested as
clips (``video.mode=clips``: ``clips`` runs of ``frames_per_clip`` consecutive frames, the manifest's content
``sampling``), the frozen frame CNN's per-frame output is cached once (``jobs/cache_trunk_features.py`` with
``model.content_encoder.frame_pool=none``: ``[F, C]`` per video, ``F = clips x frames_per_clip``), and a clip's
feature is the mean of its frames' vectors. ``ClipFeatureRows`` gives any block of rows of the clip table
(row ``v * clips + j`` = clip ``j`` of video ``v``; video 0, the padding id, has zero rows) straight from the
store, so every rank fills its own shards of the sharded table from the same values (``TableSpec.init_rows``).

Every video 1..N must have features: a video without them would start from a silent zero vector, so the run
is refused instead (``clip_feature_problems``; ``video.synthetic_missing`` gives missing videos seeded noise
frames, which carry no content signal and are counted in the content section).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mvrec_dist.data.content_store import ContentStore, ContentStoreError, content_section, load_features_manifest

__all__ = ["ClipFeatureRows", "clip_feature_problems", "clip_feature_dim"]


def clip_feature_dim(features_dir: str) -> int:
    """C, the width of a per-frame feature store's vectors (``[F, C]`` per item)."""
    return int(load_features_manifest(features_dir)["shape"][-1])


def clip_feature_problems(features_dir: str, manifest: Any, clips: int) -> list[str]:
    """Why ``features_dir`` cannot give the clip features of ``manifest``'s videos (empty when it can).

    Args:
        features_dir: The per-frame feature store (``data.content_features``).
        manifest: The dataset's manifest.
        clips: Clips per video the model uses (FRAME: 4).

    Returns:
        One message per problem.
    """
    section = content_section(manifest, "frames")
    root = manifest.root
    if section is None:
        return [f"{root}: has no video content; ingest it with video.mode=clips (e.g. "
                "jobs/configs/microlens-50k/ingest-video-clips.yaml) and cache its per-frame features"]
    sampling = section.get("sampling") or {}
    if sampling.get("mode") != "clips" or sampling.get("clips") != clips:
        return [f"{root}: its video content was not taken as {clips} clips (sampling {sampling or 'not recorded'}); "
                f"re-ingest it with video.mode=clips, video.clips={clips}"]
    try:
        store = ContentStore.from_features(features_dir)
    except ContentStoreError as exc:
        return [f"data.content_features: {exc}"]
    out = []
    ident = store.manifest.get("identity", {})
    if ident.get("dataset_fingerprint") != manifest.data.get("fingerprint"):
        out.append(f"data.content_features: {features_dir} was computed from another dataset (fingerprint "
                   f"{ident.get('dataset_fingerprint')!r}, {root} has {manifest.data.get('fingerprint')!r})")
    frames = clips * int(sampling["frames_per_clip"])
    if len(store.shape) != 2 or store.shape[0] != frames:
        out.append(f"data.content_features: {features_dir} holds {list(store.shape)} per item; clip features need "
                   f"one vector per frame, [{frames}, C] (model.content_encoder.frame_pool=none)")
    if store.num_items != manifest.num_items:
        out.append(f"data.content_features: {features_dir} covers {store.num_items} items, the dataset "
                   f"{manifest.num_items}")
    else:
        lacking = np.flatnonzero(~store.has(np.arange(1, manifest.num_items + 1))) + 1
        if len(lacking):
            out.append(f"data.content_features: {len(lacking)} videos have no features (first dense ids "
                       f"{lacking[:5].tolist()}); FRAME's clip table needs every video's clips "
                       "(video.synthetic_missing gives a missing video seeded noise frames)")
    return out


class ClipFeatureRows:
    """Rows of the clip table from the feature store: ``rows(r0, r1)`` -> ``float32 [r1 - r0, C]``.

    Picklable (it opens the store in the process that calls it) and the same for every caller.

    Args:
        features_dir: The per-frame feature store.
        clips: Clips per video.
    """

    def __init__(self, features_dir: str, clips: int):
        self.features_dir, self.clips = features_dir, clips
        self._store: ContentStore | None = None

    def __getstate__(self) -> dict:
        return {"features_dir": self.features_dir, "clips": self.clips, "_store": None}

    def __call__(self, row_start: int, row_end: int, *, block_items: int = 4096) -> torch.Tensor:
        """Rows ``[row_start, row_end)``: row ``v * clips + j`` is the mean of video ``v``'s clip-``j`` frames."""
        if self._store is None:
            self._store = ContentStore.from_features(self.features_dir)
        store, c = self._store, self.clips
        frames, dim = store.shape
        out = torch.zeros(row_end - row_start, dim, dtype=torch.float32)
        first, last = row_start // c, (row_end - 1) // c  # the videos of the rows (none when row_end <= row_start)
        for lo in range(max(first, 1), last + 1, block_items):  # video 0 (padding) keeps zero rows
            videos = np.arange(lo, min(lo + block_items, last + 1))
            x = store.gather(videos).astype(np.float32).reshape(len(videos), c, frames // c, dim).mean(2)
            rows = torch.from_numpy(x.reshape(-1, dim))  # rows videos[0]*c ..
            a = max(row_start, videos[0] * c)
            b = min(row_end, (videos[-1] + 1) * c)
            out[a - row_start:b - row_start] = rows[a - videos[0] * c:b - videos[0] * c]
        return out
