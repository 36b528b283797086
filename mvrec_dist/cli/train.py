"""Train, validate and test a sequential recommender (IDRec / VideoRec / VIDRec) on MicroLens shards.

Local, on an embedded loopback Ray cluster (ingests the synthetic demo data first if needed):
    mvrec train --config jobs/configs/synthetic/sasrec-id-small.yaml
On a running cluster (or submit jobs/train_videorec.py with `ray job submit`, see its docstring):
    mvrec train --config jobs/configs/microlens-full/sasrec-id.yaml --address auto
The same run name and storage path resume the run from its newest good checkpoint (train.resume=auto);
a finished run's command run again prints its result; a second driver for a run in progress is refused.
Any setting can be overridden as section.key=value (e.g. train.lr=3e-4 parallel.zero_stage=2).
The console shows the project's lines only: a progress bar per epoch and evaluation (rate, ETA), a line
per epoch, validation and checkpoint, and a summary table at the end; train.quiet=true drops the bars
(CI). What the libraries print (Ray, TorchRec, DeepSpeed) goes to <train.storage_path>/<train.run_name>/logs/
(train-rank<r>.log per worker, driver.log), beside metrics.jsonl and tensorboard/; --verbose shows it
on the console too. See `mvrec runs show`.
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

from mvrec_dist.cli.errors import guarded
from mvrec_dist.config.cli import parse_job_args, resolved_yaml
from mvrec_dist.config.jobs import TrainJobConfig

__all__ = ["main", "train", "summary_table", "ALIASES"]

ALIASES = {"address": "ray.address", "resume": "train.resume", "run-name": "train.run_name"}


def main(argv: Sequence[str] | None = None, *, prog: str = "mvrec train", description: str = __doc__,
         tasks: tuple[str, ...] | None = None) -> int:
    """``mvrec train``, ``jobs/train_videorec.py`` and ``jobs/train_popularity.py``: parse the command line,
    train, print the result.

    Args:
        argv: Arguments without the program name (default ``sys.argv[1:]``).
        prog: Program name for usage and error lines.
        description: Top of ``--help`` (the job passes its own docstring with its launch commands).
        tasks: The ``task.name`` values this entrypoint trains (None: every task); others exit 2.

    Returns:
        The exit status: 0 done, 2 cannot start as configured, 1 failed.
    """
    args = parse_job_args(TrainJobConfig, sys.argv[1:] if argv is None else argv, prog=prog,
                          description=description, aliases=ALIASES)
    if args.print_config:
        print(resolved_yaml(args.config), end="")
        return 0
    if tasks is not None and args.config.task.name not in tasks:
        print(f"{prog}: error: task.name: this job trains {' or '.join(tasks)}, got {args.config.task.name!r} "
              "(jobs/train_videorec.py trains every task)", file=sys.stderr)
        return 2
    return guarded(prog, args.debug, lambda: _show(args.config, train(args.config)))


def train(cfg: TrainJobConfig) -> dict:
    """Check the job, connect to Ray, prepare what is missing, and train; returns the final metrics.

    The dataset is ingested first when ``data.prepare_with`` names an ingest preset and
    ``data.dataset_dir`` holds none; cached trunk features are computed first when
    ``trunk_cache.build_if_missing`` and ``data.content_features`` holds none.

    Args:
        cfg: The job config.

    Returns:
        The final metrics (``result.json``).

    Raises:
        PreflightError: when the config, paths or cluster cannot run the job (nothing started).
    """
    from mvrec_dist.runtime.console import run_log_dir
    from mvrec_dist.runtime.ray_cluster import ray_session
    from mvrec_dist.train.launch import (absolute_paths, check_run_free, finished_message, finished_result, preflight,
                                         prepare_dataset, prepare_features, run_training)

    cfg = absolute_paths(cfg)
    preflight(cfg)  # what can fail without a cluster fails before one starts
    done = finished_result(cfg)
    if done is not None:
        print(finished_message(cfg, done), flush=True)
        return done
    check_run_free(cfg)  # a second driver of a live run is refused before it starts a cluster
    driver_log = os.path.join(run_log_dir(cfg.train.storage_path, cfg.train.run_name), "driver.log")
    with ray_session(cfg.ray, log_file=driver_log):
        prepare_dataset(cfg)
        prepare_features(cfg)
        return run_training(cfg)


POPULARITY_BASELINE = "baseline/popularity/"
"""Prefix of the popularity baseline's metrics in a run's result (``baseline/popularity/test/hr@10``)."""


def summary_table(cfg: TrainJobConfig, metrics: dict, run_dir: str) -> list[str]:
    """The lines a finished run ends with: valid/test metrics (and a popularity baseline's, when the
    result holds them), best epoch, throughput, peak memory and where the run directory is.

    Args:
        cfg: The job config (its metrics and selection metric).
        metrics: The run's final metrics (``result.json``).
        run_dir: The run directory, as the user should look for it.

    Returns:
        The table's lines.
    """
    names = [m.name for m in cfg.metrics]
    rows = [("valid, best epoch", "valid/"), ("test", "test/"), ("popularity baseline", f"{POPULARITY_BASELINE}test/")]
    rows = [(label, prefix) for label, prefix in rows if any(f"{prefix}{n}" in metrics for n in names)]
    width = max(len(label) for label, _ in rows) if rows else 0
    width = max(width, len("run directory"))

    def cell(value: object) -> str:
        return f"{value:>9.4f}" if isinstance(value, (int, float)) else f"{'-':>9}"

    steps = f" ({metrics['steps']:,} steps)" if "steps" in metrics else ""
    elapsed = f" in {metrics['elapsed_seconds']:,.1f} s" if "elapsed_seconds" in metrics else ""
    lines = [f"run {cfg.train.run_name}: {metrics.get('epochs', '?')} epochs{steps}{elapsed}; best epoch "
             f"{metrics.get('best_epoch', '?')} by valid {cfg.select_metric.name}",
             f"{'':<{width}}  " + "".join(f"{n:>9}" for n in names)]
    lines += [f"{label:<{width}}  " + "".join(cell(metrics.get(f"{prefix}{n}")) for n in names)
              for label, prefix in rows]
    if "sequences_per_s" in metrics:
        lines.append(f"{'throughput':<{width}}  {metrics['sequences_per_s']:,.0f} sequences/s, "
                     f"{metrics.get('targets_per_s', 0):,.0f} targets/s (training, all ranks)")
    if "peak_rss_mib_max" in metrics:
        gpu = f", {metrics['peak_gpu_mib_max']:,.0f} MiB GPU" if "peak_gpu_mib_max" in metrics else ""
        lines.append(f"{'peak memory':<{width}}  {metrics['peak_rss_mib_max']:,.0f} MiB RSS{gpu} (largest rank)")
    lines.append(f"{'run directory':<{width}}  {run_dir} (logs/: metrics, TensorBoard, log files)")
    return lines


def _show(cfg: TrainJobConfig, metrics: dict) -> int:
    from mvrec_dist.train.launch import absolute_paths, run_uri_of

    print("\n".join(summary_table(cfg, metrics, run_uri_of(absolute_paths(cfg)))), flush=True)
    return 0
