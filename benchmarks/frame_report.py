"""FRAME beside SASRec on MicroLens-50K and on the synthetic play-ratio demo (1 and 2 workers), both metric sets.

    flock /tmp/mvrec_heavy.lock .venv/bin/python benchmarks/frame_report.py --runs runs/frame-report   # ~1.5 h
    .venv/bin/python benchmarks/frame_report.py --runs runs/frame-report --render-only

Trains what ``--runs`` lacks with ``jobs/train_videorec.py`` (one job at a time, embedded Ray on this
machine): on ``data/shards/demo-plays`` (``jobs/configs/synthetic/ingest-plays-small.yaml``: synthetic plays
whose clip-level structure FRAME's negative graph can see) FRAME (``synthetic/frame-small.yaml``) and SASRec
(``synthetic/sasrec-id-small.yaml`` on the same shards) at 2 and 1 workers (~6 min); on MicroLens-50K FRAME
(``microlens-50k/frame.yaml``, the clip table from cached clip features: its prerequisites must have run) and
SASRec (``microlens-50k/sasrec-id.yaml`` with ``eval.candidate_negatives=20``: FRAME's metrics on the same
candidates) at 2 workers (~1.3 h together). Each run's ``result.json`` holds the test figures of its best
validation epoch (test evaluated once). Writes ``benchmarks/results/frame.{json,md}``, with ``frame_notes.md``
appended.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DEMO = "data/shards/demo-plays"
RUNS = {
    "FRAME, synthetic plays, 2 workers": ("synthetic/frame-small.yaml", "frame-demo-2w", ["parallel.num_workers=2"]),
    "FRAME, synthetic plays, 1 worker": ("synthetic/frame-small.yaml", "frame-demo-1w", ["parallel.num_workers=1"]),
    "SASRec, synthetic plays, 2 workers": ("synthetic/sasrec-id-small.yaml", "sasrec-demo-2w",
                                           [f"data.dataset_dir={DEMO}", "data.prepare_with=jobs/configs/synthetic/"
                                            "ingest-plays-small.yaml", "parallel.num_workers=2"]),
    "SASRec, synthetic plays, 1 worker": ("synthetic/sasrec-id-small.yaml", "sasrec-demo-1w",
                                          [f"data.dataset_dir={DEMO}", "data.prepare_with=jobs/configs/synthetic/"
                                           "ingest-plays-small.yaml", "parallel.num_workers=1"]),
    "FRAME, MicroLens-50K, 2 workers": ("microlens-50k/frame.yaml", "frame-ml50k-2w", []),
    "SASRec, MicroLens-50K, 2 workers": ("microlens-50k/sasrec-id.yaml", "sasrec-ml50k-2w",
                                         ["eval.candidate_negatives=20"]),
    # Throughput at 1 worker on MicroLens-50K: 300 steps, no test (a full FRAME run at 1 worker is ~2x the time).
    "FRAME, MicroLens-50K, 1 worker (300 steps, speed only)": (
        "microlens-50k/frame.yaml", "frame-ml50k-1w-speed",
        ["parallel.num_workers=1", "train.max_steps=300", "train.test_after_training=false"]),
    "SASRec, MicroLens-50K, 1 worker (300 steps, speed only)": (
        "microlens-50k/sasrec-id.yaml", "sasrec-ml50k-1w-speed",
        ["parallel.num_workers=1", "train.max_steps=300", "train.test_after_training=false"]),
}
RANKING = ("hr@10", "ndcg@10", "hr@20", "ndcg@20")
FRAME_METRICS = ("frame/auc", "frame/user_auc", "frame/logloss", "frame/recall@3", "frame/ndcg@3", "frame/recall@5",
                 "frame/ndcg@5", "frame/dcg@5")


def _train(preset: str, name: str, extra: list[str], runs: Path) -> dict:
    argv = [sys.executable, "jobs/train_videorec.py", "--config", f"jobs/configs/{preset}",
            f"train.storage_path={runs}", f"train.run_name={name}", "ray.dashboard=false", *extra]
    started, load = time.time(), os.getloadavg()[0]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed: {(proc.stdout + proc.stderr)[-2000:]}")
    return {"wall_s": time.time() - started, "load_start": load, "command": " ".join(argv[1:])}


def collect(runs: Path) -> dict:
    """Every run's test figures, time to its best epoch and training throughput (training what is missing)."""
    out = {}
    for label, (preset, name, extra) in RUNS.items():
        run = runs / name
        meta_path = run / "bench.json"
        if not (run / "result.json").exists():
            meta_path.parent.mkdir(parents=True, exist_ok=True)
            meta = _train(preset, name, extra, runs)
            meta_path.write_text(json.dumps(meta))
        result = json.loads((run / "result.json").read_text())
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        out[label] = {"run": name, "preset": preset, "overrides": extra, **meta,
                      "test": {k: result.get(f"test/{k}") for k in RANKING + FRAME_METRICS},
                      "best_epoch": result.get("best_epoch"), "epochs": result.get("epochs"),
                      "seconds_to_best": result.get("seconds_to_best"),
                      "train_seconds": result.get("train_seconds"),
                      "examples_per_s": result.get("sequences_per_s")}
    return {"date": time.strftime("%Y-%m-%d"), "runs": out}


