"""The CPU-sized quality runs of ``bench_video.py --quality``: MicroLens-50K, ID vs ID+V vs V.

Content: the three real MicroLens videos plus seeded noise frames for the other 19,217 items
(``video.synthetic_missing``), 2 frames of 32x32. Noise frames carry no information about the
videos, so these runs show that the content path trains end to end at MicroLens-50K scale and
what it costs; they are not the paper's VideoRec numbers (that needs the real videos, see
docs/VIDEOREC.md). Every run uses the same user encoder, loss (MicroLens' in-batch softmax with
logQ correction), batch and schedule, so ID vs ID+V vs V differ only in the item tower.

Runs go through the real jobs (``jobs/ingest_microlens.py``, ``jobs/cache_trunk_features.py``,
``jobs/train_videorec.py``) on the embedded local Ray cluster, one after the other.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / "work" / "video-quality"
INGEST = "jobs/configs/microlens-50k/ingest-video.yaml"
DATASET = "data/shards/microlens-50k-video"

__all__ = ["QUALITY_RUNS", "run_quality", "render_quality"]

QUALITY_RUNS = [
    {"name": "ID (same loss)", "config": "jobs/configs/microlens-50k/sasrec-video-idv.yaml",
     "overrides": ["model.item_tower=id", "model.content_encoder=null"]},
    {"name": "ID+V (frame CNN, full fine-tuning)", "config": "jobs/configs/microlens-50k/sasrec-video-idv.yaml",
     "overrides": []},
    {"name": "V (frame CNN, full fine-tuning)", "config": "jobs/configs/microlens-50k/sasrec-video-v.yaml",
     "overrides": []},
    {"name": "ID+V (frame CNN frozen, cached trunk)", "config": "jobs/configs/microlens-50k/sasrec-video-frozen-cached.yaml",
     "overrides": []},
]


def _run(cmd: list[str]) -> tuple[float, str]:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, *cmd], cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t, proc.stdout


def run_quality(runs: list[dict], save: Callable[[dict], None] | None = None,
                selected: list[int] | None = None, deadline: float | None = None) -> dict:
    """Ingest (once), then train each run; returns the ``quality`` section of ``video.json``.

    A failing ingest or run is recorded (its error text) rather than raised, and ``save`` gets the section
    after every step, so a long sequence interrupted part-way keeps what it measured. ``selected``: indices
    into ``runs`` to train (the others are listed as not run). ``deadline`` (``time.time()``): a run is
    started only if the previous one's wall time still fits before it (runs are not killed part-way).
    """
    selected = list(range(len(runs))) if selected is None else selected
    out: dict = {"dataset": DATASET, "ingest_preset": INGEST, "runs": [],
                 "not_run": [runs[i]["name"] for i in range(len(runs)) if i not in selected],
                 "load_average_start": list(os.getloadavg())}
    save = save or (lambda _: None)
    if not (REPO / DATASET / "manifest.json").exists():
        try:
            seconds, _ = _run(["jobs/ingest_microlens.py", "--config", INGEST])
        except RuntimeError as exc:
            out["ingest_error"] = str(exc)
            out["not_run"] = [r["name"] for r in runs]
            save(out)
            print(f"ingest failed: {exc}", flush=True)
            return out
        out["ingest_seconds"] = seconds
    manifest = json.loads((REPO / DATASET / "manifest.json").read_text())
    out["content_counts"] = manifest["content"]["counts"]
    save(out)
    last = 0.0
    for i in selected:
        run = runs[i]
        if deadline is not None and time.time() + last > deadline:
            out["not_run"].append(run["name"])
            print(f"{run['name']}: not started (deadline)", flush=True)
            continue
        name = f"video-quality-{i}"
        overrides = [*run["overrides"], f"train.run_name={name}", f"train.storage_path={WORK}", "train.resume=never",
                     "ray.dashboard=false"]
        row = {"name": run["name"], "config": run["config"], "overrides": run["overrides"]}
        try:
            seconds, _ = _run(["jobs/train_videorec.py", "--config", run["config"], *overrides])
            result = json.loads((WORK / name / "result.json").read_text())
            row.update(wall_seconds=seconds, result=result)
            last = seconds
            print(f"{run['name']}: test ndcg@10 {result.get('test/ndcg@10')} in {seconds:.0f}s", flush=True)
        except (RuntimeError, OSError, ValueError) as exc:
            row["error"] = str(exc)
            print(f"{run['name']} failed: {exc}", flush=True)
        out["runs"].append(row)
        out["load_average_end"] = list(os.getloadavg())
        save(out)
    return out


def render_quality(q: dict) -> str:
    """The quality section of ``video.md``."""
    c = q.get("content_counts", {})
    lines = ["## Quality on MicroLens-50K (CPU-sized; synthetic frames for most items)", "",
             f"Content: {c.get('decoded', '?')} items with real decoded video (the three files in ../shared), "
             f"{c.get('synthetic', '?')} with seeded noise frames, {c.get('id_only', '?')} ID-only; 2 frames of 32x32. "
             "Noise frames carry no information about any video: these runs show the content path training end "
             "to end at this scale and what it costs, not the paper's VideoRec result (that needs the real "
             "videos; docs/VIDEOREC.md). All runs: SASRec, in-batch softmax with logQ correction, the same batch, "
             "schedule and early stopping; 2 CPU workers, ZeRO-2.", "",
             "| item tower | test HR@10 | test NDCG@10 | test HR@20 | test NDCG@20 | best epoch | train s | "
             "sequences/s | wall s |", "|---|---|---|---|---|---|---|---|---|"]
    if "ingest_error" in q:
        lines += ["", "The ingest failed, so no run was trained:", "", "```", q["ingest_error"].strip()[-2000:], "```"]
    for r in q["runs"]:
        if "error" in r:
            lines.append(f"| {r['name']} | failed (below) | | | | | | | |")
            continue
        m = r["result"]
        lines.append(f"| {r['name']} | {m.get('test/hr@10', float('nan')):.4f} | {m.get('test/ndcg@10', float('nan')):.4f} | "
                     f"{m.get('test/hr@20', float('nan')):.4f} | {m.get('test/ndcg@20', float('nan')):.4f} | "
                     f"{m.get('best_epoch')} | {m.get('train_seconds', 0):.0f} | {m.get('sequences_per_s', 0):.0f} | "
                     f"{r['wall_seconds']:.0f} |")
    for r in q["runs"]:
        if "error" in r:
            lines += ["", f"{r['name']} failed:", "", "```", r["error"].strip()[-2000:], "```"]
    if q.get("not_run") and "ingest_error" not in q:
        lines += ["", "Not run (time): " + "; ".join(q["not_run"]) + "."]
    la = [q.get("load_average_start"), q.get("load_average_end")]
    if all(la):
        lines += ["", "Load average (1/5/15 min) at start " + "/".join(f"{x:.1f}" for x in la[0]) + ", at end "
                  + "/".join(f"{x:.1f}" for x in la[1]) + " (shared 2-core machine)."]
    return "\n".join(lines)
