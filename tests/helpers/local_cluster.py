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

import psutil
import pytest

from cluster.local import LocalCluster, leftovers
from cluster.local.net import available, namespaces
from cluster.local.store import weed_binary

__all__ = ["local_cluster", "cluster_unavailable", "remove_stale_clusters"]

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
