"""Training part: the system at one worker beside a plain single-process PyTorch loop, over batch sizes.

Side by side in one run, for each batch size, interleaved over repeats:

* ``plain``: ``mvrec_dist.train.reference.PlainTrainer`` (``nn.Embedding``, the same dense tower
  and update rules; no Ray, TorchRec or DeepSpeed) in one process with one thread, on the same
  batches from the same reader;
* ``system-1``: the training job (Ray Train, TorchRec-sharded table, DeepSpeed ZeRO-1), one
  worker with one thread, the same per-worker batch.

Throughput is sequences (training windows) and targets per second over the time inside training
steps (data loading included, evaluation excluded), between a warm-up log point and the last one
(``harness/jobs.py``). The ratio system-1 / plain is formed within each repeat. Two workers and the
scaling efficiencies are the scaling part's (``bench_scaling.py``); evaluation is ``bench_eval.py``.
(This replaces the first version of this script, which ran the same comparison at one batch size.)
"""

from __future__ import annotations

import math
import time
from typing import Any

from benchmarks.harness.jobs import JobSpec, run_job
from benchmarks.harness.parts import Part, RenderContext, RunContext
from benchmarks.harness.plots import line_plot
from benchmarks.harness.report import fmt_stats, table
from benchmarks.harness.schema import figure, measurement, stats_of, target

__all__ = ["PART", "plain_task"]

TITLE = "Training throughput"
TARGET_BATCH = 256  # the MicroLens-50K preset's per-worker batch (512 over 2 workers)


def plain_task(ctx: Any, preset: str, dataset: str, batch: int, steps: int, warmup: int) -> dict:
    """The plain loop for ``steps`` steps of ``batch`` sequences; throughput after ``warmup`` steps."""
    import torch

    from mvrec_dist.config import TrainJobConfig, load_config
    from mvrec_dist.data.loader import TrainData, load_item_train_counts
    from mvrec_dist.data.manifest import load_manifest
    from mvrec_dist.models.builders import build_recommender
    from mvrec_dist.train.reference import PlainTrainer

    torch.set_num_threads(1)
    cfg = load_config(TrainJobConfig, preset, [f"data.dataset_dir={dataset}", "parallel.num_workers=1",
                                               f"train.batch_size={batch}"])
    manifest = load_manifest(dataset)
    torch.manual_seed(cfg.train.seed)
    model = build_recommender(cfg.model, num_items=manifest.num_items, item_train_counts=load_item_train_counts(manifest),
                              max_seq_len=cfg.data.max_seq_len, seed=cfg.train.seed, device="meta")
    trainer = PlainTrainer(model, cfg, num_items=manifest.num_items, total_steps=steps)
    data = TrainData(cfg, manifest, rank=0, world_size=1)
    batches = data.train_batches(0)
    sequences = targets = 0
    seconds = 0.0
    for step in range(steps):
        t0 = time.perf_counter()
        b = next(batches)
        trainer.train_step(b)
        dt = time.perf_counter() - t0
        if step >= warmup:
            seconds += dt
            sequences += int((b.lengths > 0).sum())
            targets += int((b.lengths - 1).clamp(min=0).sum())
    return {"sequences_per_s": sequences / seconds, "targets_per_s": targets / seconds, "steps": steps - warmup}


