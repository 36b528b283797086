"""Quality part (rendered, not measured here): the lead's final MicroLens-50K runs beside the paper and RecBole.

``benchmarks/results/quality.{json,md}`` are written by ``benchmarks/quality_report.py`` from
``runs/quality/final-<encoder>-<mode>/`` (the runs take hours). The report embeds ``quality.md``
(test and valid metrics, wall time to the best epoch and to RecBole's best valid NDCG@10) and
draws HR@10 / NDCG@10 by model from the same runs, beside the paper's MicroLens-100K table and the
RecBole SASRec reference (``benchmarks/reference/microlens_quality.json``, recorded inputs with
their sources).
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.harness.foreign import embed_markdown
from benchmarks.harness.jobs import REPO
from benchmarks.harness.parts import Part, RenderContext
from benchmarks.harness.plots import bar_plot
from benchmarks.harness.schema import median_note

__all__ = ["PART", "final_runs"]

TITLE = "Quality on MicroLens-50K"
REFERENCE = Path(__file__).resolve().parent / "reference" / "microlens_quality.json"
RUNS = REPO / "runs" / "quality"
MODES = {"id": "ID", "v": "V", "idv": "ID+V", "id+v": "ID+V", "video": "V"}


def final_runs(runs_dir: Path = RUNS) -> list[dict]:
    """``final-<encoder>-<mode>`` runs with a ``result.json``: encoder, mode and final metrics."""
    out = []
    for result in sorted(runs_dir.glob("final-*/result.json")):
        name = result.parent.name
        parts = name.split("-")
        encoder, mode = parts[1], MODES.get(parts[2].lower(), parts[2]) if len(parts) > 2 else "ID"
        out.append({"run": name, "encoder": encoder, "mode": mode, "result": json.loads(result.read_text())})
    return out


def _model_name(encoder: str) -> str:
    return {"sasrec": "SASRec", "gru4rec": "GRU4Rec", "nextitnet": "NextItNet"}.get(encoder, encoder)


def _rows(result: dict) -> list[dict]:
    """``{run, encoder, mode, result}`` per final run: from quality.json, else from the run directories."""
    if result.get("runs"):
        out = []
        for r in result["runs"]:
            parts = r["run"].split("-")
            mode = MODES.get(parts[2].lower(), parts[2]) if len(parts) > 2 else "ID"
            out.append({"run": r["run"], "encoder": r.get("encoder") or parts[1], "mode": mode, "result": r["result"]})
        return out
    return final_runs()


def render(result: dict, rctx: RenderContext) -> str:
    """The lead's quality.md, then HR@10 / NDCG@10 by model beside the paper and RecBole."""
    ref = json.loads(REFERENCE.read_text())
    md = rctx.results_dir / "quality.md"
    out = [f"Written by `{result.get('command', 'benchmarks/quality_report.py')}` from the final runs; the figures "
           "are drawn by the harness from the same runs beside the recorded references "
           "(`benchmarks/reference/microlens_quality.json`).", ""]
    if md.exists():
        out.append(embed_markdown(md.read_text(), rctx))
    runs = _rows(result)
    if not runs:
        return "\n".join(out)
    groups = [f"{_model_name(r['encoder'])} {r['mode']}" for r in runs]
    paper = {(p["model"], p["mode"]): p for p in ref["paper"]["rows"]}
    lib = ref["library"]
    for metric in ("hr@10", "ndcg@10"):
        key = [(_model_name(r["encoder"]), r["mode"]) for r in runs]
        series = {"this system, MicroLens-50K test": [r["result"].get(f"test/{metric}") for r in runs],
                  "paper, MicroLens-100K": [paper.get(k, {}).get(metric) for k in key],
                  "RecBole SASRec, MicroLens-50K test": [lib["test"][metric] if k == (lib["model"], lib["mode"])
                                                         else None for k in key]}
        path = rctx.results_dir / "figures" / f"quality_{metric.replace('@', '')}.png"
        bar_plot(str(path), groups, series, title=f"{metric.upper()} by model", ylabel=metric.upper())
        fig = {"path": f"figures/{path.name}", "unit": "hr" if metric.startswith("hr") else "ndcg",
               "title": f"{metric.upper()} by model: this system's test figures beside the paper's MicroLens-100K "
                        "table and the RecBole reference", "aggregation": median_note(1),
               "command": "python benchmarks/run.py --only quality (drawn from benchmarks/results/quality.json)"}
        out.append(rctx.figure_md(fig))
    return "\n".join(out)


PART = Part(name="quality", title=TITLE, run=None, render=render,
            owner_command="the lead's final runs (runs/quality/final-<encoder>-<mode>) -> benchmarks/results/quality.{json,md}")
