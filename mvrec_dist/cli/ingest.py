"""Ingest MicroLens interactions into webdataset shards with Ray Data, and write manifest.json.

Local, on an embedded loopback-only Ray cluster (a small synthetic MicroLens-shaped csv first):
    mvrec ingest --config jobs/configs/synthetic/ingest-small.yaml
Real MicroLens-50K, bad rows set aside instead of stopping:
    mvrec ingest --config jobs/configs/microlens-50k/ingest.yaml --on-bad-rows=quarantine
On a running cluster (or submit jobs/ingest_microlens.py with `ray job submit`, see its docstring):
    mvrec ingest --config jobs/configs/microlens-full/ingest.yaml --address auto
Progress: Ray Data's progress bars (rows and rates per operator) while it runs, then one summary line
per stage with its rates (rows/s, interactions/s, users/s, items/s); ingest.progress=false (CI) turns
the bars off and keeps the summaries. Ray's and Ray Data's own log lines stay off the console (Ray Data
keeps them in Ray's session directory, /tmp/ray/session_latest/logs/ray-data/); --verbose shows them. On a cluster of several nodes the inputs and ingest.output_dir
must be on storage every node sees (a shared mount or an s3:// / gs:// URI).
Before it starts, the job checks the disks it writes to have room (ingest.check_free_space); an
interrupted ingest run again with the same command reuses the shards it finished (ingest.resume).
Any setting can be overridden as section.key=value (ingest.shard_max_samples=5000).
Then: mvrec shards verify <output_dir>, mvrec shards inspect <output_dir>.
"""

from __future__ import annotations

import json
import sys
from typing import Sequence

from mvrec_dist.cli.errors import guarded
from mvrec_dist.config.cli import parse_job_args, resolved_yaml
from mvrec_dist.config.jobs import IngestJobConfig

__all__ = ["main", "ingest", "preflight", "stage_lines", "ALIASES"]

ALIASES = {"address": "ray.address", "on-bad-rows": "ingest.on_bad_rows"}


def main(argv: Sequence[str] | None = None, *, prog: str = "mvrec ingest", description: str = __doc__) -> int:
    """``mvrec ingest`` and ``jobs/ingest_microlens.py``: parse the command line, ingest, print the summary.

    Args:
        argv: Arguments without the program name (default ``sys.argv[1:]``).
        prog: Program name for usage, summary and error lines.
        description: Top of ``--help`` (the job passes its own docstring with its launch commands).

    Returns:
        The exit status: 0 done, 2 cannot start as configured, 1 failed (bad input rows, ...).
    """
    args = parse_job_args(IngestJobConfig, sys.argv[1:] if argv is None else argv, prog=prog,
                          description=description, aliases=ALIASES)
    if args.print_config:
        print(resolved_yaml(args.config), end="")
        return 0
    return guarded(prog, args.debug, lambda: _show(prog, ingest(args.config)))


def preflight(cfg: IngestJobConfig, *, num_nodes: int | None = None) -> None:
    """Raise ``PathError`` for the first input that is missing or, on several nodes, not shared.

    Args:
        cfg: The job config.
        num_nodes: Alive nodes of the connected cluster; None checks only that inputs exist
            (before a cluster is started).
    """
    from mvrec_dist.runtime.paths import check_input_path, check_storage_path

    if num_nodes is None:
        if not cfg.synthetic.enabled:
            check_input_path(cfg.ingest.input, key="ingest.input",
                             hint="point it at the MicroLens interactions (a .tsv/.csv file, a directory or a glob) "
                                  "or set synthetic.enabled=true")
        if cfg.ingest.titles:
            check_input_path(cfg.ingest.titles, key="ingest.titles",
                             hint="point it at the titles csv (item,title) or set ingest.titles=null")
        if cfg.video.enabled:
            check_input_path(cfg.video.videos, key="video.videos",
                             hint="point it at the directory of <raw_item_id>.mp4 files or set video.enabled=false")
        return
    # Read tasks, shard writers and video decoders run on any node: what they touch must be shared.
    shared = {"ingest.output_dir": cfg.ingest.output_dir}
    shared.update({"synthetic.output": cfg.synthetic.output} if cfg.synthetic.enabled else
                  {"ingest.input": cfg.ingest.input})
    if cfg.video.enabled:
        shared["video.videos"] = cfg.video.videos
    for key, path in shared.items():
        check_storage_path(path, num_nodes=num_nodes, key=key)


