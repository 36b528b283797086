"""Scaling part: strong and weak scaling over worker counts, and where a step's time goes.

* **Strong scaling**: the global batch ``B`` stays fixed; N workers take ``B / N`` each.
  **Weak scaling**: each worker takes ``b``; the global batch is ``N b``. Efficiency = throughput
  ratio to one worker / worker ratio. All configurations of a repeat run back to back (interleaved),
  ratios are formed within a repeat, then summarised over repeats.
* **Phases**: ``ParallelModel.train_step`` timed phase by phase (``harness/phases.py``) on a local
  rank pool at the strong-scaling batch, with the all-to-all bytes each rank sends.
* **Equivalence**: the phase-timed step gives bitwise the parameters of ``train_step`` (max |diff| = 0).
* **Train pipelines**: time per step of ``ParallelModel.train_steps`` with ``parallel.pipeline=simple``
  and ``sparse_dist`` (TorchRec's ``TrainPipelineSparseDist``) on a local 2-rank pool at the
  strong-scaling batch, interleaved over repeats, with the largest loss difference between them.

On this machine (2 cores): ``python benchmarks/run.py --only scaling`` (1 and 2 CPU workers).
On a GPU cluster, one command (storage shared by all nodes):

    python benchmarks/run.py --only scaling --workers 1,8,16,32 --use-gpu --address auto \
        --preset jobs/configs/microlens-full/sasrec-id.yaml --dataset $MVREC_BUCKET/shards/microlens-full \
        --storage $MVREC_BUCKET/bench-runs --global-batch 65536 --per-worker-batch 2048
"""

from __future__ import annotations

import statistics
from typing import Any

from benchmarks.harness.jobs import JobSpec, run_job
from benchmarks.harness.parts import Part, RenderContext, RunContext
from benchmarks.harness.phases import PHASES, CollectiveCounter, PhaseClock, phased_step
from benchmarks.harness.plots import line_plot, stacked_bars
from benchmarks.harness.rank_model import build_rank_model, epoch_batches
from benchmarks.harness.report import fmt, fmt_stats, table
from benchmarks.harness.schema import figure, measurement, stats_of, target

__all__ = ["PART", "phase_task", "equivalence_task", "pipeline_task"]

TITLE = "Scaling and step anatomy"


# ---------------------------------------------------------------------- rank-pool tasks
def phase_task(ctx: Any, preset: str, overrides: list[str], steps: int, warmup: int) -> dict:
    """Run ``steps`` phase-timed training steps on this rank; per-phase mean seconds after ``warmup``."""
    rm = build_rank_model(ctx, preset, overrides)
    pm, batches = rm.pm, epoch_batches(rm)
    clock = PhaseClock(ctx.device)
    counter = CollectiveCounter(clock, ctx.rank, ctx.world_size)
    sequences = unique = 0
    measured = 0
    with counter.counting():
        clock.start()
        for step in range(steps):
            if step == warmup:
                clock.reset()
                counter.bytes.clear()
                clock.start()
            batch = next(batches, None)
            clock.mark("data", "step_sync")
            local_t = int((batch.lengths - 1).clamp(min=0).sum()) if batch is not None else 0
            local_s = int((batch.lengths > 0).sum()) if batch is not None else 0
            has, targets, _ = pm.sync_step(batch is not None, local_t, local_s)
            clock.mark("step_sync", "lookup_fwd")
            if not has:
                raise RuntimeError(f"the epoch ran out after {step} steps; lower the steps or the batch")
            batch = batch if batch is not None else rm.data.dummy_batch()
            phased_step(pm, batch, global_targets=targets, clock=clock)
            if step >= warmup:
                measured += 1
                sequences += local_s
                unique += int(batch.unique_items.numel())
    return {"rank": ctx.rank, "world_size": ctx.world_size, "steps": measured,
            "seconds_per_step": {p: clock.seconds[p] / measured for p in PHASES},
            "a2a_bytes_per_step": {ph: {k: v / measured for k, v in kinds.items()}
                                   for ph, kinds in counter.bytes.items()},
            "sequences_per_step": sequences / measured, "unique_items_per_step": unique / measured,
            "embedding_dim": rm.cfg.model.embedding_dim, "num_items": rm.manifest.num_items,
            "batch_per_worker": rm.cfg.batch_size_per_worker}