def _steps(batch: int, quick: bool) -> tuple[int, int]:
    """(steps, log interval): about 16k measured sequences per run after a 5-step warm-up."""
    if quick:
        return 8, 2
    every = 5
    return every + every * math.ceil(max(20, 16384 // batch) / every), every


def run(ctx: RunContext) -> dict:
    """Plain loop vs the system at one worker, for each batch size."""
    dataset, preset = ctx.train_data()
    batches = ctx.extra.get("train_batches") or ([32] if ctx.quick else [64, 128, 256, 512, 1024])
    res = ctx.new_result("train", TITLE, {"dataset": dataset, "preset": preset, "batch_sizes": batches,
                                          "launcher": ctx.launcher, "repeats": ctx.repeats,
                                          "steps": {b: _steps(b, ctx.quick)[0] for b in batches},
                                          "log_every": {b: _steps(b, ctx.quick)[1] for b in batches}})
    storage = ctx.runs_dir("train")
    runs: dict[str, dict[int, list[dict]]] = {"plain": {}, "system-1": {}}
    for rep in range(ctx.repeats):
        for b in batches:
            steps, every = _steps(b, ctx.quick)
            ctx.log(f"train repeat {rep + 1}/{ctx.repeats}, batch {b}: plain loop")
            plain = ctx.pool(1).run(plain_task, preset, dataset, b, steps, every)[0]
            runs["plain"].setdefault(b, []).append(plain)
            ctx.log(f"train repeat {rep + 1}/{ctx.repeats}, batch {b}: system, 1 worker ({ctx.launcher})")
            spec = JobSpec(preset=preset, dataset=dataset, workers=1, batch=b, steps=steps, log_every=every,
                           address=ctx.address, use_gpu=ctx.use_gpu)
            pool = ctx.pool(1) if ctx.launcher == "gloo" else None
            r = run_job(spec, storage=storage, launcher=ctx.launcher, pool=pool, tag="train")
            runs["system-1"].setdefault(b, []).append(
                {k: r[k] for k in ("sequences_per_s", "targets_per_s", "steps", "step_ms")}
                | {"peak_rss_mib": r["result"].get("peak_rss_mib_max")})
    summary = {}
    for b in batches:
        ratio = [s["sequences_per_s"] / p["sequences_per_s"] for s, p in zip(runs["system-1"][b], runs["plain"][b])]
        summary[b] = {"plain": stats_of([r["sequences_per_s"] for r in runs["plain"][b]]),
                      "system-1": stats_of([r["sequences_per_s"] for r in runs["system-1"][b]]),
                      "plain_targets": stats_of([r["targets_per_s"] for r in runs["plain"][b]]),
                      "system-1_targets": stats_of([r["targets_per_s"] for r in runs["system-1"][b]]),
                      "ratio": stats_of(ratio)}
        for name in ("plain", "system-1"):
            res["measurements"] += [
                measurement("training throughput", "sequences/s", values=[r["sequences_per_s"] for r in runs[name][b]],
                            run=name, batch=b),
                measurement("training throughput", "targets/s", values=[r["targets_per_s"] for r in runs[name][b]],
                            run=name, batch=b)]
        res["measurements"].append(measurement("system-1 / plain", "ratio", values=ratio, batch=b))
    res["data"] = {"runs": {k: {str(b): v for b, v in d.items()} for k, d in runs.items()},
                   "summary": {str(b): v for b, v in summary.items()}}
    tb = TARGET_BATCH if TARGET_BATCH in summary else batches[len(batches) // 2]
    res["targets"].append(target(f"system at 1 worker / plain loop (batch {tb})", summary[tb]["ratio"]["median"],
                                 op=">=", threshold=0.8, unit="ratio", source="issue 3"))
    path, rel = ctx.figure_path("train_throughput_vs_batch")
    line_plot(path, {"plain loop (1 process, 1 thread)": (batches, [summary[b]["plain"] for b in batches]),
                     "system, 1 worker (1 thread)": (batches, [summary[b]["system-1"] for b in batches])},
              title="Training throughput vs batch size", xlabel="batch (sequences per step)",
              ylabel="sequences/s", logx=True)
    res["figures"].append(figure(rel, "Training throughput vs batch size, plain loop beside the system at 1 worker",
                                 unit="sequences/s", command=res["command"], repeats=ctx.repeats))
    return res


def render(res: dict, rctx: RenderContext) -> str:
    """The comparison table and the batch-size plot."""
    s = res["settings"]
    out = [f"Dataset `{s['dataset']}`, preset `{s['preset']}` (its model, loss and optimizers), launcher "
           f"`{s['launcher']}`, {s['repeats']} interleaved repeats; unit: sequences (training windows) per second "
           "over training-step time, median (min..max, n). Ratio = system / plain within each repeat.", ""]
    rows = []
    for b, x in res["data"]["summary"].items():
        rows.append([b, fmt_stats(x["plain"]), fmt_stats(x["system-1"]), fmt_stats(x["ratio"]),
                     fmt_stats(x["plain_targets"]), fmt_stats(x["system-1_targets"])])
    out.append(table(["batch", "plain seq/s", "system-1 seq/s", "system-1 / plain", "plain targets/s",
                      "system-1 targets/s"], rows))
    for f in res["figures"]:
        out.append(rctx.figure_md(f))
    return "\n".join(out)


PART = Part(name="train", title=TITLE, run=run, render=render)
