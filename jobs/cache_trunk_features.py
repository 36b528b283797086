"""Compute a video encoder's frozen-trunk output once per item, for training with a cached trunk.

Takes the *training* preset: its model.content_encoder (finetune 'frozen' or 'top' fixes the cut),
data.dataset_dir (ingested with video content), data.content_features (where the features go)
and train.seed; the trunk_cache section sets the pass itself (batch, dtype, workers, GPUs).
Local, on an embedded loopback-only Ray cluster (CPU):
    python jobs/cache_trunk_features.py --config jobs/configs/microlens-50k/sasrec-video-frozen.yaml
On a GPU cluster (one GPU per Ray Data worker):
    ray job submit --address http://127.0.0.1:8265 --working-dir . --runtime-env cluster/runtime_env.yaml -- \
        python jobs/cache_trunk_features.py --config jobs/configs/microlens-full/sasrec-video-r3d18-top2.yaml
Then train with the same preset (jobs/train_videorec.py), which checks that the features belong to
its trunk and content; python -m mvrec_dist.data.verify <data.content_features> checks the store.
"""

from __future__ import annotations

import json
import sys

from mvrec_dist.config.cli import parse_job_args, resolved_yaml
from mvrec_dist.config.jobs import TrainJobConfig
from mvrec_dist.runtime.ray_cluster import ray_session

PROG = "cache_trunk_features.py"


def main(argv: list[str] | None = None) -> int:
    args = parse_job_args(TrainJobConfig, sys.argv[1:] if argv is None else argv, prog=PROG, description=__doc__,
                          aliases={"address": "ray.address"})
    cfg = args.config
    if args.print_config:
        print(resolved_yaml(cfg), end="")
        return 0
    from mvrec_dist.data.content_store import ContentStoreError
    from mvrec_dist.data.ingest.errors import IngestError
    from mvrec_dist.features import FeatureIdentityError
    from mvrec_dist.features.trunk_cache import run_trunk_cache, trunk_cache_problems
    from mvrec_dist.train.launch import absolute_paths

    cfg = absolute_paths(cfg)
    problems = trunk_cache_problems(cfg)  # what can fail without a cluster fails before one starts
    if problems:
        print(f"{PROG}: error: " + "\n  - ".join(["cannot compute trunk features:", *problems]), file=sys.stderr)
        return 2
    try:
        with ray_session(cfg.ray):
            result = run_trunk_cache(cfg)
    except (IngestError, ContentStoreError, FeatureIdentityError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    m = result.manifest
    state = "already up to date" if result.reused else f"written in {result.seconds:.1f} s"
    print(f"{PROG}: {result.output_dir} {state}: {m['counts']['with_features']} items, {m['dtype']} "
          f"{m['shape']} each")
    print(json.dumps({k: m["identity"][k] for k in ("top_blocks", "frames", "size", "trunk_digest")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
