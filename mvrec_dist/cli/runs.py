"""``mvrec runs list`` / ``show`` / ``compare``: training runs under a storage path and how they are doing.

A run's status: finished (it wrote result.json), in progress (its driver is alive: status.json is
refreshed every minute, or checkpoints/metrics change), or failed (the driver recorded the error,
or nothing changed for --stale-after seconds; resubmitting the same command resumes it).
Storage paths may be local, a shared filesystem, or s3:// / gs:// URIs.

Curves: `runs show RUN --plot` and `runs compare RUN RUN ...` draw the training loss and every
validation metric per epoch (from logs/metrics.jsonl), a star on each run's best epoch, into a PNG
(--output). A finished run has the same figure of itself in RUN/curves.png. Epochs count from 0.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Sequence

from mvrec_dist.cli.errors import CommandParser, guarded

__all__ = ["main_list", "main_show", "main_compare", "format_table", "format_run", "format_comparison"]


def _parser(prog: str, *, json_help: str) -> CommandParser:
    """The options ``runs list`` and ``runs show`` share."""
    parser = CommandParser(prog=prog, description=__doc__)
    parser.add_argument("--stale-after", type=float, default=600.0, metavar="SECONDS",
                        help="seconds without any change after which a run without result.json counts as failed "
                             "(default: 600; a running driver refreshes status.json every 60 s)")
    parser.add_argument("--json", action="store_true", help=json_help)
    return parser


def _fmt_metrics(metrics: dict | None, keys: Sequence[str] | None = None) -> str:
    if not metrics:
        return "-"
    from mvrec_dist.train.runs import metric_keys

    # The task's metrics in its display order (hr@10 ndcg@10 hr@20 ndcg@20 for next-item); when the
    # run's config could not be read, every numeric entry that is not a count or a time.
    keys = keys or metric_keys(metrics)
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


def format_comparison(runs: list) -> str:
    """The ``runs compare`` table: one column per run, one row per figure.

    Args:
        runs: ``RunCurves`` objects (``train.curves.load_curves``), in the order given.

    Returns:
        The table as text: status, epochs, best epoch, time to best, sequences/s, then the validation
        metrics of the best epoch and the test metrics of its weights (``-`` where a run has none).
    """
    from mvrec_dist.train.runs import format_duration

    metrics: list[str] = []
    for r in runs:
        metrics += [m for m in r.metric_names if m not in metrics]

    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    rows = [("run", [r.name for r in runs]), ("status", [r.status for r in runs]),
            ("epochs", [str(r.epochs) for r in runs]),
            ("best epoch", ["-" if r.best_epoch is None else str(r.best_epoch) for r in runs]),
            ("time to best", ["-" if r.seconds_to_best is None else format_duration(r.seconds_to_best) for r in runs]),
            ("sequences/s", [num(r.sequences_per_s, ",.0f") for r in runs])]
    rows += [(f"valid {m}", [num(r.valid_at_best.get(m), ".4f") for r in runs]) for m in metrics]
    rows += [(f"test {m}", [num((r.test or {}).get(m), ".4f") for r in runs]) for m in metrics]
    # A stopped run has test figures only when `mvrec eval` scored its best checkpoint; say which.
    rows.append(("test from", ["-" if r.test_source is None else "result.json" if r.test_source == "result.json"
                               else "mvrec eval" for r in runs]))
    label_width = max(len(label) for label, _ in rows)
    widths = [max(len(cells[i]) for _, cells in rows) for i in range(len(runs))]
    return "\n".join("  ".join([label.ljust(label_width), *(c.ljust(w) for c, w in zip(cells, widths))]).rstrip()
                     for label, cells in rows)


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
    _storage_option(parser)
    parser.add_argument("--plot", action="store_true",
                        help="also draw the run's training loss and validation metrics per epoch into a PNG")
    parser.add_argument("--output", metavar="PATH",
                        help="where --plot writes the PNG: local path or URI (default: <run name>-curves.png here)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    def run() -> int:
        from mvrec_dist.train.runs import summarize_run

        uri = _run_uri(args.run, args.storage_path)
        summary = summarize_run(uri, stale_after=args.stale_after)
        print(json.dumps(summary.to_dict(), indent=1) if args.json else format_run(summary))
        if args.plot:
            from mvrec_dist.train.curves import load_curves

            curves = load_curves(uri, stale_after=args.stale_after)
            _plot([curves], args.output or f"{summary.name}-curves.png", to_stderr=args.json)
        return 0

    return guarded(prog, args.debug, run)


def main_compare(argv: Sequence[str] | None = None, *, prog: str = "mvrec runs compare") -> int:
    """``mvrec runs compare RUN RUN ...``: a table of the runs' figures and their curves in one PNG.

    Args:
        argv: Arguments without the program name (default ``sys.argv[1:]``).
        prog: Program name for usage and error lines.

    Returns:
        The exit status (2 when a run does not exist).
    """
    parser = _parser(prog, json_help="print each run's figures and per-epoch curves as JSON instead of a table")
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run directories, or run names under --storage-path")
    _storage_option(parser)
    parser.add_argument("--output", default="runs-compare.png", metavar="PATH",
                        help="where the figure goes: local path or URI (default: runs-compare.png)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    def run() -> int:
        from mvrec_dist.train.curves import load_curves

        uris = [_run_uri(r, args.storage_path) for r in args.runs]  # every name checked before any is read
        runs = [load_curves(uri, stale_after=args.stale_after) for uri in uris]
        print(json.dumps([r.to_dict() for r in runs], indent=1) if args.json else format_comparison(runs))
        _plot(runs, args.output, to_stderr=args.json)
        return 0

    return guarded(prog, args.debug, run)


def _storage_option(parser: CommandParser) -> None:
    parser.add_argument("--storage-path", default="runs",
                        help="where to look up a run given by name (default: runs)")


def _run_uri(run: str, storage_path: str) -> str:
    """The directory of a run given as a path or as a bare name under ``storage_path``; must exist."""
    uri = run
    if "/" not in uri and not _is_dir(uri):  # a bare name: a run under --storage-path
        uri = f"{storage_path.rstrip('/')}/{uri}"
    _require_dir(uri, "run", "pass a run directory or a name that `mvrec runs list` shows")
    return uri


def _plot(runs: list, output: str, *, to_stderr: bool) -> None:
    from mvrec_dist.train.curves import plot_curves

    panels = plot_curves(runs, output)
    drawn = [title for title, series in panels.items() if any(s.epochs for s in series)]
    what = ", ".join(drawn) if drawn else "nothing yet: no epoch has finished"
    # With --json stdout holds JSON only.
    print(f"curves: {output} ({what})", file=sys.stderr if to_stderr else sys.stdout)


def _is_dir(uri: str) -> bool:
    import pyarrow.fs as pafs

    from mvrec_dist.data.fs import resolve

    fs, path = resolve(uri)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def _require_dir(uri: str, what: str, hint: str) -> None:
    from mvrec_dist.runtime.paths import PathError

    if not _is_dir(uri):
        raise PathError(f"{what} {uri} does not exist or is not a directory; {hint}")
