"""ID vs Text vs ID+Text SASRec on the real MicroLens-50K: the report of finished runs.

    python benchmarks/text_quality.py --runs runs/text-quality          # text_quality.{json,md} + figures

Reads the runs of ``jobs/train_videorec.py`` with the presets ``sasrec-id.yaml``,
``sasrec-text.yaml`` and ``sasrec-idtext.yaml`` (run names ``microlens-50k-sasrec-{id,text,idtext}``)
under ``--runs``: their ``result.json`` (test figures of the best validation epoch, evaluated once),
per-epoch validation from ``logs/metrics.jsonl`` and the test split per popularity bucket of the
target (``test/buckets``). A run stopped before it finished is reported, flagged, from ``mvrec eval``
of its best checkpoint on test (``<run>/evals/*-test.json``). A model whose run directory is gone (runs
are not committed) keeps its figures from the committed ``text_quality.json``, flagged as carried over.
The ID+Text run with the cold-item fallback (``sasrec-idtext.yaml`` with ``model.cold_items=content
model.id_dropout=0.1``, run name ``microlens-50k-sasrec-idtext-fallback``) is reported beside them
when present. Writes ``benchmarks/results/text_quality.{json,md}``, the per-bucket content/ID HR@10
ratios (the paper's Figure 6) and the validation curves.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.warm_cold import bucket_ratios, load_buckets, markdown_table, plot_bucket_ratio  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
FIGURES = RESULTS / "figures"
RUNS = {"ID": "microlens-50k-sasrec-id", "Text": "microlens-50k-sasrec-text", "ID+Text": "microlens-50k-sasrec-idtext",
        "ID+Text fallback": "microlens-50k-sasrec-idtext-fallback"}
OPTIONAL = {"ID+Text fallback"}
"""Models reported only when their run exists (never carried over, never listed as missing)."""
TARGET = {"test/hr@10": 0.080, "test/ndcg@10": 0.045}


def _curve(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "logs" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{"epoch": r["epoch"], **{k: r[k] for k in r if "@" in k}} for r in rows if r.get("kind") == "valid"]


def _stopped(run: Path) -> tuple[dict, str] | None:
    """An unfinished run's figures: the test evaluation of its best checkpoint by ``mvrec eval``
    (``<run>/evals/<checkpoint>-test.json``), valid figures as the run recorded them, throughput from its
    training log. None when there is no such evaluation."""
    evals = sorted((run / "evals").glob("*-test.json")) if (run / "evals").exists() else []
    if not evals:
        return None
    ev = json.loads(evals[-1].read_text())
    records = [json.loads(line) for line in (run / "logs" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    curve = _curve(run)
    best = max(range(len(curve)), key=lambda e: curve[e]["ndcg@10"])
    train = [r for r in records if r.get("kind") == "train"]
    result = {**{f"test/{k}": ev[k] for k in ev if "@" in k}, **{f"valid/{k}": v for k, v in ev["recorded_valid"].items()
                                                                if "@" in k},
              "best_epoch": best, "epochs": len(curve), "seconds_to_best": None,
              "sequences_per_s": sum(r["sequences_per_s"] for r in train[-5:]) / max(1, len(train[-5:])),
              "stopped": True}
    return result, str(evals[-1])


def collect(runs: Path, names: dict[str, str] | None = None, with_buckets: bool = True,
            previous: dict | None = None) -> dict:
    """The runs' figures: a finished run's ``result.json``; a run stopped before it finished, its best
    checkpoint's test evaluation (``_stopped``, flagged); a model with neither keeps its entry of
    ``previous`` (flagged ``carried``) or is named in ``missing``.

    Args:
        runs: The storage path holding the runs.
        names: Model -> run name (default ``RUNS``, the MicroLens-50K presets' run names).
        with_buckets: Read the test split's popularity buckets (every run must have them).
        previous: An earlier ``collect`` output (the committed ``text_quality.json``), or None.
    """
    out: dict = {"models": {}, "missing": []}
    for model, name in (names or RUNS).items():
        run = runs / name
        if (run / "result.json").exists():
            result, source = json.loads((run / "result.json").read_text()), str(run)
        elif (stopped := _stopped(run)) is not None:
            result, source = stopped
        elif previous and model in previous.get("models", {}) and model not in OPTIONAL:
            out["models"][model] = {**previous["models"][model], "carried": True}
            continue
        else:
            if model not in OPTIONAL:
                out["missing"].append(model)
            continue
        out["models"][model] = {"run": name, "result": {k: v for k, v in result.items() if k != "test/buckets"},
                                "valid_curve": _curve(run), "buckets": load_buckets(source) if with_buckets else []}
    return out


def render(data: dict, notes: str) -> str:
    """The markdown report."""
    lines = ["# ID vs Text vs ID+Text SASRec on MicroLens-50K", "",
             "Written by `python benchmarks/text_quality.py --runs runs/text-quality` from the runs of "
             "`jobs/train_videorec.py` (presets `jobs/configs/microlens-50k/sasrec-{id,text,idtext}.yaml`). Protocol "
             "(MicroLens): leave-one-out, every item 1..N ranked, history excluded, 50,000 users; the test split "
             "evaluated once, with the weights of the best validation epoch. 2 CPU workers (Ray Train, TorchRec "
             "row-wise table, DeepSpeed ZeRO-1). Text tower: all-MiniLM-L6-v2 frozen, its sentence vectors cached "
             "once by the Ray Data pass, full softmax. Single runs (seed 42)."
             + (" `ID+Text fallback`: the ID+Text preset with `model.cold_items=content model.id_dropout=0.1` (items "
                "never seen in training represented by their title alone, 10% of ID embeddings dropped in training)."
                if "ID+Text fallback" in data["models"] else ""), "",
             "| model | valid HR@10 | valid NDCG@10 | test HR@10 | test NDCG@10 | test HR@20 | test NDCG@20 | best epoch | "
             "epochs run | wall s to best | sequences/s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for model, m in data["models"].items():
        r = m["result"]
        to_best = "-" if r.get("seconds_to_best") is None else f"{r['seconds_to_best']:.0f}"
        flag = " (stopped, see notes)" if r.get("stopped") else ""
        flag += " (carried over, see notes)" if m.get("carried") else ""
        lines.append(f"| {model}{flag} | {r['valid/hr@10']:.4f} | {r['valid/ndcg@10']:.4f} | {r['test/hr@10']:.4f} | "
                     f"{r['test/ndcg@10']:.4f} | {r['test/hr@20']:.4f} | {r['test/ndcg@20']:.4f} | "
                     f"{r['best_epoch'] + 1} | {r['epochs']} | {to_best} | {r['sequences_per_s']:.0f} |")
    if data["missing"]:
        lines += ["", f"Not finished when this was written: {', '.join(data['missing'])}."]
    idt = data["models"].get("ID+Text", {}).get("result")
    if idt:
        met = all(idt[k] >= v for k, v in TARGET.items())
        lines += ["", f"Target ID+Text test HR@10 >= 0.080 and NDCG@10 >= 0.045: **{'met' if met else 'not met'}** "
                      f"({idt['test/hr@10']:.4f} / {idt['test/ndcg@10']:.4f})."]
    ids = data["models"].get("ID")
    for model in ("Text", "ID+Text", "ID+Text fallback"):
        m = data["models"].get(model)
        if not (m and ids):
            continue
        rows = bucket_ratios(m["buckets"], ids["buckets"], "hr@10")
        slug = model.lower().replace("+", "").replace(" ", "_")
        plot_bucket_ratio(str(FIGURES / f"text_buckets_{slug}.png"), rows, metric="hr@10",
                          title=f"{model} / ID test HR@10 by the target's train popularity (MicroLens-50K)")
        lines += ["", f"## {model} vs ID per popularity bucket of the target (paper Figure 6)", "",
                  "Bucket = the target item's interactions in the train split; `[0,1)` = items never seen in training.",
                  "", markdown_table(rows, "hr@10"), "",
                  f"![{model}/ID HR@10 per bucket](figures/text_buckets_{slug}.png)"]
    lines += ["", "## Validation curves (NDCG@10 per epoch)", "",
              "Every metric and the training loss per epoch, best epoch starred (drawn by `mvrec_dist.train.curves`, "
              "as `mvrec runs compare` draws them): ![curves](figures/text_quality_curves.png)", "", "| epoch | " + " | ".join(data["models"]) + " |",
              "|---|" + "---|" * len(data["models"])]
    longest = max((len(m["valid_curve"]) for m in data["models"].values()), default=0)
    for e in range(longest):
        cells = []
        for m in data["models"].values():
            c = m["valid_curve"]
            cells.append(f"{c[e]['ndcg@10']:.4f}" if e < len(c) else "")
        lines.append(f"| {e + 1} | " + " | ".join(cells) + " |")
    if notes:
        lines += ["", "## Notes", "", notes.strip()]
    return "\n".join(lines) + "\n"


def _carried_curves(model: dict):
    """The validation curves of a carried-over model, rebuilt from its committed per-epoch figures
    (no training loss: the report never stored it)."""
    from mvrec_dist.train.curves import RunCurves

    curve = model["valid_curve"]
    names = [k for k in curve[0] if "@" in k] if curve else []
    result = model["result"]
    return RunCurves(name=model["run"], uri="(carried over)", status="finished", select_metric="ndcg@10",
                     metric_names=names, valid={k: {c["epoch"]: c[k] for c in curve} for k in names},
                     best_epoch=result.get("best_epoch"), epochs=int(result.get("epochs") or len(curve)),
                     sequences_per_s=result.get("sequences_per_s"), seconds_to_best=result.get("seconds_to_best"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs/text-quality", help="directory holding the three runs")
    ap.add_argument("--notes", default=None, help="markdown file appended as the report's notes")
    args = ap.parse_args(argv)
    committed = RESULTS / "text_quality.json"
    data = collect(Path(args.runs), previous=json.loads(committed.read_text()) if committed.exists() else None)
    FIGURES.mkdir(parents=True, exist_ok=True)
    notes = Path(args.notes).read_text() if args.notes else ""
    from mvrec_dist.train.curves import load_curves, plot_curves

    plot_curves([_carried_curves(m) if m.get("carried") else load_curves(str(Path(args.runs) / m["run"]))
                 for m in data["models"].values()],
                str(FIGURES / "text_quality_curves.png"), title="ID vs Text vs ID+Text SASRec, MicroLens-50K")
    (RESULTS / "text_quality.json").write_text(json.dumps(data, indent=1) + "\n")
    (RESULTS / "text_quality.md").write_text(render(data, notes))
    print(render(data, notes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