def _params(pm: Any) -> dict:
    import torch

    out = {f"dense.{k}": v.detach().clone() for k, v in pm.engine.module.state_dict().items()}
    for k, v in pm.sparse.module.state_dict().items():
        if hasattr(v, "local_shards"):
            for i, shard in enumerate(v.local_shards()):
                out[f"sparse.{k}.{i}"] = shard.tensor.detach().clone()
        elif isinstance(v, torch.Tensor):
            out[f"sparse.{k}"] = v.detach().clone()
    return out


def equivalence_task(ctx: Any, preset: str, overrides: list[str], steps: int) -> dict:
    """Max |difference| of every parameter after ``steps`` steps: ``train_step`` vs ``phased_step``."""
    import torch

    runs = []
    for phased in (False, True):
        rm = build_rank_model(ctx, preset, overrides)
        batches = epoch_batches(rm)
        torch.manual_seed(1234 + ctx.rank)  # identical dropout masks in both runs
        for _ in range(steps):
            batch = next(batches)
            local_t, local_s = int((batch.lengths - 1).clamp(min=0).sum()), int((batch.lengths > 0).sum())
            _, targets, sequences = rm.pm.sync_step(True, local_t, local_s)
            if phased:
                clock = PhaseClock(ctx.device)
                clock.start()
                phased_step(rm.pm, batch, global_targets=targets, clock=clock)
            else:
                rm.pm.train_step(batch, global_targets=targets, global_sequences=sequences)
        runs.append(_params(rm.pm))
    a, b = runs
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    return {"max_abs_diff": diff, "tensors": len(a)}


def pipeline_task(ctx: Any, preset: str, overrides: list[str], pipeline: str, steps: int) -> dict:
    """``steps`` steps of ``ParallelModel.train_steps`` with ``parallel.pipeline=pipeline``: seconds and loss of each.

    A step's seconds run from the previous step's yield to its own, loading included: the simple
    step loads its own batch, ``sparse_dist`` the batch two steps ahead.
    """
    import itertools
    import time

    rm = build_rank_model(ctx, preset, [*overrides, f"parallel.pipeline={pipeline}"])
    seconds, losses = [], []
    t = time.perf_counter()
    from mvrec_dist.tasks import build_task

    count = build_task(rm.cfg).count
    for _, stats in rm.pm.train_steps(itertools.islice(epoch_batches(rm), steps), rm.data.dummy_batch, count):
        now = time.perf_counter()  # stats.loss is a host float: the step has finished on the device
        seconds.append(now - t)
        losses.append(stats.loss)
        t = now
    return {"pipeline": rm.pm.pipeline, "seconds": seconds, "losses": losses}


# ---------------------------------------------------------------------- driver side
def _configs(workers: tuple[int, ...], global_batch: int, per_worker: int) -> dict[tuple[int, int], list[str]]:
    """(workers, global batch) -> the study roles it plays (a run can be both strong and weak)."""
    out: dict[tuple[int, int], list[str]] = {}
    for n in workers:
        if global_batch % n:
            raise ValueError(f"--global-batch {global_batch} does not split over {n} workers")
        out.setdefault((n, global_batch), []).append("strong")
        out.setdefault((n, n * per_worker), []).append("weak")
    return out


def _settings(ctx: RunContext) -> dict:
    quick = ctx.quick
    return {"global_batch": ctx.extra.get("global_batch") or (64 if quick else 512),
            "per_worker_batch": ctx.extra.get("per_worker_batch") or (32 if quick else 256),
            "steps": 8 if quick else 60, "log_every": 2 if quick else 10,
            "phase_steps": 6 if quick else 40, "phase_warmup": 2 if quick else 5, "equivalence_steps": 2,
            "pipeline_steps": 7 if quick else 45}


