"""Multi-host scenarios on a real Ray cluster of network namespaces (``cluster/local``, issue 18).

One cluster for the module (``tests/helpers/local_cluster.py``): head ``h0`` (no CPUs for tasks, as on
a real cluster), workers ``h1`` and ``h2`` (one CPU each), a SeaweedFS S3 store and a client host, on
a private bridge, token authentication on. Everything is submitted from the client host exactly as
README.md says, ``ray job submit --address http://<head>:8265 --working-dir . --runtime-env
cluster/runtime_env.yaml -- python jobs/...``, with the data on ``s3://mvrec/...``.

Scenarios: a submit without the token is refused (401); the ingest job's Ray Data tasks run on both worker
hosts with input and output on the store, and the manifest reconciles (scenario 1); training with one rank
per host on two hosts equals training with both ranks on one host, bitwise on CPU (scenario 2: gloo's
allreduce of two ranks adds the same two operands in either order, and every rank reads the same samples);
node loss (scenario 3), head loss (scenario 6) and an elastic resume from 2 to 3 hosts (scenario 5) in one
lineage of failures, ``chaos`` (below); a network partition (scenario 4: a host cut off the bridge for longer
than the collective timeout) on the hosts chaos leaves, ``partition`` (last).

Skipped (with the reason) when this machine cannot make network namespaces (not root, no ``ip netns``).
Every step that fails names the host and the step; the fixture fails the run when anything of the
cluster is left afterwards.
"""

from __future__ import annotations

import json
import os
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


# What each scenario took, from this process's clock (the namespaces share it): written as JSON to
# $MVREC_MULTIHOST_TIMES when set (``benchmarks/bench_multihost.py --scenarios`` runs this module for its
# one line per scenario); the tests check bounds, not these figures.
TIMES: dict[str, dict] = {}


@pytest.fixture(scope="module", autouse=True)
def scenario_times():
    yield TIMES
    path = os.environ.get("MVREC_MULTIHOST_TIMES")
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(TIMES, f, indent=1)


def _since(t0: float, hit) -> float | None:
    """Seconds from ``t0`` to a time, a ``(t, line)`` match or an audit record; None when it never came."""
    if hit is None:
        return None
    return (hit if isinstance(hit, float) else hit[0] if isinstance(hit, tuple) else hit["t"]) - t0


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
    TIMES["ingest"] = {"job_s": time.monotonic() - started, "cluster_up_s": c.up_seconds}
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


@pytest.fixture(scope="module")
def two_runs(local_cluster, ingested):
    """Scenario 2's two runs of TRAIN, side by side: ``two-hosts`` (submitted: one rank on h1, one on h2) and
    ``one-host`` (on the client alone); also the uninterrupted reference of the failure scenarios."""
    import subprocess

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
    t_one = time.monotonic()
    try:
        out_two, _ = two_hosts.communicate(timeout=max(30, 440 - (time.monotonic() - started)))
    finally:
        two_hosts.kill()
    TIMES["two_hosts"] = {"two_hosts_job_s": time.monotonic() - started, "one_host_run_s": t_one - started,
                          "concurrent": True}
    assert one_host.returncode == 0, (f"{_where(c, c.client)}: the 2-worker run on one host (embedded Ray) failed "
                                      f"(exit {one_host.returncode}): {(one_host.stdout + one_host.stderr)[-3000:]}")
    assert two_hosts.returncode == 0 and "Job 'mvrec-train-two-hosts' succeeded" in out_two, (
        f"{_where(c, c.client)} -> head {c.head.address}: ray job submit of jobs/train_videorec.py failed "
        f"(exit {two_hosts.returncode}): {out_two[-3000:]}")
    return time.monotonic() - started


@pytest.mark.timeout(480)
def test_training_one_worker_per_host_on_two_hosts_equals_two_workers_on_one_host(local_cluster, two_runs):
    from mvrec_dist.train.checkpointing import checkpoint_name

    c = local_cluster
    seconds = two_runs
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
    differ = [f for f, (a, b) in _state_hashes(c, "two-hosts", "one-host", step).items() if a != b]
    assert not differ, f"{step}: parameters / optimizer / RNG state differ between the runs in {differ}"
    print(f"\ntwo trainings (concurrent) {seconds:.1f} s; equal: {sorted(result_one)}, {len(curve_one)} curve "
          f"points, {step} {list(STATE_FILES)} (sha256)")


