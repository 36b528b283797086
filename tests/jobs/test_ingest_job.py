"""jobs/ingest_microlens.py end to end as a user runs it: a subprocess on its own local Ray cluster."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mvrec_dist.data.verify import verify_dataset

REPO = Path(__file__).resolve().parents[2]
JOB = [sys.executable, "jobs/ingest_microlens.py"]


def run(*args, timeout=300):
    return subprocess.run(JOB + list(args), cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.mark.integration
def test_tiny_synthetic_ingestion_end_to_end(tmp_path):
    out = tmp_path / "ds"
    r = run("--config", "jobs/configs/synthetic/ingest-small.yaml", f"ingest.output_dir={out}",
            f"synthetic.output={tmp_path / 'raw'}", "synthetic.users=500", "synthetic.items=100",
            "synthetic.interactions=4000", "synthetic.chunk_users=250", "ray.num_cpus=2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"wrote {out} in" in r.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["users"] == 500 and manifest["counts"]["kept_interactions"] == 4000
    assert manifest["config"]["synthetic"]["users"] == 500 and manifest["config"]["ingest"]["format"] == "pairs_csv"
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["_synthetic.json", "part-00000.csv",
                                                                    "part-00001.csv"]
    assert verify_dataset(str(out)) == []


@pytest.mark.integration
def test_bad_input_fails_with_file_and_line(tmp_path):
    (tmp_path / "pairs.csv").write_bytes(b"1,2,3\n1,2\n")
    r = run(f"ingest.input={tmp_path / 'pairs.csv'}", f"ingest.output_dir={tmp_path / 'ds'}", "ray.num_cpus=1")
    assert r.returncode == 1
    assert f"ingest_microlens.py: error: {tmp_path / 'pairs.csv'}:2: expected 3 comma-separated fields" in r.stderr
    assert not (tmp_path / "ds").exists()


def test_help_lists_every_setting():
    r = run("--help", timeout=60)
    assert r.returncode == 0
    for text in ("--on-bad-rows", "--address", "ingest.shard_max_samples", "synthetic.interactions"):
        assert text in r.stdout


def test_print_config_resolves_overrides():
    r = run("--config", "jobs/configs/microlens-50k/ingest.yaml", "--on-bad-rows=quarantine", "--print-config",
            timeout=60)
    assert r.returncode == 0 and "on_bad_rows: quarantine" in r.stdout and "MicroLens-50k_pairs.tsv" in r.stdout


@pytest.mark.parametrize("args, message", [
    (["--bogus", "1"], "unknown flag --bogus"),
    (["ingest.min_seq_len=2"], "ingest.min_seq_len: must be >= 3"),
    (["ingest.nope=1"], "ingest.nope: unknown key"),
    (["--config", "jobs/configs/none.yaml"], "does not exist"),
    (["video.enabled=true", "ingest.input=x"], "video.videos: must be set when video.enabled is true"),
])
def test_bad_flags_and_settings_exit_2(args, message):
    r = run(*args, timeout=60)
    assert r.returncode == 2 and message in r.stderr
