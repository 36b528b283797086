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
Any setting can be overridden as section.key=value (ingest.shard_max_samples=5000); --help lists them.
Then: python -m mvrec_dist.data.verify <output_dir>, python -m mvrec_dist.data.inspect <output_dir>.
"""

from __future__ import annotations

import json
import sys

from mvrec_dist.config.cli import parse_job_args, resolved_yaml
from mvrec_dist.config.jobs import IngestJobConfig
from mvrec_dist.data.ingest import IngestError, run_ingest_job
from mvrec_dist.runtime.ray_cluster import ray_session

PROG = "ingest_microlens.py"


def main(argv: list[str] | None = None) -> int:
    args = parse_job_args(IngestJobConfig, sys.argv[1:] if argv is None else argv, prog=PROG,
                          description=__doc__,
                          aliases={"address": "ray.address", "on-bad-rows": "ingest.on_bad_rows"})
    cfg = args.config
    if args.print_config:
        print(resolved_yaml(cfg), end="")
        return 0
    try:
        with ray_session(cfg.ray):
            result = run_ingest_job(cfg)
    except IngestError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    counts = result.manifest["counts"]
    rate = counts["input_interactions"] / result.seconds if result.seconds else 0.0
    print(f"{PROG}: wrote {result.output_dir} in {result.seconds:.1f} s ({rate:,.0f} interactions/s)")
    print(json.dumps({k: counts[k] for k in ("input_rows", "users", "items", "kept_interactions",
                                             "filtered_users", "quarantined_rows", "interactions")}, indent=1))
    if "content" in result.manifest:
        print("content:", json.dumps(result.manifest["content"]["counts"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
