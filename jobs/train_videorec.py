"""Train, validate and test a sequential recommender (IDRec / VideoRec / VIDRec) on MicroLens shards.

Local, on an embedded loopback Ray cluster (ingests the synthetic demo data first if needed):
    python jobs/train_videorec.py --config jobs/configs/synthetic/sasrec-id-small.yaml
Real MicroLens-50K, 2 CPU workers:
    python jobs/train_videorec.py --config jobs/configs/microlens-50k/sasrec-id.yaml
On a running cluster:
    ray job submit --address http://127.0.0.1:8265 --working-dir . \
        --runtime-env cluster/runtime_env.yaml -- \
        python jobs/train_videorec.py --config jobs/configs/microlens-full/sasrec-id.yaml
Any setting can be overridden as section.key=value (e.g. train.lr=3e-4 parallel.zero_stage=2);
--help lists them all.
"""

from __future__ import annotations

import json
import sys

from mvrec_dist.config.cli import parse_job_args, resolved_yaml
from mvrec_dist.config.jobs import TrainJobConfig
from mvrec_dist.runtime.ray_cluster import ray_session
from mvrec_dist.train.launch import (PreflightError, absolute_paths, preflight, prepare_dataset, prepare_features,
                                    run_training)


def main(argv: list[str] | None = None) -> int:
    args = parse_job_args(TrainJobConfig, sys.argv[1:] if argv is None else argv, prog="train_videorec.py",
                          description=__doc__,
                          aliases={"address": "ray.address", "resume": "train.resume", "run-name": "train.run_name"})
    cfg = args.config
    if args.print_config:
        print(resolved_yaml(cfg), end="")
        return 0
    try:
        preflight(absolute_paths(cfg))  # what can fail without a cluster fails before one starts
        with ray_session(cfg.ray):
            prepare_dataset(cfg)
            prepare_features(cfg)
            metrics = run_training(cfg)
    except PreflightError as exc:
        print(f"train_videorec.py: {exc}", file=sys.stderr)
        return 2
    shown = {k: v for k, v in metrics.items() if k.startswith(("test/", "valid/")) and "@" in k}
    print("result:", json.dumps({**shown, "sequences_per_s": metrics.get("sequences_per_s"),
                                 "targets_per_s": metrics.get("targets_per_s"),
                                 "seconds_to_best": metrics.get("seconds_to_best"),
                                 "best_epoch": metrics.get("best_epoch")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
