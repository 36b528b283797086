"""Faults under Ray Train: a worker SIGKILLed mid-epoch, the driver killed and the job resubmitted.

Both runs must end with exactly the parameters and validation metrics of an uninterrupted run with
the same seed: the restarted workers load the newest checkpoint that verifies, continue from the
exact sample where it was taken, and replay the lost steps with the same data, RNG and optimizer
states. Tolerance 0 (bitwise): the per-step computation is deterministic on CPU (see test_resume.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
JOB = REPO / "jobs" / "train_videorec.py"
DEMO = REPO / "jobs" / "configs" / "synthetic" / "sasrec-id-small.yaml"
INGEST = """# Tiny synthetic dataset for the fault-injection tests.
ingest:
  output_dir: {out}
  shard_max_samples: 100
  progress: false
synthetic:
  enabled: true
  output: {raw}
  users: 400
  items: 200
  interactions: 3200
  seed: 2
  chunk_users: 200
"""


def _args(tmp: Path, name: str) -> list[str]:
    return ["--config", str(DEMO), f"data.dataset_dir={tmp / 'ds'}", f"data.prepare_with={tmp / 'ingest.yaml'}",
            f"train.storage_path={tmp / 'runs'}", f"train.run_name={name}", "train.resume=auto", "train.epochs=3",
            "train.batch_size=16", "train.checkpoint_every_steps=5", "train.keep_checkpoints=50",
            "train.max_failures=2", "train.test_after_training=false", "train.log_every_steps=1000",
            "model.embedding_dim=16", "ray.num_cpus=2", "ray.dashboard=false"]


def _start(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, str(JOB), *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: int = 400) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def _wait_for_commit(run: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if list(run.glob("checkpoint-step*/COMMIT.json")):
            return
        assert proc.poll() is None, "the job ended before its first checkpoint"
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


def _final_state(run: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from mvrec_dist.parallel.checkpoint import load_full_state

    last = sorted(run.glob("checkpoint-step*"))[-1]
    return load_full_state(str(last)), json.loads((run / "result.json").read_text())


def _assert_same_run(a: Path, b: Path) -> None:
    (pa, ra), (pb, rb) = _final_state(a), _final_state(b)
    assert sorted(p.name for p in a.glob("checkpoint-step*"))[-1] == sorted(p.name for p in b.glob("checkpoint-step*"))[-1]
    assert set(pa) == set(pb)
    for key in pa:
        torch.testing.assert_close(pb[key], pa[key], rtol=0, atol=0, msg=key)
    for key in ("valid/hr@10", "valid/ndcg@10", "valid/hr@20", "valid/ndcg@20", "steps", "best_epoch"):
        assert rb[key] == ra[key], key


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The uninterrupted reference run (it also ingests the tiny dataset the other runs reuse)."""
    tmp = tmp_path_factory.mktemp("faults")
    (tmp / "ingest.yaml").write_text(INGEST.format(out=tmp / "ds", raw=tmp / "raw"))
    _finish(_start(_args(tmp, "straight")))
    return tmp


def _train_workers_of(session_id: int) -> list[int]:
    """PIDs of Ray Train worker processes in the job's process session (not other jobs' clusters)."""
    out = subprocess.run(["ps", "-eo", "pid=,sid=,args="], capture_output=True, text=True).stdout
    pids = []
    for line in out.splitlines():
        pid, sid, args = line.split(None, 2)
        if int(sid) == session_id and "RayTrainWorker" in args:
            pids.append(int(pid))
    return pids


def test_worker_killed_mid_epoch_restarts_from_the_checkpoint(straight):
    proc = _start(_args(straight, "worker-kill"))
    run = straight / "runs" / "worker-kill"
    _wait_for_commit(run, proc)
    victims = _train_workers_of(proc.pid)
    assert victims, "no Ray Train worker process of this job to kill"
    os.kill(victims[-1], signal.SIGKILL)
    out = _finish(proc)
    assert "resumed from" in out  # the restarted worker group loaded a checkpoint
    _assert_same_run(straight / "runs" / "straight", run)


def test_driver_killed_and_job_resubmitted_resumes(straight):
    proc = _start(_args(straight, "driver-kill"))
    run = straight / "runs" / "driver-kill"
    _wait_for_commit(run, proc)
    # The whole session of the job: the driver and the embedded cluster it started.
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    _kill_orphans_of(proc.pid)
    out = _finish(_start(_args(straight, "driver-kill")))
    assert "resumed from" in out
    _assert_same_run(straight / "runs" / "straight", run)


def _kill_orphans_of(session_id: int) -> None:
    """Ray processes a SIGKILLed driver left in its session (a real cluster's would be on other nodes)."""
    out = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout
    for line in out.splitlines():
        pid, sid = (int(x) for x in line.split())
        if sid == session_id:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    time.sleep(1.0)
