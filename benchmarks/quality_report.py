"""Collect the finished MicroLens-50K quality runs into benchmarks/results/quality.{json,md}.

Each run is a normal training job (`jobs/train_videorec.py`, 2 CPU workers, TorchRec + DeepSpeed) whose
hyper-parameters were chosen on the validation split (benchmarks/quality_sweep.py); its test split was
evaluated once, at the end, with the best-validation weights. This script only reads their outputs:

    python jobs/train_videorec.py --config jobs/configs/microlens-50k/sasrec-id.yaml \
        train.run_name=final-sasrec-id train.storage_path=runs/quality   # likewise gru4rec-id, nextitnet-id
    python benchmarks/quality_report.py --runs runs/quality
"""

from __future__ import annotations

import argparse
import glob
import json
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Reference figures, recorded as inputs (not measured here).
PAPER_100K = {  # MicroLens paper, MicroLens-100K, IDRec (SR) rows (../shared/seeds)
    "sasrec": {"hr@10": 0.0909, "ndcg@10": 0.0517, "hr@20": 0.1278, "ndcg@20": 0.0610},
    "gru4rec": {"hr@10": 0.0782, "ndcg@10": 0.0423, "hr@20": 0.1147, "ndcg@20": 0.0515},
    "nextitnet": {"hr@10": 0.0805, "ndcg@10": 0.0442, "hr@20": 0.1175, "ndcg@20": 0.0535},
}
RECBOLE_50K = {"test": {"hr@10": 0.0716, "ndcg@10": 0.0407}, "valid": {"hr@10": 0.0904, "ndcg@10": 0.0529},
               "minutes": 23.0, "eval_seconds": 8.3}
TARGET = {"hr@10": 0.080, "ndcg@10": 0.045}


