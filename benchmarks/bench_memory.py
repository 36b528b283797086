"""Memory part: peak resident memory of each worker over a whole epoch with validation, checkpoint and test.

One run per worker count in fresh processes (the job under Ray Train, or a fresh rank pool), one
epoch at the preset's global batch, then validation (full ranking), the epoch-end checkpoint and
the test evaluation: the peak of a real run, reported by the job itself (``ru_maxrss`` of every
rank, in ``result.json``). Beside it, the bytes the model state needs by construction (item-table
shard, its row-wise Adagrad state, dense parameters with AdamW moments, evaluation buffers) and
the resident memory of a worker process that has only imported and initialised the stack.
"""

from __future__ import annotations

import resource
from typing import Any

from benchmarks.harness.jobs import JobSpec, run_job
from benchmarks.harness.parts import Part, RenderContext, RunContext
from benchmarks.harness.report import fmt, table
from benchmarks.harness.schema import measurement

__all__ = ["PART", "baseline_rss_task", "model_bytes"]

TITLE = "Memory per worker"
EVAL_CHUNK = 128  # users per scoring block in mvrec_dist.eval.full_ranking.target_ranks


def baseline_rss_task(ctx: Any) -> dict:
    """Peak RSS (MiB) of a rank that imported torch, torchrec, DeepSpeed and joined the process group."""
    import deepspeed  # noqa: F401
    import torchrec  # noqa: F401

    import mvrec_dist.models.builders  # noqa: F401
    import mvrec_dist.parallel.facade  # noqa: F401

    return {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def model_bytes(*, num_items: int, dim: int, dense_params: int, workers: int) -> dict:
    """Bytes of model state per worker by construction (fp32, row-wise sharding, ZeRO-1).

    Args:
        num_items: N (the table has N+1 rows).
        dim: D.
        dense_params: Parameters of the dense tower.
        workers: W.

    Returns:
        MiB per component: table shard, row-wise Adagrad state, dense params + grads, AdamW moments
        (ZeRO-1 partitions them over W), evaluation item representations [N+1, D] and score block.
    """
    mib = 1 << 20
    rows = (num_items + 1) / workers
    return {"table shard": rows * dim * 4 / mib, "row-wise Adagrad state": rows * 4 / mib,
            "dense params + grads": 2 * dense_params * 4 / mib, "AdamW moments (ZeRO-1 share)": 2 * dense_params * 4 / workers / mib,
            "eval item representations": (num_items + 1) * dim * 4 / mib,
            "eval score block": 5 * EVAL_CHUNK * (num_items + 1) / mib}


def run(ctx: RunContext) -> dict:
    """One epoch + validation + checkpoint + test per worker count; peak RSS per rank."""
    dataset, preset = ctx.train_data()
    counts = [n for n in (1, 2) if n <= max(ctx.workers)]
    batch = 256 if ctx.quick else 512
    res = ctx.new_result("memory", TITLE, {"dataset": dataset, "preset": preset, "launcher": ctx.launcher,
                                           "workers": counts, "global_batch": batch, "repeats": 1})
    storage = ctx.runs_dir("memory")
    ctx.log("memory: resident size of a bare rank (imports + process group)")
    pool = ctx.fresh_pool(1)
    try:
        base = pool.run(baseline_rss_task)[0]["peak_rss_mib"]
    finally:
        pool.close()
    res["measurements"].append(measurement("peak RSS of a rank after imports", "MiB", value=base))
    peaks, info = {}, {}
    for n in counts:
        ctx.log(f"memory: one epoch with validation and test on {n} worker(s)")
        spec = JobSpec(preset=preset, dataset=dataset, workers=n, batch=batch, steps=0, log_every=5,
                       address=ctx.address, use_gpu=ctx.use_gpu,
                       overrides=("train.epochs=1", "eval.every_epochs=1", "train.test_after_training=true",
                                  "train.checkpoint_at_epoch_end=true"))
        pool = ctx.fresh_pool(n) if ctx.launcher == "gloo" else None
        try:
            r = run_job(spec, storage=storage, launcher=ctx.launcher, pool=pool, tag="memory", measure=False)
        finally:
            if pool is not None:
                pool.close()
        ranks = {k.removeprefix("peak_rss_mib_rank"): v for k, v in r["result"].items()
                 if k.startswith("peak_rss_mib_rank")}
        peaks[n] = ranks
        info[n] = {"steps": r["result"].get("steps"), "test_users": r["result"].get("test/users")}
        for rank, v in ranks.items():
            res["measurements"].append(measurement("peak RSS per worker (epoch + validation + test)", "MiB",
                                                   value=v, workers=n, rank=int(rank)))
    from mvrec_dist.data.manifest import load_manifest

    manifest = load_manifest(dataset)
    dim, dense = _model_shape(preset, dataset)
    res["data"] = {"baseline_mib": base, "peaks": {str(k): v for k, v in peaks.items()}, "runs": info,
                   "model_mib": {str(n): model_bytes(num_items=manifest.num_items, dim=dim, dense_params=dense,
                                                     workers=n) for n in counts},
                   "num_items": manifest.num_items, "dim": dim, "dense_params": dense}
    return res


def _model_shape(preset: str, dataset: str) -> tuple[int, int]:
    """(D, dense parameter count) of the preset's model."""
    import torch

    from mvrec_dist.config import TrainJobConfig, load_config
    from mvrec_dist.data.loader import load_item_train_counts
    from mvrec_dist.data.manifest import load_manifest
    from mvrec_dist.models.builders import build_recommender

    cfg = load_config(TrainJobConfig, preset, [f"data.dataset_dir={dataset}"])
    manifest = load_manifest(dataset)
    torch.manual_seed(0)
    model = build_recommender(cfg.model, num_items=manifest.num_items, item_train_counts=load_item_train_counts(manifest),
                              max_seq_len=cfg.data.max_seq_len, device="meta")
    return cfg.model.embedding_dim, sum(p.numel() for p in model.dense.parameters())


def render(res: dict, rctx: RenderContext) -> str:
    """Peaks per rank beside the state a worker holds by construction."""
    d, s = res["data"], res["settings"]
    out = [f"Dataset `{s['dataset']}`, preset `{s['preset']}`, global batch {s['global_batch']}, launcher "
           f"`{s['launcher']}`; one run per worker count (peak RSS is close to deterministic). A rank that has only "
           f"imported the stack and joined the process group holds {fmt(d['baseline_mib'])} MiB.", ""]
    rows = []
    for n, ranks in d["peaks"].items():
        model = d["model_mib"][n]
        rows.append([n, ", ".join(f"rank {r}: {fmt(v)}" for r, v in sorted(ranks.items())),
                     fmt(sum(v for k, v in model.items() if not k.startswith("eval"))),
                     fmt(sum(v for k, v in model.items() if k.startswith("eval")))])
    out.append(table(["workers", "peak RSS MiB", "model state MiB (by construction)", "eval buffers MiB"], rows))
    comp = d["model_mib"][max(d["model_mib"], key=int)]
    out.append(f"Model state at {max(d['model_mib'], key=int)} worker(s), {d['num_items']:,} items x D={d['dim']}, "
               f"{d['dense_params']:,} dense parameters: " + "; ".join(f"{k} {fmt(v)} MiB" for k, v in comp.items())
               + ". The rest of the peak is the imported stack, the reader's shard buffers and allocator slack.\n")
    return "\n".join(out)


PART = Part(name="memory", title=TITLE, run=run, render=render)
