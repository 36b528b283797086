"""One driver per run directory: a live owner refuses a second driver, a dead or silent one is taken over."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from mvrec_dist.train import run_lease
from mvrec_dist.train.run_lease import RunBusyError, RunLease, this_driver


def _acquire(run: Path, said: list[str] | None = None, **kw) -> RunLease:
    return RunLease.acquire(str(run), timeout_s=300.0, describe_error=lambda e: f"boom: {e}",
                            say=(said if said is not None else []).append, **kw)


def _status(run: Path) -> dict:
    return json.loads((run / "status.json").read_text())


@pytest.fixture(autouse=True)
def no_settle(monkeypatch):
    monkeypatch.setattr(run_lease, "CLAIM_SETTLE_SECONDS", 0.0)


def test_the_claim_names_its_driver_and_the_release_records_the_outcome(tmp_path):
    run = tmp_path / "run"
    lease = _acquire(run)
    record = _status(run)
    assert record["status"] == "running" and record["owner"] == lease.me.to_dict()
    assert record["owner"]["pid"] > 0 and record["owner"]["host"]
    lease.release("finished")
    assert _status(run)["status"] == "finished" and _status(run)["owner"] == lease.me.to_dict()


def test_a_failure_inside_the_lease_is_recorded_in_one_line(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(OSError):
        with _acquire(run):
            raise OSError(28, "No space left on device", "/x/dense.pt")
    assert _status(run) == {**_status(run), "status": "failed",
                            "error": "boom: [Errno 28] No space left on device: '/x/dense.pt'"}


def test_a_second_driver_of_a_live_run_is_refused_with_the_owner_named(tmp_path):
    run = tmp_path / "run"
    first = _acquire(run)
    try:
        with pytest.raises(RunBusyError) as exc:
            _acquire(run)
        host, pid = first.me.host, first.me.pid
        assert str(exc.value).startswith(f"run {run} is in use by another driver (host {host}, pid {pid}, last "
                                         "heartbeat 0s ago); wait for it to finish")
        assert "another train.run_name" in str(exc.value)
        assert _status(run)["owner"]["driver_id"] == first.me.driver_id  # the refused driver wrote nothing
    finally:
        first.release("finished")


def test_a_run_whose_driver_died_on_this_host_is_taken_over_at_once(tmp_path):
    run = tmp_path / "run"
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # a process of this host that is gone, as a SIGKILLed driver is
    dead = replace(this_driver(), pid=child.pid, pid_start=12345)
    _acquire(run, me=dead)._stop.set()  # its heartbeat is fresh, but nobody will write it again
    said: list[str] = []
    lease = _acquire(run, said)
    assert said == [f"taking over run {run}: its driver (pid {child.pid} on this host) is not running any more "
                    f"(host {dead.host}, pid {child.pid}, last heartbeat 0s ago)"]
    assert _status(run)["owner"]["driver_id"] == lease.me.driver_id
    lease.release("finished")


def test_a_driver_on_another_host_is_taken_over_only_once_its_heartbeat_is_stale(tmp_path):
    run = tmp_path / "run"
    elsewhere = replace(this_driver(), host="other-host", boot_id="b")
    _acquire(run, me=elsewhere)._stop.set()
    with pytest.raises(RunBusyError):
        _acquire(run)
    record = _status(run)
    record["updated"] = time.time() - 301
    (run / "status.json").write_text(json.dumps(record))
    said: list[str] = []
    _acquire(run, said).release("finished")
    assert said == [f"taking over run {run}: its driver's last heartbeat is 301s old (train.owner_timeout_s=300) "
                    "(host other-host, pid %d, last heartbeat 301s ago)" % elsewhere.pid]


def test_finished_and_failed_runs_are_taken_without_a_message(tmp_path):
    run = tmp_path / "run"
    for outcome in ("finished", "failed"):
        first = _acquire(run)
        first.release(outcome)
        said: list[str] = []
        _acquire(run, said).release("finished")
        assert said == []


def test_of_two_drivers_claiming_at_once_the_overwritten_one_is_refused(tmp_path, monkeypatch):
    run = tmp_path / "run"
    other = replace(this_driver(), host="other-host", boot_id="b")
    real_sleep = time.sleep

    def racing_sleep(seconds):  # the other driver's claim lands while this one settles
        run_lease.write_status(str(run), "running", owner=other.to_dict())
        real_sleep(seconds)

    monkeypatch.setattr(run_lease.time, "sleep", racing_sleep)
    with pytest.raises(RunBusyError) as exc:
        _acquire(run)
    assert "another driver started at the same moment (host other-host" in str(exc.value)


def test_a_lease_taken_over_meanwhile_records_nothing_on_release(tmp_path):
    run = tmp_path / "run"
    lease = _acquire(run)
    other = replace(this_driver(), host="other-host", boot_id="b")
    run_lease.write_status(str(run), "running", owner=other.to_dict())
    lease.release("failed", "late")
    assert _status(run)["owner"]["host"] == "other-host" and _status(run)["status"] == "running"