def _assert_equals_uninterrupted(c, run: str, where: str) -> None:
    """``run`` ended as the uninterrupted ``two-hosts`` run: the same metrics; the same ``metrics.jsonl`` records
    (the last of each kind and step: the steps after a checkpoint are recorded again when replayed), so no
    attempt's records were lost though rank 0 moved hosts and jobs (``train.run_logs``); and the same sha256 of
    every state file of the final checkpoint."""
    from mvrec_dist.train.checkpointing import checkpoint_name

    result, curve = _metrics(c, run)
    ref, ref_curve = _metrics(c, "two-hosts")
    assert result == ref, f"{where}: {run} {result} vs uninterrupted {ref}"
    last = {(r["kind"], r["step"]): r for r in curve}
    assert list(last.values()) == ref_curve, (
        f"{where}: {run}'s logs/metrics.jsonl (last record per kind and step) {sorted(last)} vs uninterrupted "
        f"{[(r['kind'], r['step']) for r in ref_curve]}")
    step = checkpoint_name(ref["steps"])
    differ = [f for f, (a, b) in _state_hashes(c, run, "two-hosts", step).items() if a != b]
    assert not differ, f"{where}: {step} of {run} differs from the uninterrupted run in {differ}"


def _state_hashes(c, run_a: str, run_b: str, step: str) -> dict[str, tuple[str, str]]:
    """sha256 of each of STATE_FILES in ``step`` of two runs (from their COMMIT.json)."""
    commits = [json.loads(c.probe(c.client, "read", f"s3://mvrec/runs/{run}/{step}/COMMIT.json")["text"])["files"]
               for run in (run_a, run_b)]
    return {f: (commits[0][f]["sha256"], commits[1][f]["sha256"]) for f in STATE_FILES}


# Scenarios 3, 6 and 5: one lineage of the run ``chaos`` (TRAIN, plus a checkpoint every K steps and an audit of
# the samples each rank trained on), three hosts lost on the way, then a run resumed on another world size:
#   attempt 1   ranks on h1, h2; checkpoint K committed; with both ranks held after step K+1
#               (``AuditWatch.hold``), every process of h2 is SIGKILLed (node loss)
#   attempt 2   the driver's retry (train.max_failures, default 3) waits for CPUs; a replacement host h3 joins;
#               ranks on h1, h3 resume from the newest committed checkpoint; held after step 2K+1, the head h0
#               is emptied (head loss: GCS, job server and the driver go); h1 and h3 lose their raylets with it
#   attempt 3   a new head h4 (new namespace, new address); h1 and h3 rejoin it, h5-h7 join; the same command is
#               resubmitted and resumes from the newest committed checkpoint, 2K; it ends equal,
#               bitwise, to the uninterrupted run ``two-hosts`` of scenario 2 (a reference without the checkpoint
#               every K steps: the cadence changes nothing either)
#   elastic     beside attempt 3, run ``elastic`` = that checkpoint (2 ranks) copied into its own run directory and
#               resumed on 3 hosts x 1 worker (parallel.num_workers=3, train.batch_size=63: the global batch must
#               split evenly): the reader re-cuts what is left of the epoch (``redistribute``); the audit shows
#               every (sample, window) of the epoch trained on exactly once
# Why K = 3 (train.checkpoint_every_steps; the default 0 checkpoints at epoch ends only, so a node lost
# mid-epoch replays the epoch from its start): the tiny epoch has ~10 steps, so both losses fall mid-epoch.
K = 3
CHAOS = TRAIN + ["train.run_name=chaos", f"train.checkpoint_every_steps={K}"]
# Bounds (seconds, with margins for a loaded 2-core machine).
DETECT_BOUND_S = 60  # SIGKILL of a host -> the driver's "training failed ... restarting" line
STEP_WAIT_S = 300  # a submitted run reaching a given step (process start-up dominates)


STEPS = 12  # of the epoch (600 train windows, batch 64 over 2 ranks of 32)


def _committed(c, run: str) -> list[int]:
    """Steps of the run's committed checkpoints (those with COMMIT.json), from the store."""
    files = c.probe(c.client, "ls", f"s3://mvrec/runs/{run}")["files"]
    return sorted(int(f.split("/")[0][len("checkpoint-step"):]) for f in files
                  if f.startswith("checkpoint-step") and f.endswith("/COMMIT.json"))


