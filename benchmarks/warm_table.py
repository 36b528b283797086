"""ID vs Text vs ID+Text SASRec on MicroLens-50K and its Warm-20/50/200 datasets: the paper's Table 8.

    python benchmarks/warm_table.py --launch     # train the runs that are missing (sequentially), then report
    python benchmarks/warm_table.py              # report the finished runs: warm_table.{json,md}

The Warm-N datasets are made by ``jobs/ingest_microlens.py --config jobs/configs/microlens-50k/ingest-warm.yaml``
(items with fewer than N interactions removed, users below 5 dropped, leave-one-out re-split; titles
tokenised for each). Every run is ``jobs/train_videorec.py`` with the Regular presets
(``jobs/configs/microlens-50k/sasrec-{id,text,idtext}.yaml``, hyper-parameters selected on Regular's
validation split and not re-tuned per dataset) and these overrides: ``data.dataset_dir`` the Warm-N
dataset, ``data.content_features`` its own cached MiniLM store (built on first use),
``train.run_name=warm<N>-sasrec-<model>``, ``train.storage_path`` (``--runs``); the presets' early
stopping (patience 5, at most 60 epochs) ends each run; the report flags a run whose best epoch is its
last. The Regular column is read from ``benchmarks/results/text_quality.json``, the
report of the full-size runs. Test figures are the best validation epoch's, evaluated once.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.text_quality import collect  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
WARM = (20, 50, 200)
MODELS = {"ID": "id", "Text": "text", "ID+Text": "idtext"}
# MicroLens paper Table 8 (MicroLens-100K, SASRec): IDRec and its best VideoRec per setting (HR@10, NDCG@10).
PAPER = {"IDRec": {"Regular": (0.0909, 0.0517), "Warm-20": (0.1068, 0.0615), "Warm-50": (0.6546, 0.4103),
                   "Warm-200": (0.7537, 0.4412)},
         "VideoRec (best encoder)": {"Regular": (0.0976, 0.0531), "Warm-20": (0.1178, 0.0639),
                                     "Warm-50": (0.7580, 0.4614), "Warm-200": (0.9194, 0.4901)}}


def run_name(n: int, model: str) -> str:
    return f"warm{n}-sasrec-{MODELS[model]}"


def command(n: int, model: str, runs: str) -> list[str]:
    """The training command of one Warm-N run (see the module doc)."""
    slug = MODELS[model]
    argv = [sys.executable, "jobs/train_videorec.py", "--config", f"jobs/configs/microlens-50k/sasrec-{slug}.yaml",
            f"data.dataset_dir=data/shards/microlens-50k-warm{n}",
            "data.prepare_with=jobs/configs/microlens-50k/ingest-warm.yaml",
            f"train.run_name={run_name(n, model)}", f"train.storage_path={runs}"]
    if model != "ID":
        argv.append(f"data.content_features=data/features/microlens-50k-warm{n}-minilm-frozen")
    return argv


def dataset_counts(n: int) -> dict:
    manifest = json.loads((REPO / f"data/shards/microlens-50k-warm{n}/manifest.json").read_text())
    return {"users": manifest["counts"]["users"], "items": manifest["counts"]["items"]}


def _flagged(model: dict) -> dict:
    """A ``collect`` model entry's result, with ``carried`` kept when the figures were carried over."""
    return {**model["result"], **({"carried": True} if model.get("carried") else {})}


def collect_all(runs: Path, previous: dict | None = None) -> dict:
    """Regular (from text_quality.json) and Warm-N figures per model.

    Args:
        runs: The storage path of the Warm-N runs.
        previous: The committed ``warm_table.json``: a Warm-N model whose run directory is gone keeps
            its figures from there (flagged ``carried``), as ``text_quality.collect`` does.
    """
    out: dict = {"settings": {}}
    regular = json.loads((RESULTS / "text_quality.json").read_text())
    out["settings"]["Regular"] = {"counts": {"users": 50000, "items": 19220},
                                  "models": {m: _flagged(v) for m, v in regular["models"].items() if m in MODELS}}
    for n in WARM:
        before = ((previous or {}).get("settings", {}).get(f"Warm-{n}", {}).get("models", {}))
        kept = {"models": {m: {"run": run_name(n, m), "result": r, "valid_curve": [], "buckets": []}
                           for m, r in before.items()}}
        data = collect(runs, {m: run_name(n, m) for m in MODELS}, previous=kept)
        counts = dataset_counts(n) if (REPO / f"data/shards/microlens-50k-warm{n}/manifest.json").exists() else {}
        out["settings"][f"Warm-{n}"] = {"counts": counts, "missing": data["missing"],
                                        "models": {m: _flagged(v) for m, v in data["models"].items()}}
    return out


