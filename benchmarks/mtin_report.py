"""MTIN beside SASRec on the real MicroLens-50K, under both metric sets: the report of finished runs.

    python benchmarks/mtin_report.py --runs runs/mtin-report --notes benchmarks/results/mtin_notes.md

Reads the runs of ``jobs/train_videorec.py`` under ``--runs``: ``mtin-2w`` / ``mtin-1w`` (preset
``jobs/configs/microlens-50k/mtin.yaml`` with ``parallel.num_workers`` 2 / 1) and ``sasrec-2w`` /
``sasrec-1w`` (``sasrec-id.yaml`` with ``eval.click_cutoff=50``, so SASRec also reports MTIN's AUC and
Precision/Recall/F1@50 over the same full-ranking list). Each finished run's ``result.json`` holds the
test figures of its best validation epoch (test evaluated once); a run stopped early is reported from
``mvrec eval`` of its best checkpoint, flagged (``text_quality.collect``). Writes
``benchmarks/results/mtin.{json,md}`` and the runs' curves (``figures/mtin_curves.png``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.text_quality import collect  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
FIGURES = RESULTS / "figures"
RUNS = {"MTIN, 2 workers": "mtin-2w", "SASRec, 2 workers": "sasrec-2w",
        "MTIN, 1 worker": "mtin-1w", "SASRec, 1 worker": "sasrec-1w"}
"""Label -> run name. The 1-worker runs are full runs (2026-12-05, one after the other; the load average
beside them is in ``runs/mtin-report/loadavg-1w.log``); the 3-epoch 1-worker runs of 2026-12-04 are kept as
``*-1w-3ep``, not reported."""
RANKING = ("hr@10", "ndcg@10", "hr@20", "ndcg@20")
CLICK = ("auc", "precision@50", "recall@50", "f1@50")


def epoch_throughput(run: Path) -> float | None:
    """Training examples per second over every epoch the run's log records (sum of examples / sum of epoch
    seconds). ``result.json``'s figure divides by the whole run's training time but, in runs from before
    2026-12-05, counted only the last attempt's examples (0 for a run resumed straight into its test)."""
    path = run / "logs" / "metrics.jsonl"
    if not path.exists():
        return None
    epochs = [json.loads(line) for line in path.read_text().splitlines() if '"kind": "epoch"' in line]
    seconds = sum(e["seconds"] for e in epochs)
    return sum(e["sequences_per_s"] * e["seconds"] for e in epochs) / seconds if seconds else None


def _cell(result: dict, key: str, fmt: str = ".4f") -> str:
    value = result.get(key)
    return "-" if value is None else format(value, fmt)


def render(data: dict, notes: str) -> str:
    """The markdown report: both metric sets, then time and throughput, then the curves."""
    models = data["models"]
    lines = ["# MTIN beside SASRec on MicroLens-50K", "",
             "Written by `python benchmarks/mtin_report.py --runs runs/mtin-report` from the runs of "
             "`jobs/train_videorec.py` (presets `jobs/configs/microlens-50k/mtin.yaml` and `sasrec-id.yaml` with "
             "`eval.click_cutoff=50`). Protocol (MicroLens): leave-one-out, every item 1..N ranked, history excluded, "
             "50,000 users; the test split evaluated once, with the weights of the best validation epoch (NDCG@10). "
             "MTIN's metrics are computed over the same full-ranking list: candidates = every item outside the user's "
             "history plus the held-out target (one relevant item), AUC = share of the user's other candidates "
             "scored strictly below the target, P@50 = hit/50, R@50 = hit, F1@50 = 2 hit / 51 "
             "(`mvrec_dist/eval/scored_ranking.py`). Single runs (seed 42), Ray Train on CPU (gloo), TorchRec row-wise "
             "tables, DeepSpeed ZeRO-1.", "",
             "## The MicroLens metric set (test)", "",
             "| model | valid NDCG@10 | " + " | ".join(f"test {m.upper().replace('@', '@')}" for m in RANKING) + " |",
             "|---|---|" + "---|" * len(RANKING)]
    for name, m in models.items():
        r = m["result"]
        flag = " (stopped, see notes)" if r.get("stopped") else ""
        lines.append(f"| {name}{flag} | {_cell(r, 'valid/ndcg@10')} | "
                     + " | ".join(_cell(r, f"test/{k}") for k in RANKING) + " |")
    baseline = next((m["result"] for m in models.values() if "baseline/popularity/test/hr@10" in m["result"]), None)
    if baseline:
        lines.append("| popularity (reference: items by train count) | - | "
                     + " | ".join(_cell(baseline, f"baseline/popularity/test/{k}") for k in RANKING) + " |")
    lines += ["", "## MTIN's metric set (test, over the full-ranking list)", "",
              "| model | " + " | ".join(f"test {k}" for k in CLICK) + " |", "|---|" + "---|" * len(CLICK)]
    for name, m in models.items():
        lines.append(f"| {name} | " + " | ".join(_cell(m["result"], f"test/{k}") for k in CLICK) + " |")
    lines += ["", "## Time and throughput", "",
              "| model | best epoch | epochs run | wall min to best | train examples/s (epoch logs) | one validation s | "
              "peak RSS MiB |",
              "|---|---|---|---|---|---|---|"]
    for name, m in models.items():
        r = m["result"]
        to_best = "-" if r.get("seconds_to_best") is None else f"{r['seconds_to_best'] / 60:.1f}"
        rate = "-" if m.get("examples_per_s") is None else f"{m['examples_per_s']:.0f}"
        lines.append(f"| {name} | {r['best_epoch'] + 1} | {r['epochs']} | {to_best} | {rate} | "
                     f"{_cell(r, 'valid/seconds', '.1f')} | {_cell(r, 'peak_rss_mib_max', '.0f')} |")
    if data["missing"]:
        lines += ["", f"Not run or not finished when this was written: {', '.join(data['missing'])}."]
    lines += ["", "Validation curves (every metric and the training loss per epoch, best epoch starred; "
                  "`mvrec_dist.train.curves`): ![curves](figures/mtin_curves.png)"]
    if notes:
        lines += ["", "## Notes", "", notes.strip()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs/mtin-report", help="directory holding the runs")
    ap.add_argument("--notes", default=None, help="markdown file appended as the report's notes")
    args = ap.parse_args(argv)
    data = collect(Path(args.runs), RUNS, with_buckets=False)  # MTIN's evaluation has no buckets
    for m in data["models"].values():
        m["examples_per_s"] = epoch_throughput(Path(args.runs) / m["run"])
    if not data["models"]:
        raise SystemExit(f"mtin_report: none of the runs {sorted(RUNS.values())} is under {args.runs}")
    FIGURES.mkdir(parents=True, exist_ok=True)
    from mvrec_dist.train.curves import load_curves, plot_curves

    plot_curves([load_curves(str(Path(args.runs) / m["run"])) for m in data["models"].values()],
                str(FIGURES / "mtin_curves.png"), title="MTIN vs SASRec, MicroLens-50K")
    notes = Path(args.notes).read_text() if args.notes else ""
    (RESULTS / "mtin.json").write_text(json.dumps(data, indent=1) + "\n")
    (RESULTS / "mtin.md").write_text(render(data, notes))
    print(render(data, notes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
