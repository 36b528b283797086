"""The run's logs on remote storage (``train.run_logs``): carried across attempts and hosts, fenced per attempt.

Remote storage is fsspec's in-memory filesystem (``memory://``: a URI, so not local, as ``s3://`` is); each
"host" is its own working directory (the local log directory ``runs-local/<run>/logs`` is relative to it).
"""

from __future__ import annotations

import json
import os
import uuid

import pytest

from mvrec_dist.config.jobs import TrainJobConfig
from mvrec_dist.config.load import load_config
from mvrec_dist.data.fs import resolve
from mvrec_dist.train.metrics_log import MetricsLog
from mvrec_dist.train.run_logs import RunLogs, current_attempt, start_attempt


@pytest.fixture
def cfg():
    # A fresh bucket per test: fsspec's memory filesystem is one store per process.
    return load_config(TrainJobConfig, None, [f"train.storage_path=memory://mv-{uuid.uuid4().hex[:8]}/runs",
                                              "train.run_name=r"])


def _read(cfg, name: str) -> str | None:
    fs, path = resolve(f"{cfg.train.storage_path}/r/logs/{name}")
    try:
        with fs.open_input_stream(path) as f:
            return f.read().decode()
    except FileNotFoundError:
        return None


def _records(cfg) -> list[tuple[str, int]]:
    text = _read(cfg, "metrics.jsonl") or ""
    return [(r["kind"], r["step"]) for r in map(json.loads, text.splitlines())]


def _write(rank0: RunLogs, records: list[tuple[str, int]]) -> None:
    log = MetricsLog(rank0.local, quiet=True, enabled=True)
    for kind, step in records:
        log.record(kind, step, {"loss": float(step)})
    log.close()


def test_each_attempt_gets_a_new_id_and_local_storage_none(cfg, tmp_path):
    a, b = start_attempt(cfg), start_attempt(cfg)
    assert a and b and a != b
    assert current_attempt(cfg) == b
    local = load_config(TrainJobConfig, None, [f"train.storage_path={tmp_path}", "train.run_name=r"])
    assert start_attempt(local) is None and not (tmp_path / "r").exists()


def test_a_new_host_continues_the_runs_metrics_instead_of_replacing_them(cfg, tmp_path, monkeypatch):
    (tmp_path / "h1").mkdir()
    (tmp_path / "h2").mkdir()
    monkeypatch.chdir(tmp_path / "h1")
    first = RunLogs(cfg, 0, start_attempt(cfg))
    assert first.seed() is False  # nothing on the store yet
    _write(first, [("train", 4), ("checkpoint", 6)])
    first.upload_metrics()  # at the checkpoint
    _write(first, [("train", 8)])  # after it: lost with the host (never uploaded), replayed by the next attempt
    # The host is lost; the next attempt's rank 0 runs on h2 (or in a resubmitted job's new working dir).
    monkeypatch.chdir(tmp_path / "h2")
    second = RunLogs(cfg, 0, start_attempt(cfg))
    assert second.seed() is True
    assert (tmp_path / "h2" / second.local / "tensorboard").is_dir()
    _write(second, [("train", 8), ("valid", 12)])
    second.upload_all()
    assert _records(cfg) == [("train", 4), ("checkpoint", 6), ("train", 8), ("valid", 12)]
    # Where the local file exists (the same host as the last attempt), it is the one continued: no fetch.
    assert RunLogs(cfg, 0, current_attempt(cfg)).seed() is False


def test_a_replaced_attempt_writes_nothing(cfg, tmp_path, monkeypatch):
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    monkeypatch.chdir(tmp_path / "old")
    old0, old1 = RunLogs(cfg, 0, start_attempt(cfg)), RunLogs(cfg, 1, current_attempt(cfg))
    _write(old0, [("train", 4)])
    old0.upload_metrics()
    (tmp_path / "old" / old1.local / "train-rank1.log").write_text("old attempt, rank 1\n")
    # The driver restarts the workers elsewhere (a partition cut off the old ones), the new attempt writes...
    monkeypatch.chdir(tmp_path / "new")
    new0, new1 = RunLogs(cfg, 0, start_attempt(cfg)), RunLogs(cfg, 1, current_attempt(cfg))
    new0.seed()
    _write(new0, [("train", 8)])
    os.makedirs(new1.local, exist_ok=True)
    (tmp_path / "new" / new1.local / "train-rank1.log").write_text("new attempt, rank 1\n")
    new0.upload_all()
    new1.upload_all()
    # ... and the old ranks come back (the link healed) and try to upload at their end: refused, nothing changed.
    monkeypatch.chdir(tmp_path / "old")
    _write(old0, [("train", 5)])
    for stale in (old0, old1):
        stale.upload_metrics()
        stale.upload_all()
        assert stale.skipped and "was replaced by" in stale.skipped[-1]
    assert _records(cfg) == [("train", 4), ("train", 8)]
    assert _read(cfg, "train-rank1.log") == "new attempt, rank 1\n"
    assert not new0.skipped and not new1.skipped


def test_other_ranks_upload_only_their_own_log_file(cfg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rank1 = RunLogs(cfg, 1, start_attempt(cfg))
    os.makedirs(rank1.local)
    for name in ("train-rank0.log", "train-rank1.log", "metrics.jsonl"):
        (tmp_path / rank1.local / name).write_text(name)
    rank1.upload_metrics()  # rank 0's job only
    assert _read(cfg, "metrics.jsonl") is None
    rank1.upload_all()
    assert _read(cfg, "train-rank1.log") == "train-rank1.log"
    assert _read(cfg, "train-rank0.log") is None and _read(cfg, "metrics.jsonl") is None


def test_without_an_attempt_id_uploads_are_not_fenced(cfg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    start_attempt(cfg)
    rank0 = RunLogs(cfg, 0, None)  # run_worker driven directly (tests, benchmarks): no driver, no fence
    _write(rank0, [("train", 1)])
    rank0.upload_all()
    assert _records(cfg) == [("train", 1)] and not rank0.skipped
