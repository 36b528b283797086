"""Multi-host scenarios on a real Ray cluster of network namespaces (``cluster/local``, issue 18).

One cluster for the module (``tests/helpers/local_cluster.py``): head ``h0`` (no CPUs for tasks, as on
a real cluster), workers ``h1`` and ``h2`` (one CPU each), a SeaweedFS S3 store and a client host, on
a private bridge, token authentication on. Everything is submitted from the client host exactly as
README.md says, ``ray job submit --address http://<head>:8265 --working-dir . --runtime-env
cluster/runtime_env.yaml -- python jobs/...``, with the data on ``s3://mvrec/...``.

Scenarios: a submit without the token is refused (401); the ingest job's Ray Data tasks run on both worker
hosts with input and output on the store, and the manifest reconciles (scenario 1); training with one rank
per host on two hosts equals training with both ranks on one host, bitwise on CPU (scenario 2: gloo's
allreduce of two ranks adds the same two operands in either order, and every rank reads the same samples).

Skipped (with the reason) when this machine cannot make network namespaces (not root, no ``ip netns``).
Every step that fails names the host and the step; the fixture fails the run when anything of the
cluster is left afterwards.
"""

from __future__ import annotations

import json
import re
import time

import pytest
import yaml

from cluster.local.cluster import REPO
from tests.helpers.local_cluster import local_cluster  # noqa: F401  (the fixture)
from tests.helpers.shards import TINY_INGEST

pytestmark = pytest.mark.integration

PRESET = "jobs/configs/synthetic/ingest-small.yaml"
SHARDS = "s3://mvrec/shards/tiny"
RAW = "s3://mvrec/raw/tiny"
# Ray Data's operator tasks as the ingestion names them: the datasource's reads (``ReadReadMicroLens[...]``),
# the sort-shuffle by user, map_batches (not the 0-CPU actors' method calls, which may run on the head).
RAY_DATA_TASK = re.compile(r"^Read\w*\[|MapBatches\(|SortShuffle")


def _submit(cluster, submission_id: str, entrypoint: list[str]) -> list[str]:
    """The README's submit command, run on the client host (cwd: the repo root, so --working-dir . is it)."""
    return ["ray", "job", "submit", "--address", cluster.dashboard_url, "--submission-id", submission_id,
            "--working-dir", ".", "--runtime-env", "cluster/runtime_env.yaml", "--", *entrypoint]


def _tiny_ingest(out: str, raw: str) -> list[str]:
    """The ingest job on the tests' tiny synthetic dataset (TINY_INGEST as overrides of the demo preset:
    a submitted job only sees files of the uploaded working dir, not a config written by the test)."""
    cfg = yaml.safe_load(TINY_INGEST.format(out=out, raw=raw))
    overrides = [f"{section}.{key}={str(value).lower() if isinstance(value, bool) else value}"
                 for section, values in cfg.items() for key, value in values.items()]
    return ["python", "jobs/ingest_microlens.py", "--config", PRESET, *overrides]


def _where(cluster, host) -> str:
    return f"{host.name} ({host.address}, namespace {host.ns})"


@pytest.mark.timeout(300)
def test_a_submit_without_the_token_is_refused(local_cluster):
    c = local_cluster
    print(f"\ncluster {c.name} up in {c.up_seconds:.1f} s")
    jobs = f"{c.dashboard_url}/api/jobs/"
    body = json.dumps({"entrypoint": "python -c \"print('mvrec-no-token')\""})
    for post in (None, body):
        args = ["http-status", jobs] + (["--post", post] if post else [])
        answer = c.probe(c.client, *args, token=False)
        assert answer["status"] == 401, (f"{_where(c, c.client)}: {'POST' if post else 'GET'} {jobs} without the "
                                         f"token answered {answer}, not 401")
    # The CLI an operator runs, without RAY_AUTH_MODE/RAY_AUTH_TOKEN_PATH: refused.
    refused = c.run(c.client, _submit(c, "mvrec-no-token", ["python", "-c", "print('mvrec-no-token')"]),
                    token=False, timeout=90)
    out = refused.stdout + refused.stderr
    assert refused.returncode != 0 and "Authentication required" in out, (
        f"{_where(c, c.client)}: ray job submit without the token was not refused: exit {refused.returncode}: {out[-1500:]}")
    # With the token the API answers, and no job came of the refused submissions.
    listed = c.probe(c.client, "http-status", jobs, "--token")
    assert listed["status"] == 200, f"{_where(c, c.client)}: GET {jobs} with the token: {listed}"
    assert "mvrec-no-token" not in listed["body"], f"a refused submission became a job: {listed['body'][:500]}"


