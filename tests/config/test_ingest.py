"""Tests of the video ingestion settings (mvrec_dist.config.ingest.VideoIngestConfig)."""

from __future__ import annotations

import pytest

from mvrec_dist.config import ConfigError, IngestConfig, IngestJobConfig, VideoIngestConfig, load_config
from mvrec_dist.config.fields import field_doc


def test_frames_per_item_follows_the_mode():
    assert VideoIngestConfig(frames=5).frames_per_item == 5
    assert VideoIngestConfig(mode="clips", clips=4, frames_per_clip=2).frames_per_item == 8


@pytest.mark.parametrize("override, message", [
    ("video.shard_max_samples=0", "video.shard_max_samples: must be >= 1"),
    ("video.size=4", "video.size: must be >= 8"),
    ("video.on_missing=skip", "video.on_missing"),
])
def test_bad_video_settings_name_their_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(IngestJobConfig, None, ["ingest.input=x", "video.enabled=true", "video.videos=v", override])


def test_video_needs_a_directory_when_enabled():
    with pytest.raises(ConfigError, match="video.videos: must be set when video.enabled is true"):
        load_config(IngestJobConfig, None, ["ingest.input=x", "video.enabled=true"])


def test_duplicates_default_to_error_and_accept_keep_and_drop():
    assert IngestConfig().duplicates == "error"
    for policy in ("keep", "drop", "error"):
        cfg = load_config(IngestJobConfig, None, ["ingest.input=x", f"ingest.duplicates={policy}"])
        assert cfg.ingest.duplicates == policy
    with pytest.raises(ConfigError, match="ingest.duplicates"):
        load_config(IngestJobConfig, None, ["ingest.input=x", "ingest.duplicates=merge"])


def test_the_duplicates_doc_states_the_default_and_each_value():
    doc = field_doc(IngestConfig, "duplicates")
    assert all(word in doc for word in ("'keep'", "'drop'", "'error'", "several lines", "exact duplicate", "default"))
