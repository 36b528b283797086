"""The multi-host test cluster (``cluster/local``) as pytest fixtures, and the check that none of it outlives a test.

``local_cluster`` (module scope) brings up a cluster of three Ray hosts (head ``h0`` with no CPUs for tasks,
workers ``h1`` and ``h2`` with one CPU each), an S3 store and a client, each a network namespace; it skips
the module with the reason when this machine cannot make namespaces (not root, no ``ip netns``) or the
store's binary is not installed. Its finalizer tears everything down and fails the test run when a
namespace, link, process or file of the cluster is left.

A test module uses it with ``from tests.helpers.local_cluster import local_cluster  # noqa: F401``.

Cluster names are ``mvlct<pid>``: two pytest sessions never touch each other's cluster, and a cluster
whose pytest was killed (no finalizer ran) is removed by the next session that starts one.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import psutil
import pytest

from cluster.local import LocalCluster, leftovers
from cluster.local.net import available, namespace_pids, namespaces
from cluster.local.store import weed_binary

__all__ = ["local_cluster", "cluster_unavailable", "remove_stale_clusters", "SubmittedJob", "AuditWatch", "attempts",
           "effective_rows", "rank_hosts"]

PREFIX = "mvlct"


def cluster_unavailable() -> str | None:
    """Why a local cluster cannot run here (a skip message), or None."""
    reason = available()
    if reason:
        return f"multi-host tests skipped: {reason}; they run as root on a machine with `ip netns` (CI does)"
    try:
        weed_binary()
    except FileNotFoundError as exc:
        return str(exc)
    return None


def remove_stale_clusters() -> None:
    """Tear down test clusters left by pytest sessions that no longer run (killed before their finalizer)."""
    for name in sorted({re.match(rf"^({PREFIX}\d+)-", ns).group(1) for ns in namespaces(PREFIX)
                        if re.match(rf"^{PREFIX}\d+-", ns)}):
        if not psutil.pid_exists(int(name[len(PREFIX):])):
            LocalCluster(name).down()


@pytest.fixture(scope="module")
def local_cluster():
    """A running 3-host cluster (``LocalCluster``); removed afterwards, and checked to be gone."""
    reason = cluster_unavailable()
    if reason:
        pytest.skip(reason)
    remove_stale_clusters()
    cluster = LocalCluster(f"{PREFIX}{os.getpid()}", hosts=3, head_cpus=0, worker_cpus=1)
    started = time.monotonic()
    cluster.up(timeout=150)  # raises ClusterError naming the host and step, having removed what it made
    cluster.up_seconds = time.monotonic() - started
    try:
        yield cluster
    finally:
        problems = cluster.down()
        left = leftovers(cluster.name)  # namespaces, root-namespace links, processes, files
        assert not problems and not left, f"cluster {cluster.name} not fully removed: {problems + left}"


# ---------------------------------------------------------------------------------------------------------------
# Watching a run from outside while hosts fail (the failure scenarios and benchmarks/bench_multihost.py).

class SubmittedJob:
    """A ``ray job submit`` (or any command) started on a host, its output read line by line as it comes,
    each line stamped with ``time.monotonic()`` on arrival.

    Args:
        cluster: The ``LocalCluster``.
        host: Where the command runs (the client).
        argv: The command.
    """

    def __init__(self, cluster, host, argv: list[str]):
        import subprocess
        import threading

        self.argv = argv
        self.lines: list[tuple[float, str]] = []
        self.started = time.monotonic()
        self.ended: float | None = None  # when its output closed (the command ended)
        self._proc = cluster.popen(host, argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self._proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))
        self.ended = time.monotonic()

    @property
    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def find(self, pattern: str, *, after: float = 0.0) -> tuple[float, str] | None:
        """The first line arrived after ``after`` matching the regex ``pattern`` (its time and text), or None."""
        rx = re.compile(pattern)
        return next(((t, line) for t, line in list(self.lines) if t >= after and rx.search(line)), None)

    def wait_for(self, pattern: str, timeout: float, *, after: float = 0.0) -> tuple[float, str] | None:
        """Wait for a line matching ``pattern`` (None when the command ends or ``timeout`` passes first)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hit = self.find(pattern, after=after)
            if hit or (self._proc.poll() is not None and not self._reader.is_alive()):
                return hit or self.find(pattern, after=after)
            time.sleep(0.1)
        return None

    def wait(self, timeout: float) -> int | None:
        """Wait for the command to end; its exit status (None: still running after ``timeout``, then killed)."""
        import subprocess

        try:
            rc = self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None
        self._reader.join(timeout=10)
        return rc

    def kill(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=10)


