"""What a person sees running the README demo: the project's lines and a summary table, nothing else; the
libraries' output in the run's logs/; ``--verbose`` brings it back. The ingest job's console is as quiet.

Line bound: the demo's own lines for 2 epochs are about 21 (the ingestion and start: 4; per epoch its
summary, validation and checkpoint: 3; the test line; the summary table: 8-9). ``MAX_LINES`` = 30
leaves room for a retry message or a popularity-baseline row, while any one burst of library output
breaks it (TorchRec's planner box is 40 lines, fbgemm's load messages 14 per worker).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.helpers.shards import TINY_INGEST

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "jobs" / "configs" / "synthetic" / "sasrec-id-small.yaml"
MAX_LINES = 30


LIBRARY_CHATTER = ("Successfully loaded", "Planner Statistics", "TrainingReport(", "RayTrainWorker", "FutureWarning",
                   "Started a local Ray instance", "Token authentication", "streaming_executor",
                   "Starting execution of Dataset", "EmbeddingPerfEstimatorFactory", "[TBE=", "HeuristicalStorage")


def _job(script: str, args: list[str], timeout: int = 600) -> SimpleNamespace:
    # Not a terminal: what CI and `ray job logs` capture (bars of a short run leave no line).
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, str(REPO / "jobs" / script), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    return SimpleNamespace(proc=proc, lines=proc.stdout.splitlines() + proc.stderr.splitlines(),
                           text=proc.stdout + proc.stderr)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The README demo's config on a tiny dataset the job ingests itself, 2 epochs on 2 workers."""
    tmp = tmp_path_factory.mktemp("console")
    (tmp / "ingest.yaml").write_text(TINY_INGEST.format(out=tmp / "ds", raw=tmp / "raw"))
    run = _job("train_videorec.py", ["--config", str(DEMO), f"data.dataset_dir={tmp / 'ds'}",
                                     f"data.prepare_with={tmp / 'ingest.yaml'}", f"train.storage_path={tmp / 'runs'}",
                                     "train.run_name=quiet", "train.epochs=2", "train.batch_size=64",
                                     "train.resume=never", "ray.num_cpus=2", "ray.dashboard=false"])
    return SimpleNamespace(run=run, tmp=tmp, logs=tmp / "runs" / "quiet" / "logs")


@pytest.mark.integration
def test_the_demo_prints_its_own_lines_and_a_summary_only(demo):
    run = demo.run
    assert run.proc.returncode == 0, run.text[-4000:]
    assert len(run.lines) <= MAX_LINES, "\n".join(run.lines)
    for chatter in LIBRARY_CHATTER:
        assert chatter not in run.text, chatter
    out = run.proc.stdout
    assert "ingesting it with" in out and "epoch 1 done: " in out and "valid epoch 1: hr@10 " in out
    assert "checkpoint checkpoint-step" in out and "test (weights of epoch " in out
    # The summary table ends the output.
    lines = out.splitlines()
    table = lines[next(i for i, line in enumerate(lines) if line.startswith("run quiet: 2 epochs (")):]
    assert "best epoch " in table[0] and table[1].split() == ["hr@10", "ndcg@10", "hr@20", "ndcg@20"]
    assert table[2].startswith("valid, best epoch") and table[3].startswith("test ")
    assert any(line.startswith("throughput") and " sequences/s" in line for line in table)
    assert any(line.startswith("peak memory") and " MiB RSS" in line for line in table)
    assert table[-1].startswith("run directory") and str(demo.tmp / "runs" / "quiet") in table[-1]


@pytest.mark.integration
def test_the_library_output_is_in_the_runs_log_files(demo):
    assert demo.run.proc.returncode == 0
    rank0, rank1 = ((demo.logs / f"train-rank{r}.log").read_text() for r in (0, 1))
    assert "Planner Statistics" in rank0 and "Reporting training result" in rank0  # TorchRec's box, Ray Train's dumps
    assert "train rank 1" in rank1
    # Known warnings are filtered in the workers; the fixed ones are gone.
    for text in (rank0, rank1):
        assert "all_gather_into_tensor" not in text and "HeuristicalStorageReservation" not in text
        assert "dense tensor size calculation" not in text and "Setting accelerator to CPU" not in text
    driver = (demo.logs / "driver.log").read_text()
    assert "Started a local Ray instance" in driver and "Starting execution of Dataset" in driver


@pytest.mark.integration
def test_verbose_brings_the_library_output_back(demo):
    assert demo.run.proc.returncode == 0
    run = _job("train_videorec.py", ["--config", str(DEMO), f"data.dataset_dir={demo.tmp / 'ds'}",
                                     f"train.storage_path={demo.tmp / 'runs'}", "train.run_name=loud", "train.epochs=1",
                                     "train.max_steps=2", "train.batch_size=64", "train.test_after_training=false",
                                     "ray.num_cpus=2", "ray.dashboard=false", "--verbose"])
    assert run.proc.returncode == 0, run.text[-4000:]
    for chatter in ("Successfully loaded", "Planner Statistics", "RayTrainWorker", "Started a local Ray instance"):
        assert chatter in run.text, chatter
    assert len(run.lines) > MAX_LINES
    assert not (demo.tmp / "runs" / "loud" / "logs" / "train-rank0.log").exists()  # it all went to the console


@pytest.mark.integration
def test_the_ingest_job_prints_its_stage_lines_only(tmp_path):
    run = _job("ingest_microlens.py", ["--config", "jobs/configs/synthetic/ingest-small.yaml",
                                       f"ingest.output_dir={tmp_path / 'ds'}", f"synthetic.output={tmp_path / 'raw'}",
                                       "synthetic.users=500", "synthetic.items=100", "synthetic.interactions=4000",
                                       "synthetic.chunk_users=250", "ray.num_cpus=2"], timeout=300)
    assert run.proc.returncode == 0, run.text[-3000:]
    for chatter in LIBRARY_CHATTER:
        assert chatter not in run.text, chatter
    assert "Progress bars disabled" not in run.text and "does not have any available CPUs" not in run.text
    assert f"wrote {tmp_path / 'ds'} in" in run.proc.stdout
    assert run.proc.stderr == ""
