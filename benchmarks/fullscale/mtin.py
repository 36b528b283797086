"""MTIN at full MicroLens scale: its real tables planned by TorchRec, its step projected by the cost model.

MTIN (issue 15) keeps a per-user interest memory in the TorchRec table ``mtin_memory``: ``2 s`` rows
of width d per user (``models.user_encoders.mtin.memory_table_spec``), looked up with the batch's
items in one all-to-all and written back every step through the table's fused SGD at lr 1
(``TableSpec.state``). At 34.5M users it is the largest table of the system.

* **Config**: the MTIN preset at the paper's defaults with the full SASRec preset's GPU settings
  (``full_scale_assumptions.json``, section ``mtin``; there is no full-MicroLens MTIN preset).
* **Tables**: ``MTINTask.table_specs`` of that config for the full release's counts (the item table
  and the memory table), planned by ``planner.plan_tables`` as the trainer plans them, on the
  simulated 1x8, 4x8 and 8x8 H100 clusters.
* **Workload**: the plan part's full-shaped windows collated by ``MTINCollate`` (one example per
  window: H_pos, sampled H_neg, 1 + 4 candidates): unique items and memory rows per rank-step and
  their balance over row-wise shards (``workload.mtin_step_workload``).
* **FLOPs**: the real ``MTINTower`` forward + backward per example (``flops.mtin_flops_per_example``).
* **Projection**: ``projection.project_step`` with the memory rows as state rows (read, then read and
  written by the update; in the same all-to-all as the item rows). Projections, not measurements.
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any, Callable

from benchmarks.fullscale import costmodel as cm
from benchmarks.fullscale.calibrate import embedding_bytes
from benchmarks.harness.schema import measurement

__all__ = ["mtin_config", "mtin_table_specs", "mtin_full_scale"]


def mtin_config(repo: Path, a: dict) -> Any:
    """The full-scale MTIN job config: the recorded preset with the recorded overrides."""
    from mvrec_dist.config import TrainJobConfig, load_config

    return load_config(TrainJobConfig, repo / a["mtin"]["preset"], list(a["mtin"]["overrides"]))


def mtin_table_specs(cfg: Any, *, users: int, items: int) -> tuple:
    """The MTIN task's tables (``MTINTask.table_specs``) for a release of ``users`` users and ``items`` items."""
    from mvrec_dist.tasks import build_task

    return build_task(cfg).table_specs(types.SimpleNamespace(num_items=items, num_users=users))


def _workload(cfg: Any, a: dict, specs: tuple, *, drawn: Any, batch: int, worlds: list[int], quick: bool
              ) -> tuple[dict, Any]:
    import torch

    from benchmarks.fullscale.workload import mtin_step_workload
    from mvrec_dist.models.user_encoders.mtin import MEMORY_TABLE, memory_row_ids
    from mvrec_dist.tasks.mtin_batch import MTINCollate

    d, t = a["dataset"], cfg.task
    # As MTINData builds it (tasks/mtin.py): H_neg defaults to L items.
    collate = MTINCollate(num_items=d["items"], max_seq_len=cfg.data.max_seq_len,
                          negative_length=t.negative_length or cfg.data.max_seq_len, num_negatives=t.num_negatives,
                          seed=cfg.train.seed)
    memory = next(s for s in specs if s.name == MEMORY_TABLE)
    return mtin_step_workload(drawn, users=d["users"], items=d["items"], batch=batch, collate=collate,
                              memory_rows=lambda u: memory_row_ids(torch.as_tensor(u), t.mtin),
                              memory_table_rows=memory.num_embeddings, world_sizes=worlds,
                              max_steps=4 if quick else 40, sample_batch=16 if quick else 64)


