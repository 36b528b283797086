"""jobs/cache_trunk_features.py as a user runs it: help, resolved config, and settings refused before Ray starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
JOB = REPO / "jobs" / "cache_trunk_features.py"
PRESET = "jobs/configs/microlens-50k/sasrec-video-frozen-cached.yaml"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(JOB), *args], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))


def test_help_lists_the_trunk_cache_settings():
    r = run("--help")
    assert r.returncode == 0
    for text in ("trunk_cache.batch_size", "trunk_cache.use_gpu", "data.content_features"):
        assert text in r.stdout


def test_print_config_resolves_the_training_preset():
    r = run("--config", PRESET, "trunk_cache.dtype=float16", "--print-config")
    assert r.returncode == 0 and "dtype: float16" in r.stdout and "cached_trunk: true" in r.stdout


@pytest.mark.parametrize("args, message", [
    (["model.content_encoder.finetune=full", "model.content_encoder.cached_trunk=false"],
     "'full' trains every block"),
    (["data.dataset_dir=/nonexistent/ds"], "data.dataset_dir"),
])
def test_unusable_settings_exit_2_naming_them(args, message):
    r = run("--config", PRESET, *args)
    assert r.returncode == 2 and message in r.stderr and "cannot compute trunk features" in r.stderr
