"""Checkpoint part (issue 5's benchmark): size, save and load time vs table size; overhead at the default interval.

* **I/O vs model size**: on 2 gloo ranks, a ``ParallelModel`` (row-wise item table of
  ``rows x dim`` with fused row-wise Adagrad state, SASRec dense tower in ZeRO-1 with AdamW state)
  is saved with ``Checkpointer.save`` and restored with ``Checkpointer.restore``, the code path of
  a job (DCP shards, dense state, RNG, COMMIT.json with sha256 of every file, copy to storage,
  retention; on restore, verification and resharding). Wall time of the collective call, max over
  ranks. Loads read files the save just wrote, so they come from the page cache.
* **Overhead**: the training job under Ray Train on the training dataset (2 workers) with
  ``train.checkpoint_every_steps`` = 0 (none), a short interval and the default interval,
  interleaved; throughput over *wall* time (checkpoint saves included) between two log points.
  The per-checkpoint cost ``C`` is the wall time not spent in training steps, minus the same in the
  run without checkpoints, per checkpoint; the overhead of interval N is then ``C / (N s + C)``
  with ``s`` the step time: the model the measured ratios are checked against.

Default interval: every 100 steps on MicroLens-50K (an epoch is ~105 steps at batch 512, so this
is what ``checkpoint_at_epoch_end`` gives the 50K preset), 1000 steps in the full-MicroLens
GPU preset; both are chosen so ``C / (N s)`` stays under 5% (see the report for the measured C and s).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from benchmarks.harness.jobs import JobSpec, run_job
from benchmarks.harness.parts import Part, RenderContext, RunContext
from benchmarks.harness.plots import line_plot
from benchmarks.harness.rank_model import build_rank_model
from benchmarks.harness.report import fmt, fmt_stats, table
from benchmarks.harness.schema import figure, measurement, stats_of, target

__all__ = ["PART", "checkpoint_io_task"]

TITLE = "Checkpoint cost"
FULL_SIZES = ((19_221, 128), (250_001, 128), (1_142_529, 128))  # MicroLens-50K, mid, full MicroLens item table
QUICK_SIZES = ((1_001, 16), (5_001, 16), (20_001, 16))


def _dir_bytes(path: str) -> dict[str, int]:
    out = {"sparse": 0, "dense": 0, "other": 0}
    for root, _, files in os.walk(path):
        for f in files:
            size = os.path.getsize(os.path.join(root, f))
            rel = os.path.relpath(os.path.join(root, f), path)
            key = "sparse" if rel.startswith("sparse") else ("dense" if rel.startswith("dense") else "other")
            out[key] += size
    return out


def checkpoint_io_task(ctx: Any, sizes: list[tuple[int, int]], repeats: int, storage: str) -> list[dict]:
    """Save and restore a model of each ``rows x dim`` item table ``repeats`` times (collective)."""
    import torch.distributed as dist

    from mvrec_dist.data.batch import dummy_batch
    from mvrec_dist.train.checkpointing import Checkpointer
    from mvrec_dist.train.state import TrainState

    out = []
    for rows, dim in sizes:
        run = f"ckpt-io-{rows}x{dim}"
        overrides = [f"model.embedding_dim={dim}", "model.loss.name=inbatch_softmax", "parallel.sharding_type=row_wise",
                     f"train.storage_path={storage}", f"train.run_name={run}", "train.resume=auto",
                     "train.keep_checkpoints=1", "train.batch_size=2"]
        rm = build_rank_model(ctx, None, overrides, num_items=rows - 1)
        # One (target-free) step, so the dense optimizer has its AdamW moments like a real checkpoint.
        rm.pm.train_step(dummy_batch(rm.cfg.data.max_seq_len), global_targets=0, global_sequences=0)
        state = TrainState()
        saves, loads, sizes_b = [], [], {}
        for rep in range(repeats):
            state.step = rep + 1
            ckpt = Checkpointer(rm.cfg, ctx)
            dist.barrier()
            t = time.perf_counter()
            name = ckpt.save(rm.pm, state)
            saves.append(time.perf_counter() - t)
            ckpt.close()
            sizes_b = _dir_bytes(os.path.join(storage, run, name))
            ckpt = Checkpointer(rm.cfg, ctx)
            dist.barrier()
            t = time.perf_counter()
            restored = ckpt.restore(rm.pm)
            loads.append(time.perf_counter() - t)
            ckpt.close()
            if restored is None or restored.step != state.step:
                raise RuntimeError(f"restore found {restored and restored.step}, expected step {state.step}")
        out.append({"rows": rows, "dim": dim, "save_s": saves, "load_s": loads, "bytes": sizes_b,
                    "table_bytes": rows * dim * 4})
        dist.barrier()
        if ctx.rank == 0:
            shutil.rmtree(os.path.join(storage, run), ignore_errors=True)
        del rm
    return out


def _settings(ctx: RunContext) -> dict:
    quick = ctx.quick
    return {"sizes": [list(s) for s in (QUICK_SIZES if quick else FULL_SIZES)],
            "io_repeats": 1 if quick else max(3, ctx.repeats), "workers": 2,
            "intervals": [0, 4] if quick else [0, 25, 100], "default_interval": 4 if quick else 100,
            "steps": 12 if quick else 210, "log_every": 2 if quick else 10, "global_batch": 64 if quick else 512}


def run(ctx: RunContext) -> dict:
    """Measure checkpoint I/O vs table size, then training throughput with and without checkpoints."""
    s = _settings(ctx)
    dataset, preset = ctx.train_data()
    res = ctx.new_result("checkpoint", TITLE, {**s, "dataset": dataset, "preset": preset, "launcher": ctx.launcher,
                                               "repeats": ctx.repeats})
    storage = ctx.runs_dir("checkpoint")
    ctx.log(f"checkpoint I/O at {len(s['sizes'])} table sizes on 2 ranks")
    per_rank = ctx.pool(2).run(checkpoint_io_task, [tuple(x) for x in s["sizes"]], s["io_repeats"], storage)
    io = []
    for i, (rows, dim) in enumerate(s["sizes"]):
        save = [max(r[i]["save_s"][k] for r in per_rank) for k in range(s["io_repeats"])]
        load = [max(r[i]["load_s"][k] for r in per_rank) for k in range(s["io_repeats"])]
        size = per_rank[0][i]["bytes"]
        total = sum(size.values())
        io.append({"rows": rows, "dim": dim, "save_s": stats_of(save), "load_s": stats_of(load), "bytes": size,
                   "total_bytes": total, "save_mb_s": total / 1e6 / stats_of(save)["median"]})
        res["measurements"] += [measurement("checkpoint size", "MB", value=total / 1e6, rows=rows, dim=dim),
                                measurement("checkpoint save time", "s", values=save, rows=rows, dim=dim),
                                measurement("checkpoint load time", "s", values=load, rows=rows, dim=dim)]
    res["data"]["io"] = io
    _overhead(ctx, res, s, dataset, preset, storage)
    _figures(ctx, res)
    return res


def _overhead(ctx: RunContext, res: dict, s: dict, dataset: str, preset: str, storage: str) -> None:
    runs: dict[int, list[dict]] = {n: [] for n in s["intervals"]}
    for rep in range(ctx.repeats):
        for n in s["intervals"]:
            ctx.log(f"checkpoint overhead repeat {rep + 1}/{ctx.repeats}: interval {n or 'none'}")
            spec = JobSpec(preset=preset, dataset=dataset, workers=s["workers"], batch=s["global_batch"],
                           steps=s["steps"], log_every=s["log_every"], address=ctx.address, use_gpu=ctx.use_gpu,
                           overrides=(f"train.checkpoint_every_steps={n}", "train.keep_checkpoints=2"))
            pool = ctx.pool(s["workers"]) if ctx.launcher == "gloo" else None
            r = run_job(spec, storage=storage, launcher=ctx.launcher, pool=pool, tag=f"ckpt-every{n}")
            # Checkpoints inside the measured window: a checkpoint follows its step's log record.
            train = [x["step"] for x in r["records"] if x["kind"] == "train" and x["step"] >= s["log_every"]]
            window = [x for x in r["records"] if x["kind"] == "checkpoint" and train[0] <= x["step"] < train[-1]]
            runs[n].append({"sequences_per_s_wall": r["sequences_per_s_wall"], "sequences_per_s": r["sequences_per_s"],
                            "step_s": r["seconds"] / r["steps"], "idle_s": r["wall_seconds"] - r["seconds"],
                            "checkpoints": len(window)})
            shutil.rmtree(Path(storage) / r["run_name"], ignore_errors=True)
    base = runs[0]
    overhead = {}
    for n in s["intervals"]:
        if n == 0:
            continue
        direct = [1 - r["sequences_per_s_wall"] / b["sequences_per_s_wall"] for r, b in zip(runs[n], base)]
        cost = [(r["idle_s"] - b["idle_s"]) / max(r["checkpoints"], 1) for r, b in zip(runs[n], base)]
        model = [c / (n * r["step_s"] + c) for c, r in zip(cost, runs[n])]
        overhead[n] = {"direct": stats_of(direct), "cost_per_checkpoint_s": stats_of(cost), "model": stats_of(model),
                       "step_s": stats_of([r["step_s"] for r in runs[n]])}
        res["measurements"] += [
            measurement("throughput loss with checkpoints (wall time, side by side)", "%",
                        values=[100 * d for d in direct], interval=n),
            measurement("cost per checkpoint in a training run", "s", values=cost, interval=n)]
    res["data"]["overhead"] = {"runs": {str(k): v for k, v in runs.items()},
                               "by_interval": {str(k): v for k, v in overhead.items()}}
    d = s["default_interval"]
    res["targets"].append(target(f"throughput loss at the default interval ({d} steps)",
                                 100 * overhead[d]["direct"]["median"], op="<=", threshold=5.0, unit="%",
                                 source="issue 5"))


def _figures(ctx: RunContext, res: dict) -> None:
    io = res["data"]["io"]
    path, rel = ctx.figure_path("checkpoint_io")
    mb = [x["total_bytes"] / 1e6 for x in io]
    line_plot(path, {"save": (mb, [x["save_s"] for x in io]), "load": (mb, [x["load_s"] for x in io])},
              title="Checkpoint save / load time vs checkpoint size (2 ranks)", xlabel="checkpoint size (MB)",
              ylabel="seconds", logx=True)
    res["figures"].append(figure(rel, "Checkpoint save and load time vs size (item table rows x dim in the table)",
                                 unit="s", command=res["command"], repeats=res["settings"]["io_repeats"]))


def render(res: dict, rctx: RenderContext) -> str:
    """I/O table, overhead table and the model check."""
    s = res["settings"]
    out = ["Checkpoint I/O on 2 gloo ranks through `Checkpointer.save` / `Checkpointer.restore` (DCP sparse shards + "
           "dense fp32 state + RNG + COMMIT.json with sha256, copied to local storage; restores verify checksums "
           "and read from the page cache). Times are the collective call's wall time, max over ranks.", ""]
    rows = [[f"{x['rows']:,} x {x['dim']}", fmt(x["total_bytes"] / 1e6), fmt(x["bytes"]["sparse"] / 1e6),
             fmt(x["bytes"]["dense"] / 1e6), fmt_stats(x["save_s"]), fmt_stats(x["load_s"]), fmt(x["save_mb_s"])]
            for x in res["data"]["io"]]
    out.append(table(["item table rows x dim", "size MB", "sparse MB", "dense MB", "save s", "load s",
                      "save MB/s"], rows))
    for f in res["figures"]:
        out.append(rctx.figure_md(f))
    ov = res["data"]["overhead"]["by_interval"]
    out += [f"Training with checkpoints: {s['workers']} workers, global batch {s['global_batch']}, {s['steps']} steps, "
            f"launcher `{s['launcher']}`, {s['repeats']} interleaved repeats; throughput over wall time between step "
            f"{s['log_every']} and the last log point, beside the same run without checkpoints. `C` = wall time outside "
            "training steps minus the same without checkpoints, per checkpoint; model = C / (N s + C).", ""]
    rows = [[n, fmt_stats({k: 100 * v if k != "n" else v for k, v in o["direct"].items()}),
             fmt_stats(o["cost_per_checkpoint_s"]), fmt_stats({k: 1e3 * v if k != "n" else v for k, v in o["step_s"].items()}),
             fmt_stats({k: 100 * v if k != "n" else v for k, v in o["model"].items()})] for n, o in ov.items()]
    out.append(table(["interval (steps)", "throughput loss % (measured)", "C s", "step ms", "overhead % (model)"], rows))
    return "\n".join(out)


PART = Part(name="checkpoint", title=TITLE, run=run, render=render)
