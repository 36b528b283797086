"""The benchmark suite in one command: measure the chosen parts, write their JSON, rebuild REPORT.md.

    python benchmarks/run.py                              # every part (hours on a 2-core machine)
    python benchmarks/run.py --only train,eval            # chosen parts; the report keeps the others
    python benchmarks/run.py --quick                      # CI-sized: tiny data, one repeat (a few minutes)
    python benchmarks/run.py --render-only                # rebuild REPORT.md from benchmarks/results/*.json

Parts: ingest (per-interaction ingestion cost from 1M to 100M+ synthetic interactions, beside
bench_ingest.py's parse-only comparison), train (plain loop vs the system, throughput vs batch
size), eval (full-ranking time), checkpoint (size / save / load vs table size, overhead at the
default interval), memory (peak RSS per worker), scaling (strong / weak, step phases), quality
(the lead's final runs), video (bench_video.py's figures), plan (TorchRec planner on simulated
H100 clusters, cost model, projected epoch time). Each writes ``benchmarks/results/<part>.json``
(``harness/schema.py``); the report is rebuilt from every result present.

Wrap full runs in ``flock /tmp/mvrec_heavy.lock`` on shared machines. A GPU cluster's scaling run
is one command too (see ``bench_scaling.py``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.harness.foreign import run_owner_script  # noqa: E402
from benchmarks.harness.parts import Part, RenderContext, RunContext, write_result  # noqa: E402
from benchmarks.harness.report import render_report  # noqa: E402
from benchmarks.harness.schema import validate_report, validate_result  # noqa: E402
from mvrec_dist.runtime.ray_cluster import LOOPBACK_ENV  # noqa: E402

# Report order: part name -> "module:attribute" of its Part.
PART_MODULES = {
    "ingest": "benchmarks.harness.foreign:INGEST",
    "ingest_scale": "benchmarks.bench_ingest_scale:PART",
    "train": "benchmarks.bench_train:PART",
    "eval": "benchmarks.bench_eval:PART",
    "checkpoint": "benchmarks.bench_checkpoint:PART",
    "memory": "benchmarks.bench_memory:PART",
    "scaling": "benchmarks.bench_scaling:PART",
    "quality": "benchmarks.bench_quality:PART",
    "video": "benchmarks.harness.foreign:VIDEO",
    "plan": "benchmarks.bench_plan:PART",
    "retrieval": "benchmarks.bench_retrieval:PART",
    "mmra": "benchmarks.harness.foreign:MMRA",
    "frame": "benchmarks.harness.foreign:FRAME",
    "multihost": "benchmarks.harness.foreign:MULTIHOST",
}
# What --quick runs: every part the harness measures itself, the plan last (it reads scaling and
# ingest_scale). Parts other scripts write are only rendered in quick mode.
QUICK_DEFAULT = ("ingest_scale", "train", "eval", "checkpoint", "memory", "scaling", "plan")


def load_parts() -> list[Part]:
    """Every part, in report order."""
    parts = []
    for ref in PART_MODULES.values():
        module, attr = ref.split(":")
        parts.append(getattr(importlib.import_module(module), attr))
    return parts


def _run_order(chosen: list[str]) -> list[str]:
    """Chosen parts in execution order: the plan after scaling and ingest_scale, whose results it checks."""
    return sorted(chosen, key=lambda n: n == "plan")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=None, help=f"comma-separated parts ({','.join(PART_MODULES)}); default: all")
    p.add_argument("--quick", action="store_true", help="CI-sized run: tiny data, few steps, one repeat")
    p.add_argument("--render-only", action="store_true", help="measure nothing; rebuild the report")
    p.add_argument("--repeats", type=int, default=None, help="repeats of each timed configuration (default 3; quick 1)")
    p.add_argument("--launcher", choices=("ray", "gloo"), default=None,
                   help="training runs under Ray Train (the job) or on local gloo ranks (default: ray; quick: gloo)")
    p.add_argument("--workers", default="1,2", help="worker counts of the scaling study")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per worker (cluster runs)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: an embedded local cluster)")
    p.add_argument("--dataset", default=None, help="training dataset dir/URI (default: MicroLens-50K shards)")
    p.add_argument("--preset", default=None, help="training preset (default: microlens-50k/sasrec-id.yaml)")
    p.add_argument("--storage", default=None, help="storage path of benchmark runs (shared on clusters)")
    p.add_argument("--global-batch", type=int, default=None, help="scaling: strong-scaling global batch")
    p.add_argument("--per-worker-batch", type=int, default=None, help="scaling: weak-scaling per-worker batch")
    p.add_argument("--ingest-max", default=None, help="ingest: largest synthetic size, e.g. 100m, 1b or full (the whole 1B-interaction shape)")
    p.add_argument("--ingest-budget-min", type=float, default=None,
                   help="ingest_scale: skip a size whose linearly projected finish is past this many minutes")
    p.add_argument("--train-batches", default=None,
                   help="train: comma-separated batch sizes (default 64,128,256,512,1024; quick 32)")
    p.add_argument("--results-dir", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--report", default=str(REPO / "benchmarks" / "REPORT.md"))
    p.add_argument("--work-dir", default=str(REPO / "benchmarks" / "work"),
                   help="scratch space for data, runs and checkpoints (git-ignored)")
    return p


def _load_results(results_dir: Path, parts: list[Part]) -> dict[str, dict]:
    found = {}
    for part in parts:
        path = results_dir / f"{part.name}.json"
        if path.exists():
            found[part.name] = json.loads(path.read_text())
    return found


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    for key, value in LOOPBACK_ENV.items():  # every Ray/gloo process this starts stays on loopback
        os.environ.setdefault(key, value)
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if not args.use_gpu else os.environ.get("DS_ACCELERATOR", "cuda"))
    parts = load_parts()
    by_name = {p.name: p for p in parts}
    chosen = list(by_name) if args.only is None else [x.strip() for x in args.only.split(",") if x.strip()]
    if args.quick and args.only is None:
        chosen = list(QUICK_DEFAULT)
    unknown = [c for c in chosen if c not in by_name]
    if unknown:
        print(f"run.py: unknown part(s) {unknown}; choose from {list(by_name)}", file=sys.stderr)
        return 2
    results_dir, report = Path(args.results_dir), Path(args.report)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    ctx = RunContext(quick=args.quick, results_dir=results_dir, work_dir=Path(tempfile.mkdtemp(dir=work)),
                     argv=argv, repeats=args.repeats or (1 if args.quick else 3),
                     launcher=args.launcher or ("gloo" if args.quick else "ray"),
                     workers=tuple(int(w) for w in args.workers.split(",")), use_gpu=args.use_gpu,
                     address=args.address, dataset=args.dataset, preset=args.preset, storage=args.storage,
                     extra={"global_batch": args.global_batch, "per_worker_batch": args.per_worker_batch,
                            "ingest_max": args.ingest_max,
                            "ingest_budget_s": 60 * args.ingest_budget_min if args.ingest_budget_min else None,
                            "train_batches": [int(b) for b in args.train_batches.split(",")] if args.train_batches else None})
    failed = []
    try:
        for name in ([] if args.render_only else _run_order(chosen)):
            part = by_name[name]
            if part.run is None:
                if part.owner_script and not args.quick and (REPO / part.owner_script).exists():
                    ctx.log(f"running part {name}: `{part.owner_command}` (writes its own results)")
                    try:
                        run_owner_script(part.owner_script)
                    except Exception as exc:  # noqa: BLE001
                        ctx.log(f"part {name} FAILED: {exc}")
                        failed.append(name)
                else:
                    ctx.log(f"{name}: produced by {part.owner_command}; rendering what is there")
                continue
            ctx.log(f"running part {name}")
            try:
                result = part.run(ctx)
            except Exception as exc:  # noqa: BLE001 - one part failing must not lose the others' results
                traceback.print_exc()
                ctx.log(f"part {name} FAILED: {type(exc).__name__}: {exc}")
                failed.append(name)
                continue
            if isinstance(result.get("machine"), dict):
                result["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
            problems = validate_result(result, results_dir=str(results_dir))
            if problems:
                ctx.log(f"part {name}: result does not match the schema: {problems}")
                failed.append(name)
            write_result(result, results_dir)
    finally:
        ctx.close()
        _remove_tree(ctx.work_dir)
    results = _load_results(results_dir, parts)
    rctx = RenderContext(results_dir=results_dir.resolve(), report_dir=report.parent.resolve())
    text = render_report(parts, results, rctx, command=ctx.command)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(text)
    mine = [r for n, r in results.items() if by_name[n].run is not None]
    problems = validate_report(text, mine, report_dir=str(rctx.report_dir), results_dir=str(rctx.results_dir))
    if problems:
        print("run.py: the report does not match the schema:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print(f"wrote {report} ({len(results)} parts with results)" + (f"; FAILED: {failed}" if failed else ""))
    return 1 if failed else 0


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