@pytest.fixture(scope="module")
def chaos(local_cluster, two_runs):
    """Run the lineage above; return what the tests check (outputs, times, the hosts of each attempt)."""
    from tests.helpers.local_cluster import AuditWatch, SubmittedJob, rank_hosts

    c = local_cluster
    audit = c.root / "audit"  # the namespaces share the filesystem: one directory collects every rank's file
    h1, h2 = c.workers
    out: dict = {"audit": audit}
    started = time.monotonic()
    watch = AuditWatch(audit / "chaos")
    watches = [watch]
    # The ranks wait after step K+1 (node loss) and after 2K+1 (head loss) until released: each kill lands at
    # its step whatever the load (without holds, a fast tiny run could pass the epoch's last checkpoint first).
    watch.hold(K + 1)
    watch.hold(2 * K + 1)
    job1 = SubmittedJob(c, c.client, _submit(c, "mvrec-chaos", CHAOS + [f"data.audit_dir={audit}/chaos"]))
    jobs = [job1]
    try:
        # -- node loss (scenario 3)
        # Which host holds each rank (read from /proc while both run: after the kill it is gone).
        assert watch.wait_step(1, STEP_WAIT_S), (f"chaos attempt 1 on {h1.name}, {h2.name}: no step within "
                                                 f"{STEP_WAIT_S} s; submit output: {job1.text[-2500:]}")
        out["hosts1"] = rank_hosts(c, audit / "chaos")
        held = watch.wait_held(K + 1, 2, STEP_WAIT_S)
        assert held, (f"chaos attempt 1 on {h1.name}, {h2.name}: the ranks were not both held after step {K + 1} "
                      f"within {STEP_WAIT_S} s (audit reached {watch.last_step()}); submit output: {job1.text[-2500:]}")
        t_kill = time.monotonic()
        out["killed_processes"] = c.kill(h2)
        out["kill_step"] = K + 1
        watch.release(K + 1)  # h1's rank goes on into step K+2 and finds its peer gone
        out["committed1"] = _committed(c, "chaos")
        out["t_kill"] = t_kill
        h3 = c.add_worker()
        out["replacement"] = h3
        detected = job1.wait_for(r"training failed: .*restarting the workers", DETECT_BOUND_S, after=t_kill)
        assert detected, (f"{_where(c, h2)} killed at step {out['kill_step']}: the driver on {c.head.name} did not "
                          f"report the failure within {DETECT_BOUND_S} s: {job1.text[-2500:]}")
        out["t_detect"], out["detect_line"] = detected
        resumed = job1.wait_for(r"resumed from \S+checkpoint-step", STEP_WAIT_S, after=t_kill)
        assert resumed, f"chaos attempt 2 (h1, {h3.name}) did not resume within {STEP_WAIT_S} s: {job1.text[-2500:]}"
        out["t_resumed"], out["resumed_line"] = resumed

        # -- head loss (scenario 6)
        held = watch.wait_held(2 * K + 1, 2, STEP_WAIT_S)
        assert held, (f"chaos attempt 2 (h1, {h3.name}): the ranks were not both held after step {2 * K + 1} "
                      f"within {STEP_WAIT_S} s (audit: {watch.last_step()}): {job1.text[-2500:]}")
        old_head = c.head
        t_head = time.monotonic()
        # The head and, with it, the raylets of h1 and h3 (Ray ends them after gcs_rpc_server_reconnect_timeout_s;
        # here at the same instant, so no rank trains on while the head's many processes are being killed).
        c.freeze(h1, h3, old_head)
        out["head_kill_step"] = 2 * K + 1
        out["hosts2"] = rank_hosts(c, audit / "chaos")  # read from /proc while frozen: scanning takes seconds
        c.kill(old_head)
        out["committed2"] = _committed(c, "chaos")
        # Their raylets lose the GCS with the head (Ray ends them after gcs_rpc_server_reconnect_timeout_s);
        # emptied now, so nothing of attempt 2 runs on while the next one starts.
        for w in (h1, h3):
            c.kill(w)
        job1.wait(30)
        new_head = c.new_head()
        out["t_new_head"] = time.monotonic()
        # Two hosts at a time (five raylets registering at once can miss Ray's 30 s limit on 2 busy cores).
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(2) as pool:
            joined = [pool.submit(c.rejoin, w) for w in (h1, h3)]
            [f.result() for f in joined]
        out["t_rejoined"] = time.monotonic()
        watch.release(2 * K + 1)  # for the resubmission: no rank of attempt 2 is left to go on
        extra = c.add_workers(3, parallel=2)
        c.wait_nodes(1 + 2 + len(extra), timeout=60)
        out["t_head"] = t_head
        out.update(old_head=old_head, new_head=new_head, extra=extra)
        # -- the same command resubmitted (scenario 6), and the elastic resume beside it (scenario 5)
        print(f"\nchaos: node loss at step {out['kill_step']} (committed {out['committed1']}), head loss at step "
              f"{out['head_kill_step']} (committed {out['committed2']}); ranks {out['hosts1']} then {out['hosts2']}")
        # The elastic run starts from the checkpoint the resubmission resumes from: the newest committed.
        out["resume2"] = max(out["committed2"])
        assert out["resume2"] < STEPS, (f"head {old_head.name} killed at step {out['head_kill_step']}, after the "
                                        f"epoch's last checkpoint {out['committed2']}: nothing left to resume mid-epoch")
        step = f"checkpoint-step{out['resume2']:09d}"
        c.probe(c.client, "copy", f"s3://mvrec/runs/chaos/{step}", f"s3://mvrec/runs/elastic/{step}")
        job2 = SubmittedJob(c, c.client, _submit(c, "mvrec-chaos", CHAOS + [f"data.audit_dir={audit}/chaos"]))
        watch3 = AuditWatch(audit / "elastic")
        watches.append(watch3)
        job3 = SubmittedJob(c, c.client, _submit(c, "mvrec-elastic", TRAIN + [
            "train.run_name=elastic", "parallel.num_workers=3", "train.batch_size=63", f"data.audit_dir={audit}/elastic"]))
        jobs += [job2, job3]
        out["rc2"], out["rc3"] = job2.wait(360), job3.wait(60 + max(0, 360 - (time.monotonic() - job2.started)))
        out.update(job1=job1, job2=job2, job3=job3, seconds=time.monotonic() - started)
    finally:
        for w in watches:
            w.stop()
        for job in jobs:
            job.kill()
    _chaos_times(out, watch, watch3)
    return out


