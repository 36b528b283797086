"""KubeRay manifests (cluster/kuberay/*.yaml): they parse, use only KubeRay fields, run this repo's jobs with
presets that load, request the GPUs the training preset needs, keep the token in a Secret and every
service cluster-internal. Also: no literal token anywhere under cluster/."""

from __future__ import annotations

import re

import pytest
import yaml

import ray
from mvrec_dist.runtime.paths import check_storage_path
from tests.cluster.job_commands import CLUSTER, load_job_config, parse_job_command, require_job_script

KUBERAY = CLUSTER / "kuberay"
README = CLUSTER / "README.md"
EXPECTED = {"raycluster.yaml": "RayCluster", "rayjob-ingest.yaml": "RayJob", "rayjob-train.yaml": "RayJob"}
JOB_OF = {"rayjob-ingest.yaml": "jobs/ingest_microlens.py", "rayjob-train.yaml": "jobs/train_videorec.py"}
SECRET, SECRET_KEY = "mvrec-ray-auth", "auth_token"

# Fields of the ray.io/v1 CRDs (KubeRay v1.6.0 to v1.7.0) that these manifests may use; a typo such as
# `shutdownAfterJobFinish` is silently dropped by the API server, so it is caught here instead.
RAYJOB_SPEC = {"activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
               "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy", "entrypoint",
               "runtimeEnvYAML", "jobId", "submissionMode", "entrypointResources", "entrypointNumCpus",
               "entrypointNumGpus", "ttlSecondsAfterFinished", "preRunningDeadlineSeconds",
               "shutdownAfterJobFinishes", "suspend"}
CLUSTER_SPEC = {"upgradeStrategy", "authOptions", "suspend", "managedBy", "autoscalerOptions",
                "headServiceAnnotations", "enableInTreeAutoscaling", "gcsFaultToleranceOptions",
                "headGroupSpec", "rayVersion", "workerGroupSpecs"}
HEAD_GROUP = {"template", "headService", "enableIngress", "resources", "labels", "rayStartParams",
              "serviceType"}
WORKER_GROUP = {"suspend", "groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds",
                "resources", "labels", "rayStartParams", "template", "scaleStrategy", "numOfHosts"}
# KubeRay limits on metadata.name (controllers/ray/utils/constant.go), and DNS-1035 labels.
NAME_LIMIT = {"RayCluster": 53, "RayJob": 47}
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def _doc(name: str) -> dict:
    docs = [d for d in yaml.safe_load_all((KUBERAY / name).read_text()) if d is not None]
    assert len(docs) == 1, f"{name}: expected one object, got {len(docs)}"
    return docs[0]