class AuditWatch:
    """Follows the ``data.audit_dir`` files of a run (``consumed-rank<r>.jsonl``: one line per step a rank
    trained on, with the (sample, window) rows of its batch), stamping each line with its arrival time.

    On a cluster of namespaces every host sees the same filesystem, so an absolute audit directory collects
    the files of all ranks wherever they run (on a real cluster it is a per-host directory).
    """

    def __init__(self, directory: Path | str, poll_s: float = 0.05):
        import threading

        self.directory, self.poll_s = Path(directory), poll_s
        self.records: list[dict] = []  # {"t", "rank", "epoch", "step", "rows"} in arrival order
        self._offsets: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import json

        while not self._stop.is_set():
            for f in sorted(self.directory.glob("consumed-rank*.jsonl")) if self.directory.is_dir() else []:
                with open(f, "rb") as fh:
                    fh.seek(self._offsets.get(f.name, 0))
                    data = fh.read()
                end = data.rfind(b"\n")
                if end < 0:
                    continue
                self._offsets[f.name] = self._offsets.get(f.name, 0) + end + 1
                now = time.monotonic()
                rank = int(f.name[len("consumed-rank"):-len(".jsonl")])
                for line in data[:end].splitlines():
                    try:
                        rec = json.loads(line)
                    except ValueError:  # a line cut by a SIGKILL mid-write
                        continue
                    self.records.append({"t": now, "rank": rank, **rec})
            self._stop.wait(self.poll_s)

    def wait_step(self, step: int, timeout: float, *, after: float = 0.0) -> dict | None:
        """The first record of a step >= ``step`` arrived after ``after`` (waiting up to ``timeout``), or None."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hit = next((r for r in list(self.records) if r["t"] >= after and r["step"] >= step), None)
            if hit:
                return hit
            time.sleep(self.poll_s / 2)
        return None

    def last_step(self) -> int:
        return max((r["step"] for r in self.records), default=0)

    # Holds (``TrainLoop._hold_if_asked``): the ranks stop after an exact step until released, so a kill aimed
    # at that step lands there however fast the run is going.
    def hold(self, step: int) -> None:
        """Every rank of the run will wait after ``step`` until :meth:`release`."""
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / f"hold-after-step-{step}").write_text("")

    def wait_held(self, step: int, ranks: int, timeout: float) -> bool:
        """True once ``ranks`` ranks are waiting after ``step`` (their markers), False after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(list(self.directory.glob(f"hold-after-step-{step}.rank*"))) >= ranks:
                return True
            time.sleep(self.poll_s)
        return False

    def release(self, step: int) -> None:
        (self.directory / f"hold-after-step-{step}").unlink(missing_ok=True)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def attempts(directory: Path | str) -> list[dict[int, list[dict]]]:
    """A run's audit files split into attempts: a rank's step going back marks a restart. Returns, per attempt,
    each rank's records (``{"epoch", "step", "rows"}``) in order."""
    import json

    out: list[dict[int, list[dict]]] = []
    for f in sorted(Path(directory).glob("consumed-rank*.jsonl")):
        rank = int(f.name[len("consumed-rank"):-len(".jsonl")])
        attempt, last = 0, None
        for line in f.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if last is not None and (rec["epoch"], rec["step"]) <= last:
                attempt += 1
            last = (rec["epoch"], rec["step"])
            while len(out) <= attempt:
                out.append({})
            out[attempt].setdefault(rank, []).append(rec)
    return out


def effective_rows(directory: Path | str, epoch: int = 0, *, upto_step: int | None = None) -> tuple[list, list[int]]:
    """The (sample, window) rows a run's surviving lineage trained on in ``epoch``: of each attempt the steps up to
    where the next attempt resumed (its first step - 1). Returns the rows and the resume points (steps)."""
    runs = attempts(directory)
    firsts = [min(r["step"] for recs in a.values() for r in recs) for a in runs]
    resumes = [f - 1 for f in firsts[1:]]
    rows = []
    for i, a in enumerate(runs):
        end = resumes[i] if i < len(resumes) else None
        for recs in a.values():
            for r in recs:
                if r["epoch"] == epoch and (end is None or r["step"] <= end) and \
                        (upto_step is None or r["step"] <= upto_step):
                    rows += [tuple(x) for x in r["rows"]]
    return rows, resumes


def rank_hosts(cluster, audit_dir: Path | str) -> dict[int, str]:
    """Which host runs each rank now: the namespace of the process holding ``consumed-rank<r>.jsonl`` open."""
    found = {}
    prefix = str(Path(audit_dir)) + "/consumed-rank"
    for host in cluster.ray_hosts:
        for pid in namespace_pids(host.ns):
            try:
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith(prefix):
                        found[int(target[len(prefix):-len(".jsonl")])] = host.name
            except OSError:
                continue
    return found
