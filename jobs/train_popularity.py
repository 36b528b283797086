"""Train, validate and test a popularity predictor (MMRA, ``task.name=mmra``) on MicroLens shards.

The same trainer as jobs/train_videorec.py (one loop, Ray Train, DeepSpeed, checkpoints and resume),
for the item-level popularity tasks: ``mmra`` (retrieval-augmented, from frames, title and neighbours)
and ``item_popularity`` (the ID-table regression). Its inputs come first:
    python jobs/ingest_microlens.py --config jobs/configs/synthetic/ingest-small.yaml
    python -m mvrec_dist.retrieval.synthetic data/shards/demo data/features/demo-synthetic-384
    python -m mvrec_dist.retrieval.synthetic data/shards/demo data/features/demo-frames-64 --dims 64 --frames 10 --seed 1
    python jobs/build_neighbours.py --config jobs/configs/synthetic/mmra-small.yaml
Then, locally on an embedded loopback Ray cluster:
    python jobs/train_popularity.py --config jobs/configs/synthetic/mmra-small.yaml
Real MicroLens-50K titles: jobs/configs/microlens-50k/mmra.yaml (its header lists its prerequisites).
On a running cluster:
    ray job submit --address http://127.0.0.1:8265 --working-dir . \
        --runtime-env cluster/runtime_env.yaml -- \
        python jobs/train_popularity.py --config jobs/configs/microlens-50k/mmra.yaml
Any setting can be overridden as section.key=value (e.g. train.lr=1e-4 task.use_retrieval=false);
--help lists them all. `mvrec train` runs the same trainer for every task.
"""

import sys

from mvrec_dist.cli.train import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:], prog="train_popularity.py", description=__doc__,
                          tasks=("mmra", "item_popularity")))
