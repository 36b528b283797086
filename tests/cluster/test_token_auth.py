"""Ray token authentication, as the cluster configs set it up: refused without the token, accepted with it.

A private loopback-only head node is started with ``ray start --head --block`` in its own session,
temp dir, HOME and free ports, with ``RAY_AUTH_MODE=token`` and the token in a file
(``RAY_AUTH_TOKEN_PATH``), the way ``cluster/aws-gpu.yaml`` and ``cluster/gcp-gpu.yaml`` start theirs.
Clients are the job server's HTTP API and the ``ray job submit`` CLI that cluster/README.md tells
operators to use. Nothing reads or writes ``~/.ray/auth_token``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import psutil
import pytest

pytestmark = pytest.mark.integration

RAY = str(Path(sys.executable).with_name("ray"))
MARKER = "mvrec-token-auth-ok"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _base_env(home: Path) -> dict[str, str]:
    # No inherited Ray settings (auth, address, a shared temp dir) and a private HOME, so neither the
    # cluster nor the clients can fall back on anyone's ~/.ray/auth_token.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")
    return env


def _cluster_processes(session_id: int, root: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            in_session = os.getsid(proc.pid) == session_id
            mentions_root = any(root in part for part in proc.info["cmdline"] or ())
        except (ProcessLookupError, psutil.Error, PermissionError):
            continue
        if (in_session or mentions_root) and proc.pid != os.getpid():
            found.append(proc)
    return found


@contextlib.contextmanager
def _token_cluster() -> Iterator[dict]:
    # A short private path: Ray's unix sockets live under the temp dir and their paths are length-limited.
    root = tempfile.mkdtemp(prefix="mvrec-tok-", dir="/tmp")
    home = Path(root) / "home"
    home.mkdir()
    token = secrets.token_hex(32)
    token_file = Path(root) / "ray_auth_token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    dashboard = _free_port()
    ports = {flag: _free_port() for flag in (
        "--port", "--node-manager-port", "--object-manager-port", "--ray-client-server-port",
        "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--metrics-export-port",
        "--runtime-env-agent-port")}
    env = dict(_base_env(home), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file),
               RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0")
    cmd = [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
           f"--dashboard-port={dashboard}", "--include-dashboard=true", f"--temp-dir={root}/ray",
           "--num-cpus=1", "--num-gpus=0", "--object-store-memory=100000000", "--disable-usage-stats",
           "--min-worker-port=0", "--max-worker-port=0", *(f"{k}={v}" for k, v in ports.items())]
    log = open(Path(root) / "head.log", "w")
    head = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    info = {"root": root, "home": home, "token": token, "token_file": token_file, "session": head.pid,
            "url": f"http://127.0.0.1:{dashboard}"}
    try:
        deadline = time.monotonic() + 45
        while True:
            if head.poll() is not None:
                raise RuntimeError(f"ray start exited with {head.returncode}: "
                                   f"{(Path(root) / 'head.log').read_text()[-2000:]}")
            status, _ = _http(info["url"], "GET", "/api/version")
            if status is not None:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the head node's job server did not come up within 45 s")
            time.sleep(0.5)
        yield info
    finally:
        # SIGTERM lets `ray start --block` stop its own processes; then kill whatever is left of this
        # cluster only: its session, or processes naming its private temp dir.
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(20)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        for proc in _cluster_processes(info["session"], root):
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(_cluster_processes(info["session"], root), timeout=10)
        log.close()
        info["leftover"] = [p.pid for p in _cluster_processes(info["session"], root)]
        shutil.rmtree(root, ignore_errors=True)


def _http(url: str, method: str, path: str, body: dict | None = None,
          headers: dict | None = None) -> tuple[int | None, str]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None, ""


def _submit(cluster: dict, env: dict[str, str]) -> subprocess.CompletedProcess:
    cmd = [RAY, "job", "submit", "--address", cluster["url"], "--",
           "python", "-c", f"print('{MARKER}')"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=90)


def test_job_submission_needs_the_token(tmp_path):
    with _token_cluster() as cluster:
        url, bearer = cluster["url"], {"Authorization": f"Bearer {cluster['token']}"}
        job = {"entrypoint": f"python -c \"print('{MARKER}')\""}

        # The HTTP API: no token -> 401, a wrong token -> 403, for listing and for submitting.
        assert _http(url, "GET", "/api/jobs/")[0] == 401
        assert _http(url, "POST", "/api/jobs/", job)[0] == 401
        wrong = {"Authorization": f"Bearer {secrets.token_hex(32)}"}
        assert _http(url, "POST", "/api/jobs/", job, headers=wrong)[0] == 403
        assert _http(url, "GET", "/api/jobs/", headers=wrong)[0] == 403

        # The CLI an operator uses, without the token in its environment: refused.
        client_home = tmp_path / "client-home"
        client_home.mkdir()
        refused = _submit(cluster, _base_env(client_home))
        assert refused.returncode != 0
        assert "Authentication required" in refused.stdout + refused.stderr

        # The same CLI with the token from a file, as cluster/README.md says: accepted, and the job runs.
        accepted = _submit(cluster, dict(_base_env(client_home), RAY_AUTH_MODE="token",
                                         RAY_AUTH_TOKEN_PATH=str(cluster["token_file"])))
        assert accepted.returncode == 0, accepted.stdout + accepted.stderr
        assert MARKER in accepted.stdout

        # Only the accepted submission became a job.
        status, body = _http(url, "GET", "/api/jobs/", headers=bearer)
        assert status == 200
        jobs = json.loads(body)
        assert [j["status"] for j in jobs] == ["SUCCEEDED"]
        assert MARKER in jobs[0]["entrypoint"]

        # Every socket the cluster listens on is bound to loopback.
        ours = {p.pid for p in _cluster_processes(cluster["session"], cluster["root"])}
        listening = [c for c in psutil.net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN and c.pid in ours]
        assert listening, "found no listening socket of the test cluster"
        assert all(c.laddr.ip in ("127.0.0.1", "::ffff:127.0.0.1") for c in listening), listening

        assert not (client_home / ".ray").exists() and not (cluster["home"] / ".ray" / "auth_token").exists()

    assert cluster["leftover"] == [], f"processes of the test cluster still running: {cluster['leftover']}"