def _first_step(watch, resumed_from: int, after: float) -> dict | None:
    """The audit record of the first step a resumed attempt trained (its ranks' audit lines can arrive before the
    "resumed from" line, which streams through the job server)."""
    return next((r for r in watch.records if r["t"] >= after and r["step"] == resumed_from + 1), None)


def _chaos_times(out: dict, watch, watch3) -> None:
    """TIMES of scenarios 3, 6 and 5 from what the chaos lineage stamped (after the fact: nothing here waits)."""
    resumed = r"resumed from \S+checkpoint-step"
    t_kill, job2, job3 = out["t_kill"], out["job2"], out["job3"]
    TIMES["node_loss"] = {"kill_step": out["kill_step"], "resumed_from": max(out["committed1"]),
                          "detect_s": out["t_detect"] - t_kill, "resumed_s": out["t_resumed"] - t_kill,
                          "first_step_s": _since(t_kill, _first_step(watch, max(out["committed1"]), out["t_detect"]))}
    r2 = job2.find(resumed)
    TIMES["head_loss"] = {"kill_step": out["head_kill_step"], "resumed_from": out["resume2"],
                          "new_head_s": out["t_new_head"] - out["t_head"],
                          "hosts_rejoined_s": out["t_rejoined"] - out["t_head"],
                          "resubmitted_s": job2.started - out["t_head"], "resumed_s": _since(out["t_head"], r2),
                          "first_step_s": _since(out["t_head"], _first_step(watch, out["resume2"], job2.started)),
                          "resubmit_to_resumed_s": _since(job2.started, r2),
                          "job_end_s": _since(out["t_head"], job2.ended)}
    r3 = job3.find(resumed)
    TIMES["elastic"] = {"from_ranks": 2, "to_ranks": 3, "resumed_from": out["resume2"],
                        "submit_to_resumed_s": _since(job3.started, r3),
                        "submit_to_first_step_s": _since(job3.started, _first_step(watch3, out["resume2"], job3.started)),
                        "submit_to_end_s": _since(job3.started, job3.ended)}


