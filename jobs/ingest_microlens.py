"""Ingest MicroLens interactions into webdataset shards with Ray Data, and write manifest.json.

Local, on an embedded loopback-only Ray cluster (the default demo: generates a small synthetic
MicroLens-shaped csv first, then ingests it, in well under a minute):
    python jobs/ingest_microlens.py --config jobs/configs/synthetic/ingest-small.yaml
Real MicroLens-50K (the files in ../shared), bad rows set aside instead of stopping:
    python jobs/ingest_microlens.py --config jobs/configs/microlens-50k/ingest.yaml --on-bad-rows=quarantine
On a running cluster (the job connects to the cluster it was submitted to; relative paths resolve in
the uploaded working directory, so point ingest.input/output_dir at shared storage for real data; a
Ray 2.60 head from `ray start` requires its auth token, RAY_AUTH_TOKEN, unless started with
RAY_AUTH_MODE=disabled on a loopback-only dev machine):
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/ingest_microlens.py --config jobs/configs/synthetic/ingest-small.yaml
Decode the videos into content shards too (here: of MicroLens-50K ingested before; the interactions
are not ingested again when output_dir already holds this dataset):
    python jobs/ingest_microlens.py --config jobs/configs/microlens-50k/ingest-video.yaml
Interrupted (driver killed, Ctrl-C)? Run the same command again: the shards it finished are reused,
each checked by sha256 (ingest.resume). It refuses to start when the disk will not hold the output
(ingest.check_free_space=false skips that check; shards/README.md has both).
Any setting can be overridden as section.key=value (ingest.shard_max_samples=5000); --help lists them.
`mvrec ingest` is the same command, installed with the package.
Then: mvrec shards verify <output_dir>, mvrec shards inspect <output_dir>.
"""

import sys

from mvrec_dist.cli.ingest import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:], prog="ingest_microlens.py", description=__doc__))
