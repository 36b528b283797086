"""The verify tool: passes on an ingested dataset, and catches corrupted, missing and miscounted data."""

import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from mvrec_dist.config.ingest import IngestConfig, SyntheticConfig
from mvrec_dist.data.ingest import run_ingest
from mvrec_dist.data.synthetic import generate
from mvrec_dist.data.verify import main, verify_dataset

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dataset(ray_local, tmp_path_factory):
    raw = generate(SyntheticConfig(output=str(tmp_path_factory.mktemp("raw")), users=300, items=120,
                                   interactions=3000, chunk_users=300), use_ray=False)
    out = tmp_path_factory.mktemp("ds") / "ds"
    run_ingest(IngestConfig(input=raw, output_dir=str(out), shard_max_samples=100, progress=False))
    return out


@pytest.fixture
def copy(dataset, tmp_path):
    target = tmp_path / "ds"
    shutil.copytree(dataset, target)
    return target


def manifest(root):
    return json.loads((root / "manifest.json").read_text())


def rewrite_manifest(root, m):
    (root / "manifest.json").write_text(json.dumps(m))


def test_a_fresh_dataset_verifies(dataset, capsys):
    assert verify_dataset(str(dataset)) == []
    assert main([str(dataset)]) == 0
    assert "OK (300 users" in capsys.readouterr().out


def test_a_flipped_byte_is_caught(copy):
    shard = copy / "train" / "train-00001.tar"
    data = bytearray(shard.read_bytes())
    data[1000] ^= 1
    shard.write_bytes(bytes(data))
    problems = verify_dataset(str(copy))
    assert any(p.startswith("train/train-00001.tar: sha256") for p in problems)


def test_a_missing_shard_is_caught(copy):
    (copy / "test" / "test-00002.tar").unlink()
    assert "test/test-00002.tar: missing" in verify_dataset(str(copy))


def test_a_wrong_count_is_caught(copy):
    m = manifest(copy)
    m["splits"]["valid"]["shards"][0]["samples"] += 1
    m["counts"]["interactions"]["train"] -= 1
    rewrite_manifest(copy, m)
    problems = verify_dataset(str(copy))
    assert "valid/valid-00000.tar: 100 samples, manifest says 101" in problems
    assert any("interactions.train" in p for p in problems)
    assert any("train + valid + test = kept_interactions does not hold" in p for p in problems)


def test_content_is_checked_not_only_checksums(copy):
    # Re-pack a shard with one sample's members split apart and record the new checksum:
    # the hash matches, the layout does not.
    path = copy / "items" / "items-00000.tar"
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]
    members.append(members.pop(1))  # i0000000001.txt moves to the end
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for info, blob in members:
            tar.addfile(info, io.BytesIO(blob))
    m = manifest(copy)
    import hashlib
    m["splits"]["items"]["shards"][0].update(bytes=path.stat().st_size,
                                             sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    rewrite_manifest(copy, m)
    problems = verify_dataset(str(copy))
    assert any("members of sample i0000000001 are not adjacent" in p for p in problems)


def test_command_line_exit_status(copy):
    (copy / "maps" / "users.npy").write_bytes(b"junk")
    run = subprocess.run([sys.executable, "-m", "mvrec_dist.data.verify", str(copy)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "maps/users.npy" in run.stderr
    run = subprocess.run([sys.executable, "-m", "mvrec_dist.data.verify", str(copy / "nope")], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "manifest.json: not found" in run.stderr
