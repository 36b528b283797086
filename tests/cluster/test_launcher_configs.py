"""`ray up` launcher configs (cluster/*-gpu.yaml) and the runtime env used to submit jobs to clusters.

Launcher configs are validated with the JSON schema that ships inside the installed ray package
(``ray/autoscaler/ray-schema.json``, through ``jsonschema``), and then with Ray's own
``prepare_config`` + ``validate_config`` (defaults merged, head/worker node types cross-checked).
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path

import jsonschema
import pytest
import yaml

import ray.autoscaler
from mvrec_dist.runtime.paths import check_storage_path
from tests.cluster.job_commands import CLUSTER, REPO, load_job_config, parse_job_command

RUNTIME_ENV = CLUSTER / "runtime_env.yaml"
LAUNCHERS = sorted(p for p in CLUSTER.glob("*.yaml") if p != RUNTIME_ENV)
SCHEMA = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
TOKEN_PATH = re.compile(r"RAY_AUTH_TOKEN_PATH=(\S+)")
# What a bucket URI looks like on each provider, substituted for $MVREC_BUCKET in the header commands.
BUCKETS = {"aws": "s3://example-bucket/mvrec", "gcp": "gs://example-bucket/mvrec"}

ids = [p.name for p in LAUNCHERS]


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _header(path: Path) -> list[str]:
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return lines


def _gpu_types(cfg: dict) -> dict:
    return {k: v for k, v in cfg["available_node_types"].items() if v["resources"].get("GPU", 0) > 0}


def test_there_is_a_launcher_config_per_cloud():
    assert sorted(_load(p)["provider"]["type"] for p in LAUNCHERS) == ["aws", "gcp"]


@pytest.mark.parametrize("path", LAUNCHERS, ids=ids)
def test_validates_against_the_schema_shipped_in_ray(path):
    jsonschema.validate(_load(path), SCHEMA)


@pytest.mark.parametrize("path", LAUNCHERS, ids=ids)
def test_rays_own_validator_accepts_it(path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(_load(path)))


@pytest.mark.parametrize("path", LAUNCHERS, ids=ids)
def test_header_says_what_it_is_and_how_to_launch_it(path):
    header = _header(path)
    assert header and header[0].startswith("Ray cluster launcher config:")
    assert f"ray up cluster/{path.name}" in header
    assert f"ray down cluster/{path.name}" in " ".join(header)


@pytest.mark.parametrize("path", LAUNCHERS, ids=ids)
def test_cpu_head_gpu_workers_of_eight_and_autoscaling_bounds(path):
    cfg = _load(path)
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and "min_workers" not in head
    gpu = _gpu_types(cfg)
    assert gpu, "no GPU worker node type"
    assert all(t["resources"]["GPU"] == 8 for t in gpu.values())
    workers = {k: v for k, v in types.items() if k != cfg["head_node_type"]}
    for name, t in workers.items():
        assert 0 <= t["min_workers"] <= t["max_workers"], name
    assert sum(t["max_workers"] for t in workers.values()) <= cfg["max_workers"]
    assert 0 < cfg["idle_timeout_minutes"]


@pytest.mark.parametrize("path", LAUNCHERS, ids=ids)
def test_gpu_capacity_fits_the_training_preset(path):
    cfg = _load(path)
    train = next(load_job_config(c, {"MVREC_BUCKET": BUCKETS[cfg["provider"]["type"]]})
                 for c in _submit_commands(path) if "train_videorec.py" in c)
    gpu = _gpu_types(cfg)
    assert sum(t["max_workers"] * t["resources"]["GPU"] for t in gpu.values()) >= train.parallel.num_workers
    assert train.parallel.use_gpu
    for t in gpu.values():
        ranks_per_node = t["resources"]["GPU"]
        assert ranks_per_node * train.parallel.cpus_per_worker <= t["resources"]["CPU"]


@pytest.mark.parametrize("path", LAUNCHERS, ids=ids)
def test_setup_syncs_the_repo_and_installs_the_cuda_stack(path):
    cfg = _load(path)
    assert cfg["file_mounts"]["~/mvrec_dist"] == "."
    assert "cd ~/mvrec_dist && bash scripts/install.sh cuda" in cfg["setup_commands"]
    assert "cuda)" in (REPO / "scripts" / "install.sh").read_text()
    excluded = " ".join(cfg["rsync_exclude"])
    for name in (".venv", "data", "runs", ".git"):
        assert name in excluded
    assert cfg["rsync_filter"] == [".gitignore"]
    for cmd in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]:
        assert "~/mvrec_dist/.venv/bin/ray " in cmd, f"Ray must run from the installed venv: {cmd}"


@pytest.mark.parametrize("path", LAUNCHERS, ids=ids)
def test_every_node_starts_ray_with_token_auth_from_a_file_outside_the_repo(path):
    cfg = _load(path)
    starts = [c for c in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"] if " start " in c]
    assert len(starts) == 2
    token_paths = set()
    for cmd in starts:
        assert "RAY_AUTH_MODE=token" in cmd
        assert "RAY_AUTH_TOKEN=" not in cmd
        token_paths.update(TOKEN_PATH.findall(cmd))
    assert len(token_paths) == 1
    remote = token_paths.pop().replace("$HOME", "~")
    local = cfg["file_mounts"][remote]
    assert local.startswith("~/"), "the token comes from the operator's home, never from the repo"
    assert REPO not in Path(os.path.expanduser(local)).resolve().parents


@pytest.mark.parametrize("path", LAUNCHERS, ids=ids)
def test_dashboard_and_job_server_stay_on_the_heads_loopback(path):
    cfg = _load(path)
    head = " ".join(cfg["head_start_ray_commands"])
    assert re.findall(r"--dashboard-host=(\S+)", head) == ["127.0.0.1"]
    assert "--dashboard-host" not in " ".join(cfg["worker_start_ray_commands"])
    assert "ray dashboard cluster/" + path.name in _header(path), "the header must show the SSH tunnel"


@pytest.mark.parametrize("path", LAUNCHERS, ids=ids)
def test_no_inbound_rule_opens_ray_ports(path):
    cfg = _load(path)
    rules = cfg["provider"].get("security_group", {}).get("IpPermissions", [])
    for rule in rules:
        low, high = rule.get("FromPort", -1), rule.get("ToPort", -1)
        for port in (6379, 8265, 10001):
            assert not (low <= port <= high or low == -1), f"inbound rule opens {port}: {rule}"
    text = path.read_text()
    assert "0.0.0.0/0" not in text and "sourceRanges" not in text


def _submit_commands(path: Path) -> list[str]:
    commands = []
    for line in _header(path):
        if line.startswith("ray job submit"):
            head, sep, job = line.partition(" -- ")
            assert sep, f"no ' -- ' before the job command: {line}"
            assert "--address http://127.0.0.1:8265" in head
            assert "--working-dir . --runtime-env cluster/runtime_env.yaml" in head
            commands.append(job)
    return commands


@pytest.mark.parametrize("path", LAUNCHERS, ids=ids)
def test_header_submits_both_jobs_with_storage_in_the_clouds_bucket(path):
    cfg = _load(path)
    bucket = BUCKETS[cfg["provider"]["type"]]
    commands = _submit_commands(path)
    assert sorted(parse_job_command(c, {"MVREC_BUCKET": bucket})[0] for c in commands) == ["jobs/ingest_microlens.py",
                                                                 "jobs/train_videorec.py"]
    nodes = cfg["max_workers"] + 1
    for command in commands:
        job = load_job_config(command, {"MVREC_BUCKET": bucket})
        if hasattr(job, "train"):
            shared = {"train.storage_path": job.train.storage_path, "data.dataset_dir": job.data.dataset_dir}
        else:
            shared = {"ingest.input": job.ingest.input, "ingest.output_dir": job.ingest.output_dir}
        for key, value in shared.items():
            assert value.startswith(bucket), f"{key}={value} is not in the cluster's bucket"
            check_storage_path(value, num_nodes=nodes, key=key)


# ---------------------------------------------------------------- cluster/runtime_env.yaml
def _runtime_env() -> dict:
    return yaml.safe_load(RUNTIME_ENV.read_text())


def test_runtime_env_is_what_ray_job_submit_accepts():
    from ray.dashboard.modules.dashboard_sdk import parse_runtime_env_args
    from ray.runtime_env import RuntimeEnv

    assert RUNTIME_ENV.read_text().startswith("# Ray runtime environment")
    assert "--runtime-env cluster/runtime_env.yaml" in RUNTIME_ENV.read_text()
    env = parse_runtime_env_args(runtime_env=str(RUNTIME_ENV), working_dir=".")
    assert env["working_dir"] == "."
    RuntimeEnv(**env)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in env["env_vars"].items())
    # Ray sets OMP_NUM_THREADS per worker from its reserved CPUs; a global value would override that.
    assert "OMP_NUM_THREADS" not in env["env_vars"]


@pytest.mark.parametrize("relative,excluded", [
    (".venv", True), (".venv/bin/python", True), (".git", True), (".git/HEAD", True),
    ("data", True), ("data/shards/demo/manifest.json", True), ("runs", True), ("runs/demo/ckpt", True),
    ("benchmarks/work", True), ("mvrec_dist/__pycache__", True), ("mvrec_dist.egg-info", True),
    ("mvrec_dist/data", False), ("mvrec_dist/data/manifest.py", False), ("jobs/train_videorec.py", False),
    ("jobs/configs/microlens-full/sasrec-id.yaml", False), ("cluster/runtime_env.yaml", False),
    ("shards/README.md", False), ("scripts/install.sh", False),
])
def test_runtime_env_excludes_without_help_from_gitignore(relative, excluded):
    from ray._private.runtime_env.packaging import _get_excludes

    # The matcher Ray applies to every path it walks while packing the working dir.
    matches = _get_excludes(REPO, _runtime_env()["excludes"])
    assert matches(REPO / relative) is excluded


def test_working_dir_package_is_small_and_holds_the_code(tmp_path):
    from ray._private.runtime_env.packaging import GCS_STORAGE_MAX_SIZE, create_package

    target = tmp_path / "pkg.zip"
    create_package(str(REPO), target, include_gitignore=True, excludes=_runtime_env()["excludes"])
    names = zipfile.ZipFile(target).namelist()
    assert "mvrec_dist/runtime/paths.py" in names and "mvrec_dist/data/manifest.py" in names
    assert "jobs/configs/microlens-full/sasrec-id.yaml" in names and "cluster/runtime_env.yaml" in names
    assert not [n for n in names if n.split("/")[0] in (".venv", ".git", "data", "runs")]
    assert target.stat().st_size < GCS_STORAGE_MAX_SIZE // 2
