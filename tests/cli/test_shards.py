"""``mvrec shards verify`` exit codes (0 verified, 1 problems, 2 not a dataset) and ``shards inspect``,
run as a user runs them, on a tiny dataset ingested once with Ray Data."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def mvrec(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mvrec_dist.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def dataset(ray_local, tmp_path_factory) -> Path:
    from mvrec_dist.config.ingest import IngestConfig, SyntheticConfig
    from mvrec_dist.data.ingest import run_ingest
    from mvrec_dist.data.synthetic import generate

    raw = generate(SyntheticConfig(output=str(tmp_path_factory.mktemp("raw")), users=120, items=60,
                                   interactions=1200, chunk_users=120), use_ray=False)
    out = tmp_path_factory.mktemp("ds") / "ds"
    run_ingest(IngestConfig(input=raw, output_dir=str(out), shard_max_samples=50, progress=False))
    return out


@pytest.fixture
def copy(dataset, tmp_path) -> Path:
    return Path(shutil.copytree(dataset, tmp_path / "ds"))


class Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _first_train_shard(root: Path) -> tuple[dict, Path]:
    manifest = json.loads((root / "manifest.json").read_text())
    entry = manifest["splits"]["train"]["shards"][0]
    return entry, root / entry["path"]


def test_a_fresh_dataset_verifies(dataset):
    proc = mvrec("shards", "verify", str(dataset))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{dataset}: OK (120 users")


def test_a_corrupt_shard_exits_1(copy):
    _, shard = _first_train_shard(copy)
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 1
    shard.write_bytes(bytes(data))
    proc = mvrec("shards", "verify", str(copy))
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"{copy}: ") and "sha256" in proc.stderr


def test_a_member_that_would_unpickle_data_is_reported_not_loaded(copy, tmp_path):
    """A shard rewritten with a pickled object array, its manifest entry updated to match: only reading
    the member can tell, and the reader must refuse to unpickle it."""
    marker = tmp_path / "unpickled"
    entry, shard = _first_train_shard(copy)
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    name = next(m.name for m, _ in members if m.name.endswith(".npy"))
    bomb = io.BytesIO()
    np.save(bomb, np.array([Payload(str(marker))], dtype=object), allow_pickle=True)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            data = bomb.getvalue() if info.name == name else data
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    shard.write_bytes(out.getvalue())
    manifest = json.loads((copy / "manifest.json").read_text())
    fixed = manifest["splits"]["train"]["shards"][0]
    fixed.update(bytes=len(out.getvalue()), sha256=hashlib.sha256(out.getvalue()).hexdigest())
    (copy / "manifest.json").write_text(json.dumps(manifest))

    proc = mvrec("shards", "verify", str(copy))
    assert proc.returncode == 1
    assert entry["path"] in proc.stderr and not marker.exists()


@pytest.mark.parametrize("make", ["missing", "no-manifest", "file"])
def test_not_a_dataset_exits_2_with_one_line(tmp_path, make):
    path = tmp_path / "x"
    if make == "no-manifest":
        path.mkdir()
    elif make == "file":
        path.write_text("")
    proc = mvrec("shards", "verify", str(path))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mvrec shards verify: error: dataset={path} ")


def test_inspect_prints_the_summary_and_a_sample(dataset):
    proc = mvrec("shards", "inspect", str(dataset))
    assert proc.returncode == 0 and str(dataset) in proc.stdout
    proc = mvrec("shards", "inspect", str(dataset), "--key", "u0000000001")
    assert proc.returncode == 0, proc.stderr