@pytest.fixture(scope="module")
def ingested(local_cluster):
    """The tiny dataset ingested on the cluster into the store (the submit's output and its wall time)."""
    c = local_cluster
    started = time.monotonic()
    proc = c.run(c.client, _submit(c, "mvrec-ingest-tiny", _tiny_ingest(SHARDS, RAW)), timeout=240)
    out = proc.stdout + proc.stderr
    step = f"{_where(c, c.client)} -> head {c.head.address}: ray job submit of jobs/ingest_microlens.py"
    assert proc.returncode == 0 and "Job 'mvrec-ingest-tiny' succeeded" in out, (
        f"{step} failed (exit {proc.returncode}); head logs under {c.root}/h0/ray: {out[-3000:]}")
    assert f"wrote {SHARDS}" in out, f"{step}: the job did not report writing {SHARDS}: {out[-1500:]}"
    return out, time.monotonic() - started


@pytest.mark.timeout(300)
def test_ingest_runs_on_two_hosts_with_input_and_output_on_the_shared_store(local_cluster, ingested):
    c = local_cluster
    started = time.monotonic()
    _, job_seconds = ingested

    # Ray Data tasks ran on both worker hosts (from the head's task records, by node address).
    tasks = c.probe(c.client, "job-tasks", c.dashboard_url, "mvrec-ingest-tiny")
    assert tasks["status"] == "SUCCEEDED", f"head {c.head.address}: job status {tasks['status']}"
    for worker in c.workers:
        names = tasks["nodes"].get(worker.address, {}).get("names", {})
        data_tasks = {n: k for n, k in names.items() if RAY_DATA_TASK.search(n)}
        assert data_tasks, (f"{_where(c, worker)} ran no Ray Data task of the ingest job; finished tasks per node: "
                            f"{json.dumps(tasks['nodes'])[:2000]}")
    assert not {n for n in tasks["nodes"].get(c.head.address, {}).get("names", {}) if RAY_DATA_TASK.search(n)}, \
        f"head {c.head.address} has no CPUs for tasks, yet ran Ray Data tasks: {tasks['nodes'][c.head.address]}"

    # Input and output are on the store, and the manifest reconciles (recomputed here, not only its "ok").
    manifest = json.loads(c.probe(c.client, "read", f"{SHARDS}/manifest.json")["text"])
    assert manifest["inputs"] and all(i["path"].startswith(f"{RAW}/") for i in manifest["inputs"]), \
        f"store {c.store.address}: manifest inputs are not on the store: {manifest['inputs']}"
    counts, inter = manifest["counts"], manifest["counts"]["interactions"]
    assert manifest["reconciliation"]["ok"] is True
    assert counts["input_rows"] == 6000 == counts["kept_rows"] + counts["filtered_rows"] + \
        counts["quarantined_rows"] + counts["dropped_rows"], counts
    assert inter["train"] + inter["valid"] + inter["test"] == counts["kept_interactions"], counts
    assert inter["valid"] == inter["test"] == counts["users"] == 600, counts
    for split in ("train", "valid", "test"):
        shards = manifest["splits"][split]["shards"]
        assert sum(s["samples"] for s in shards) == manifest["splits"][split]["samples"] == 600, (split, shards)
    # Every shard re-read from the store and re-hashed against the manifest, from the client host.
    verify = c.run(c.client, ["mvrec", "shards", "verify", SHARDS], timeout=120)
    assert verify.returncode == 0, (f"{_where(c, c.client)}: mvrec shards verify {SHARDS} failed: "
                                    f"{(verify.stdout + verify.stderr)[-2000:]}")
    per_node = {ip: n["tasks"] for ip, n in tasks["nodes"].items()}
    print(f"\ningest job {job_seconds:.1f} s; finished tasks per node {per_node}; checks "
          f"{time.monotonic() - started:.1f} s")


# Scenario 2. The same 1-epoch run of the demo SASRec on the tiny dataset, 2 gloo ranks of 1 CPU each, data and
# runs on the store: once submitted to the cluster (h1 and h2 have 1 CPU each, so one rank per host, gloo over
# the bridge), once on the client host alone (an embedded loopback Ray with 2 CPUs: both ranks on one host).
TRAIN = ["python", "jobs/train_videorec.py", "--config", "jobs/configs/synthetic/sasrec-id-small.yaml",
         f"data.dataset_dir={SHARDS}", "train.storage_path=s3://mvrec/runs", "train.epochs=1", "train.batch_size=64",
         "train.log_every_steps=4", "parallel.num_workers=2", "parallel.cpus_per_worker=1"]
