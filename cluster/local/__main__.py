"""``python -m cluster.local up|down|status|exec``: a multi-host Ray cluster of network namespaces.

  python -m cluster.local up --hosts 3          # head h0 + workers h1, h2, S3 store, client
  python -m cluster.local exec client -- ray job submit --address http://10.201.0.10:8265 ...
  python -m cluster.local status
  python -m cluster.local kill h2               # lose a host: SIGKILL every process of its namespace
  python -m cluster.local partition h2          # cut a host off the network (its bridge port down)
  python -m cluster.local heal h2               # and back on
  python -m cluster.local add-worker            # a new worker host (next address) joins the head
  python -m cluster.local new-head              # a new head host (next address); then rejoin the workers
  python -m cluster.local rejoin h1             # restart a worker's Ray against the current head
  python -m cluster.local down                  # every process, namespace, link and file of it

Run as root from the repo root (``exec`` runs commands there, so ``--working-dir .`` is this checkout).
``up`` leaves the cluster running until ``down``; a failed ``up`` removes what it made.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from cluster.local import net
from cluster.local.cluster import ClusterError, LocalCluster, cluster_namespaces


def _up(a: argparse.Namespace) -> int:
    cluster = LocalCluster(a.name, a.hosts, head_cpus=a.head_cpus, worker_cpus=a.worker_cpus)
    try:
        cluster.up(timeout=a.timeout)
    except ClusterError as exc:
        print(f"up failed (everything made was removed): {exc}", file=sys.stderr)
        return 1
    print(f"cluster {cluster.name} is up:")
    for h in cluster.hosts:
        role = {"h0": "Ray head", "store": "S3 store (SeaweedFS), bucket mvrec", "client": "client"}.get(
            h.name, "Ray worker")
        print(f"  {h.name:<7} {h.address:<12} namespace {h.ns:<14} {role}")
    print(f"dashboard/jobs: {cluster.dashboard_url} (from the client: python -m cluster.local exec client -- ...)")
    print(f"S3 endpoint:    http://{cluster.store.address}:9000 (s3://mvrec/...)")
    print(f"token:          {cluster.token_file}; stop it all with: python -m cluster.local down"
          + (f" --name {a.name}" if a.name != "mvlc" else ""))
    return 0


def _down(a: argparse.Namespace) -> int:
    problems = LocalCluster(a.name).down()
    for p in problems:
        print(f"left over: {p}", file=sys.stderr)
    if not problems:
        print(f"cluster {a.name}: nothing left (namespaces, links, processes, /tmp/{a.name})")
    return 1 if problems else 0


def _status(a: argparse.Namespace) -> int:
    names = cluster_namespaces(a.name)
    if not names:
        print(f"cluster {a.name} is not up")
        return 1
    cluster = LocalCluster.from_state(a.name)
    for ns in names:
        print(f"{ns:<16} {len(net.namespace_pids(ns)):>4} processes")
    nodes = cluster.probe(cluster.client, "wait-nodes", cluster.dashboard_url, "1", "--timeout", "20")
    print(json.dumps(nodes, indent=1))
    return 0


def _exec(a: argparse.Namespace) -> int:
    cluster = LocalCluster.from_state(a.name)
    host = cluster.host(a.host)
    argv = a.argv[1:] if a.argv[:1] == ["--"] else a.argv
    if not argv:
        print("exec: give a command after --", file=sys.stderr)
        return 2
    return subprocess.call(cluster.command(host, argv), env=cluster.env(host, token=not a.no_token), cwd=os.getcwd())


def _failure(a: argparse.Namespace) -> int:
    cluster = LocalCluster.from_state(a.name)
    try:
        if a.cmd == "kill":
            host = cluster.host(a.host)
            n = cluster.kill(host)
            print(f"{host.name} ({host.address}): killed {n} processes; its namespace {host.ns} is empty")
        elif a.cmd in ("partition", "heal"):
            host = cluster.host(a.host)
            cluster.partition(host, up=a.cmd == "heal")
            print(f"{host.name} ({host.address}): {'back on' if a.cmd == 'heal' else 'cut off'} the bridge")
        elif a.cmd == "add-worker":
            host = cluster.add_worker()
            print(f"{host.name} ({host.address}, namespace {host.ns}) joined {cluster.gcs_address}")
        elif a.cmd == "new-head":
            host = cluster.new_head()
            print(f"new head {host.name} ({host.address}); dashboard/jobs {cluster.dashboard_url}; rejoin the "
                  f"workers: python -m cluster.local rejoin HOST")
        else:
            host = cluster.rejoin(a.host)
            print(f"{host.name} ({host.address}) joined {cluster.gcs_address}")
    except (ClusterError, KeyError) as exc:
        print(f"{a.cmd} failed: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.local", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="mvlc", help="cluster name: namespaces <name>-h0..., directory /tmp/<name>")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("up", help="bring a cluster up (removes a leftover one of the same name first)")
    p.add_argument("--hosts", type=int, default=3, help="Ray hosts, the head included")
    p.add_argument("--head-cpus", type=int, default=0, help="CPUs the head offers to tasks")
    p.add_argument("--worker-cpus", type=int, default=1, help="CPUs each worker host offers")
    p.add_argument("--timeout", type=float, default=150, help="seconds for the whole bring-up")
    sub.add_parser("down", help="remove every process, namespace, link and file of the cluster (idempotent)")
    sub.add_parser("status", help="namespaces, their process counts and the Ray nodes")
    p = sub.add_parser("exec", help="run a command on a host, with its environment (token, S3 endpoint/keys)")
    p.add_argument("host", help="h0, h1, ..., store or client")
    p.add_argument("--no-token", action="store_true", help="without the Ray auth token (to see it refused)")
    p.add_argument("argv", nargs=argparse.REMAINDER)
    p = sub.add_parser("kill", help="lose a host: SIGKILL every process of its namespace (the namespace stays)")
    p.add_argument("host")
    for cmd, what in (("partition", "cut a host off the network: its bridge port down, packets dropped"),
                      ("heal", "put a partitioned host back on the network")):
        sub.add_parser(cmd, help=what).add_argument("host")
    sub.add_parser("add-worker", help="a new worker host (new namespace, next address) joins the current head")
    sub.add_parser("new-head", help="a new head host (new namespace, next address); rejoin the workers after it")
    p = sub.add_parser("rejoin", help="restart a worker host's Ray against the current head")
    p.add_argument("host")
    a = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("python -m cluster.local needs root (ip netns)", file=sys.stderr)
        return 2
    return {"up": _up, "down": _down, "status": _status, "exec": _exec, "kill": _failure, "add-worker": _failure,
            "new-head": _failure, "rejoin": _failure, "partition": _failure, "heal": _failure}[a.cmd](a)


if __name__ == "__main__":
    raise SystemExit(main())
