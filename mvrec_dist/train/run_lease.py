"""One driver per run directory: the claim in ``status.json``, its heartbeat, and taking over a dead one.

A training driver owns ``<storage_path>/<run_name>/`` from before Ray starts until it exits. It
records who it is in ``status.json`` (host, boot id, pid, the pid's start time, a random driver id)
and rewrites the record every ``HEARTBEAT_SECONDS``. A second driver for the same run reads that
record first:

- the owner is alive (a fresh heartbeat, and on the same host its process still exists): refused
  with ``RunBusyError``, one line naming the owner and what to do;
- the owner is gone (on the same host its process is not there any more, or anywhere its heartbeat
  is older than ``train.owner_timeout_s``): taken over, with a message saying so;
- the run finished or failed (no driver running it): taken.

The claim is written and read back after a short pause, so of two drivers starting at the same
moment the later writer wins and the other one is refused. Object stores without conditional writes
make this best effort for drivers starting within that pause of each other; the common cases, a
rerun while the first driver trains and a resubmission after a driver was lost, are exact.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable

from mvrec_dist.train.runs import HEARTBEAT_SECONDS, STATUS_NAME, read_json, write_status

__all__ = ["RunBusyError", "DriverIdentity", "RunLease", "this_driver"]

CLAIM_SETTLE_SECONDS = 0.5
"""Pause between writing a claim and reading it back (a concurrent claim lands in between)."""


class RunBusyError(RuntimeError):
    """Another live driver owns the run directory; the message is one line saying whose and what to do."""


@dataclass(frozen=True)
class DriverIdentity:
    """Who a driver is, as ``status.json`` records it."""

    host: str
    """Host name."""
    boot_id: str
    """The kernel's boot id: with the host name, says whether a pid can be checked from here."""
    pid: int
    """The driver's process id."""
    pid_start: int
    """The process's start time in clock ticks since boot (tells a reused pid from the driver)."""
    driver_id: str
    """Random id of this driver's claim."""

    def to_dict(self) -> dict:
        """The fields as ``status.json`` stores them."""
        return {"host": self.host, "boot_id": self.boot_id, "pid": self.pid, "pid_start": self.pid_start,
                "driver_id": self.driver_id}


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


