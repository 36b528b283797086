"""``mvrec runs list`` / ``mvrec runs show``: training runs under a storage path and how they are doing.

A run's status: finished (it wrote result.json), in progress (its driver is alive: status.json is
refreshed every minute, or checkpoints/metrics change), or failed (the driver recorded the error,
or nothing changed for --stale-after seconds; resubmitting the same command resumes it).
Storage paths may be local, a shared filesystem, or s3:// / gs:// URIs.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Sequence

from mvrec_dist.cli.errors import CommandParser, guarded

__all__ = ["main_list", "main_show", "format_table", "format_run"]


def _parser(prog: str, *, json_help: str) -> CommandParser:
    """The options ``runs list`` and ``runs show`` share."""
    parser = CommandParser(prog=prog, description=__doc__)
    parser.add_argument("--stale-after", type=float, default=600.0, metavar="SECONDS",
                        help="seconds without any change after which a run without result.json counts as failed "
                             "(default: 600; a running driver refreshes status.json every 60 s)")
    parser.add_argument("--json", action="store_true", help=json_help)
    return parser


_NOT_METRICS = ("users", "items", "seconds", "step", "epoch", "best_epoch")


def _fmt_metrics(metrics: dict | None, keys: Sequence[str] | None = None) -> str:
    if not metrics:
        return "-"
    # The task's metrics in its display order (hr@10 ndcg@10 hr@20 ndcg@20 for next-item); when the
    # run's config could not be read, every numeric entry that is not a count or a time.
    keys = keys or [k for k, v in metrics.items() if isinstance(v, (int, float)) and k not in _NOT_METRICS]
    return " ".join(f"{k} {metrics[k]:.4f}" for k in keys if isinstance(metrics.get(k), (int, float)))


def _age(updated: float, now: float) -> str:
    if not updated:
        return "-"
    seconds = int(max(now - updated, 0))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def format_table(runs: list, *, now: float | None = None) -> str:
    """The ``runs list`` table: one row per run, in the given order.

    Args:
        runs: ``RunSummary`` objects (``list_runs`` orders them newest first).
        now: The current time for the UPDATED column (tests pass a fixed one).

    Returns:
        The table as text.
    """
    now = time.time() if now is None else now
    from mvrec_dist.train.runs import checkpoint_position

    rows = [("RUN", "STATUS", "NEWEST CHECKPOINT", "BEST VALID", "TEST", "UPDATED")]
    for r in runs:
        newest = r.newest_checkpoint
        ckpt = f"step {newest['step']} ({checkpoint_position(newest)})" if newest else "-"
        metric = r.select_metric
        best = _fmt_metrics(r.best_valid, [metric]) + (f" @ epoch {r.best_epoch}" if r.best_valid else "")
        rows.append((r.name, r.status, ckpt, best, _fmt_metrics(r.test, [metric]), _age(r.updated, now)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def format_run(r, *, now: float | None = None) -> str:
    """The ``runs show`` report of one run.

    Args:
        r: The run's ``RunSummary``.
        now: The current time, for how long ago it was updated.

    Returns:
        The report as text.
    """
    from mvrec_dist.train.runs import checkpoint_position

    now = time.time() if now is None else now
    lines = [f"run {r.name}  ({r.uri})", f"status: {r.status}" + (f": {r.detail}" if r.detail else ""),
             f"updated: {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(r.updated)) if r.updated else '-'} "
             f"({_age(r.updated, now)})", "checkpoints (newest first):"]
    for c in r.checkpoints or []:
        marks = ["committed" if c["committed"] else "UNFINISHED (no COMMIT.json; skipped on resume)"]
        if r.best_step is not None and c["step"] == r.best_step:
            marks.append("best")
        lines.append(f"  {c['name']}  {checkpoint_position(c)}  {', '.join(marks)}")
    if not r.checkpoints:
        lines.append("  none")
    lines.append(f"best valid (by {r.select_metric}"
                 + (f", epoch {r.best_epoch}" if r.best_epoch is not None else "")
                 + f"): {_fmt_metrics(r.best_valid, r.metric_names)}")
    lines.append(f"test: {_fmt_metrics(r.test, r.metric_names)}")
    if r.history:
        lines.append("validations:")
        lines += [f"  epoch {h['epoch']} step {h['step']}: {_fmt_metrics(h['metrics'], r.metric_names)}"
                  for h in r.history]
    if r.result:
        res = r.result
        lines.append(f"throughput: {res.get('sequences_per_s', 0):,.0f} sequences/s, "
                     f"{res.get('targets_per_s', 0):,.0f} targets/s over {res.get('train_seconds', 0):,.1f} s of "
                     f"training; {res.get('steps')} steps, {res.get('epochs')} epochs")
        if "peak_rss_mib_max" in res:
            gpu = f", peak GPU {res['peak_gpu_mib_max']:,.0f} MiB" if "peak_gpu_mib_max" in res else ""
            lines.append(f"memory: peak RSS {res['peak_rss_mib_max']:,.0f} MiB (largest rank){gpu}")
    for name, ev in sorted(r.evals.items()):
        noun = "items" if "items" in ev else "users"
        lines.append(f"eval {name}: {_fmt_metrics(ev, r.metric_names)} ({ev.get(noun, '?')} {noun})")
    lines.append(f"logs: {r.uri.rstrip('/')}/logs/metrics.jsonl, {r.uri.rstrip('/')}/logs/tensorboard/")
    return "\n".join(lines)


def main_list(argv: Sequence[str] | None = None, *, prog: str = "mvrec runs list") -> int:
    """``mvrec runs list [STORAGE_PATH]``.

    Args:
        argv: Arguments without the program name (default ``sys.argv[1:]``).
        prog: Program name for usage and error lines.

    Returns:
        The exit status (2 when the storage path does not exist).
    """
    parser = _parser(prog, json_help="print JSON (one object per run) instead of a table")
    parser.add_argument("storage_path", nargs="?", default="runs",
                        help="the runs' train.storage_path: local dir or URI (default: runs)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    def run() -> int:
        from mvrec_dist.train.runs import list_runs

        _require_dir(args.storage_path, "storage path", "pass the train.storage_path your runs were written to")
        runs = list_runs(args.storage_path, stale_after=args.stale_after)
        if args.json:
            print(json.dumps([r.to_dict() for r in runs], indent=1))
        elif not runs:
            print(f"no runs under {args.storage_path}")
        else:
            print(format_table(runs))
        return 0

    return guarded(prog, args.debug, run)


def main_show(argv: Sequence[str] | None = None, *, prog: str = "mvrec runs show") -> int:
    """``mvrec runs show RUN``.

    Args:
        argv: Arguments without the program name (default ``sys.argv[1:]``).
        prog: Program name for usage and error lines.

    Returns:
        The exit status (2 when the run does not exist).
    """
    parser = _parser(prog, json_help="print the summary as JSON")
    parser.add_argument("run", help="a run directory, or a run name under --storage-path")
    parser.add_argument("--storage-path", default="runs",
                        help="where to look up a run given by name (default: runs)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    def run() -> int:
        from mvrec_dist.train.runs import summarize_run

        uri = args.run
        if "/" not in uri and not _is_dir(uri):  # a bare name: a run under --storage-path
            uri = f"{args.storage_path.rstrip('/')}/{uri}"
        _require_dir(uri, "run", "pass a run directory or a name that `mvrec runs list` shows")
        summary = summarize_run(uri, stale_after=args.stale_after)
        print(json.dumps(summary.to_dict(), indent=1) if args.json else format_run(summary))
        return 0

    return guarded(prog, args.debug, run)


def _is_dir(uri: str) -> bool:
    import pyarrow.fs as pafs

    from mvrec_dist.data.fs import resolve

    fs, path = resolve(uri)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def _require_dir(uri: str, what: str, hint: str) -> None:
    from mvrec_dist.runtime.paths import PathError

    if not _is_dir(uri):
        raise PathError(f"{what} {uri} does not exist or is not a directory; {hint}")