def run(ctx: RunContext) -> dict:
    """Measure strong/weak scaling, the step's phases and the phase-timer equivalence."""
    dataset, preset = ctx.train_data()
    s = _settings(ctx)
    configs = _configs(ctx.workers, s["global_batch"], s["per_worker_batch"])
    res = ctx.new_result("scaling", TITLE, {**s, "dataset": dataset, "preset": preset, "workers": list(ctx.workers),
                                            "launcher": ctx.launcher, "use_gpu": ctx.use_gpu,
                                            "repeats": ctx.repeats, "configs": [list(k) for k in configs]})
    storage = ctx.runs_dir("scaling")
    runs: dict[str, list[dict]] = {}
    for rep in range(ctx.repeats):
        for (n, batch), roles in configs.items():
            ctx.log(f"scaling repeat {rep + 1}/{ctx.repeats}: {n} worker(s), global batch {batch} ({'/'.join(roles)})")
            spec = JobSpec(preset=preset, dataset=dataset, workers=n, batch=batch, steps=s["steps"],
                           log_every=s["log_every"], use_gpu=ctx.use_gpu, address=ctx.address)
            pool = ctx.pool(n) if ctx.launcher == "gloo" else None
            r = run_job(spec, storage=storage, launcher=ctx.launcher, pool=pool, tag="scaling")
            runs.setdefault(f"{n}x{batch}", []).append(
                {k: r[k] for k in ("sequences_per_s", "targets_per_s", "step_ms", "steps", "elapsed_s")}
                | {"peak_rss_mib": {k: v for k, v in r["result"].items() if k.startswith("peak_rss")}})
    study: dict[str, dict] = {"strong": {}, "weak": {}}
    for role in ("strong", "weak"):
        keys = {n: f"{n}x{b}" for (n, b), roles in configs.items() if role in roles}
        base = keys[min(keys)]
        for n, key in sorted(keys.items()):
            thr = [r["sequences_per_s"] for r in runs[key]]
            ratio = [t / r0["sequences_per_s"] for t, r0 in zip(thr, runs[base])]
            eff = [x * min(keys) / n for x in ratio]
            study[role][n] = {"run": key, "sequences_per_s": stats_of(thr), "speedup": stats_of(ratio),
                              "efficiency": stats_of(eff)}
            res["measurements"] += [
                measurement(f"{role} scaling throughput", "sequences/s", values=thr, workers=n, global_batch=int(key.split('x')[1])),
                measurement(f"{role} scaling efficiency", "ratio", values=eff, workers=n)]
    res["data"] = {"runs": runs, "study": study}
    if 1 in ctx.workers and 2 in ctx.workers:
        res["targets"].append(target("2 workers / 1 worker, weak scaling (same per-worker batch)",
                                     study["weak"][2]["speedup"]["median"], op=">=", threshold=1.6, unit="ratio",
                                     source="issue 3"))
    _phases(ctx, res, dataset, preset, s)
    _pipelines(ctx, res, dataset, preset, s)
    _figures(ctx, res)
    return res


def _phases(ctx: RunContext, res: dict, dataset: str, preset: str, s: dict) -> None:
    local = [n for n in ctx.workers if n <= (ctx.machine()["cores"] if not ctx.use_gpu else len(ctx.machine()["gpus"]))]
    phases = {}
    for n in local:
        ctx.log(f"phase timing on {n} rank(s), global batch {s['global_batch']}")
        overrides = [f"data.dataset_dir={dataset}", f"train.batch_size={s['global_batch']}"]
        per_rank = ctx.pool(n).run(phase_task, preset, overrides, s["phase_steps"], s["phase_warmup"])
        mean = {p: statistics.fmean(r["seconds_per_step"][p] for r in per_rank) for p in PHASES}
        total = sum(mean.values())
        phases[n] = {"ms_per_step": {p: 1e3 * v for p, v in mean.items()}, "share": {p: v / total for p, v in mean.items()},
                     "per_rank": per_rank}
        for p in PHASES:
            res["measurements"].append(measurement("phase time per step", "ms", value=1e3 * mean[p], phase=p, workers=n))
        a2a = sum(sum(k.values()) for k in per_rank[0]["a2a_bytes_per_step"].values())
        res["measurements"].append(measurement("all-to-all bytes sent per rank per step", "bytes", value=a2a, workers=n))
    res["data"]["phases"] = phases
    if 2 in local:
        eq = ctx.pool(2).run(equivalence_task, preset, [f"data.dataset_dir={dataset}",
                                                        f"train.batch_size={s['global_batch']}"], s["equivalence_steps"])
        worst = max(r["max_abs_diff"] for r in eq)
        res["data"]["equivalence"] = eq
        res["measurements"].append(measurement("phase-timed step vs train_step, max |param diff|", "count", value=worst))
        res["targets"].append(target("phase-timed step equals ParallelModel.train_step (max |param diff|)", worst,
                                     op="<=", threshold=0.0, unit="count", source="harness self-check"))