def _project(cfg: Any, a: dict, work: dict, flops: dict, *, batch: int, worlds: list[int], epoch: dict,
             loader_us: float) -> dict:
    """Projected step per world size, with the embedding traffic by table (bytes per rank-step)."""
    from benchmarks.fullscale.projection import project_step
    from mvrec_dist.models.user_encoders.mtin import MEMORY_TABLE

    dim, bf16 = cfg.model.embedding_dim, cfg.parallel.precision == "bf16"
    out = {}
    for w in worlds:
        step = project_step(a=a, world=w, dim=dim, batch=batch, unique_ids=work["unique_items"],
                            imbalance=work["shard_load_max_over_mean"][str(w)], dense_flops_per_seq=flops["total"],
                            dense_params=flops["trainable_params"], content_flops_per_item=0.0,
                            loader_us_per_sequence=loader_us, bf16=bf16, state_rows=work["memory_rows"])
        traffic = {name: {"rows": rows, "hbm_bytes": embedding_bytes(rows, dim),
                          "a2a_bytes": cm.a2a_bytes(unique_ids=rows, dim=dim, out_bytes=2 if bf16 else 4,
                                                    world=w)["total"]}
                   for name, rows in (("item", work["unique_items"]), (MEMORY_TABLE, work["memory_rows"]))}
        ep = cm.epoch_seconds(windows=epoch["windows"], batch_per_rank=batch, world=w, step_s=step["total"], eval_s=0.0)
        out[str(w)] = {"step": step, "traffic": traffic, "epoch_train": ep}
    return out


