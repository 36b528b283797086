"""MMRA on the real MicroLens-50K: the report of finished runs, beside its three baselines.

    python benchmarks/mmra_report.py --runs runs/mmra-report --notes benchmarks/results/mmra_notes.md

Reads the runs of ``jobs/train_popularity.py`` under ``--runs``: ``mmra-2w`` (preset
``jobs/configs/microlens-50k/mmra.yaml``), ``mmra-noretrieval-2w`` (the same with
``task.use_retrieval=false``: MMRA without retrieval) and ``mmra-1w`` (``parallel.num_workers=1``: the
1-worker throughput). Each finished run's ``result.json`` holds the test figures of its best validation
epoch (the test split evaluated once) and the two reference predictors scored on the same test items
(``baseline/train_mean``, ``baseline/retrieval``). The retriever's throughput comes from the neighbour
store's manifest. Writes ``benchmarks/results/mmra.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.mtin_report import _cell, epoch_throughput  # noqa: E402
from benchmarks.text_quality import collect  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
RUNS = {"MMRA, 2 workers": "mmra-2w", "MMRA without retrieval, 2 workers": "mmra-noretrieval-2w",
        "MMRA, 1 worker (2 epochs: throughput)": "mmra-1w",
        "MMRA, decoded-frame features (3 real videos, zeros elsewhere), 2 workers": "mmra-frames",
        "MMRA, decoded-frame features, 1 epoch, 1 worker (quiet machine: throughput)": "mmra-frames-1w",
        "MMRA, decoded-frame features, 1 epoch, 2 workers (quiet machine: throughput)": "mmra-frames-2w"}
WHOLE = ("nmse", "src", "mae")
BATCHED = ("nmse_b", "src_b", "mae_b")


def render(data: dict, notes: str) -> str:
    """The markdown report: the test metrics whole-set and per batch, then time and throughput."""
    models = data["models"]
    lines = ["# MMRA on MicroLens-50K: retrieval-augmented popularity prediction", "",
             "Written by `python benchmarks/mmra_report.py --runs runs/mmra-report` from the runs of "
             "`jobs/train_popularity.py` (preset `jobs/configs/microlens-50k/mmra.yaml`). Label: log2 of the item's "
             "interaction (comment) count in the ingested MicroLens-50K; split 80/10/10 of the items, seed 0, saved "
             "with the dataset; the test split evaluated once, with the weights of the best validation epoch "
             "(MAE + nMSE, lower is better). Titles: real (all-MiniLM-L6-v2 sentence vectors, frozen). "
             "**Frames**: only 3 of the 19,220 videos exist here. The `mmra` runs give every item the same constant frame "
             "vectors, so the visual stream carries nothing (per-item noise frames were memorised: notes); the "
             "`mmra-frames` runs read per-frame features of decoded frames (a frozen, random-weight frame CNN, "
             "`jobs/configs/microlens-50k/mmra-frames.yaml`) for the 3 real videos and zero frames for the other "
             "19,217 items. Retrieval: each item's 10 most title-similar train/valid items.",
             "", "## Test metrics", "",
             "nMSE, SRC, MAE over the whole test split; `_b`: MMRA's `test.py` averaging (mean over batches of 256 in "
             "item-id order; `eval/regression.py` says how it differs).", "",
             "| predictor | " + " | ".join(WHOLE + BATCHED) + " |", "|---|" + "---|" * (len(WHOLE) + len(BATCHED))]
    for name, m in models.items():
        r = m["result"]
        lines.append(f"| {name} | " + " | ".join(_cell(r, f"test/{k}") for k in WHOLE + BATCHED) + " |")
    ref = next((m["result"] for m in models.values() if "baseline/retrieval/test/nmse" in m["result"]), None)
    if ref:
        for base, label in (("train_mean", "train mean (every item: the train labels' mean)"),
                            ("retrieval", "retrieval only (softmax-of-similarity weighted neighbour labels)")):
            lines.append(f"| {label} | " + " | ".join(_cell(ref, f"baseline/{base}/test/{k}")
                                                      for k in WHOLE + BATCHED) + " |")
    lines += ["", "## Time and throughput", "",
              "| run | best epoch | epochs run | wall min to best | train items/s (epoch logs) | one validation s |",
              "|---|---|---|---|---|---|"]
    for name, m in models.items():
        r = m["result"]
        to_best = "-" if r.get("seconds_to_best") is None else f"{r['seconds_to_best'] / 60:.1f}"
        rate = "-" if m.get("items_per_s") is None else f"{m['items_per_s']:.0f}"
        lines.append(f"| {name} | {r['best_epoch'] + 1} | {r['epochs']} | {to_best} | {rate} | "
                     f"{_cell(r, 'valid/seconds', '.1f')} |")
    retr = data.get("retriever")
    if retr:
        lines += ["", f"Retriever (`jobs/build_neighbours.py`, {retr['backend']}): {retr['items']:,} items in "
                      f"{retr['seconds']:.1f} s of queries, {retr['items_per_s']:,.0f} items/s."]
    if data["missing"]:
        lines += ["", f"Not run or not finished when this was written: {', '.join(data['missing'])}."]
    if notes:
        lines += ["", "## Notes", "", notes.strip()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs/mmra-report", help="directory holding the runs")
    ap.add_argument("--neighbours", default="data/neighbours/microlens-50k-mmra", help="the runs' neighbour store")
    ap.add_argument("--notes", default=None, help="markdown file appended as the report's notes")
    args = ap.parse_args(argv)
    data = collect(Path(args.runs), RUNS, with_buckets=False)
    for m in data["models"].values():
        m["items_per_s"] = epoch_throughput(Path(args.runs) / m["run"])
    if not data["models"]:
        raise SystemExit(f"mmra_report: none of the runs {sorted(RUNS.values())} is under {args.runs}")
    manifest = Path(args.neighbours) / "manifest.json"
    if manifest.exists():
        nb = json.loads(manifest.read_text())
        items, seconds = nb["counts"]["queries"], nb["seconds"]["queries"] + nb["seconds"]["build"]
        data["retriever"] = {"backend": nb["identity"]["backend"]["name"], "items": items, "seconds": seconds,
                             "items_per_s": items / seconds}
    notes = Path(args.notes).read_text() if args.notes else ""
    (RESULTS / "mmra.json").write_text(json.dumps(data, indent=1) + "\n")
    (RESULTS / "mmra.md").write_text(render(data, notes))
    print(render(data, notes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
