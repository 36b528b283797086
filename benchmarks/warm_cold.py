"""The MicroLens paper's Figure 6: content-based vs ID-based HR@10 per popularity bucket of the target.

Each finished training run records its test split per popularity bucket of the target item
(``eval.popularity_buckets``, ``mvrec_dist.eval.buckets``): ``test/buckets`` in ``<run>/result.json``
(also the ``buckets`` of the ``test`` record in ``<run>/logs/metrics.jsonl``, and of ``mvrec eval``'s
``<run>/evals/<checkpoint>-test.json``). This draws, per bucket, the ratio of a content run's metric to
an ID run's (above 1: content helps), with each bucket's test users under its label:

    python benchmarks/warm_cold.py runs/sasrec-video-idv runs/sasrec-id --out fig6.png
    python benchmarks/warm_cold.py A/result.json B/evals/checkpoint-step000001200-test.json --metric ndcg@10

A run is a run directory (``result.json``, else the last test record of ``logs/metrics.jsonl``) or a
JSON file holding ``test/buckets`` or ``buckets``. Both must use the same bucket edges. Prints the
table as markdown too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

__all__ = ["load_buckets", "bucket_ratios", "plot_bucket_ratio", "markdown_table", "main"]


def _read_json(uri: str) -> dict | None:
    from mvrec_dist.train.runs import read_json

    return read_json(uri)


def _last_test_record(jsonl_uri: str) -> dict | None:
    from mvrec_dist.data.fs import open_input_file

    try:
        with open_input_file(jsonl_uri) as f:
            lines = f.read().decode("utf-8").splitlines()
    except (FileNotFoundError, OSError):
        return None
    records = [json.loads(line) for line in lines if line.strip()]
    tests = [r for r in records if r.get("kind") == "test" and "buckets" in r]
    return tests[-1] if tests else None


def load_buckets(run: str) -> list[dict[str, Any]]:
    """The test split's per-bucket figures of a run directory or a result / eval JSON file.

    Args:
        run: A run directory (local or URI) or a JSON file.

    Returns:
        ``buckets.bucket_results`` rows (``bucket``, ``lo``, ``hi``, ``users``, ``hr@k``, ``ndcg@k``).

    Raises:
        ValueError: when nothing there holds bucket figures (a run from before they existed, or with
            ``eval.popularity_buckets=[]``, or not finished).
    """
    if run.endswith(".json"):
        data = _read_json(run) or {}
        found = data.get("test/buckets", data.get("buckets"))
    else:
        root = run.rstrip("/")
        found = (_read_json(f"{root}/result.json") or {}).get("test/buckets")
        if found is None:
            found = (_last_test_record(f"{root}/logs/metrics.jsonl") or {}).get("buckets")
    if not found:
        raise ValueError(f"{run}: no per-bucket test figures (result.json 'test/buckets', the test record of "
                         "logs/metrics.jsonl, or an eval JSON's 'buckets'); was the run tested with "
                         "eval.popularity_buckets set?")
    return found


def bucket_ratios(content: Sequence[dict], ids: Sequence[dict], metric: str = "hr@10") -> list[dict[str, Any]]:
    """Per bucket, ``content[metric] / ids[metric]``.

    Args:
        content: The content run's buckets (``load_buckets``).
        ids: The ID run's buckets, with the same edges.
        metric: ``hr@10``, ``ndcg@20``, ...

    Returns:
        One dict per bucket: ``bucket``, ``users`` (of the content run; the test split is the same),
        ``content``, ``id`` and ``ratio`` (None where a bucket is empty or the ID run's metric is 0).

    Raises:
        ValueError: when the runs' buckets differ or ``metric`` is not recorded.
    """
    if [b["bucket"] for b in content] != [b["bucket"] for b in ids]:
        raise ValueError(f"the runs have different buckets: {[b['bucket'] for b in content]} vs "
                         f"{[b['bucket'] for b in ids]}")
    if content and metric not in content[0]:
        raise ValueError(f"metric {metric!r} is not recorded (have {sorted(k for k in content[0] if '@' in k)})")
    out = []
    for c, i in zip(content, ids):
        cv, iv = c.get(metric), i.get(metric)
        ratio = cv / iv if cv is not None and iv else None
        out.append({"bucket": c["bucket"], "users": c["users"], "content": cv, "id": iv, "ratio": ratio})
    return out


def plot_bucket_ratio(path: str, rows: Sequence[dict], *, metric: str = "hr@10", title: str | None = None) -> None:
    """Bars of ``rows``' ratios (``bucket_ratios``) with a dashed line at 1, users under each label; writes a PNG."""
    from benchmarks.harness import plots  # sets the headless backend

    plt = plots.plt
    fig, ax = plt.subplots(figsize=(max(6.4, 0.8 * len(rows) + 2), 4.0))
    xs = list(range(len(rows)))
    values = [r["ratio"] if r["ratio"] is not None else 0.0 for r in rows]
    bars = ax.bar(xs, values, 0.6, color=["#4c72b0" if r["ratio"] is not None else "#cccccc" for r in rows])
    for bar, r in zip(bars, rows):
        text = f"{r['ratio']:.2f}" if r["ratio"] is not None else "n/a"
        ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8)
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{r['bucket']}\n{r['users']:,} users" for r in rows], fontsize=8)
    ax.set_xlabel("train interactions of the test target item")
    ax.set_ylabel(f"{metric}: content / ID")
    ax.set_title(title or f"Content vs ID {metric} by target popularity")
    ax.grid(True, axis="y", alpha=0.3)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown_table(rows: Sequence[dict], metric: str = "hr@10") -> str:
    """The ratios as a markdown table."""
    def f(v):
        return "-" if v is None else f"{v:.4f}"

    lines = [f"| bucket | users | content {metric} | ID {metric} | ratio |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['bucket']} | {r['users']:,} | {f(r['content'])} | {f(r['id'])} | "
              f"{'-' if r['ratio'] is None else format(r['ratio'], '.2f')} |" for r in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python benchmarks/warm_cold.py CONTENT_RUN ID_RUN [--out PNG] [--metric hr@10] [--title ...]``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("content_run", help="the content-based run (directory or JSON file)")
    parser.add_argument("id_run", help="the ID-based run (directory or JSON file)")
    parser.add_argument("--out", default="warm_cold.png", help="PNG to write (default warm_cold.png)")
    parser.add_argument("--metric", default="hr@10", help="metric to compare (default hr@10, the paper's)")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    try:
        rows = bucket_ratios(load_buckets(args.content_run), load_buckets(args.id_run), args.metric)
    except ValueError as exc:
        print(f"warm_cold.py: {exc}", file=sys.stderr)
        return 2
    plot_bucket_ratio(args.out, rows, metric=args.metric, title=args.title)
    print(markdown_table(rows, args.metric))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    raise SystemExit(main())