def _run(run_dir: str) -> dict:
    result = json.loads(Path(run_dir, "result.json").read_text())
    config = None
    history = []
    checkpoints = sorted(glob.glob(os.path.join(run_dir, "checkpoint-step*")))
    if checkpoints:
        last = checkpoints[-1]
        config = json.loads(Path(last, "config.json").read_text())
        history = json.loads(Path(last, "state.json").read_text())["history"]
    reach = next((h["elapsed_s"] for h in history if h["metrics"]["ndcg@10"] >= RECBOLE_50K["valid"]["ndcg@10"]), None)
    encoder = config["model"]["user_encoder"]["name"] if config else "?"
    return {"run": os.path.basename(run_dir), "encoder": encoder, "config": config, "result": result,
            "curve": [{"epoch": h["epoch"], "elapsed_s": h["elapsed_s"],
                       **{k: h["metrics"][k] for k in ("hr@10", "ndcg@10")}} for h in history],
            "seconds_to_valid_ndcg10_0.0529": reach}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default=str(REPO / "runs" / "quality"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "quality"))
    parser.add_argument("--note", action="append", default=[],
                        help="a line about how the runs were made (commit, machine load, ...); repeatable")
    args = parser.parse_args()
    runs = [_run(d) for d in sorted(glob.glob(os.path.join(args.runs, "final-*"))) if os.path.exists(os.path.join(d, "result.json"))]
    sweeps = []
    for f in sorted(glob.glob(str(REPO / "benchmarks" / "results" / "sweeps" / "*.jsonl"))):
        sweeps += [json.loads(line) for line in open(f)]
    payload = {"benchmark": "quality", "command": "python benchmarks/quality_report.py --runs " + args.runs,
               "dataset": "MicroLens-50K (../shared/data/microlens-50k)", "runs": runs,
               "references": {"paper_microlens_100k": PAPER_100K, "recbole_microlens_50k": RECBOLE_50K},
               "target": TARGET, "sweep_candidates": len(sweeps), "notes": args.note}
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(payload, indent=1, sort_keys=True))
    out.with_suffix(".md").write_text(_markdown(payload, sweeps))
    print(out.with_suffix(".md").read_text())
    return 0


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def _markdown(p: dict, sweeps: list[dict]) -> str:
    lines = ["# Quality on MicroLens-50K (`python benchmarks/quality_report.py`)", "",
             "Protocol (MicroLens): leave-one-out (train = all but the last two interactions, valid = second to "
             "last, test = last), every item 1..N ranked, the user's history excluded, HR@K / NDCG@K averaged over "
             "the 50,000 users; ties counted pessimistically. Each row is one finished run of "
             "`jobs/train_videorec.py` on 2 CPU workers (Ray Train, TorchRec row-wise table, DeepSpeed ZeRO-1); "
             "hyper-parameters chosen on validation only; the test split evaluated once, with the weights of the "
             "best validation epoch. Unit: fraction of users; single runs (seed 42), not medians.", "",
             "| model | valid HR@10 | valid NDCG@10 | test HR@10 | test NDCG@10 | test HR@20 | test NDCG@20 | best epoch | "
             "wall time to best (min) | wall time to valid NDCG@10 >= 0.0529 (min) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in p["runs"]:
        res = r["result"]
        reach = r["seconds_to_valid_ndcg10_0.0529"]
        lines.append(f"| {r['encoder']} ({r['run']}) | {_fmt(res.get('valid/hr@10'))} | {_fmt(res.get('valid/ndcg@10'))} | "
                     f"{_fmt(res.get('test/hr@10'))} | {_fmt(res.get('test/ndcg@10'))} | {_fmt(res.get('test/hr@20'))} | "
                     f"{_fmt(res.get('test/ndcg@20'))} | {res.get('best_epoch')} | {res.get('seconds_to_best', 0) / 60:.1f} | "
                     f"{'not reached' if reach is None else f'{reach / 60:.1f}'} |")
    rb = p["references"]["recbole_microlens_50k"]
    lines += [f"| RecBole 1.2.1 SASRec (reference, same protocol, this machine) | {rb['valid']['hr@10']} | "
              f"{rb['valid']['ndcg@10']} | {rb['test']['hr@10']} | {rb['test']['ndcg@10']} | - | - | - | {rb['minutes']:.0f} | "
              f"{rb['minutes']:.0f} |", "",
              "The paper's MicroLens-100K table (a larger dataset, its own hyper-parameters), for comparison:", "",
              "| model | HR@10 | NDCG@10 | HR@20 | NDCG@20 |", "|---|---|---|---|---|"]
    for name, m in p["references"]["paper_microlens_100k"].items():
        lines.append(f"| {name} (paper, 100K) | {m['hr@10']} | {m['ndcg@10']} | {m['hr@20']} | {m['ndcg@20']} |")
    lines += ["", f"Target: test HR@10 >= {p['target']['hr@10']} and NDCG@10 >= {p['target']['ndcg@10']} with SASRec.",
              "", f"Search behind the presets: {len(sweeps)} candidate configs (benchmarks/sweeps/*.txt, results and "
              "per-epoch validation curves in benchmarks/results/sweeps/*.jsonl); best valid NDCG@10 per family:", "",
              "| family | best valid HR@10 | best valid NDCG@10 | overrides |", "|---|---|---|---|"]
    families: dict[str, dict] = {}
    for s in sweeps:
        loss = next((o.split("=")[1] for o in s["overrides"] if o.startswith("model.loss.name=")), "full_softmax")
        if loss not in families or s["best_valid"]["ndcg@10"] > families[loss]["best_valid"]["ndcg@10"]:
            families[loss] = s
    for loss, s in sorted(families.items(), key=lambda kv: -kv[1]["best_valid"]["ndcg@10"]):
        lines.append(f"| {loss} | {s['best_valid']['hr@10']:.4f} | {s['best_valid']['ndcg@10']:.4f} | "
                     f"`{' '.join(s['overrides'])}` |")
    if p.get("notes"):
        lines += ["", "Notes on the runs:", ""] + [f"* {n}" for n in p["notes"]]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