def _pid_start(pid: int) -> int | None:
    """Start time of ``pid`` (field 22 of ``/proc/<pid>/stat``), None when no such process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count fields after its last ')'.
    return int(stat.rsplit(")", 1)[1].split()[19])


def this_driver() -> DriverIdentity:
    """The identity of the calling process, with a fresh driver id."""
    pid = os.getpid()
    return DriverIdentity(host=socket.gethostname(), boot_id=_boot_id(), pid=pid, pid_start=_pid_start(pid) or 0,
                          driver_id=uuid.uuid4().hex)


def _owner_gone(record: dict, me: DriverIdentity, now: float, timeout_s: float) -> str | None:
    """Why the driver that wrote ``record`` no longer owns the run; None while it may be alive."""
    if record.get("status") != "running":
        return f"its last driver recorded '{record.get('status', 'nothing')}'"
    age = now - float(record.get("updated", 0.0))
    owner = record.get("owner") or {}
    same_machine = owner.get("host") == me.host and owner.get("boot_id") == me.boot_id and me.boot_id
    if same_machine and isinstance(owner.get("pid"), int):
        if _pid_start(owner["pid"]) != owner.get("pid_start"):
            return f"its driver (pid {owner['pid']} on this host) is not running any more"
        return None
    if age > timeout_s:
        return f"its driver's last heartbeat is {age:.0f}s old (train.owner_timeout_s={timeout_s:g})"
    return None


def _describe_owner(record: dict, now: float) -> str:
    owner = record.get("owner") or {}
    return (f"host {owner.get('host', '?')}, pid {owner.get('pid', '?')}, last heartbeat "
            f"{max(now - float(record.get('updated', 0.0)), 0):.0f}s ago")


class RunLease:
    """A driver's claim on a run directory, kept fresh by a heartbeat thread while it is held.

    Use ``RunLease.acquire``; leave with ``release`` (or as a context manager, which records
    ``failed`` with the error when the block raises).

    Args:
        run_uri: The run directory.
        me: This driver's identity.
        describe_error: Turns an exception into the one line ``status.json`` records.
    """

    def __init__(self, run_uri: str, me: DriverIdentity, describe_error: Callable[[BaseException], str]):
        self.run_uri = run_uri.rstrip("/")
        self.me = me
        self.describe_error = describe_error
        self.lost_to: dict | None = None
        """The record of a driver that took the run over while this one held it (then no more beats)."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="mvrec-run-heartbeat", daemon=True)

    @classmethod
    def acquire(cls, run_uri: str, *, timeout_s: float, describe_error: Callable[[BaseException], str],
                say: Callable[[str], None] = print, me: DriverIdentity | None = None) -> "RunLease":
        """Claim ``run_uri`` for this driver, or raise ``RunBusyError`` when a live driver owns it.

        Args:
            run_uri: The run directory (created when absent).
            timeout_s: A heartbeat older than this means the owner is gone (``train.owner_timeout_s``).
            describe_error: Turns an exception into the one line ``status.json`` records on failure.
            say: Where the take-over message goes.
            me: This driver's identity (tests pass one; default ``this_driver()``).

        Returns:
            The held lease, its heartbeat running.

        Raises:
            RunBusyError: a live driver owns the run.
            OSError: the run directory cannot be written.
        """
        me = me or this_driver()
        lease = cls(run_uri, me, describe_error)
        record = cls.check_free(run_uri, timeout_s=timeout_s, me=me)
        if record is not None and record.get("status") == "running":
            now = time.time()
            say(f"taking over run {lease.run_uri}: {_owner_gone(record, me, now, timeout_s)} "
                f"({_describe_owner(record, now)})")
        lease._write("running")
        time.sleep(CLAIM_SETTLE_SECONDS)
        record = read_json(lease.status_uri) or {}
        if (record.get("owner") or {}).get("driver_id") != me.driver_id:
            raise lease._busy(record, time.time(), racing=True)
        lease._thread.start()
        return lease

    @classmethod
    def check_free(cls, run_uri: str, *, timeout_s: float, me: DriverIdentity | None = None) -> dict | None:
        """Raise ``RunBusyError`` when a live driver owns ``run_uri``; claims nothing.

        A driver calls it before it starts anything (a Ray cluster), so that a second driver of a
        live run is refused at once; ``acquire`` checks again when it claims.

        Returns:
            The run's ``status.json`` record (None when there is none).
        """
        me = me or this_driver()
        probe = cls(run_uri, me, str)
        record = read_json(probe.status_uri)
        if record is not None:
            now = time.time()
            if _owner_gone(record, me, now, timeout_s) is None:
                raise probe._busy(record, now)
        return record

    @property
    def status_uri(self) -> str:
        """``<run>/status.json``."""
        return f"{self.run_uri}/{STATUS_NAME}"

    def _busy(self, record: dict, now: float, racing: bool = False) -> RunBusyError:
        whose = "another driver started at the same moment" if racing else "another driver"
        return RunBusyError(
            f"run {self.run_uri} is in use by {whose} ({_describe_owner(record, now)}); wait for it to finish "
            "(`mvrec runs show` follows it), stop it, or start a separate run with another train.run_name")

    def _write(self, status: str, error: str | None = None) -> None:
        write_status(self.run_uri, status, error=error, owner=self.me.to_dict())

    def _still_mine(self) -> bool:
        record = read_json(self.status_uri) or {}
        owner = record.get("owner") or {}
        if owner.get("driver_id") in (None, self.me.driver_id):
            return True
        self.lost_to = record
        return False

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                if not self._still_mine():
                    print(f"warning: run {self.run_uri} was taken over by another driver "
                          f"({_describe_owner(self.lost_to or {}, time.time())}); this driver stops its heartbeat",
                          flush=True)
                    return
                self._write("running")
            except OSError:  # a storage hiccup: the next beat tries again
                pass

    def release(self, status: str, error: str | None = None) -> None:
        """Stop the heartbeat and record the outcome (``finished`` or ``failed`` with one line why).

        Nothing is written when another driver took the run over meanwhile.
        """
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        try:
            if self.lost_to is None and self._still_mine():
                self._write(status, error)
        except OSError as exc:  # e.g. the disk that failed the run is full: keep the run's own error in front
            print(f"warning: could not record '{status}' in {self.status_uri}: {exc}", flush=True)

    def __enter__(self) -> "RunLease":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.release("finished")
        elif isinstance(exc, KeyboardInterrupt):
            self.release("failed", "interrupted (Ctrl-C); run the same command again to resume")
        else:
            self.release("failed", self.describe_error(exc))
