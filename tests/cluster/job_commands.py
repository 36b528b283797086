"""Checks shared by the cluster-config tests: a job command line names a job of this repo and a preset
that loads, with its overrides, into that job's config class."""

from __future__ import annotations

import shlex
import string
from pathlib import Path
from typing import Any

import pytest

from mvrec_dist.config import IngestJobConfig, TrainJobConfig, load_config

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"

# The job entrypoints and the config class each one loads its preset into.
JOBS = {"jobs/ingest_microlens.py": IngestJobConfig, "jobs/train_videorec.py": TrainJobConfig}


def parse_job_command(command: str, variables: dict[str, str] | None = None) -> tuple[str, str, list[str]]:
    """Split ``python jobs/<job>.py --config <preset> [key=value ...]`` into its parts.

    Args:
        command: The command line, possibly with ``$VAR`` references.
        variables: Values substituted for ``$VAR`` before splitting.

    Returns:
        ``(job script, preset path, overrides)``, paths relative to the repo.
    """
    text = string.Template(command).substitute(variables or {})
    argv = shlex.split(text)
    assert argv[:1] == ["python"], f"job command must run `python jobs/...`: {command}"
    assert len(argv) >= 4 and argv[2] == "--config", f"job command must pass --config <preset>: {command}"
    script, preset, overrides = argv[1], argv[3], argv[4:]
    assert script in JOBS, f"{script} is not one of this repo's jobs {sorted(JOBS)}"
    assert all("=" in o and not o.startswith("-") for o in overrides), f"overrides must be key=value: {overrides}"
    return script, preset, overrides


def load_job_config(command: str, variables: dict[str, str] | None = None) -> Any:
    """Load the config a job command would run with (its preset plus overrides)."""
    script, preset, overrides = parse_job_command(command, variables)
    assert (REPO / preset).is_file(), f"preset {preset} does not exist in the repo"
    assert preset.startswith("jobs/configs/"), f"presets live under jobs/configs/: {preset}"
    return load_config(JOBS[script], REPO / preset, overrides)


def require_job_script(script: str) -> Path:
    """The job file in the repo; skips the calling test while the job has not landed yet."""
    path = REPO / script
    if not path.is_file():
        pytest.skip(f"{script} does not exist yet (the job lands with its own issue); the cluster configs "
                    "already name it and load its preset")
    return path