def _c(v, fmt=".4f") -> str:
    return "-" if v is None else format(v, fmt)


def render(data: dict) -> str:
    """The markdown report."""
    runs = data["runs"]
    lines = ["# FRAME beside SASRec", "",
             f"Written by `python benchmarks/frame_report.py --runs runs/frame-report` ({data['date']}). Protocol "
             "(MicroLens): leave-one-out, full ranking over every video, history excluded; test figures of the best "
             "validation epoch (by NDCG@10), test evaluated once. FRAME's own metrics are over each test user's "
             "target (label 1) and 20 videos the user never played (label 0); with one positive per user "
             "NDCG@K equals FRAME's un-normalised DCG@K (IDCG = 1), which differs once a user has several "
             "positives. FRAME's log loss is of sigmoid(video score), the score being the sum of 4 clip logits "
             "(uncalibrated: on MicroLens every clip label is 1). SASRec is scored on the same candidates (the same "
             "keyed draws, `eval.candidate_negatives=20`) by its dot product; its log loss is of sigmoid(dot "
             "product), a softmax model's score, so only its rank metrics compare.", "",
             "| run | " + " | ".join(RANKING) + " | " + " | ".join(FRAME_METRICS) + " | best epoch | s to best | "
             "examples/s |", "|---" * (len(RANKING) + len(FRAME_METRICS) + 4) + "|"]
    for label, r in runs.items():
        t = r["test"]
        lines.append(f"| {label} | " + " | ".join(_c(t.get(k)) for k in RANKING) + " | "
                     + " | ".join(_c(t.get(k)) for k in FRAME_METRICS) + f" | {r.get('best_epoch', '-')} | "
                     f"{_c(r.get('seconds_to_best'), '.1f')} | {_c(r.get('examples_per_s'), ',.0f')} |")
    lines += ["", "Examples/s: FRAME's plays (every play of a user but the first), SASRec's sequences (windows); "
              "not the same unit. Runs one after the other on the 2-core machine; the load average at each start "
              "is in the json.", ""]
    notes = RESULTS / "frame_notes.md"
    if notes.exists():
        lines += [notes.read_text().strip(), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="runs/frame-report")
    p.add_argument("--render-only", action="store_true")
    a = p.parse_args(argv)
    if a.render_only:
        data = json.loads((RESULTS / "frame.json").read_text())
    else:
        data = collect((REPO / a.runs).resolve())
        (RESULTS / "frame.json").write_text(json.dumps(data, indent=1) + "\n")
    (RESULTS / "frame.md").write_text(render(data))
    print(render(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
