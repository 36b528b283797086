"""Network namespaces as hosts: one namespace per host, all on one bridge, nothing in the root namespace.

Layout for a cluster named ``NAME`` (``cluster.local.cluster`` picks the hosts and addresses):

* ``NAME-net`` holds the bridge ``br0`` and one veth end per host (``v-<host>``). Keeping the bridge
  in its own namespace means the machine's root namespace gets no link, address, route or firewall
  rule at all, and deleting that namespace removes the bridge and every veth end with it.
* ``NAME-<host>`` is one host: ``lo`` and ``eth0`` (the other veth end) with its private address
  and no default route, so nothing started in it can reach anything beyond the bridge.

Every function here is a thin, idempotent wrapper around ``ip``; teardown (``remove_namespaces``)
kills every process still in a namespace (``ip netns pids``) before deleting it, so a namespace
never outlives its processes and no process keeps running in a deleted one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

__all__ = ["NetError", "available", "ip", "namespaces", "add_namespace", "add_bridge", "connect",
           "namespace_pids", "kill_namespace", "remove_namespaces", "links"]


class NetError(RuntimeError):
    """An ``ip`` command failed; the message names the command and its error."""


def ip(*args: str, check: bool = True) -> str:
    """Run ``ip ARGS`` and return its stdout; raise ``NetError`` with ip's stderr when ``check``."""
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise NetError(f"ip {' '.join(args)}: {proc.stderr.strip() or f'exit {proc.returncode}'}")
    return proc.stdout


def available() -> str | None:
    """None when namespaces can be made here, else why not (one line, for a skip message)."""
    if os.geteuid() != 0:
        return "not root (creating network namespaces with `ip netns` needs root)"
    probe = f"mvlc-probe-{os.getpid()}"
    try:
        ip("netns", "add", probe)
        ip("-n", probe, "link", "add", "br0", "type", "bridge")
    except (NetError, FileNotFoundError, subprocess.TimeoutExpired) as exc:
        return f"`ip netns` is unavailable here ({exc})"
    finally:
        ip("netns", "del", probe, check=False)
    return None


def namespaces(prefix: str) -> list[str]:
    """Names of the network namespaces starting with ``prefix``."""
    out = ip("netns", "list", check=False)
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return sorted(n for n in names if n.startswith(prefix))


def add_namespace(name: str) -> None:
    """Create namespace ``name`` with ``lo`` up (Ray and gloo use loopback inside a host too)."""
    ip("netns", "add", name)
    ip("-n", name, "link", "set", "lo", "up")


def add_bridge(net_ns: str) -> None:
    """Create the bridge ``br0`` in ``net_ns`` and bring it up (no address: it only switches)."""
    ip("-n", net_ns, "link", "add", "br0", "type", "bridge")
    ip("-n", net_ns, "link", "set", "br0", "up")


def connect(host_ns: str, net_ns: str, port: str, address: str, prefix_len: int) -> None:
    """Give ``host_ns`` an ``eth0`` with ``address/prefix_len``, its peer ``port`` on ``net_ns``'s bridge.

    Both veth ends are created directly inside their namespaces (never in the root namespace).
    """
    ip("link", "add", "eth0", "netns", host_ns, "type", "veth", "peer", "name", port, "netns", net_ns)
    ip("-n", net_ns, "link", "set", port, "master", "br0")
    ip("-n", net_ns, "link", "set", port, "up")
    ip("-n", host_ns, "addr", "add", f"{address}/{prefix_len}", "dev", "eth0")
    ip("-n", host_ns, "link", "set", "eth0", "up")


def links(ns: str | None = None) -> list[str]:
    """Interface names of namespace ``ns`` (None: the root namespace)."""
    out = ip(*(("-n", ns) if ns else ()), "-o", "link", "show", check=False)
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]


def namespace_pids(name: str) -> list[int]:
    """Processes whose network namespace is ``name`` (``ip netns pids``)."""
    out = ip("netns", "pids", name, check=False)
    return [int(p) for p in out.split() if p.isdigit()]


def kill_namespace(name: str, timeout: float = 15.0) -> list[int]:
    """SIGKILL every process in namespace ``name`` until none is left; return the pids still there.

    Repeated because a dying Ray node can still fork (a raylet starting a worker) between the
    listing and the kill. SIGKILL, not SIGTERM: a test cluster has nothing to flush, and Ray's own
    shutdown paths can wait on peers that are already gone.
    """
    deadline = time.monotonic() + timeout
    while True:
        pids = [p for p in namespace_pids(name) if p != os.getpid()]
        if not pids or time.monotonic() > deadline:
            return pids
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


def remove_namespaces(names: list[str]) -> list[str]:
    """Kill the processes of, then delete, each namespace in ``names``; return problems (empty: all gone)."""
    problems = []
    for name in names:
        left = kill_namespace(name)
        if left:
            problems.append(f"namespace {name}: processes {left} survived SIGKILL")
        proc = subprocess.run(["ip", "netns", "del", name], capture_output=True, text=True, timeout=30)
        if proc.returncode != 0 and "No such file" not in proc.stderr:
            problems.append(f"ip netns del {name}: {proc.stderr.strip()}")
    return problems
