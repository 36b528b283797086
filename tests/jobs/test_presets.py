"""Every preset under jobs/configs/ parses and validates, and says what it is and how it is launched.

A preset is read by the job its launch line names: ``ingest_microlens.py`` with ``IngestJobConfig``,
``train_videorec.py`` and ``cache_trunk_features.py`` with ``TrainJobConfig``. Loading runs every
field check of the schema (types, ranges, cross-field rules), so a preset that would fail on a
user's machine with "one line per config problem" fails here first.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mvrec_dist.config import IngestJobConfig, TrainJobConfig, load_config

REPO = Path(__file__).resolve().parents[2]
PRESETS = sorted((REPO / "jobs" / "configs").rglob("*.yaml"))
JOB_CONFIG = {"ingest_microlens.py": IngestJobConfig, "train_videorec.py": TrainJobConfig,
              "cache_trunk_features.py": TrainJobConfig, "build_neighbours.py": TrainJobConfig,
              "train_popularity.py": TrainJobConfig}
LAUNCH = re.compile(r"python jobs/(\w+\.py) --config (jobs/configs/\S+\.yaml)")


def _header(path: Path) -> str:
    lines = path.read_text().splitlines()
    return "\n".join(line for line in lines[:next(i for i, line in enumerate(lines) if not line.startswith("#"))])


def test_the_presets_are_found():
    assert len(PRESETS) >= 18 and all(p.suffix == ".yaml" for p in PRESETS)


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: str(p.relative_to(REPO / "jobs" / "configs")))
def test_every_preset_loads_with_the_config_of_the_job_that_launches_it(path):
    header = _header(path)
    assert len(header.splitlines()) >= 2, f"{path.name}: must start with comments saying what it is and how to launch it"
    launches = [(job, preset) for job, preset in LAUNCH.findall(header) if preset == str(path.relative_to(REPO))]
    assert launches, f"{path.name}: its header names no `python jobs/<job>.py --config {path.relative_to(REPO)}`"
    for job, _ in launches:
        assert (REPO / "jobs" / job).is_file(), f"{path.name}: names jobs/{job}, which does not exist"
        cfg = load_config(JOB_CONFIG[job], path)
        assert isinstance(cfg, JOB_CONFIG[job])