@pytest.mark.timeout(900)
def test_node_loss_resumes_from_the_last_checkpoint_on_a_replacement_host(local_cluster, chaos):
    c, h1, h2 = local_cluster, *local_cluster.workers
    h3 = chaos["replacement"]
    assert sorted(chaos["hosts1"].values()) == [h1.name, h2.name], f"attempt 1 ranks: {chaos['hosts1']}"
    assert sorted(chaos["hosts2"].values()) == [h1.name, h3.name], (
        f"attempt 2 ranks should be on {h1.name} and the replacement {h3.name}: {chaos['hosts2']}")
    assert chaos["killed_processes"] > 3, f"{_where(c, h2)}: only {chaos['killed_processes']} processes killed"
    detect = chaos["t_detect"] - chaos["t_kill"]
    assert detect < DETECT_BOUND_S, f"{_where(c, h2)}: failure seen after {detect:.1f} s"
    assert "retry 1 of train.max_failures=3" in chaos["detect_line"], chaos["detect_line"]
    newest = max(chaos["committed1"])
    assert K <= newest < chaos["kill_step"], (f"{_where(c, h2)} killed at step {chaos['kill_step']}: committed "
                                             f"checkpoints then {chaos['committed1']}")
    assert f"chaos/checkpoint-step{newest:09d}: step {newest} " in chaos["resumed_line"], (
        f"attempt 2 did not resume from the newest committed checkpoint {newest}: {chaos['resumed_line']}")
    print(f"\nnode loss at step {chaos['kill_step']}: {TIMES.get('node_loss')}; lineage {chaos['seconds']:.1f} s")


@pytest.mark.timeout(900)
def test_head_loss_the_resubmitted_job_resumes_and_ends_equal_to_the_uninterrupted_run(local_cluster, chaos):
    from tests.helpers.local_cluster import effective_rows

    c = local_cluster
    job2 = chaos["job2"]
    where = f"{_where(c, c.client)} -> new head {chaos['new_head'].name} ({chaos['new_head'].address})"
    assert chaos["rc2"] == 0 and "Job 'mvrec-chaos' succeeded" in job2.text, (
        f"{where}: the resubmitted chaos job failed (exit {chaos['rc2']}): {job2.text[-3000:]}")
    r2 = chaos["resume2"]
    assert f"chaos/checkpoint-step{r2:09d}: step {r2} " in job2.text, (
        f"{where}: the resubmitted job did not resume from the newest committed checkpoint {r2} (head killed at "
        f"step {chaos['head_kill_step']}): {job2.text[-3000:]}")
    assert "taking over run" in job2.text, f"{where}: the dead driver's run was not taken over: {job2.text[-2000:]}"
    _assert_equals_uninterrupted(c, "chaos", "after a node and a head loss")
    # Nothing skipped or repeated over the three attempts: the audit of the surviving lineage.
    rows, resumes = effective_rows(chaos["audit"] / "chaos")
    expect = [max(chaos["committed1"]), chaos["resume2"]]
    assert resumes == expect, f"attempts resumed after steps {resumes}, expected {expect} (the newest committed)"
    expected = [tuple(w) for w in c.probe(c.client, "train-windows", SHARDS)["windows"]]
    assert sorted(rows) == expected, (f"chaos: {len(rows)} rows trained, {len(set(rows))} distinct, "
                                      f"{len(expected)} windows in the epoch")