def _cluster_spec(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


def _ray_pods(doc: dict) -> list[tuple[str, dict]]:
    spec = _cluster_spec(doc)
    pods = [("head", spec["headGroupSpec"]["template"]["spec"])]
    pods += [(g["groupName"], g["template"]["spec"]) for g in spec.get("workerGroupSpecs", [])]
    return pods


def _all_pods(doc: dict) -> list[tuple[str, dict]]:
    pods = _ray_pods(doc)
    if "submitterPodTemplate" in doc["spec"]:
        pods.append(("submitter", doc["spec"]["submitterPodTemplate"]["spec"]))
    return pods


def _gpus(container: dict) -> int:
    limits = container.get("resources", {}).get("limits", {})
    return int(limits.get("nvidia.com/gpu", 0))


def _cpus(container: dict) -> float:
    cpu = str(container["resources"]["requests"]["cpu"])
    return float(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)


def _header(name: str) -> list[str]:
    lines = []
    for line in (KUBERAY / name).read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return lines


def _training_job(name: str):
    """The training config a manifest runs (a RayJob's entrypoint, or the job its header submits)."""
    doc = _doc(name)
    if doc["kind"] == "RayJob":
        return load_job_config(doc["spec"]["entrypoint"])
    submit = next(line for line in _header(name) if line.startswith("ray job submit"))
    return load_job_config(submit.partition(" -- ")[2])


def test_the_expected_manifests_and_nothing_else():
    assert sorted(p.name for p in KUBERAY.glob("*.y*ml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parses_with_kind_name_and_header(name):
    doc = _doc(name)
    assert doc["apiVersion"] == "ray.io/v1"
    assert doc["kind"] == EXPECTED[name]
    meta_name = doc["metadata"]["name"]
    assert DNS1035.match(meta_name) and len(meta_name) <= NAME_LIMIT[doc["kind"]], meta_name
    header = _header(name)
    assert header and header[0].startswith(f"KubeRay {doc['kind']}")
    assert f"kubectl apply -f cluster/kuberay/{name}" in "\n".join(header)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_uses_only_kuberay_fields_and_required_ones(name):
    doc = _doc(name)
    if doc["kind"] == "RayJob":
        assert set(doc["spec"]) <= RAYJOB_SPEC, set(doc["spec"]) - RAYJOB_SPEC
    spec = _cluster_spec(doc)
    assert set(spec) <= CLUSTER_SPEC, set(spec) - CLUSTER_SPEC
    head = spec["headGroupSpec"]
    assert set(head) <= HEAD_GROUP, set(head) - HEAD_GROUP
    assert "rayStartParams" in head and head["template"]["spec"]["containers"]
    groups = spec["workerGroupSpecs"]
    assert len({g["groupName"] for g in groups}) == len(groups)
    for group in groups:
        assert set(group) <= WORKER_GROUP, set(group) - WORKER_GROUP
        assert {"groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"} <= set(group)
        assert 0 <= group["minReplicas"] <= group.get("replicas", group["minReplicas"]) <= group["maxReplicas"]
        assert group["template"]["spec"]["containers"]
    # The image's Ray and the version KubeRay is told must match; token auth needs Ray >= 2.52.
    assert spec["rayVersion"] == ray.__version__


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_token_comes_from_the_secret_in_every_container(name):
    doc = _doc(name)
    assert _cluster_spec(doc)["authOptions"] == {"mode": "token", "secretName": SECRET}
    for pod_name, pod in _all_pods(doc):
        for container in pod["containers"]:
            env = {e["name"]: e for e in container.get("env", [])}
            assert env["RAY_AUTH_MODE"] == {"name": "RAY_AUTH_MODE", "value": "token"}, pod_name
            assert env["RAY_AUTH_TOKEN"] == {"name": "RAY_AUTH_TOKEN", "valueFrom": {
                "secretKeyRef": {"name": SECRET, "key": SECRET_KEY}}}, pod_name
            assert "RAY_AUTH_TOKEN_PATH" not in env


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_services_are_cluster_internal_only(name):
    doc = _doc(name)
    head = _cluster_spec(doc)["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP"
    assert head.get("headService", {}).get("spec", {}).get("type", "ClusterIP") == "ClusterIP"
    assert not head.get("enableIngress", False)
    for pod_name, pod in _all_pods(doc):
        assert not pod.get("hostNetwork", False), pod_name
        for container in pod["containers"]:
            assert all("hostPort" not in p for p in container.get("ports", [])), pod_name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_one_image_for_every_pod_built_as_the_readme_says(name):
    images = {c["image"] for _, pod in _all_pods(_doc(name)) for c in pod["containers"]}
    assert len(images) == 1
    assert f"docker build -t {images.pop()} " in README.read_text()


@pytest.mark.parametrize("name", sorted(JOB_OF))
def test_rayjob_lifecycle(name):
    spec = _doc(name)["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["backoffLimit"] >= 1
    assert spec["ttlSecondsAfterFinished"] >= 0 and spec["activeDeadlineSeconds"] > 0
    assert spec["submissionMode"] == "K8sJobMode"
    assert spec["submitterPodTemplate"]["spec"]["restartPolicy"] == "Never"
    # A RayJob's cluster is sized for its one job: no autoscaling, fixed groups.
    cluster = spec["rayClusterSpec"]
    assert cluster["enableInTreeAutoscaling"] is False
    for group in cluster["workerGroupSpecs"]:
        assert group["minReplicas"] == group["replicas"] == group["maxReplicas"]


@pytest.mark.parametrize("name", sorted(JOB_OF))
def test_entrypoint_runs_this_repos_job_with_a_preset_that_loads(name):
    entrypoint = _doc(name)["spec"]["entrypoint"]
    script, preset, _ = parse_job_command(entrypoint)
    assert script == JOB_OF[name]
    assert preset.startswith("jobs/configs/microlens-full/")
    load_job_config(entrypoint)


@pytest.mark.parametrize("name", sorted(JOB_OF))
def test_entrypoint_job_file_exists(name):
    require_job_script(JOB_OF[name])


@pytest.mark.parametrize("name", sorted(JOB_OF))
def test_rayjob_env_vars_are_the_runtime_env_files(name):
    runtime_env = yaml.safe_load(_doc(name)["spec"]["runtimeEnvYAML"])
    cluster_env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    assert runtime_env == {"env_vars": cluster_env["env_vars"]}


def test_training_rayjob_requests_one_gpu_per_worker():
    doc = _doc("rayjob-train.yaml")
    job = _training_job("rayjob-train.yaml")
    assert job.parallel.use_gpu
    total = 0
    for group in _cluster_spec(doc)["workerGroupSpecs"]:
        for container in group["template"]["spec"]["containers"]:
            gpus = _gpus(container)
            requests = container["resources"]["requests"]
            assert int(requests.get("nvidia.com/gpu", 0)) == gpus
            assert gpus * job.parallel.cpus_per_worker <= _cpus(container)
            total += group["replicas"] * gpus
    assert total == job.parallel.num_workers * 1
    head = _cluster_spec(doc)["headGroupSpec"]
    assert all(_gpus(c) == 0 for c in head["template"]["spec"]["containers"])
    assert head["rayStartParams"].get("num-cpus") == "0"


def test_ingest_rayjob_needs_no_gpu_and_feeds_the_training_job():
    doc = _doc("rayjob-ingest.yaml")
    assert all(_gpus(c) == 0 for _, pod in _ray_pods(doc) for c in pod["containers"])
    ingest = load_job_config(doc["spec"]["entrypoint"])
    assert ingest.ingest.output_dir == _training_job("rayjob-train.yaml").data.dataset_dir


def test_raycluster_can_scale_to_the_training_preset():
    doc = _doc("raycluster.yaml")
    job = _training_job("raycluster.yaml")
    capacity = sum(g["maxReplicas"] * _gpus(c) for g in doc["spec"]["workerGroupSpecs"]
                   for c in g["template"]["spec"]["containers"])
    assert capacity >= job.parallel.num_workers
    assert doc["spec"]["enableInTreeAutoscaling"] is True


def _readme_claim() -> dict:
    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(), flags=re.S)
    claims = [d for b in blocks for d in yaml.safe_load_all(b) if d and d.get("kind") == "PersistentVolumeClaim"]
    assert len(claims) == 1, "cluster/README.md must define the shared PersistentVolumeClaim once"
    return claims[0]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_ray_pod_mounts_the_shared_claim_holding_the_presets_paths(name):
    doc = _doc(name)
    claim = _readme_claim()
    assert claim["apiVersion"] == "v1" and claim["spec"]["accessModes"] == ["ReadWriteMany"]
    mounts = set()
    for pod_name, pod in _ray_pods(doc):
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            claimed = set()
            for mount in container.get("volumeMounts", []):
                pvc = volumes[mount["name"]].get("persistentVolumeClaim")
                if pvc:
                    assert pvc["claimName"] == claim["metadata"]["name"], pod_name
                    claimed.add(mount["mountPath"])
            assert claimed, f"{pod_name}/{container['name']} mounts no shared claim"
            mounts |= claimed
    assert len(mounts) == 1
    mount = mounts.pop()
    # On the pods the claim shows up as a network filesystem; a ReadWriteMany class is one (EFS, Filestore).
    table = f"/dev/root / ext4 rw 0 0\nfs.example:/ {mount} nfs4 rw 0 0\n"
    entry = doc["spec"].get("entrypoint")
    configs = [load_job_config(entry)] if entry else [_training_job(name)]
    for cfg in configs:
        paths = ({"train.storage_path": cfg.train.storage_path, "data.dataset_dir": cfg.data.dataset_dir}
                 if hasattr(cfg, "train") else
                 {"ingest.input": cfg.ingest.input, "ingest.output_dir": cfg.ingest.output_dir,
                  "ingest.titles": cfg.ingest.titles})
        for key, value in paths.items():
            assert value.startswith(mount + "/"), f"{key}={value} is not on the shared claim at {mount}"
            check_storage_path(value, num_nodes=2, key=key, mounts=table)


# ---------------------------------------------------------------- no literal tokens under cluster/
LITERAL_TOKEN = [
    re.compile(r"\b[0-9a-fA-F]{32,}\b"),
    re.compile(r"Bearer\s+(?![$<{])[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(r"RAY_AUTH_TOKEN\s*[=:]\s*[\"']?(?![$<{\s])[^\s\"']{4,}"),
    re.compile(r"--from-literal=auth_token=(?![\"']?\$)"),
    re.compile(r"^\s*auth_token\s*:\s*\S", re.M),
]


# Bytecode that running cluster/local leaves beside its sources is not a file of the repo.
@pytest.mark.parametrize("path", sorted(p for p in CLUSTER.rglob("*") if p.is_file() and "__pycache__" not in p.parts),
                         ids=lambda p: str(p.relative_to(CLUSTER)))
def test_no_literal_token_in_cluster_files(path):
    text = path.read_text()
    for pattern in LITERAL_TOKEN:
        assert not pattern.search(text), f"{path}: looks like a literal token: {pattern.search(text).group(0)!r}"
    if path.suffix in (".yaml", ".yml"):
        for doc in yaml.safe_load_all(text):
            assert not (isinstance(doc, dict) and doc.get("kind") == "Secret"), f"{path} defines a Secret"


@pytest.mark.parametrize("line,caught", [
    ("RAY_AUTH_TOKEN=abcd1234", True), ("export RAY_AUTH_TOKEN='s3cr3t-value'", True),
    ("Authorization: Bearer eyJhbGciOi", True), ("auth_token: hunter22", True),
    ("--from-literal=auth_token=hunter22", True), (f"token {'ab12' * 8}", True),
    ("RAY_AUTH_TOKEN_PATH=$HOME/.mvrec/ray_auth_token", False), ("- name: RAY_AUTH_TOKEN", False),
    ("--from-file=auth_token=$HOME/.mvrec/ray_auth_token", False), ("Authorization: Bearer $TOKEN", False),
])
def test_the_literal_token_patterns_themselves(line, caught):
    assert any(p.search(line) for p in LITERAL_TOKEN) is caught
