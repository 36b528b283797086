"""Training runs for benchmarks: the real job under Ray Train, or the same worker function on a rank pool.

Two launchers run the *same* per-worker code (``mvrec_dist.train.worker.run_worker``: data reader,
TorchRec table, DeepSpeed engine, the one ``Trainer`` loop, checkpoints):

* ``ray``: ``jobs/train_videorec.py`` in a subprocess, exactly as a user runs it (embedded local
  Ray, or ``ray.address=auto`` on a cluster; GPUs with ``use_gpu``). Each run pays Ray's start-up
  (~20 s here), which the measurement window excludes.
* ``gloo``: ``run_worker`` on a ``RankPool`` of this machine (no Ray; checkpoints are copied to
  storage instead of going through ``ray.train.report``). Used by the CI-sized runs.

Throughput comes from the run's own ``metrics.jsonl`` between the first log point at or after the
warm-up and the last one: cumulative sequences and targets over ``train_seconds`` (time inside
training steps, data loading included, evaluation and checkpoints excluded) and over wall-clock
time between the two records (which includes checkpoint saves).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.harness.ranks import RankPool

__all__ = ["REPO", "JobSpec", "run_job", "window_throughput", "prepare_tiny_dataset", "ensure_dataset",
           "TINY_DATASET"]

REPO = Path(__file__).resolve().parents[2]
JOB = REPO / "jobs" / "train_videorec.py"
# CI-sized synthetic data: enough users for a few steps of a small batch on 2 ranks.
TINY_DATASET = {"users": 2000, "items": 400, "interactions": 16000, "chunk_users": 1000, "shard_max_samples": 500}


@dataclasses.dataclass(frozen=True)
class JobSpec:
    """One training run to measure.

    Attributes:
        preset: Job preset YAML.
        dataset: Ingested dataset directory (or URI).
        workers: Ray Train workers / ranks.
        batch: Global batch (sequences per step over all workers).
        steps: Steps to run (``train.max_steps``).
        log_every: Steps between metric records (the measurement's resolution).
        overrides: Further ``section.key=value`` settings.
        use_gpu: One GPU per worker (Ray launcher only).
        address: Ray cluster address (None: an embedded local cluster).
    """

    preset: str
    dataset: str
    workers: int
    batch: int
    steps: int
    log_every: int
    overrides: tuple[str, ...] = ()
    use_gpu: bool = False
    address: str | None = None

    def settings(self, storage: str, run_name: str) -> list[str]:
        """The job's overrides: a fixed number of steps, no validation, test or epoch-end checkpoint."""
        out = [f"data.dataset_dir={self.dataset}", f"parallel.num_workers={self.workers}",
               f"parallel.use_gpu={str(self.use_gpu).lower()}", f"train.batch_size={self.batch}",
               f"train.max_steps={self.steps}", f"train.log_every_steps={self.log_every}",
               f"train.storage_path={storage}", f"train.run_name={run_name}", "train.resume=never",
               "train.checkpoint_at_epoch_end=false", "train.test_after_training=false", "train.epochs=1000",
               "eval.every_epochs=1000", "train.quiet=true", "ray.dashboard=false"]
        if self.address:
            out.append(f"ray.address={self.address}")
        return out + list(self.overrides)


def window_throughput(records: list[dict], warmup: int) -> dict:
    """Throughput between the first train record at step >= ``warmup`` and the last train record.

    Args:
        records: Parsed ``metrics.jsonl`` rows.
        warmup: Steps excluded at the start (start-up, first-touch allocations).

    Returns:
        ``sequences_per_s``, ``targets_per_s`` (over training-step time), ``sequences_per_s_wall``
        (over wall-clock time, checkpoints included), ``steps``, ``seconds``, ``wall_seconds``.
    """
    train = [r for r in records if r["kind"] == "train" and r["step"] >= warmup]
    if len(train) < 2:
        raise ValueError(f"need two train records at or after step {warmup}, got {len(train)}: "
                         "run more steps or log more often")
    a, b = train[0], train[-1]
    seconds = b["train_seconds"] - a["train_seconds"]
    wall = b["time"] - a["time"]
    return {"sequences_per_s": (b["sequences"] - a["sequences"]) / seconds,
            "targets_per_s": (b["targets"] - a["targets"]) / seconds,
            "sequences_per_s_wall": (b["sequences"] - a["sequences"]) / wall,
            "steps": b["step"] - a["step"], "seconds": seconds, "wall_seconds": wall,
            "step_ms": 1e3 * seconds / max(b["step"] - a["step"], 1)}


def _read_run(storage: str, name: str) -> tuple[list[dict], dict]:
    run = Path(storage) / name
    records = [json.loads(line) for line in (run / "logs" / "metrics.jsonl").read_text().splitlines() if line]
    result_path = run / "result.json"
    result = json.loads(result_path.read_text()) if result_path.exists() else {}
    return records, result


def _ray_job(spec: JobSpec, storage: str, name: str) -> None:
    args = [sys.executable, str(JOB), "--config", spec.preset, *spec.settings(storage, name)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"training job failed ({' '.join(args[1:])}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def _pool_worker(ctx: Any, preset: str, overrides: list[str]) -> dict:
    """Rank-pool task: the job's worker function on this rank (no Ray)."""
    from mvrec_dist.config import TrainJobConfig, load_config
    from mvrec_dist.train.launch import absolute_paths
    from mvrec_dist.train.worker import final_metrics, run_worker, write_result

    cfg = absolute_paths(load_config(TrainJobConfig, preset, overrides))
    metrics = final_metrics(run_worker(cfg, ctx))
    if ctx.rank == 0:
        write_result(cfg, metrics)
    return metrics


def run_job(spec: JobSpec, *, storage: str, launcher: str, pool: RankPool | None = None,
            warmup: int | None = None, tag: str = "bench", measure: bool = True) -> dict:
    """Run one training job and measure it.

    Args:
        spec: What to run.
        storage: Storage path of the run (checkpoints, metrics).
        launcher: ``ray`` (the job under Ray Train) or ``gloo`` (``run_worker`` on ``pool``).
        pool: The rank pool for ``gloo`` (its world size must equal ``spec.workers``).
        warmup: Steps excluded from the throughput window (default: the first log interval).
        tag: Prefix of the run name.
        measure: Compute the throughput window (False: only the run's result and records).

    Returns:
        ``window_throughput`` figures plus ``elapsed_s`` (the whole run, start-up included),
        ``result`` (the run's final metrics: peak RSS per rank, ...) and ``records``.
    """
    name = f"{tag}-{spec.workers}w-{spec.batch}b-{int(time.time() * 1000)}"
    t0 = time.perf_counter()
    if launcher == "ray":
        _ray_job(spec, storage, name)
    elif launcher == "gloo":
        if pool is None or pool.world_size != spec.workers:
            raise ValueError(f"the gloo launcher needs a rank pool of {spec.workers} ranks")
        if spec.use_gpu:
            raise ValueError("the gloo launcher runs on CPU; use launcher 'ray' with use_gpu")
        pool.run(_pool_worker, spec.preset, spec.settings(storage, name))
    else:
        raise ValueError(f"unknown launcher {launcher!r} (ray or gloo)")
    elapsed = time.perf_counter() - t0
    records, result = _read_run(storage, name)
    out = window_throughput(records, spec.log_every if warmup is None else warmup) if measure else {}
    return {**out, "elapsed_s": elapsed, "run_name": name, "launcher": launcher, "result": result,
            "records": records}


def prepare_tiny_dataset(out_dir: str) -> str:
    """Generate and ingest the CI-sized synthetic dataset into ``out_dir`` (reused when present)."""
    from mvrec_dist.config import IngestJobConfig, RayConfig, load_config
    from mvrec_dist.data.ingest import run_ingest_job
    from mvrec_dist.data.manifest import ManifestError, load_manifest
    from mvrec_dist.runtime.ray_cluster import ray_session

    shards = os.path.join(out_dir, "shards")
    try:
        load_manifest(shards)
        return shards
    except ManifestError:
        pass
    t = TINY_DATASET
    cfg = load_config(IngestJobConfig, None, [
        f"ingest.output_dir={shards}", f"ingest.shard_max_samples={t['shard_max_samples']}", "ingest.progress=false",
        "synthetic.enabled=true", f"synthetic.output={os.path.join(out_dir, 'raw')}", f"synthetic.users={t['users']}",
        f"synthetic.items={t['items']}", f"synthetic.interactions={t['interactions']}",
        f"synthetic.chunk_users={t['chunk_users']}", "synthetic.seed=1"])
    with ray_session(RayConfig(num_cpus=os.cpu_count() or 2, dashboard=False)):
        run_ingest_job(cfg)
    return shards


def ensure_dataset(shared: str, own: str, ingest_preset: str, log=print) -> str:
    """The MicroLens-50K dataset the full-mode parts train on.

    ``shared`` (``data/shards/microlens-50k``, what the jobs use) when it loads with this code;
    otherwise the harness's own copy ``own`` under the work directory, ingested from the raw release
    with ``ingest_preset`` when it is missing or in an older shard format. The harness never writes
    the shared dataset: other jobs and engineers read it.
    """
    from mvrec_dist.data.manifest import ManifestError, load_manifest

    for path in (shared, own):
        try:
            load_manifest(path)
            return path
        except ManifestError as exc:
            log(f"dataset {path} not usable ({str(exc)[:160]})")
    log(f"ingesting MicroLens-50K into the harness's own copy {own}")
    subprocess.run([sys.executable, str(REPO / "jobs" / "ingest_microlens.py"), "--config", ingest_preset,
                    f"ingest.output_dir={own}", "ingest.overwrite=true", "ingest.progress=false"], cwd=REPO, check=True)
    load_manifest(own)
    return own