def _pipelines(ctx: RunContext, res: dict, dataset: str, preset: str, s: dict) -> None:
    """Step time of the simple and sparse_dist train steps on 2 local ranks, interleaved over repeats."""
    if 2 not in ctx.workers or (ctx.use_gpu and len(ctx.machine()["gpus"]) < 2):
        return
    overrides = [f"data.dataset_dir={dataset}", f"train.batch_size={s['global_batch']}"]
    steps, warmup = s["pipeline_steps"], s["phase_warmup"]
    # Measured: after the warm-up, before the last two steps (the pipeline loads nothing for those).
    measured = range(warmup, steps - 2)
    ms: dict[str, list[float]] = {"simple": [], "sparse_dist": []}
    ratio, loss_diff = [], 0.0
    for rep in range(ctx.repeats):
        got = {}
        for pipeline in (("simple", "sparse_dist") if rep % 2 == 0 else ("sparse_dist", "simple")):
            ctx.log(f"train pipeline {pipeline}, repeat {rep + 1}/{ctx.repeats}, 2 ranks, {steps} steps")
            per_rank = ctx.pool(2).run(pipeline_task, preset, overrides, pipeline, steps)
            got[pipeline] = per_rank[0]
            ms[pipeline].append(1e3 * statistics.fmean(statistics.fmean(r["seconds"][i] for r in per_rank)
                                                       for i in measured))
        ratio.append(ms["sparse_dist"][-1] / ms["simple"][-1])
        loss_diff = max([loss_diff] + [abs(a - b) for a, b in zip(got["simple"]["losses"], got["sparse_dist"]["losses"])])
    res["data"]["pipelines"] = {"ms_per_step": ms, "ratio": ratio, "max_loss_diff": loss_diff,
                                "measured_steps": len(measured), "steps": steps}
    for pipeline, values in ms.items():
        res["measurements"].append(measurement("train step time", "ms/step", values=values, pipeline=pipeline, workers=2))
    res["measurements"] += [measurement("train step time, sparse_dist / simple", "ratio", values=ratio, workers=2),
                            measurement("max |loss difference|, sparse_dist vs simple", "count", value=loss_diff)]


def _figures(ctx: RunContext, res: dict) -> None:
    study, reps = res["data"]["study"], ctx.repeats
    path, rel = ctx.figure_path("scaling_throughput")
    series = {}
    for role in ("strong", "weak"):
        ns = sorted(study[role])
        series[f"{role} (measured)"] = (ns, [study[role][n]["sequences_per_s"] for n in ns])
        base = study[role][ns[0]]["sequences_per_s"]["median"]
        series[f"{role} (ideal)"] = (ns, [base * n / ns[0] for n in ns])
    line_plot(path, series, title="Training throughput vs workers", xlabel="workers",
              ylabel="sequences/s", dashed=[k for k in series if "ideal" in k])
    res["figures"].append(figure(rel, "Training throughput vs workers (strong: fixed global batch; weak: fixed "
                                      "per-worker batch; dashed: linear scaling)", unit="sequences/s",
                                 command=res["command"], repeats=reps))
    phases = res["data"]["phases"]
    if phases:
        path, rel = ctx.figure_path("step_phases")
        ns = sorted(phases)
        stacked_bars(path, [f"{n} worker(s)" for n in ns],
                     {p: [phases[n]["ms_per_step"][p] for n in ns] for p in PHASES},
                     title=f"Time per training step by phase (global batch {res['settings']['global_batch']})",
                     ylabel="ms per step")
        res["figures"].append(figure(rel, "Time per training step by phase, mean over measured steps and ranks",
                                     unit="ms", command=res["command"], repeats=1))


