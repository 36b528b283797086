"""MMRA's retriever: every item's top-k most similar train/valid items (cosine over title and frame
features), written as a neighbour store of webdataset shards + manifest.json (mvrec_dist.retrieval).

Takes the training preset: data.dataset_dir (the items), task (item_popularity's item split:
valid_fraction, test_fraction, split_seed) and the retrieval section (feature stores, backend, k,
output). The feature stores come from jobs/cache_trunk_features.py (title vectors: a frozen text
encoder preset such as jobs/configs/microlens-50k/sasrec-text.yaml).
Local, on an embedded loopback-only Ray cluster (CPU):
    python jobs/build_neighbours.py --config jobs/configs/microlens-50k/neighbours.yaml
On a cluster:
    ray job submit --address http://127.0.0.1:8265 --working-dir . --runtime-env cluster/runtime_env.yaml -- \\
        python jobs/build_neighbours.py --config jobs/configs/microlens-50k/neighbours.yaml
Exit status: 0 done (or already up to date), 1 bad input or output, 2 unusable settings (before Ray starts).
"""

from __future__ import annotations

import sys

from mvrec_dist.config.cli import parse_job_args, resolved_yaml
from mvrec_dist.config.jobs import TrainJobConfig
from mvrec_dist.runtime.ray_cluster import ray_session

PROG = "build_neighbours.py"


def main(argv: list[str] | None = None) -> int:
    args = parse_job_args(TrainJobConfig, sys.argv[1:] if argv is None else argv, prog=PROG, description=__doc__,
                          aliases={"address": "ray.address"})
    cfg = args.config
    if args.print_config:
        print(resolved_yaml(cfg), end="")
        return 0
    from mvrec_dist.retrieval.features import RetrievalError
    from mvrec_dist.retrieval.job import neighbours_problems, run_neighbours
    from mvrec_dist.train.launch import absolute_paths

    cfg = absolute_paths(cfg)
    problems = neighbours_problems(cfg)  # what can fail without a cluster fails before one starts
    if problems:
        print(f"{PROG}: error: " + "\n  - ".join(["cannot build neighbours:", *problems]), file=sys.stderr)
        return 2
    try:
        with ray_session(cfg.ray):
            result = run_neighbours(cfg)
    except RetrievalError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    m, c = result.manifest, result.manifest["counts"]
    state = "already up to date" if result.reused else f"written in {result.seconds:.1f} s"
    print(f"{PROG}: {result.output_dir} {state}: {c['items']:,} items, {c['index_items']:,} indexed "
          f"({m['identity']['backend']['name']}), {c['with_k']:,} with {m['k']} neighbours, "
          f"{c['index_smaller_than_k']:,} with fewer (index too small), {c['approximate_short']:,} short "
          f"(approximate), {c['without_features']:,} without features")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
