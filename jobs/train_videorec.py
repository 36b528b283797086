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
--help lists them all. The console shows progress bars, a line per epoch, validation and checkpoint,
and a summary table; the libraries' output goes to <run>/logs/ (--verbose shows it too).
`mvrec train` is the same command, installed with the package.
"""

import sys

from mvrec_dist.cli.train import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:], prog="train_videorec.py", description=__doc__))
