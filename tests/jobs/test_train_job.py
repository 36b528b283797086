"""jobs/train_videorec.py end to end: ingestion of a tiny synthetic dataset, 2 Ray Train workers
(TorchRec + DeepSpeed, gloo), validation, checkpoints, test; and bad configs that fail first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.helpers.shards import TINY_INGEST

REPO = Path(__file__).resolve().parents[2]
JOB = REPO / "jobs" / "train_videorec.py"
DEMO = REPO / "jobs" / "configs" / "synthetic" / "sasrec-id-small.yaml"



def _run(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1", RAY_DEDUP_LOGS="0")
    return subprocess.run([sys.executable, str(JOB), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _ray_processes() -> int:
    out = subprocess.run(["pgrep", "-f", "raylet"], capture_output=True, text=True).stdout
    return len(out.split())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One run of the job: a tiny dataset ingested by the job itself, 2 epochs on 2 workers."""
    tmp = tmp_path_factory.mktemp("e2e")
    ingest = tmp / "ingest.yaml"
    ingest.write_text(TINY_INGEST.format(out=tmp / "ds", raw=tmp / "raw"))
    before = _ray_processes()
    started = time.time()
    proc = _run(["--config", str(DEMO), f"data.dataset_dir={tmp / 'ds'}", f"data.prepare_with={ingest}",
                 f"train.storage_path={tmp / 'runs'}", "train.run_name=e2e", "train.epochs=2", "train.batch_size=64",
                 "train.log_every_steps=2", "ray.num_cpus=2", "ray.dashboard=false"])
    return SimpleNamespace(proc=proc, runs=tmp / "runs", seconds=time.time() - started, ray_before=before)