def ingest(cfg: IngestJobConfig):
    """Check the inputs, connect to Ray, check that paths are shared, and run the ingestion.

    Args:
        cfg: The job config.

    Returns:
        The ``IngestResult``.

    Raises:
        PathError: an input is missing or not shared by the cluster's nodes (nothing started).
        IngestError: bad input rows, a conflicting output directory, counts that do not reconcile.
    """
    from mvrec_dist.data.ingest import run_ingest_job
    from mvrec_dist.runtime.ray_cluster import cluster_view, ray_session

    preflight(cfg)
    with ray_session(cfg.ray):
        preflight(cfg, num_nodes=cluster_view()[1])
        return run_ingest_job(cfg)


def _rate(n: float, seconds: float) -> str:
    return f"{n / seconds:,.0f}" if seconds > 0 else "-"


def _plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _input_notes(c: dict) -> str:
    """What reading changed or found in the inputs: stripped BOMs, duplicate rows ('' when nothing)."""
    notes = []
    if c.get("bom_stripped"):
        notes.append(f"{_plural(c['bom_stripped'], 'file')} started with a UTF-8 BOM (stripped)")
    if c.get("duplicate_rows"):
        what = (f"dropped ({_plural(c['dropped_interactions'], 'interaction')})" if c.get("dropped_rows")
                else "kept")
        notes.append(f"{_plural(c['duplicate_rows'], 'duplicate row')} of {_plural(c['duplicate_users'], 'user')}: "
                     f"{what}")
    return "; ".join(notes)


def stage_lines(result) -> list[str]:
    """One line per stage of an ingestion: seconds and the rates that matter for it (and an
    ``inputs`` line when reading stripped a BOM or found duplicate rows).

    Args:
        result: The ``IngestResult`` (its manifest counts and per-stage ``timings``).

    Returns:
        The lines, in stage order; stages that did not run are left out.
    """
    c, t = result.manifest["counts"], result.timings
    lines = []
    if "reused" in t:
        lines.append("interactions: already ingested with these inputs; reused")
    if "read_group" in t:
        s = t["read_group"]
        split = f" (read {t['read']:.1f} s, group {t['group']:.1f} s)" if "read" in t and "group" in t else ""
        lines.append(f"read+group: {s:7.1f} s  {c['input_rows']:,} rows ({_rate(c['input_rows'], s)} rows/s), "
                     f"{c['input_interactions']:,} interactions ({_rate(c['input_interactions'], s)}/s){split}")
    inputs = _input_notes(c)
    if inputs:
        lines.append(f"inputs:     {inputs}")
    if "ids" in t:
        lines.append(f"ids:        {t['ids']:7.1f} s  {c['users']:,} users, {c['items']:,} items")
    if "write" in t:
        s = t["write"]
        lines.append(f"write:      {t['write']:7.1f} s  {c['users']:,} users ({_rate(c['users'], s)}/s), "
                     f"{c['kept_interactions']:,} interactions ({_rate(c['kept_interactions'], s)}/s)")
    if "items" in t:
        lines.append(f"items:      {t['items']:7.1f} s  {c['items']:,} items ({_rate(c['items'], t['items'])}/s)")
    finish = t.get("finish", 0.0) + t.get("publish", 0.0)
    if "finish" in t or "publish" in t:
        lines.append(f"finish:     {finish:7.1f} s  quarantine, reconciliation, manifest")
    if "content" in t and "content" in result.manifest:
        cc = result.manifest["content"].get("counts", {})
        n = cc.get("items", 0)
        lines.append(f"videos:     {t['content']:7.1f} s  {n:,} items ({_rate(n, t['content'])}/s), "
                     f"{cc.get('with_content', 0):,} with content")
    if "text" in t and "text" in result.manifest:
        tc = result.manifest["text"].get("counts", {})
        n = tc.get("items", 0)
        lines.append(f"titles:     {t['text']:7.1f} s  {n:,} items ({_rate(n, t['text'])}/s), "
                     f"{tc.get('with_text', 0):,} tokenised")
    return lines


def _show(prog: str, result) -> int:
    counts = result.manifest["counts"]
    for line in stage_lines(result):
        print(f"{prog}: {line}")
    print(f"{prog}: wrote {result.output_dir} in {result.seconds:.1f} s "
          f"({_rate(counts['input_interactions'], result.seconds)} interactions/s)")
    print(json.dumps({k: counts[k] for k in ("input_rows", "users", "items", "kept_interactions",
                                             "filtered_users", "quarantined_rows", "interactions")}, indent=1))
    if "content" in result.manifest:
        print("content:", json.dumps(result.manifest["content"]["counts"], indent=1))
    if "text" in result.manifest:
        print("text:", json.dumps(result.manifest["text"]["counts"], indent=1))
    return 0