def render(res: dict, rctx: RenderContext) -> str:
    """Scaling tables, efficiency, and the phase breakdown."""
    s, study = res["settings"], res["data"]["study"]
    out = [f"Dataset `{s['dataset']}`, preset `{s['preset']}`, launcher `{s['launcher']}`, "
           f"{s['steps']} steps per run (first {s['log_every']} are warm-up), {s['repeats']} interleaved repeats. "
           f"Strong scaling: global batch {s['global_batch']}; weak scaling: {s['per_worker_batch']} per worker. "
           "Throughput unit: training sequences (windows) per second over training-step time; efficiency = "
           "(throughput / throughput at the fewest workers) / worker ratio, formed within each repeat.", ""]
    rows = []
    for role in ("strong", "weak"):
        for n, d in sorted(study[role].items(), key=lambda kv: int(kv[0])):
            rows.append([role, str(n), d["run"], fmt_stats(d["sequences_per_s"]), fmt_stats(d["speedup"]),
                         fmt_stats(d["efficiency"])])
    out.append(table(["study", "workers", "workers x global batch", "sequences/s", "speed-up", "efficiency"], rows))
    for f in res["figures"]:
        out.append(rctx.figure_md(f))
    phases = res["data"].get("phases", {})
    if phases:
        ns = sorted(phases, key=int)
        out += ["Where a step's time goes (mean ms per step over ranks; share of the step in parentheses). "
                "`lookup_fwd` includes the ids and embeddings all-to-all; `embedding_bwd` the gradient all-to-all "
                "and the fused row-wise Adagrad update; communication waits include waiting for the slower rank.", ""]
        rows = [[p] + [f"{fmt(phases[n]['ms_per_step'][p])} ({100 * phases[n]['share'][p]:.1f}%)" for n in ns]
                for p in PHASES]
        rows.append(["total"] + [fmt(sum(phases[n]["ms_per_step"].values())) for n in ns])
        out.append(table(["phase"] + [f"{n} worker(s)" for n in ns], rows))
        for n in ns:
            r0 = phases[n]["per_rank"][0]
            a2a = {ph: sum(k.values()) for ph, k in r0["a2a_bytes_per_step"].items()}
            out.append(f"* {n} worker(s): {fmt(r0['sequences_per_step'])} sequences and {fmt(r0['unique_items_per_step'])} "
                       f"looked-up ids per rank per step (D={r0['embedding_dim']}); all-to-all bytes sent to other "
                       f"ranks per step: " + (", ".join(f"{ph} {fmt(v)}" for ph, v in a2a.items()) or "none"))
        out.append("")
    pl = res["data"].get("pipelines")
    if pl:
        rows = [[p, fmt_stats(stats_of(v))] for p, v in pl["ms_per_step"].items()]
        rows.append(["sparse_dist / simple", fmt_stats(stats_of(pl["ratio"]))])
        out += [f"Train pipelines on 2 ranks (`parallel.pipeline`; global batch {s['global_batch']}): ms per step, "
                f"loading included, mean of {pl['measured_steps']} steps after {s['phase_warmup']} warm-up steps; "
                "the ratio is formed within each repeat. `sparse_dist` is TorchRec's `TrainPipelineSparseDist` "
                "(the next batch's input all-to-all in flight during a step; on CUDA also the host-to-device "
                f"copy). Largest loss difference between the two over all steps: {pl['max_loss_diff']:.3g}.", "",
                table(["train step", "ms per step"], rows), ""]
    eq = res["data"].get("equivalence")
    if eq:
        out.append(f"Phase timers change nothing: after {s['equivalence_steps']} steps on 2 ranks the phase-timed step "
                   f"and `ParallelModel.train_step` agree on all {eq[0]['tensors']} parameter tensors with max |diff| = "
                   f"{max(r['max_abs_diff'] for r in eq)}.\n")
    return "\n".join(out)


PART = Part(name="scaling", title=TITLE, run=run, render=render)
