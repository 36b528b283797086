"""Quality part (rendered, not measured here): the lead's final MicroLens-50K runs beside the paper and RecBole.

``benchmarks/results/quality.{json,md}`` are written by the lead from ``runs/quality/final-<encoder>-<mode>/``
(the runs take hours). The report embeds ``quality.md`` and draws HR@10 / NDCG@10 by model from
the runs' own ``result.json`` files, beside the paper's MicroLens-100K table and the RecBole SASRec
reference (``benchmarks/reference/microlens_quality.json``, recorded inputs with their sources).
It also reads each run's ``metrics.jsonl`` for the wall time to the first validation at or above
the library's best valid NDCG@10 (issue 3's speed goal: a fifth of the library's 23 minutes).
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.harness.foreign import embed_markdown
from benchmarks.harness.jobs import REPO
from benchmarks.harness.parts import Part, RenderContext
from benchmarks.harness.plots import bar_plot
from benchmarks.harness.report import fmt, table
from benchmarks.harness.schema import median_note

__all__ = ["PART", "final_runs", "time_to_threshold"]

TITLE = "Quality on MicroLens-50K"
REFERENCE = Path(__file__).resolve().parent / "reference" / "microlens_quality.json"
RUNS = REPO / "runs" / "quality"
MODES = {"id": "ID", "v": "V", "idv": "ID+V", "id+v": "ID+V", "video": "V"}


def time_to_threshold(metrics_path: Path, key: str, threshold: float) -> float | None:
    """Seconds from the run's first training step to its first validation with ``key >= threshold``.

    The start is the first train record's time minus its ``train_seconds`` (Ray and model start-up
    excluded); None when no validation reaches the threshold.
    """
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    train = [r for r in rows if r["kind"] == "train"]
    if not train:
        return None
    start = train[0]["time"] - train[0]["train_seconds"]
    hit = next((r for r in rows if r["kind"] == "valid" and r.get(key, -1) >= threshold), None)
    return None if hit is None else hit["time"] - start


def final_runs(runs_dir: Path = RUNS) -> list[dict]:
    """``final-<encoder>-<mode>`` runs with a ``result.json``: encoder, mode, test/valid metrics, times."""
    ref = json.loads(REFERENCE.read_text())
    out = []
    for result in sorted(runs_dir.glob("final-*/result.json")):
        name = result.parent.name
        parts = name.split("-")
        encoder, mode = parts[1], MODES.get(parts[2].lower(), parts[2]) if len(parts) > 2 else "ID"
        r = json.loads(result.read_text())
        metrics = result.parent / "logs" / "metrics.jsonl"
        t = time_to_threshold(metrics, "ndcg@10", ref["library"]["valid"]["ndcg@10"]) if metrics.exists() else None
        out.append({"run": name, "encoder": encoder, "mode": mode, "result": r, "seconds_to_library_valid": t})
    return out


def _model_name(encoder: str) -> str:
    return {"sasrec": "SASRec", "gru4rec": "GRU4Rec", "nextitnet": "NextItNet"}.get(encoder, encoder)


def render(result: dict, rctx: RenderContext) -> str:
    """The lead's quality.md, the runs' figures beside the paper, time to the library's best."""
    ref = json.loads(REFERENCE.read_text())
    md = rctx.results_dir / "quality.md"
    out = [f"Written by the lead from the final runs (`{result.get('command', 'benchmarks/results/quality.json')}`); "
           "the figure and the time-to-quality table below are drawn by the harness from the runs' own files.", ""]
    if md.exists():
        out.append(embed_markdown(md.read_text(), rctx))
    runs = final_runs()
    if runs:
        groups = [f"{_model_name(r['encoder'])} {r['mode']}" for r in runs]
        paper = {(p["model"], p["mode"]): p for p in ref["paper"]["rows"]}
        lib = ref["library"]
        for metric in ("hr@10", "ndcg@10"):
            series = {"this system, MicroLens-50K test": [r["result"].get(f"test/{metric}") for r in runs],
                      "paper, MicroLens-100K": [paper.get((_model_name(r["encoder"]), r["mode"]), {}).get(metric)
                                                for r in runs],
                      "RecBole SASRec, MicroLens-50K test": [lib["test"][metric] if (_model_name(r["encoder"]), r["mode"])
                                                             == (lib["model"], lib["mode"]) else None for r in runs]}
            path = rctx.results_dir / "figures" / f"quality_{metric.replace('@', '')}.png"
            bar_plot(str(path), groups, series, title=f"{metric.upper()} by model", ylabel=metric.upper())
            fig = {"path": f"figures/{path.name}", "title": f"{metric.upper()} by model: this system's test figures "
                   "beside the paper's MicroLens-100K table and the RecBole reference", "unit": "hr" if "hr" in metric
                   else "ndcg", "aggregation": median_note(1),
                   "command": "python benchmarks/run.py --only quality (from runs/quality/final-*/result.json)"}
            out.append(rctx.figure_md(fig))
        budget = lib["train_minutes"] * 60 * ref["targets"]["time_to_valid_fraction_of_library"]
        rows = [[r["run"], fmt(r["result"].get("test/hr@10")), fmt(r["result"].get("test/ndcg@10")),
                 fmt(r["result"].get("seconds_to_best")),
                 fmt(r["seconds_to_library_valid"]) if r["seconds_to_library_valid"] is not None else "not reached",
                 ("met" if r["seconds_to_library_valid"] is not None and r["seconds_to_library_valid"] <= budget
                  else "not met")] for r in runs]
        out += [f"Wall time from the first training step to the first validation with NDCG@10 >= "
                f"{lib['valid']['ndcg@10']} (RecBole's best valid), goal <= {fmt(budget)} s (a fifth of its "
                f"{lib['train_minutes']} minutes); from each run's metrics.jsonl.", "",
                table(["run", "test HR@10", "test NDCG@10", "s to best epoch", "s to valid NDCG@10 >= 0.0529", "goal"],
                      rows)]
    return "\n".join(out)


PART = Part(name="quality", title=TITLE, run=None, render=render,
            owner_command="the lead's final runs (runs/quality/final-<encoder>-<mode>) -> benchmarks/results/quality.{json,md}")
