"""A multi-host Ray cluster on one machine: hosts are network namespaces (``cluster.local.net``).

Hosts of a cluster named ``NAME`` with ``hosts=N`` (addresses in ``10.201.0.0/24`` by default):

=========  ==============  ====================================================================
host       address         runs
=========  ==============  ====================================================================
``h0``     ``10.201.0.10``  Ray head: GCS ``:6379``, dashboard + job server ``:8265`` (bound to
                           that address, never to loopback or the machine's own address)
``h1``...  ``10.201.0.11``  Ray worker nodes (``ray start --address 10.201.0.10:6379``)
``store``  ``10.201.0.2``   SeaweedFS S3 gateway ``:9000`` (``cluster.local.store``), bucket ``mvrec``
``client`` ``10.201.0.3``   nothing: where ``ray job submit`` and the checks run, like a laptop
=========  ==============  ====================================================================

Token authentication is on for every Ray process (``RAY_AUTH_MODE=token``, Ray >= 2.52): one random
token per cluster in ``<root>/ray_auth_token`` (mode 0600), read through ``RAY_AUTH_TOKEN_PATH`` by
the head, the workers (which present it to the GCS to join) and the client. A request to the job
server without it gets HTTP 401, with a wrong one 403.

Every Ray node gets the store's endpoint and this cluster's S3 keys in its environment (what an
instance profile plus ``AWS_ENDPOINT_URL`` give a real node), so tasks, Ray Train workers and the job
driver all reach ``s3://mvrec/...`` with plain URIs. ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1``: the
project's local default (0) confines Ray to loopback and makes ``ray start --address`` refuse to join;
here the namespace is what confines it (its only other interface is the private bridge, with no
route beyond).

Each host has its own ``HOME``, ``TMPDIR`` and Ray temp dir under ``<root>/<host>/`` (``<root>`` is
``/tmp/<NAME>``, short because Ray's unix-socket paths live there), so no host sees another's
``~/.ray`` or session files, nor those of any other Ray on the machine. ``ray stop`` is never used: it
would kill every Ray process of the machine. ``down`` kills the processes of each namespace instead.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from cluster.local import net, store

__all__ = ["ClusterError", "Host", "LocalCluster", "REPO", "leftovers"]

REPO = Path(__file__).resolve().parents[2]
GCS_PORT = 6379  # Ray's defaults: each host has its own ports, so no two clusters or hosts collide
DASHBOARD_PORT = 8265
_HOST_SUFFIX = re.compile(r"^(net|client|store|h\d+)$")


class ClusterError(RuntimeError):
    """Bringing the cluster up failed; the message names the host and the step, and ends with a log tail."""


@dataclass(frozen=True)
class Host:
    """One host of the cluster."""

    name: str
    """``h0`` (head), ``h1``... (workers), ``store`` or ``client``."""
    ns: str
    """Its network namespace."""
    address: str
    """Its address on the bridge."""


def _tail(path: Path, chars: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return f"(no {path})"


class LocalCluster:
    """N Ray hosts, a store and a client as namespaces on one bridge; ``up()``, ``down()``, run commands.

    Args:
        name: Prefix of the namespaces (``<name>-h0``...) and of the directory ``/tmp/<name>``.
        hosts: Ray hosts, the head included (>= 1).
        head_cpus: CPUs the head offers to tasks (0, as on a real cluster: tasks run on workers).
        worker_cpus: CPUs each worker host offers.
        subnet: First three octets of the private /24 the hosts live on.
        object_store_mb: Object store of each Ray node.
    """

    def __init__(self, name: str = "mvlc", hosts: int = 3, *, head_cpus: int = 0, worker_cpus: int = 1,
                 subnet: str = "10.201.0", object_store_mb: int = 200):
        if hosts < 1:
            raise ValueError("hosts must be >= 1")
        self.name, self.subnet = name, subnet
        self.head_cpus, self.worker_cpus, self.object_store_mb = head_cpus, worker_cpus, object_store_mb
        self.root = Path("/tmp") / name
        self.net_ns = f"{name}-net"
        self.ray_hosts = [Host(f"h{i}", f"{name}-h{i}", f"{subnet}.{10 + i}") for i in range(hosts)]
        self._head = self.ray_hosts[0]
        self.dead: set[str] = set()
        """Ray hosts whose namespace was emptied (``kill``) and not started again."""
        self.store = Host("store", f"{name}-store", f"{subnet}.2")
        self.client = Host("client", f"{name}-client", f"{subnet}.3")
        self.token_file = self.root / "ray_auth_token"
        self._initial = hosts
        self.keys: dict[str, str] = {}
        self._weed: subprocess.Popen | None = None  # the store, a child of this process: reaped by down()

    # ------------------------------------------------------------------ addresses and environments
    @property
    def head(self) -> Host:
        """The current Ray head (``h0`` until ``new_head``)."""
        return self._head

    @property
    def workers(self) -> list[Host]:
        """The worker hosts that were started at ``up`` (dead or alive; see ``alive_workers``)."""
        return self.ray_hosts[1:self._initial]

    @property
    def alive_workers(self) -> list[Host]:
        """Every Ray host but the head that has not been killed."""
        return [h for h in self.ray_hosts if h != self._head and h.name not in self.dead]

    @property
    def hosts(self) -> list[Host]:
        return [*self.ray_hosts, self.store, self.client]

    @property
    def dashboard_url(self) -> str:
        """What ``ray job submit --address`` takes (reachable from the client namespace)."""
        return f"http://{self.head.address}:{DASHBOARD_PORT}"

    @property
    def gcs_address(self) -> str:
        return f"{self.head.address}:{GCS_PORT}"

    def host(self, name: str) -> Host:
        """The host called ``name`` (``h0``, ``h1``, ``store``, ``client``)."""
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(f"no host {name!r} in cluster {self.name} (hosts: {[h.name for h in self.hosts]})")

    def env(self, host: Host, *, token: bool = True) -> dict[str, str]:
        """The environment of processes on ``host``: built from scratch, nothing inherited from the caller
        (pytest sets loopback-only Ray and gloo variables that must not reach a namespaced host).

        Args:
            host: The host.
            token: Give the Ray auth token (False: a client without it, to see it refused).
        """
        home = self.root / host.name / "home"
        env = {"PATH": f"{Path(sys.executable).parent}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "HOME": str(home), "TMPDIR": str(self.root / host.name / "tmp"), "LANG": "C.UTF-8",
               "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1",
               # torch.distributed (gloo) between hosts over the bridge; NCCL would take the same name.
               "GLOO_SOCKET_IFNAME": "eth0", "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu",
               # DeepSpeed JIT-builds its CPU ops (deepspeed_shm_comm) into the torch extensions cache under HOME:
               # with a fresh HOME per host every new host compiled them again (minutes of 2 busy cores). The
               # machine's cache is shared instead, as an image with the ops prebuilt would be (torch locks it).
               "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR")
               or os.path.join(os.path.expanduser("~"), ".cache", "torch_extensions")}
        if token:
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_file))
        if self.keys:
            env.update(store.client_env(self.store.address, self.keys))
        return env

    # ------------------------------------------------------------------ running things on hosts
    def command(self, host: Host, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run inside ``host``'s namespace."""
        return ["ip", "netns", "exec", host.ns, *argv]

    def run(self, host: Host | str, argv: Sequence[str], *, token: bool = True, timeout: float = 120,
            env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
        """Run ``argv`` on ``host`` (from the repo root by default); return it finished, output captured.

        Raises:
            ClusterError: when it runs past ``timeout`` (named by host and command).
        """
        host = self.host(host) if isinstance(host, str) else host
        try:
            return subprocess.run(self.command(host, argv), env={**self.env(host, token=token), **(env or {})},
                                  cwd=cwd or REPO, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise ClusterError(f"{host.name} ({host.address}): `{' '.join(argv)[:200]}` ran past {timeout:.0f} s; "
                               f"output so far: {(exc.stdout or b'')[-1500:]!r}") from None

    def popen(self, host: Host | str, argv: Sequence[str], *, token: bool = True, **kwargs) -> subprocess.Popen:
        """Start ``argv`` on ``host`` from the repo root without waiting (``kwargs`` go to ``Popen``)."""
        host = self.host(host) if isinstance(host, str) else host
        return subprocess.Popen(self.command(host, argv), env=self.env(host, token=token), cwd=REPO, **kwargs)

    def probe(self, host: Host | str, *args: str, timeout: float = 60, token: bool = True) -> dict | list:
        """Run ``python -m cluster.local.probe ARGS`` on ``host``; return its JSON answer."""
        host = self.host(host) if isinstance(host, str) else host
        proc = self.run(host, [sys.executable, "-m", "cluster.local.probe", *args], token=token, timeout=timeout)
        if proc.returncode != 0:
            raise ClusterError(f"{host.name} ({host.address}): probe {' '.join(args)} failed (exit "
                               f"{proc.returncode}): {(proc.stdout + proc.stderr)[-1500:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    # ------------------------------------------------------------------ up / down
    def up(self, timeout: float = 150) -> "LocalCluster":
        """Bring the whole cluster up; on any failure tear down what was made and raise ``ClusterError``.

        Steps: leftovers of a cluster of the same name removed; directories, token and S3 keys; the
        namespaces on the bridge; the store and the Ray head; the Ray workers; the bucket; every
        node seen alive by the head.
        """
        deadline = time.monotonic() + timeout
        self.down()
        try:
            self._prepare()
            self._network()
            weed = self._weed = store.start_store(self.store.ns, self.store.address, self.root / "store")
            self._ray_start(self.head, ["--head", f"--port={GCS_PORT}", f"--dashboard-host={self.head.address}",
                                        f"--dashboard-port={DASHBOARD_PORT}", "--include-dashboard=true",
                                        f"--num-cpus={self.head_cpus}"], deadline)
            # One after the other: on a loaded 2-core machine, raylets started together can miss Ray's fixed
            # 30 s registration limit, and a worker joins in a few seconds anyway.
            for worker in self.workers:
                self._ray_start(worker, [f"--address={self.gcs_address}", f"--num-cpus={self.worker_cpus}"], deadline)
            if weed.poll() is not None:
                raise ClusterError(f"store ({self.store.address}): weed server exited with {weed.returncode}: "
                                   f"{_tail(self.root / 'store' / 'weed.log')}")
            self._step(self.store, "creating the bucket", lambda left: self.probe(
                self.client, "mkbucket", "--timeout", str(int(left)), timeout=left + 15), deadline,
                self.root / "store" / "weed.log")
            self._step(self.head, "waiting for every node to join", lambda left: self.probe(
                self.client, "wait-nodes", self.dashboard_url, str(len(self.ray_hosts)), "--timeout", str(int(left)), timeout=left + 15),
                deadline, self._ray_log(self.head))
        except BaseException:
            self.down()
            raise
        return self

    def _step(self, host: Host, what: str, fn, deadline: float, log: Path) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ClusterError(f"{host.name} ({host.address}): no time left for {what}")
        try:
            fn(left)
        except ClusterError as exc:
            raise ClusterError(f"{host.name} ({host.address}): {what} failed: {exc}; log {log}: {_tail(log, 800)}") from None

    def _prepare(self) -> None:
        self.root.mkdir(mode=0o700, parents=True)
        for host in self.hosts:
            for sub in ("home", "tmp"):
                (self.root / host.name / sub).mkdir(parents=True)
        # Written before any process starts, 0600, no trailing newline (what cluster/README.md says to make).
        fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        self.keys = store.write_credentials(self.root / "store")
        self._save_state()

    def _save_state(self) -> None:
        """``<root>/state.json``: what ``from_state`` (``python -m cluster.local exec``...) reads back."""
        state = {"name": self.name, "hosts": [asdict(h) for h in self.hosts], "dashboard_url": self.dashboard_url,
                 "gcs_address": self.gcs_address, "token_file": str(self.token_file), "head_cpus": self.head_cpus,
                 "worker_cpus": self.worker_cpus, "subnet": self.subnet, "keys": self.keys, "head": self.head.name,
                 "dead": sorted(self.dead), "initial": self._initial}
        path = self.root / "state.json"
        path.write_text(json.dumps(state, indent=1))
        path.chmod(0o600)

    def _network(self) -> None:
        try:
            net.add_namespace(self.net_ns)
            net.add_bridge(self.net_ns)
            for host in self.hosts:
                net.add_namespace(host.ns)
                net.connect(host.ns, self.net_ns, f"v-{host.name}", host.address, 24)
        except net.NetError as exc:
            raise ClusterError(f"network: {exc}") from None

    def _ray_log(self, host: Host) -> Path:
        return self.root / host.name / "ray-start.log"

    def _ray_start(self, host: Host, args: list[str], deadline: float) -> None:
        """``ray start`` on ``host`` (returns once its processes run; they stay in the namespace).

        Ray gives a new node a fixed 30 s to register with the GCS ("The current node timed out during
        startup"), which a loaded machine can miss: then the host is emptied and started once more.
        """
        temp = self.root / host.name / "ray"
        argv = [str(Path(sys.executable).with_name("ray")), "start", *args, f"--node-ip-address={host.address}",
                f"--temp-dir={temp}", "--num-gpus=0", f"--object-store-memory={self.object_store_mb << 20}",
                "--disable-usage-stats"]
        log = self._ray_log(host)
        for attempt in (1, 2):
            left = deadline - time.monotonic()
            proc = self.run(host, argv, timeout=max(left, 1))
            with open(log, "a") as f:
                f.write(f"--- ray start, attempt {attempt}, exit {proc.returncode}\n{proc.stdout}{proc.stderr}")
            if proc.returncode == 0:
                return
            slow = "timed out during startup" in proc.stdout + proc.stderr
            if attempt == 2 or not slow or deadline - time.monotonic() < 40:
                raise ClusterError(f"{host.name} ({host.address}): ray start exited with {proc.returncode} "
                                   f"(attempt {attempt}); log {log}: {_tail(log)}")
            net.kill_namespace(host.ns)
            shutil.rmtree(temp, ignore_errors=True)

    # ------------------------------------------------------------------ failures and replacements
    def kill(self, host: Host | str) -> int:
        """Lose ``host``: SIGKILL every process in its namespace (``ip netns pids``), as a machine that
        dies takes all its processes; the namespace and its link stay (an address nobody answers on).

        Returns:
            How many processes were killed.

        Raises:
            ClusterError: when processes survive.
        """
        host = self.host(host) if isinstance(host, str) else host
        count = len(net.namespace_pids(host.ns))
        left = net.kill_namespace(host.ns)
        if left:
            raise ClusterError(f"{host.name} ({host.address}): processes {left} survived SIGKILL")
        self.dead.add(host.name)
        self._save_state()
        return count

    def freeze(self, *hosts: Host | str) -> None:
        """SIGSTOP every process of ``hosts`` (then ``kill`` them): hosts lost at the same instant, with no
        step run between one host's end and another's."""
        import signal

        for host in hosts:
            host = self.host(host) if isinstance(host, str) else host
            for pid in net.namespace_pids(host.ns):
                try:
                    os.kill(pid, signal.SIGSTOP)
                except ProcessLookupError:
                    pass

    def partition(self, host: Host | str, *, up: bool = False) -> None:
        """Cut ``host`` off the network (``up=True``: heal it): its port on the bridge set down, as a switch port
        or cable lost. Its processes run on and its TCP connections stay open, but every packet from or to it
        is dropped: peers see no reset, only silence, until their own timeouts fire (what a partition is, unlike
        ``kill`` whose dead host answers with resets)."""
        host = self.host(host) if isinstance(host, str) else host
        try:
            net.ip("-n", self.net_ns, "link", "set", f"v-{host.name}", "up" if up else "down")
        except net.NetError as exc:
            raise ClusterError(f"{host.name} ({host.address}): {'heal' if up else 'partition'}: {exc}") from None

    def _new_ray_host(self) -> Host:
        i = len(self.ray_hosts)
        if 10 + i > 250:
            raise ClusterError("no address left on the bridge for another host")
        host = Host(f"h{i}", f"{self.name}-h{i}", f"{self.subnet}.{10 + i}")
        for sub in ("home", "tmp"):
            (self.root / host.name / sub).mkdir(parents=True, exist_ok=True)
        try:
            net.add_namespace(host.ns)
            net.connect(host.ns, self.net_ns, f"v-{host.name}", host.address, 24)
        except net.NetError as exc:
            raise ClusterError(f"{host.name} ({host.address}): network: {exc}") from None
        self.ray_hosts.append(host)
        self._save_state()
        return host

    def add_worker(self, timeout: float = 90) -> Host:
        """A new worker host (new namespace, next free address) joining the current head; returns it."""
        host = self._new_ray_host()
        self._ray_start(host, [f"--address={self.gcs_address}", f"--num-cpus={self.worker_cpus}"],
                        time.monotonic() + timeout)
        return host

    def add_workers(self, count: int, *, parallel: int = 2, timeout: float = 120) -> list[Host]:
        """``count`` new worker hosts, ``parallel`` of them starting Ray at a time; returns them."""
        from concurrent.futures import ThreadPoolExecutor

        hosts = [self._new_ray_host() for _ in range(count)]
        deadline = time.monotonic() + timeout
        with ThreadPoolExecutor(parallel) as pool:
            for f in [pool.submit(self._ray_start, h, [f"--address={self.gcs_address}",
                                                       f"--num-cpus={self.worker_cpus}"], deadline) for h in hosts]:
                f.result()
        return hosts

    def rejoin(self, host: Host | str, timeout: float = 90) -> Host:
        """Restart Ray on a worker host against the current head (what its supervisor does after a head
        loss: the old raylet exits once the GCS is gone, ``gcs_rpc_server_reconnect_timeout_s``)."""
        host = self.host(host) if isinstance(host, str) else host
        net.kill_namespace(host.ns)
        shutil.rmtree(self.root / host.name / "ray", ignore_errors=True)
        self._ray_start(host, [f"--address={self.gcs_address}", f"--num-cpus={self.worker_cpus}"],
                        time.monotonic() + timeout)
        self.dead.discard(host.name)
        self._save_state()
        return host

    def new_head(self, timeout: float = 120) -> Host:
        """A new Ray head on a new host (namespace, address): the cluster's head from now on; returns it.
        Workers still point at the old head: ``rejoin`` them."""
        host = self._new_ray_host()
        self._ray_start(host, ["--head", f"--port={GCS_PORT}", f"--dashboard-host={host.address}",
                               f"--dashboard-port={DASHBOARD_PORT}", "--include-dashboard=true",
                               f"--num-cpus={self.head_cpus}"], time.monotonic() + timeout)
        self._head = host
        self._save_state()
        return host

    def wait_nodes(self, count: int, timeout: float = 60) -> list[dict]:
        """Wait until the head reports ``count`` alive nodes (the head included); return them."""
        return self.probe(self.client, "wait-nodes", self.dashboard_url, str(count), "--timeout", str(int(timeout)),
                          timeout=timeout + 20)

    def down(self) -> list[str]:
        """Kill every process of this cluster's namespaces, delete them (bridge and veths go with the
        ``net`` namespace) and the cluster directory. Idempotent; returns problems (empty: all gone)."""
        problems = net.remove_namespaces(cluster_namespaces(self.name))
        if self._weed is not None:  # killed with its namespace; wait() so no zombie stays behind
            try:
                self._weed.wait(timeout=10)
            except subprocess.TimeoutExpired:
                problems.append(f"store: weed server {self._weed.pid} did not exit after SIGKILL")
            self._weed = None
        if self.root.exists():
            shutil.rmtree(self.root, ignore_errors=True)
        problems.extend(leftovers(self.name))
        return problems

    @classmethod
    def from_state(cls, name: str) -> "LocalCluster":
        """The cluster ``up`` left running under ``name`` (read from ``/tmp/<name>/state.json``)."""
        state = json.loads((Path("/tmp") / name / "state.json").read_text())
        hosts = [h for h in state["hosts"] if re.fullmatch(r"h\d+", h["name"])]
        cluster = cls(name, state.get("initial", len(hosts)), head_cpus=state["head_cpus"],
                      worker_cpus=state["worker_cpus"], subnet=state["subnet"])
        cluster.ray_hosts = [Host(**h) for h in hosts]
        cluster._head = cluster.host(state.get("head", "h0"))
        cluster.dead = set(state.get("dead", ()))
        cluster.keys = state["keys"]
        return cluster


def cluster_namespaces(name: str) -> list[str]:
    """Namespaces of the cluster ``name`` (exactly ``<name>-net|client|store|h<i>``, not another cluster's)."""
    return [n for n in net.namespaces(f"{name}-") if _HOST_SUFFIX.match(n[len(name) + 1:])]


def leftovers(name: str) -> list[str]:
    """What of cluster ``name`` is still there: namespaces, root-namespace links, processes naming its
    directory (Ray's temp dirs, the store's data dir), the directory itself. Empty when all is gone."""
    import psutil

    found = [f"namespace {n}" for n in cluster_namespaces(name)]
    found += [f"root-namespace link {link}" for link in net.links() if re.fullmatch(r"v-(client|store|h\d+)|br0", link)]
    root = f"/tmp/{name}/"
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(root in part or part == root.rstrip("/") for part in proc.info["cmdline"] or ()):
                found.append(f"process {proc.pid}: {' '.join(proc.info['cmdline'])[:160]}")
        except psutil.Error:
            continue
    if Path(root).exists():
        found.append(f"directory {root}")
    return found
