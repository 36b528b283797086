"""Processes a test started: ending every process of a session (a SIGKILLed driver's Ray cluster)."""

from __future__ import annotations

import os
import signal
import subprocess

__all__ = ["kill_session"]


def kill_session(session_id: int) -> None:
    """SIGKILL every process of the session ``session_id`` (a job started with ``start_new_session=True``: its
    driver and the Ray processes it started, which a killed driver leaves behind on this machine)."""
    try:
        os.killpg(session_id, signal.SIGKILL)
    except ProcessLookupError:
        pass
    ps = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout
    for line in ps.splitlines():
        pid, sid = (int(x) for x in line.split())
        if sid == session_id:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