@pytest.mark.integration
def test_two_workers_end_to_end(trained):
    proc, runs = trained.proc, trained.runs
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ingesting it with" in proc.stdout  # the dataset was prepared by the job itself

    result = json.loads((runs / "e2e" / "result.json").read_text())
    assert result["test/users"] == result["valid/users"] > 0
    for key in ("test/hr@10", "test/ndcg@10", "valid/hr@20", "valid/ndcg@20"):
        assert 0.0 <= result[key] <= 1.0
    assert result["sequences_per_s"] > 0 and result["targets_per_s"] > 0 and result["steps"] > 0

    rows = [json.loads(line) for line in (runs / "e2e" / "logs" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["kind"] == "train"]
    assert len(losses) >= 4
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2  # it learns
    assert {"train", "valid", "test", "epoch", "memory", "checkpoint"} <= {r["kind"] for r in rows}
    assert all(r["peak_rss_mib_max"] > 0 for r in rows if r["kind"] == "memory")
    assert result["peak_rss_mib_max"] >= result["peak_rss_mib_rank1"] > 0
    assert json.loads((runs / "e2e" / "status.json").read_text())["status"] == "finished"
    assert "run eta <= " in proc.stdout  # the first validation's line (2 epochs)
    assert any((runs / "e2e" / "logs" / "tensorboard").iterdir())
    checkpoints = sorted(p.name for p in (runs / "e2e").glob("checkpoint-step*"))
    assert checkpoints and all((runs / "e2e" / c / "COMMIT.json").exists() for c in checkpoints)
    # The embedded cluster is gone once the job returns.
    assert _ray_processes() <= trained.ray_before
    assert trained.seconds < 400


@pytest.mark.integration
def test_mvrec_eval_scores_the_best_checkpoint_as_the_run_tested_it(trained):
    """``mvrec eval <run>``: the best checkpoint on test, under Ray Train with the run's own config,
    gives the test metrics the run recorded (the same weights, users and ranks)."""
    from mvrec_dist.train.runs import checkpoint_name

    assert trained.proc.returncode == 0
    run = trained.runs / "e2e"
    proc = subprocess.run([sys.executable, "-m", "mvrec_dist.cli", "eval", str(run), "ray.num_cpus=2",
                           "ray.dashboard=false"], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((run / "result.json").read_text())
    newest = sorted(run.glob("checkpoint-step*"))[-1]
    best = checkpoint_name(json.loads((newest / "state.json").read_text())["best_step"])
    scored = json.loads((run / "evals" / f"{best}-test.json").read_text())
    assert scored["split"] == "test" and scored["checkpoint"] == str(run / best)
    for key in ("hr@10", "ndcg@10", "hr@20", "ndcg@20", "users"):
        assert scored[key] == pytest.approx(result[f"test/{key}"], abs=1e-9)
    assert scored["recorded_valid"]["ndcg@10"] == pytest.approx(result["valid/ndcg@10"])
    assert [p.name for p in (run / "evals").iterdir()] == [f"{best}-test.json"]  # Ray Train's records removed


@pytest.mark.integration
def test_a_second_task_trains_through_the_same_job_with_lower_is_better_early_stopping(trained):
    """The task seam end to end: item-popularity regression (MAE, lower is better) on the run's dataset,
    2 Ray Train workers, early stopping, checkpoints, test; then ``mvrec eval`` and ``mvrec runs show``."""
    from mvrec_dist.train.runs import checkpoint_name

    assert trained.proc.returncode == 0
    ds, runs = trained.runs.parent / "ds", trained.runs
    proc = _run(["--config", str(DEMO), f"data.dataset_dir={ds}", "task.name=item_popularity",
                 f"train.storage_path={runs}", "train.run_name=pop", "train.epochs=15", "train.patience=1",
                 "train.batch_size=64", "train.lr=0.003", "ray.num_cpus=2", "ray.dashboard=false"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = runs / "pop"
    held_out = round(0.1 * json.loads((ds / "manifest.json").read_text())["counts"]["items"])
    result = json.loads((run / "result.json").read_text())
    newest = sorted(run.glob("checkpoint-step*"))[-1]
    state = json.loads((newest / "state.json").read_text())
    maes = [h["metrics"]["mae"] for h in state["history"]]
    # The best epoch minimises MAE; patience 1 ends the run one validation after it (or at the last epoch).
    assert state["best_epoch"] == maes.index(min(maes)) == result["best_epoch"]
    assert len(maes) == min(15, state["best_epoch"] + 2)
    assert result["valid/mae"] == pytest.approx(min(maes)) and result["test/items"] == result["valid/items"] == held_out
    assert result["test/rmse"] >= result["test/mae"] > 0
    assert "valid epoch 0: mae " in proc.stdout and f"({held_out} items in" in proc.stdout
    assert not any("hr@" in k or "ndcg@" in k for k in result)

    proc = subprocess.run([sys.executable, "-m", "mvrec_dist.cli", "eval", str(run), "ray.num_cpus=2",
                           "ray.dashboard=false", "--split", "valid"], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    best = checkpoint_name(state["best_step"])
    scored = json.loads((run / "evals" / f"{best}-valid.json").read_text())
    assert scored["mae"] == pytest.approx(result["valid/mae"], abs=1e-9) and scored["items"] == held_out
    assert '"mae"' in proc.stdout and f'"items": {held_out}' in proc.stdout

    shown = subprocess.run([sys.executable, "-m", "mvrec_dist.cli", "runs", "show", str(run)], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert f"best valid (by mae, epoch {state['best_epoch']}): mae " in shown.stdout and " rmse " in shown.stdout
    assert f"eval {best}-valid: mae " in shown.stdout and f"({held_out} items)" in shown.stdout


@pytest.mark.parametrize("override,fragment", [
    ("parallel.sharding_type=diagonal", "parallel.sharding_type: expected one of"),
    ("parallel.zero_stage=4", "parallel.zero_stage: DeepSpeed ZeRO has stages 0, 1, 2 and 3"),
    ("parallel.sharding_type=table_row_wise", "parallel.sharding_type: 'table_row_wise' is not available on cpu"),
    ("parallel.embedding_optimizer=adam", "parallel.embedding_optimizer: 'adam' is not available on cpu"),
])
def test_bad_config_fails_before_anything_starts(tmp_path, override, fragment):
    started = time.time()
    proc = _run(["--config", str(DEMO), override, f"train.storage_path={tmp_path}"], timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert fragment in proc.stderr
    assert time.time() - started < 60  # no Ray, no workers


@pytest.mark.integration
def test_more_workers_than_the_cluster_has_fails_before_training(tmp_path, microlens_free_dataset):
    proc = _run(["--config", str(DEMO), f"data.dataset_dir={microlens_free_dataset}", "data.prepare_with=null",
                 "parallel.num_workers=3", "train.batch_size=60", "ray.num_cpus=2", "ray.dashboard=false",
                 f"train.storage_path={tmp_path}"], timeout=180)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "parallel.num_workers=3" in proc.stderr and "needs 3 CPUs but the Ray cluster has 2" in proc.stderr
    assert not (tmp_path / "demo-sasrec-id").exists()


@pytest.fixture
def microlens_free_dataset(tmp_path):
    """Any valid dataset directory: a tiny synthetic one written by the helper shards module."""
    from tests.helpers.shards import train_dataset

    root = tmp_path / "ds"
    train_dataset(root, [5, 5])
    return root


def test_help_lists_every_setting():
    proc = _run(["--help"], timeout=60)
    assert proc.returncode == 0
    for key in ("parallel.sharding_type", "parallel.zero_stage", "train.resume", "model.loss.name",
                "data.prepare_with", "--resume"):
        assert key in proc.stdout