# What a checkpoint holds of the model and the run (COMMIT.json's sha256 of each): parameters and optimizer
# state (dense tower, both ranks' row-wise shards of the item table with their fused optimizer state), RNG.
STATE_FILES = ("dense.pt", "sparse/__0_0.distcp", "sparse/__1_0.distcp", "rng-rank0.pt", "rng-rank1.pt")


def _metrics(c, run: str) -> tuple[dict, list]:
    """``result.json``'s metrics (timings dropped) and ``metrics.jsonl``'s losses and evaluations of a run."""
    result = json.loads(c.probe(c.client, "read", f"s3://mvrec/runs/{run}/result.json")["text"])
    keep = {k: v for k, v in result.items() if (k.startswith(("valid/", "test/")) and not k.endswith("/seconds"))
            or k in ("best_epoch", "epochs", "steps")}
    lines = [json.loads(line) for line in c.probe(c.client, "read", f"s3://mvrec/runs/{run}/logs/metrics.jsonl")
             ["text"].splitlines() if line.strip()]
    timing = {"time", "sequences_per_s", "targets_per_s"}  # and every *seconds
    curve = [{k: v for k, v in line.items() if k not in timing and not k.endswith("seconds")} for line in lines
             if line.get("kind") not in ("memory", "checkpoint")]
    return keep, curve


@pytest.mark.timeout(480)
def test_training_one_worker_per_host_on_two_hosts_equals_two_workers_on_one_host(local_cluster, ingested):
    import subprocess

    from mvrec_dist.train.checkpointing import checkpoint_name

    c = local_cluster
    started = time.monotonic()
    # Both at once (each waits on process start-up most of the time; the results cannot depend on it).
    two_hosts = c.popen(c.client, _submit(c, "mvrec-train-two-hosts", TRAIN + ["train.run_name=two-hosts"]),
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # Run from the client's own scratch directory (absolute job and preset paths): a job on remote storage
    # keeps its log files in ./runs-local/ until it uploads them, which must not land in the checkout.
    local = [str(REPO / a) if a.startswith("jobs/") else a for a in TRAIN]
    one_host = c.run(c.client, local + ["train.run_name=one-host", "ray.num_cpus=2", "ray.dashboard=false"],
                     timeout=420, cwd=c.root / "client" / "tmp")
    try:
        out_two, _ = two_hosts.communicate(timeout=max(30, 440 - (time.monotonic() - started)))
    finally:
        two_hosts.kill()
    seconds = time.monotonic() - started
    assert one_host.returncode == 0, (f"{_where(c, c.client)}: the 2-worker run on one host (embedded Ray) failed "
                                      f"(exit {one_host.returncode}): {(one_host.stdout + one_host.stderr)[-3000:]}")
    assert two_hosts.returncode == 0 and "Job 'mvrec-train-two-hosts' succeeded" in out_two, (
        f"{_where(c, c.client)} -> head {c.head.address}: ray job submit of jobs/train_videorec.py failed "
        f"(exit {two_hosts.returncode}): {out_two[-3000:]}")
    # The two ranks of the cluster run were on the two worker hosts, one each.
    tasks = c.probe(c.client, "job-tasks", c.dashboard_url, "mvrec-train-two-hosts")
    for worker in c.workers:
        names = tasks["nodes"].get(worker.address, {}).get("names", {})
        assert names.get("RayTrainWorker.run_train_fn") == 1, (
            f"{_where(c, worker)}: expected one Ray Train worker of the cluster run there; finished tasks per node: "
            f"{json.dumps(tasks['nodes'])[:2000]}")

    result_two, curve_two = _metrics(c, "two-hosts")
    result_one, curve_one = _metrics(c, "one-host")
    assert result_two == result_one, f"metrics differ: two hosts {result_two} vs one host {result_one}"
    assert curve_two == curve_one, f"loss/evaluation curves differ: two hosts {curve_two} vs one host {curve_one}"
    step = checkpoint_name(result_one["steps"])
    commits = {run: json.loads(c.probe(c.client, "read", f"s3://mvrec/runs/{run}/{step}/COMMIT.json")["text"])["files"]
               for run in ("two-hosts", "one-host")}
    differ = [f for f in STATE_FILES if commits["two-hosts"][f]["sha256"] != commits["one-host"][f]["sha256"]]
    assert not differ, f"{step}: parameters / optimizer / RNG state differ between the runs in {differ}"
    print(f"\ntwo trainings (concurrent) {seconds:.1f} s; equal: {sorted(result_one)}, {len(curve_one)} curve "
          f"points, {step} {list(STATE_FILES)} (sha256)")