def _cell(r: dict | None, key: str) -> str:
    return "-" if not r or r.get(key) is None else f"{r[key]:.4f}"


def render(data: dict) -> str:
    settings = data["settings"]
    head = "| model | " + " | ".join(f"{s} H@10 | {s} N@10" for s in settings) + " |"
    lines = ["# ID vs Text vs ID+Text on MicroLens-50K, regular and warm (paper Table 8)", "",
             "Written by `python benchmarks/warm_table.py` (module doc: the commands). SASRec, 2 CPU workers, "
             "MicroLens protocol (leave-one-out, full ranking over the dataset's items, history excluded); "
             "test figures of the best validation epoch, evaluated once. Text = all-MiniLM-L6-v2 frozen + "
             "adapter (cached sentence vectors); ID+Text = ID embedding + projected sentence vector (sum). "
             "Hyper-parameters are the Regular presets', not re-tuned per dataset. Single runs (seed 42).", "",
             "| dataset | users | items |", "|---|---:|---:|"]
    for s, v in settings.items():
        c = v["counts"]
        lines.append(f"| {s} | {c.get('users', 0):,} | {c.get('items', 0):,} |")
    lines += ["", head, "|---|" + "---|---|" * len(settings)]
    for model in MODELS:
        cells = []
        for v in settings.values():
            r = v["models"].get(model)
            cells += [_cell(r, "test/hr@10"), _cell(r, "test/ndcg@10")]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    lines += ["", "Paper (MicroLens-100K, SASRec, video towers; for the pattern, not the level: a different "
              "dataset and modality):", "", head, "|---|" + "---|---|" * len(settings)]
    for model, row in PAPER.items():
        lines.append(f"| {model} | " + " | ".join(f"{row[s][0]:.4f} | {row[s][1]:.4f}" for s in settings) + " |")
    lines += ["", "## Runs", "", "| dataset | model | best epoch | epochs run | wall s to best | sequences/s | note |",
              "|---|---|---:|---:|---:|---:|---|"]
    for s, v in settings.items():
        for model in MODELS:
            r = v["models"].get(model)
            if r is None:
                lines.append(f"| {s} | {model} | - | - | - | - | not run |")
                continue
            note = []
            if r.get("stopped"):
                note.append("stopped early; best checkpoint evaluated by `mvrec eval` (text_quality.md)")
            if r.get("carried"):
                note.append("carried over from the committed report (run directory not present)")
            if not r.get("stopped") and r["best_epoch"] + 1 == r["epochs"]:
                note.append(f"best at the last of {r['epochs']} epochs: still improving")
            to_best = "-" if r.get("seconds_to_best") is None else f"{r['seconds_to_best']:.0f}"
            lines.append(f"| {s} | {model} | {r['best_epoch'] + 1} | {r['epochs']} | {to_best} | "
                         f"{r['sequences_per_s']:.0f} | {'; '.join(note)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs/warm", help="storage path of the Warm-N runs")
    ap.add_argument("--launch", action="store_true", help="train the missing runs first, one at a time")
    ap.add_argument("--notes", default=None, help="markdown file appended as the report's notes")
    args = ap.parse_args(argv)
    if args.launch:
        for n in WARM:
            for model in MODELS:
                if not (Path(args.runs) / run_name(n, model) / "result.json").exists():
                    subprocess.run(command(n, model, args.runs), cwd=REPO, check=True)
    committed = RESULTS / "warm_table.json"
    data = collect_all(Path(args.runs), previous=json.loads(committed.read_text()) if committed.exists() else None)
    text = render(data)
    if args.notes:
        text += "\n## Notes\n\n" + Path(args.notes).read_text().strip() + "\n"
    (RESULTS / "warm_table.json").write_text(json.dumps(data, indent=1) + "\n")
    (RESULTS / "warm_table.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