def mtin_full_scale(res: dict, a: dict, *, repo: Path, quick: bool, drawn: Any, read_us_per_example: float,
                    log: Callable[[str], None] = print) -> None:
    """Plan and project MTIN at full scale; fills ``res["data"]["mtin"]``, measurements and notes.

    Args:
        res: The plan part's result (``data``, ``measurements`` and ``notes`` are extended).
        a: The recorded assumptions (values).
        repo: Repository root (the preset's path is relative to it).
        quick: CI-sized: a smaller batch, the 1x8 cluster only, few steps (the code path, not the figures).
        drawn: The plan part's full-shaped windows (``workload.draw_windows``).
        read_us_per_example: Loader cost of reading and windowing one example (the SASRec runs'
            measurement; MTIN's own collate is timed here and added).
        log: Progress lines.
    """
    from benchmarks.fullscale.flops import mtin_flops_per_example
    from benchmarks.fullscale.planner import plan_tables
    from benchmarks.fullscale.workload import epoch_size
    from mvrec_dist.models.user_encoders.mtin import MEMORY_TABLE
    from mvrec_dist.parallel.planning import STORAGE_RESERVE_FRACTION, SUPPORTED_SHARDING_TYPES

    d, t = a["dataset"], a["training"]
    cfg = mtin_config(repo, a)
    mt = cfg.task.mtin
    specs = mtin_table_specs(cfg, users=d["users"], items=d["items"])
    memory = next(s for s in specs if s.name == MEMORY_TABLE)
    # Cross-check of the task's spec against the model's documented layout: 2 s rows of d per user, user 0 the pad.
    if (memory.num_embeddings * memory.embedding_dim != (d["users"] + 1) * mt.memory_width(cfg.model.embedding_dim)
            or not memory.state):
        raise AssertionError(f"mtin_memory is {memory.num_embeddings} x {memory.embedding_dim} (state={memory.state}), "
                             f"not {d['users'] + 1} users x {mt.memory_width(cfg.model.embedding_dim)} floats")
    batch = 256 if quick else cfg.batch_size_per_worker
    topologies = [[1, 8]] if quick else t["topologies"]
    worlds = [n * g for n, g in topologies]
    log("plan: MTIN at full scale (tables, workload, FLOPs, planner, projection)")
    work, sample = _workload(cfg, a, specs, drawn=drawn, batch=batch, worlds=worlds, quick=quick)
    flops = mtin_flops_per_example(cfg, num_items=d["items"], num_users=d["users"], batch=sample)
    plans = []
    for nodes, gpn in topologies:
        p = plan_tables(list(specs), nodes=nodes, gpus_per_node=gpn, batch_per_rank=batch,
                        ids_per_bag={"item": work["unique_items"] / batch, MEMORY_TABLE: work["memory_rows"] / batch},
                        gpu=a["gpu"], node=a["node"], reserve_fraction=STORAGE_RESERVE_FRACTION,
                        sharding_types={s.name: list(SUPPORTED_SHARDING_TYPES[("cuda", s.kind)]) for s in specs},
                        bf16_output=cfg.parallel.precision == "bf16", learning_rate=cfg.parallel.embedding_lr)
        spill = sorted({x["kernel"] for x in p["tables"].values()} - {"fused"})
        p["fits_in_hbm"] = not spill and p["max_ddr_gib"] == 0 and p["max_hbm_gib"] <= p["hbm_usable_gib"]
        p["spill_kernels"] = spill
        plans.append({k: v for k, v in p.items() if k != "shards"})
    epoch = epoch_size(users=d["users"], items=d["items"], interactions=d["interactions"],
                       max_seq_len=cfg.data.max_seq_len)
    loader_us = read_us_per_example + work["collate_us_per_example"]
    projection = _project(cfg, a, work, flops, batch=batch, worlds=worlds, epoch=epoch, loader_us=loader_us)
    res["data"]["mtin"] = {
        "preset": a["mtin"]["preset"], "overrides": list(a["mtin"]["overrides"]), "batch_per_rank": batch,
        "dim": cfg.model.embedding_dim, "groups": mt.num_groups, "temporal_masks": mt.num_temporal_masks,
        "positive_length": cfg.data.max_seq_len, "negative_length": cfg.task.negative_length or cfg.data.max_seq_len,
        "candidates": 1 + cfg.task.num_negatives, "memory_rows_per_user": 2 * mt.num_groups,
        "precision": cfg.parallel.precision,
        "tables": [{"name": s.name, "rows": s.num_embeddings, "dim": s.embedding_dim, "state": s.state,
                    "keyed_by": s.keyed_by, "gib_fp32": s.num_embeddings * s.embedding_dim * 4 / 2**30} for s in specs],
        "workload": work, "flops": flops, "plans": plans, "epoch_windows": epoch["windows"],
        "loader_us_per_example": {"read_and_window": read_us_per_example,
                                  "collate": work["collate_us_per_example"], "total": loader_us},
        "projection": projection}
    res["measurements"] += [
        measurement("MTIN: memory table size (fp32)", "GiB",
                    value=memory.num_embeddings * memory.embedding_dim * 4 / 2**30, rows=memory.num_embeddings,
                    dim=memory.embedding_dim),
        measurement("MTIN: dense FLOPs per example (fwd+bwd)", "FLOPs", value=flops["total"]),
        measurement("MTIN: unique item ids per rank per step", "count", value=work["unique_items"], batch=batch)]
    for p in plans:
        labels = {"nodes": p["nodes"], "gpus": p["gpus_per_node"]}
        w = p["world_size"]
        step = projection[str(w)]["step"]
        res["measurements"] += [
            measurement("MTIN planner: max per-rank HBM", "GiB", value=p["max_hbm_gib"], **labels),
            measurement("MTIN planner: max per-rank embedding time per step", "ms", value=p["max_rank_ms"], **labels),
            measurement("MTIN projected step time (projection, not measured)", "ms", value=1e3 * step["total"],
                        bound=step["bound"], **labels),
            measurement("MTIN memory rows read + written per rank-step (projection)", "bytes/step",
                        value=projection[str(w)]["traffic"][MEMORY_TABLE]["hbm_bytes"], **labels)]
    res["notes"].append("MTIN at full scale: the MTIN preset at paper defaults with the full SASRec preset's GPU "
                        "settings (assumptions, section mtin); step times are projections from the cost model")
