"""Train, validate and test a sequential recommender (IDRec / VideoRec / VIDRec) on MicroLens shards.

Local, on an embedded loopback Ray cluster (ingests the synthetic demo data first if needed):
    mvrec train --config jobs/configs/synthetic/sasrec-id-small.yaml
On a running cluster (or submit jobs/train_videorec.py with `ray job submit`, see its docstring):
    mvrec train --config jobs/configs/microlens-full/sasrec-id.yaml --address auto
The same run name and storage path resume the run from its newest good checkpoint (train.resume=auto);
a finished run's command run again prints its result; a second driver for a run in progress is refused.
Any setting can be overridden as section.key=value (e.g. train.lr=3e-4 parallel.zero_stage=2).
Progress lines come from rank 0 (per-epoch rate and ETA, each validation with the run's ETA);
train.quiet=true prints only epoch summaries and results. Metrics go to
<train.storage_path>/<train.run_name>/logs/ (metrics.jsonl, tensorboard/); see `mvrec runs show`.
"""

from __future__ import annotations

import json
import sys
from typing import Sequence

from mvrec_dist.cli.errors import guarded
from mvrec_dist.config.cli import parse_job_args, resolved_yaml
from mvrec_dist.config.jobs import TrainJobConfig

__all__ = ["main", "train", "ALIASES"]

ALIASES = {"address": "ray.address", "resume": "train.resume", "run-name": "train.run_name"}


def main(argv: Sequence[str] | None = None, *, prog: str = "mvrec train", description: str = __doc__) -> int:
    """``mvrec train`` and ``jobs/train_videorec.py``: parse the command line, train, print the result.

    Args:
        argv: Arguments without the program name (default ``sys.argv[1:]``).
        prog: Program name for usage and error lines.
        description: Top of ``--help`` (the job passes its own docstring with its launch commands).

    Returns:
        The exit status: 0 done, 2 cannot start as configured, 1 failed.
    """
    args = parse_job_args(TrainJobConfig, sys.argv[1:] if argv is None else argv, prog=prog,
                          description=description, aliases=ALIASES)
    if args.print_config:
        print(resolved_yaml(args.config), end="")
        return 0
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
    with ray_session(cfg.ray):
        prepare_dataset(cfg)
        prepare_features(cfg)
        return run_training(cfg)


def _show(cfg: TrainJobConfig, metrics: dict) -> int:
    names = [m.name for m in cfg.metrics]
    shown = {f"{split}/{n}": metrics[f"{split}/{n}"] for split in ("valid", "test") for n in names
             if f"{split}/{n}" in metrics}
    print("result:", json.dumps({**shown, "sequences_per_s": metrics.get("sequences_per_s"),
                                 "targets_per_s": metrics.get("targets_per_s"),
                                 "peak_rss_mib_max": metrics.get("peak_rss_mib_max"),
                                 "seconds_to_best": metrics.get("seconds_to_best"),
                                 "best_epoch": metrics.get("best_epoch")}, indent=1))
    return 0