@pytest.mark.timeout(900)
def test_a_checkpoint_of_two_hosts_resumes_on_three_and_sees_every_sample_once(local_cluster, chaos):
    from tests.helpers.local_cluster import effective_rows

    c = local_cluster
    job3 = chaos["job3"]
    assert chaos["rc3"] == 0 and "Job 'mvrec-elastic' succeeded" in job3.text, (
        f"{_where(c, c.client)} -> {chaos['new_head'].name}: the elastic job failed (exit {chaos['rc3']}): "
        f"{job3.text[-3000:]}")
    r2 = chaos["resume2"]
    assert f"elastic/checkpoint-step{r2:09d}: step {r2} " in job3.text, job3.text[-3000:]
    assert "3 ranks on cpu" in job3.text, f"elastic did not run 3 ranks: {job3.text[-2000:]}"
    # Steps 1..r2 of chaos's lineage (2 ranks), then every step of elastic (3 ranks, one per host).
    before, _ = effective_rows(chaos["audit"] / "chaos", upto_step=r2)
    after, resumes = effective_rows(chaos["audit"] / "elastic")
    assert resumes == [], f"elastic restarted (after steps {resumes})"
    ranks = sorted(int(p.name[len("consumed-rank"):-len(".jsonl")]) for p in (chaos["audit"] / "elastic").glob("*.jsonl"))
    assert ranks == [0, 1, 2], f"elastic audit files of ranks {ranks}"
    expected = [tuple(w) for w in c.probe(c.client, "train-windows", SHARDS)["windows"]]
    seen = before + after
    dup = len(seen) - len(set(seen))
    missing = set(expected) - set(seen)
    assert sorted(seen) == expected, (f"elastic resume: {dup} rows trained twice, {len(missing)} never "
                                      f"(e.g. {sorted(missing)[:5]}); {len(before)} up to step {r2}, {len(after)} after")


# Scenario 4, network partition: run ``partition`` (CHAOS's settings under its own name) held after step K+1; the
# host of rank 1 is cut off the bridge (``LocalCluster.partition``: its port down, packets dropped, no resets)
# and the ranks released: rank 0 enters step K+2's allreduce and hears nothing. Detected by whichever fires first:
# gloo's collective timeout on rank 0 (parallel.timeout_s, set to GLOO_TIMEOUT_S here: the shipped 1800 s would
# make the test 30 min long) or Ray's health check of the cut host's raylet (Ray's defaults: a check every 3 s,
# 10 s to answer, dead after 5 misses: 15-65 s). The driver restarts the workers on the hosts left (a spare
# stands in; after chaos there are three); the cut host is healed only after the collective timeout has passed,
# and its old processes must be gone (its raylet, told by the GCS that it is dead or past
# gcs_rpc_server_reconnect_timeout_s, ends them): none of them may write to the run after the heal.
GLOO_TIMEOUT_S = 60
PARTITION_DETECT_BOUND_S = GLOO_TIMEOUT_S + 45  # the later of the two detectors, plus the driver's reaction
HEALED_GONE_S = 120  # heal -> no Ray worker process of the old attempt left on the healed host


def _ray_workers(host) -> list[str]:
    """The Ray worker processes (``ray::...``) in ``host``'s namespace: their command lines."""
    import psutil

    from cluster.local.net import namespace_pids

    found = []
    for pid in namespace_pids(host.ns):
        try:
            cmd = " ".join(psutil.Process(pid).cmdline())
        except psutil.Error:
            continue
        if cmd.startswith("ray::"):
            found.append(f"{pid} {cmd[:80]}")
    return found


