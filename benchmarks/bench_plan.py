"""Plan part: the full MicroLens (34.5M users, 1.14M items, 1.0B interactions) on paper and by simulation.

1. **Workload**: per-rank steps of the full preset drawn from the full-shaped synthetic generator
   (``fullscale/workload.py``): unique ids per step (what the all-to-all carries), shard balance,
   epoch size.
2. **FLOPs**: the dense tower per sequence at each configured D, and every video encoder per item
   and fine-tuning mode (``fullscale/flops.py``, counted on the real modules).
3. **TorchRec planner** on simulated 1x8, 4x8 and 8x8 H100-80GB clusters at each D
   (``fullscale/planner.py``): chosen plan, per-rank memory, the planner's own time estimate.
4. **Cost model check** on this machine (``fullscale/calibrate.py``): machine rates measured on 2
   ranks, per-step time predicted from them and compared with the scaling part's phase-timed steps
   (run ``--only scaling`` first), the all-to-all bytes predicted vs counted; ingestion time
   predicted linearly vs the largest measured size (from ``ingest_scale``).
5. **Projection**: epoch time vs GPUs for the ID model at each D and for VideoRec encoders, and
   ingestion time vs CPU nodes, with every assumption listed from
   ``benchmarks/reference/full_scale_assumptions.json`` (value, unit, source).
6. **MTIN at full scale** (``fullscale/mtin.py``): the MTIN task's item and per-user memory tables
   planned on the same clusters, and its step projected at 8/32/64 GPUs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.harness.parts import Part, RenderContext, RunContext
from benchmarks.harness.schema import measurement

__all__ = ["PART", "load_assumptions"]

TITLE = "Full-scale plan (MicroLens full)"
ASSUMPTIONS = Path(__file__).resolve().parent / "reference" / "full_scale_assumptions.json"
FULL_PRESET = "jobs/configs/microlens-full/sasrec-id.yaml"
VIDEO_VARIANTS = ("r3d18", "r2plus1d18", "frame_cnn", "videomae")


def load_assumptions(path: Path = ASSUMPTIONS) -> tuple[dict, dict]:
    """``(values, full records)``: section -> key -> value, and the file as recorded (with units, sources)."""
    raw = json.loads(path.read_text())
    values = {sec: {k: e["value"] for k, e in entries.items()} for sec, entries in raw.items() if not sec.startswith("_")}
    return values, raw


def _preset_cfg(repo: Path, overrides: list[str]):
    from mvrec_dist.config import TrainJobConfig, load_config

    return load_config(TrainJobConfig, repo / FULL_PRESET, overrides)


def _video_configs(quick: bool) -> dict[str, Any]:
    from mvrec_dist.config.content import FrameCNNConfig, R2Plus1D18Config, R3D18Config, VideoMAEConfig

    if quick:  # tiny encoders: the code path, not the figures
        small = {"frames": 2, "size": 32, "top_blocks": 1}
        return {"r3d18": R3D18Config(widths=(4, 8, 8, 8), stem_width=4, **small),
                "videomae": VideoMAEConfig(embed_dim=16, depth=2, num_heads=2, mlp_dim=32, tubelet=2, **small)}
    return {"r3d18": R3D18Config(), "r2plus1d18": R2Plus1D18Config(), "frame_cnn": FrameCNNConfig(),
            "videomae": VideoMAEConfig()}


def run(ctx: RunContext) -> dict:
    """Workload, FLOPs, planner, cost-model check and projection."""
    from benchmarks.fullscale.flops import dense_flops_per_sequence, video_encoder_flops
    from benchmarks.fullscale.planner import plan_item_table
    from benchmarks.fullscale.workload import draw_windows, epoch_size, step_workload
    from benchmarks.harness.jobs import REPO
    from mvrec_dist.parallel.planning import SUPPORTED_SHARDING_TYPES

    a, raw = load_assumptions()
    d, t = a["dataset"], a["training"]
    cfg = _preset_cfg(REPO, [])
    batch = 256 if ctx.quick else cfg.batch_size_per_worker
    loss = cfg.model.loss
    res = ctx.new_result("plan", TITLE, {"assumptions": raw, "preset": FULL_PRESET, "batch_per_rank": batch,
                                         "negatives": loss.num_negatives, "precision": cfg.parallel.precision,
                                         "repeats": 1})
    worlds = sorted({n * g for n, g in t["topologies"]} | set(t["gpu_counts_projected"]))
    ctx.log("plan: simulating per-rank steps of the full workload")
    totals = dict(users=d["users"], items=d["items"], interactions=d["interactions"],
                  chunk_users=2000 if ctx.quick else 34_268, parts=1 if ctx.quick else t["simulation_parts"])
    drawn = draw_windows(max_seq_len=cfg.data.max_seq_len, **totals)  # also MTIN's examples (one per window)
    work, sample = step_workload(batch=batch, max_seq_len=cfg.data.max_seq_len, negatives=loss.num_negatives,
                                 sampler=loss.sampler, world_sizes=worlds, max_steps=4 if ctx.quick else 40,
                                 drawn=drawn, **totals)
    epoch = epoch_size(users=d["users"], items=d["items"], interactions=d["interactions"],
                       max_seq_len=cfg.data.max_seq_len)
    res["data"].update(workload=work, epoch=epoch)
    res["measurements"] += [measurement("unique ids per rank per step (full workload)", "count", value=work["unique_ids"],
                                        batch=batch),
                            measurement("training windows per epoch (full MicroLens)", "count", value=epoch["windows"])]
    ctx.log("plan: counting dense FLOPs per sequence")
    dims = [64] if ctx.quick else t["dims"]
    dense = {}
    for dim in dims:
        m = _preset_cfg(REPO, [f"model.embedding_dim={dim}"]).model
        dense[str(dim)] = dense_flops_per_sequence(m, num_items=d["items"], batch=sample)
        res["measurements"].append(measurement("dense FLOPs per sequence (fwd+bwd)", "FLOPs/sequence",
                                               value=dense[str(dim)]["total"], dim=dim))
    res["data"]["dense_flops"] = dense
    ctx.log("plan: counting video encoder FLOPs per item")
    video = video_encoder_flops(_video_configs(ctx.quick))
    res["data"]["video_flops"] = video
    for name, v in video.items():
        res["measurements"].append(measurement("video encoder forward FLOPs per item", "FLOPs", value=v["forward"],
                                               encoder=name))
    ctx.log("plan: TorchRec planner on simulated H100 clusters")
    plans = []
    topologies = [[1, 8]] if ctx.quick else t["topologies"]
    for nodes, gpn in topologies:
        for dim in dims:
            p = plan_item_table(rows=d["items"] + 1, dim=dim, nodes=nodes, gpus_per_node=gpn, batch_per_rank=batch,
                                ids_per_sequence=work["unique_ids"] / batch, gpu=a["gpu"], node=a["node"],
                                reserve_fraction=0.15, sharding_types=list(SUPPORTED_SHARDING_TYPES[("cuda", "sequence")]),
                                bf16_output=cfg.parallel.precision == "bf16", learning_rate=cfg.parallel.embedding_lr)
            plans.append(p)
            res["measurements"] += [
                measurement("planner: max per-rank embedding time per step", "ms", value=p["max_rank_ms"],
                            nodes=nodes, gpus=gpn, dim=dim, sharding=p["sharding_type"]),
                measurement("planner: max per-rank HBM", "GiB", value=p["max_hbm_gib"], nodes=nodes, gpus=gpn, dim=dim)]
    res["data"]["plans"] = [{k: v for k, v in p.items() if k != "shards"} | {"shards": p["shards"][:8]} for p in plans]
    from benchmarks.fullscale.projection import check_and_project

    check_and_project(ctx, res, a, cfg, batch, dims, worlds)
    from benchmarks.fullscale.mtin import mtin_full_scale

    mtin_full_scale(res, a, repo=REPO, quick=ctx.quick, drawn=drawn, log=ctx.log,
                    read_us_per_example=res["data"]["loader_us_per_sequence"]["read_and_window"])
    return res


def render(res: dict, rctx: RenderContext) -> str:
    """Tables of the workload, FLOPs, plans, the check and the projection."""
    from benchmarks.fullscale.render import render_plan

    return render_plan(res, rctx)


PART = Part(name="plan", title=TITLE, run=run, render=render)
