"""Faults under Ray Train at the settings users get: a worker SIGKILLed, the driver killed and the job
resubmitted, the same command run again, two drivers of one run, a full disk.

Every run keeps the shipped checkpoint settings (``train.keep_checkpoints``, the epoch-end
checkpoint cadence, ``train.max_failures``), and each fault strikes only after retention has deleted
a checkpoint, the situation in which pruning and any other record of the checkpoints could disagree.
Interrupted runs must end with exactly the parameters and validation metrics of an uninterrupted run
with the same seed: the restarted workers load the newest checkpoint that verifies and replay the
lost steps with the same data, RNG and optimizer states. Tolerance 0 (bitwise): the per-step
computation is deterministic on CPU (see test_resume.py, which also covers mid-epoch checkpoints).
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

from tests.helpers.processes import kill_session

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


EPOCHS = 6  # epoch-end checkpoints (the default cadence): retention deletes one from the third or fourth on


def _args(tmp: Path, name: str, storage: Path | None = None) -> list[str]:
    # Only the model, the data and the run's length are set; checkpointing, resume and retries are as shipped.
    return ["--config", str(DEMO), f"data.dataset_dir={tmp / 'ds'}", f"data.prepare_with={tmp / 'ingest.yaml'}",
            f"train.storage_path={storage or tmp / 'runs'}", f"train.run_name={name}", f"train.epochs={EPOCHS}",
            "train.batch_size=16", "train.test_after_training=false", "train.log_every_steps=1000",
            "model.embedding_dim=16", "ray.num_cpus=2", "ray.dashboard=false"]


def test_the_faults_run_at_the_shipped_checkpoint_settings():
    from mvrec_dist.config import TrainJobConfig, load_config

    cfg = load_config(TrainJobConfig, DEMO, _args(Path("/t"), "x")[2:])
    shipped = load_config(TrainJobConfig, None, []).train
    for key in ("keep_checkpoints", "checkpoint_every_steps", "checkpoint_at_epoch_end", "max_failures", "resume",
                "owner_timeout_s"):
        assert getattr(cfg.train, key) == getattr(shipped, key), key


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


def _wait_for_pruning(run: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Return once retention has deleted a committed checkpoint (and a newer one is committed)."""
    seen: set[str] = set()
    deadline = time.time() + timeout
    while time.time() < deadline:
        committed = {p.parent.name for p in run.glob("checkpoint-step*/COMMIT.json")}
        if seen - {p.name for p in run.glob("checkpoint-step*")} and committed:
            return
        seen |= committed
        assert proc.poll() is None, "the job ended before retention deleted a checkpoint; raise EPOCHS"
        time.sleep(0.02)
    raise AssertionError("retention deleted no checkpoint")


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


def test_worker_killed_after_pruning_restarts_from_the_checkpoint(straight):
    proc = _start(_args(straight, "worker-kill"))
    run = straight / "runs" / "worker-kill"
    _wait_for_pruning(run, proc)
    victims = _train_workers_of(proc.pid)
    assert victims, "no Ray Train worker process of this job to kill"
    os.kill(victims[-1], signal.SIGKILL)
    out = _finish(proc)
    assert "training failed: " in out and "(retry 1 of train.max_failures=3)" in out
    assert "resumed from" in out  # the restarted worker group loaded a checkpoint
    _assert_same_run(straight / "runs" / "straight", run)


def test_driver_killed_after_pruning_and_job_resubmitted_resumes(straight):
    proc = _start(_args(straight, "driver-kill"))
    run = straight / "runs" / "driver-kill"
    _wait_for_pruning(run, proc)
    # The whole session of the job: the driver and the embedded cluster it started.
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    kill_session(proc.pid)  # the Ray processes the SIGKILLed driver left in its session
    time.sleep(1.0)
    out = _finish(_start(_args(straight, "driver-kill")))
    # status.json still says running with a fresh heartbeat: the dead driver's pid tells it is gone.
    assert f"taking over run {run}: its driver (pid {proc.pid} on this host) is not running any more" in out
    assert "resumed from" in out
    _assert_same_run(straight / "runs" / "straight", run)


def test_the_same_command_again_shows_the_finished_run(straight):
    run = straight / "runs" / "straight"
    before = {p.name: p.stat().st_mtime_ns for p in run.rglob("*") if p.name != "status.json"}
    started = time.time()
    out = _finish(_start(_args(straight, "straight")))
    assert "run straight already finished (6 epochs, best epoch" in out and "train.resume=never" in out
    assert "\nvalid, best epoch " in out  # the result table, as the first run printed it
    assert "resumed from" not in out and time.time() - started < 60  # nothing trained, no cluster started
    assert {p.name: p.stat().st_mtime_ns for p in run.rglob("*") if p.name != "status.json"} == before


def test_a_second_driver_of_a_run_in_progress_is_refused(straight):
    # Long enough (no early stop) that the first driver is still training when the second one asks.
    first = [*_args(straight, "busy"), "train.epochs=40", "train.patience=0"]
    proc = _start(first)
    run = straight / "runs" / "busy"
    _wait_for_commit(run, proc)
    started = time.time()
    second = subprocess.run([sys.executable, str(JOB), *first], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-2000:]
    assert proc.poll() is None, "the first driver ended before the second one was refused; lengthen its run"
    lines = [line for line in second.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1 and f"error: run {run} is in use by another driver (host " in lines[0]
    assert f", pid {proc.pid}, last heartbeat " in lines[0]
    assert time.time() - started < 60  # refused before it starts a cluster
    _finish(proc)  # the first driver was not disturbed
    assert json.loads((run / "status.json").read_text())["status"] == "finished"
    assert json.loads((run / "result.json").read_text())["epochs"] == 40


@pytest.fixture
def small_disk(straight, tmp_path):
    """A tmpfs holding one and a half checkpoints of these runs (and their logs), unmounted afterwards."""
    newest = sorted((straight / "runs" / "straight").glob("checkpoint-step*"))[-1]
    one = sum(p.stat().st_blocks * 512 for p in newest.rglob("*"))  # tmpfs gives every file whole pages
    mount = tmp_path / "small"
    mount.mkdir()
    size_kib = int(1.5 * one / 1024) + 64
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_ends_the_run_at_once_with_the_errno_and_path(straight, small_disk):
    from mvrec_dist.train.checkpointing import check_checkpoint

    proc = _start(_args(straight, "full", storage=small_disk))
    out, _ = proc.communicate(timeout=400)
    usage = subprocess.run(["du", "-ak", str(small_disk)], capture_output=True, text=True).stdout
    assert proc.returncode == 1, out[-4000:] + usage
    errors = [line for line in out.splitlines() if "train_videorec.py: error:" in line]
    assert len(errors) == 1, out[-4000:]
    run = small_disk / "full"
    assert ("error: OSError: [Errno 28] No space left on device (writing a checkpoint): "
            f"'{run}/checkpoint-step") in errors[0]
    assert errors[0].endswith("(not retried: a retry would fail the same way)")
    assert "restarting the workers" not in out  # a full disk is not retried
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "failed" and status["error"] == errors[0].split("error: ", 1)[1]
    committed = sorted(run.glob("checkpoint-step*/COMMIT.json"))
    assert committed, "the first checkpoint should have fitted"
    check_checkpoint(str(committed[-1].parent))  # the last committed checkpoint still verifies and loads