@pytest.fixture(scope="module")
def partition(local_cluster, two_runs):
    from tests.helpers.local_cluster import AuditWatch, SubmittedJob, rank_hosts

    c = local_cluster
    audit = c.root / "audit" / "partition"
    out: dict = {"audit": audit}
    watch = AuditWatch(audit)
    watch.hold(K + 1)
    job = SubmittedJob(c, c.client, _submit(c, "mvrec-partition", TRAIN + [
        "train.run_name=partition", f"train.checkpoint_every_steps={K}", f"parallel.timeout_s={GLOO_TIMEOUT_S}",
        f"data.audit_dir={audit}"]))
    out["job"] = job
    victim = None
    try:
        held = watch.wait_held(K + 1, 2, STEP_WAIT_S)
        assert held, (f"partition run: the ranks were not both held after step {K + 1} within {STEP_WAIT_S} s "
                      f"(audit reached {watch.last_step()}); submit output: {job.text[-2500:]}")
        hosts = rank_hosts(c, audit)
        out["hosts1"] = hosts
        victim = c.host(hosts[1])
        out["victim"] = victim
        if len(c.alive_workers) < 3:  # run alone (-k partition): the replacement joins before the cut
            c.add_worker()
        out["committed_at_cut"] = _committed(c, "partition")
        c.partition(victim)
        t_cut = time.monotonic()
        out["t_cut"] = t_cut
        watch.release(K + 1)
        detected = job.wait_for(r"training failed: .*restarting the workers", PARTITION_DETECT_BOUND_S + 30,
                                after=t_cut)
        assert detected, (f"{_where(c, victim)} cut off after step {K + 1}: the driver on {c.head.name} did not report "
                          f"a failure within {PARTITION_DETECT_BOUND_S + 30} s: {job.text[-2500:]}")
        out["t_detect"], out["detect_line"] = detected
        # Healed once the collective timeout has passed (the partition outlasts it, as the scenario asks).
        time.sleep(max(0.0, t_cut + GLOO_TIMEOUT_S + 15 - time.monotonic()))
        c.partition(victim, up=True)
        t_heal = time.monotonic()
        out["t_heal"] = t_heal
        left = _ray_workers(victim)
        while left and time.monotonic() < t_heal + HEALED_GONE_S:
            time.sleep(1)
            left = _ray_workers(victim)
        out["left_after_heal"] = left
        out["gone_after_heal_s"] = time.monotonic() - t_heal
        out["rc"] = job.wait(420)
        hit = job.find(r"resumed from \S+checkpoint-step", after=t_cut)
        first = _first_step(watch, max(out["committed_at_cut"]), out["t_detect"])
        TIMES["partition"] = {"cut_after_step": K + 1, "resumed_from": max(out["committed_at_cut"]),
                              "gloo_timeout_s": GLOO_TIMEOUT_S, "detect_s": out["t_detect"] - t_cut,
                              "healed_at_s": t_heal - t_cut,
                              "old_processes_gone_after_heal_s": out["gone_after_heal_s"],
                              "resumed_s": _since(t_cut, hit), "first_step_s": _since(t_cut, first),
                              "job_end_s": _since(t_cut, job.ended)}
        # Nothing of the run written after it ended: a stale process writing late would show here.
        out["committed_end"] = _committed(c, "partition")
        time.sleep(5)
        out["committed_later"] = _committed(c, "partition")
    finally:
        watch.stop()
        job.kill()
        if victim is not None:
            c.partition(victim, up=True)
    return out


@pytest.mark.timeout(900)
def test_network_partition_is_detected_in_bound_and_the_run_ends_equal(local_cluster, partition):
    from tests.helpers.local_cluster import effective_rows

    c, p = local_cluster, partition
    victim, job = p["victim"], p["job"]
    where = f"{_where(c, victim)} cut off after step {K + 1}"
    detect = p["t_detect"] - p["t_cut"]
    assert detect < PARTITION_DETECT_BOUND_S, (f"{where}: failure reported after {detect:.1f} s, bound "
                                               f"{PARTITION_DETECT_BOUND_S} s: {p['detect_line']}")
    assert not p["left_after_heal"], (f"{where}: {HEALED_GONE_S} s after the heal, processes of the old attempt "
                                      f"still run there: {p['left_after_heal']}")
    assert p["rc"] == 0 and "Job 'mvrec-partition' succeeded" in job.text, (
        f"{where}: the run did not recover (exit {p['rc']}): {job.text[-3000:]}")
    newest = max(p["committed_at_cut"])
    assert f"partition/checkpoint-step{newest:09d}: step {newest} " in job.text, (
        f"{where}: did not resume from the newest committed checkpoint {newest}: {job.text[-3000:]}")
    assert p["committed_end"] == p["committed_later"], (
        f"{where}: checkpoints changed after the run ended: {p['committed_end']} -> {p['committed_later']}")
    _assert_equals_uninterrupted(c, "partition", where)
    rows, resumes = effective_rows(p["audit"])
    assert resumes == [newest], f"{where}: attempts resumed after steps {resumes}, expected [{newest}]"
    expected = [tuple(w) for w in c.probe(c.client, "train-windows", SHARDS)["windows"]]
    assert sorted(rows) == expected, (f"{where}: {len(rows)} rows trained, {len(set(rows))} distinct, "
                                      f"{len(expected)} windows in the epoch")
    print(f"\npartition of {victim.name} after step {K + 1}: detected {detect:.1f} s (bound "
          f"{PARTITION_DETECT_BOUND_S} s; {p['detect_line'][-160:]}); old processes gone "
          f"{p['gone_after_heal_s']:.1f} s after the heal")
