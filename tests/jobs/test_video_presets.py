"""The video presets load into their job's config and say what they are and how to launch them."""

from __future__ import annotations

from pathlib import Path

import pytest

from mvrec_dist.config import IngestJobConfig, TrainJobConfig, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "jobs" / "configs"
TRAIN = sorted(CONFIGS.glob("microlens-50k/sasrec-video-*.yaml")) + sorted(CONFIGS.glob("microlens-full/sasrec-video-*.yaml"))
INGEST = [CONFIGS / "microlens-50k" / "ingest-video.yaml", CONFIGS / "microlens-full" / "ingest-video.yaml"]


@pytest.mark.parametrize("path", TRAIN, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_training_presets(path):
    cfg = load_config(TrainJobConfig, path)
    assert cfg.model.item_tower in ("content", "id+content") and cfg.model.content_encoder is not None
    header = path.read_text().split("\ndata:")[0]
    assert header.startswith("# ") and "python jobs/train_videorec.py" in header and "Expected" in header
    if cfg.model.content_encoder.cached_trunk:
        assert cfg.data.content_features and "cache_trunk_features.py" in header


@pytest.mark.parametrize("path", INGEST, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_ingest_presets(path):
    cfg = load_config(IngestJobConfig, path)
    assert cfg.video.enabled and cfg.video.videos
    assert "python jobs/ingest_microlens.py" in path.read_text().split("\ningest:")[0]


def test_the_50k_presets_read_the_video_dataset_their_ingest_preset_writes():
    ingest = load_config(IngestJobConfig, CONFIGS / "microlens-50k" / "ingest-video.yaml")
    for path in CONFIGS.glob("microlens-50k/sasrec-video-*.yaml"):
        cfg = load_config(TrainJobConfig, path)
        assert cfg.data.dataset_dir == ingest.ingest.output_dir
        enc = cfg.model.content_encoder
        assert (enc.frames, enc.size) == (ingest.video.frames_per_item, ingest.video.size)
