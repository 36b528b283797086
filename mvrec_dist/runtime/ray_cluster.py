"""Connecting jobs to Ray: an existing cluster, or an embedded loopback-only local one.

Every job enters ``ray_session(cfg.ray)``. With an address (config, ``--address`` or
``RAY_ADDRESS``, as under ``ray job submit``) it connects to that cluster. Without one it starts a
local cluster bound to 127.0.0.1 only (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, dashboard on
127.0.0.1), sized to this machine, and shuts it down on exit, including on errors and Ctrl-C.
Either way the console stays the project's (``runtime.console``): Ray does not stream the workers'
output to it and Ray's own log records go to the job's log file, unless ``ray.verbose``.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

from mvrec_dist.config.runtime import RayConfig
from mvrec_dist.runtime.console import library_logs

__all__ = ["LOOPBACK_ENV", "apply_loopback_env", "ray_session", "local_cluster_resources", "cluster_view"]

# Environment that keeps a local run on loopback; Ray workers inherit it from the driver.
LOOPBACK_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "GLOO_SOCKET_IFNAME": "lo",
    "MASTER_ADDR": "127.0.0.1",
    # Ray's usage-stats reporter would try to reach the internet.
    "RAY_USAGE_STATS_ENABLED": "0",
}


def apply_loopback_env() -> None:
    """Set ``LOOPBACK_ENV`` in this process (workers started afterwards inherit it).

    Ray reads ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` once, when ``ray`` is imported; if it was
    imported before this call, the constant it derived is updated too, or Ray would bind to the
    machine's external address.
    """
    import sys

    for key, value in LOOPBACK_ENV.items():
        os.environ[key] = value
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = False


def local_cluster_resources(cfg: RayConfig) -> dict:
    """The ``ray.init`` keyword arguments for an embedded local cluster sized to this machine."""
    num_cpus = cfg.num_cpus or os.cpu_count() or 1
    kwargs = {
        "num_cpus": num_cpus,
        "include_dashboard": cfg.dashboard,
        "dashboard_host": "127.0.0.1",
    }
    if cfg.object_store_gb > 0:
        kwargs["object_store_memory"] = int(cfg.object_store_gb * (1 << 30))
    return kwargs


@contextlib.contextmanager
def ray_session(cfg: RayConfig, *, runtime_env: dict | None = None, log_file: str | None = None) -> Iterator[str]:
    """Connect to Ray for the duration of a job.

    Unless ``cfg.verbose``, Ray does not stream the output of workers and tasks to this console
    (``log_to_driver=False``: training workers write their own log files, ``runtime.console``), and
    Ray's and Ray Data's log records on this process go to ``log_file`` (errors stay on the console).

    Args:
        cfg: The job's ``ray`` section.
        runtime_env: Runtime environment for the job's tasks (only used when this call starts
            Ray; a job submitted with ``ray job submit`` already has one).
        log_file: The job's driver log (``<run>/logs/driver.log``); None: Ray Data keeps its own, in
            Ray's session directory, and other library records are dropped.

    Yields:
        ``"cluster"`` when connected to an existing cluster, ``"local"`` for an embedded one.
    """
    import ray

    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        # Already connected (a test fixture or a caller): use it and leave it running.
        yield "existing"
        return
    with library_logs(log_file, verbose=cfg.verbose):
        if address:
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=cfg.verbose)
            mode = "cluster"
        else:
            apply_loopback_env()
            env = dict(runtime_env or {})
            env_vars = dict(env.get("env_vars", {}))
            env_vars.update(LOOPBACK_ENV)
            env["env_vars"] = env_vars
            # address="local": always a new embedded cluster, never one that happens to run on this machine.
            ray.init(address="local", runtime_env=env, log_to_driver=cfg.verbose, **local_cluster_resources(cfg))
            mode = "local"
        try:
            yield mode
        finally:
            ray.shutdown()


def cluster_view() -> tuple[dict, int]:
    """``(ray.cluster_resources(), alive node count)`` of the connected cluster (for preflight checks)."""
    import ray

    return ray.cluster_resources(), len([n for n in ray.nodes() if n.get("Alive")])
