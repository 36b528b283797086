"""The plan part's second half: check the cost model on this machine, then project the full MicroLens.

Inputs come from the plan part's own measurements (workload, FLOPs), the recorded assumptions,
and, for the check, the latest ``scaling.json`` and ``ingest_scale.json`` in the results directory
(run those parts first; without them the check is skipped with a note).
"""

from __future__ import annotations

import json
from typing import Any

from benchmarks.fullscale import costmodel as cm
from benchmarks.fullscale.calibrate import check_against_phases, embedding_bytes, machine_rates_task
from benchmarks.harness.plots import line_plot
from benchmarks.harness.schema import figure, measurement

__all__ = ["check_and_project", "project_step"]


def _load(ctx: Any, part: str) -> dict | None:
    path = ctx.results_dir / f"{part}.json"
    if not path.exists():
        return None
    r = json.loads(path.read_text())
    return r if r.get("quick") == ctx.quick else None


def _cpu_check(ctx: Any, res: dict) -> dict | None:
    """Predict the scaling part's phase-timed steps from machine rates; None when there is no scaling result."""
    from benchmarks.fullscale.flops import dense_flops_per_sequence
    from mvrec_dist.config import TrainJobConfig, load_config
    from mvrec_dist.data.loader import TrainData
    from mvrec_dist.data.manifest import ManifestError, load_manifest

    scaling = _load(ctx, "scaling")
    phases = (scaling or {}).get("data", {}).get("phases")
    if not phases or len(phases) < 2:
        res["notes"].append("cost-model check skipped: no scaling result with phase timings at two worker counts "
                            "(run --only scaling first, in the same mode)")
        return None
    s = scaling["settings"]
    base = min(phases, key=int)
    dataset = s["dataset"]
    try:
        manifest = load_manifest(dataset)
    except ManifestError:
        if not ctx.quick:
            res["notes"].append(f"cost-model check skipped: the scaling part's dataset {dataset} is gone")
            return None
        dataset = ctx.train_data()[0]  # the CI dataset is deterministic: the same one, made again
        manifest = load_manifest(dataset)
    cfg = load_config(TrainJobConfig, s["preset"], [f"data.dataset_dir={dataset}", "parallel.num_workers=1",
                                                    f"train.batch_size={s['global_batch']}"])
    data = TrainData(cfg, manifest, rank=0, world_size=1)
    batch = next(data.train_batches(0))
    flops = dense_flops_per_sequence(cfg.model, num_items=manifest.num_items, batch=batch)["total"]
    rates = {}
    for w in sorted(phases, key=int):
        r0 = phases[w]["per_rank"][0]
        lookups = int(r0["unique_items_per_step"])
        rates[w] = ctx.pool(int(w)).run(
            machine_rates_task, rows_by_dim=manifest.num_items + 1, dim=cfg.model.embedding_dim, lookups=lookups,
            batch_positions=int(r0["sequences_per_step"]) * cfg.data.max_seq_len,
            a2a_bytes_per_rank=int(lookups * cfg.model.embedding_dim * 4))[0]
    check = check_against_phases(phases, rates, flops, dim=cfg.model.embedding_dim)
    for w, c in check.items():
        res["measurements"] += [
            measurement("cost model: predicted / measured step time on this machine", "ratio",
                        value=c["predicted_over_measured"], workers=int(w), fitted=c["fitted"]),
            measurement("cost model: all-to-all bytes per rank-step, model / counted", "ratio",
                        value=c["a2a_bytes_model"] / c["a2a_bytes_counted"] if c["a2a_bytes_counted"] else 1.0,
                        workers=int(w))]
    loader_us = 1e3 * phases[base]["ms_per_step"]["data"] / phases[base]["per_rank"][0]["sequences_per_step"]
    return {"rates": rates, "flops_per_sequence": flops, "check": check, "loader_us_per_sequence": loader_us,
            "dataset": dataset, "preset": s["preset"], "dim": cfg.model.embedding_dim,
            "note": "all-to-all volume on CPU is the full softmax's: every step looks up all N+1 items"}


def _ingest_check(ctx: Any, res: dict) -> dict | None:
    scale = _load(ctx, "ingest_scale")
    sizes = (scale or {}).get("data", {}).get("sizes", [])
    if len(sizes) < 3:
        res["notes"].append("ingestion check skipped: needs an ingest_scale result with >= 3 sizes")
        return None
    a, b, last = sizes[0], sizes[1], sizes[-1]
    marginal = (b["seconds"] - a["seconds"]) / (b["interactions"] - a["interactions"])
    fixed = a["seconds"] - marginal * a["interactions"]
    predicted = fixed + marginal * last["interactions"]
    res["measurements"].append(measurement("ingestion time predicted linearly from the two smallest sizes / measured",
                                           "ratio", value=predicted / last["seconds"], interactions=last["interactions"]))
    cores = scale["machine"]["cores"]
    # The marginal cost over all of this machine's cores, as core-seconds per interaction.
    overall = (last["seconds"] - a["seconds"]) / (last["interactions"] - a["interactions"])
    out = {"marginal_s": marginal, "fixed_s": fixed, "predicted_s": predicted, "measured_s": last["seconds"],
           "interactions": last["interactions"], "core_seconds_per_interaction": overall * cores,
           "bytes_per_interaction": last["bytes_per_interaction"], "cores": cores}
    if "exchange" in last:
        # Per stage at the largest size: this machine's cores were busy for the stage's wall time (it is
        # CPU-bound here; the exchange's files and the shards stream at disk speed or stay in the page cache).
        n, st, ex = last["interactions"], last["stages_s"], last["exchange"]
        out["stage_core_seconds_per_interaction"] = {k: st.get(k, 0.0) * cores / n for k in cm.INGEST_STAGES}
        out["serial_seconds_per_interaction"] = sum(st.get(k, 0.0) for k in ("ids", "items", "finish", "publish")) / n
        out["stage_bytes_per_interaction"] = {
            "read": (last["csv_bytes"] + ex["piece_bytes"]) / n, "group": (ex["piece_bytes"] + ex["grouped_bytes"]) / n,
            "write": (ex["grouped_bytes"] + last["shard_bytes"]) / n}
    return out


def project_step(*, a: dict, world: int, dim: int, batch: int, unique_ids: float, imbalance: float,
                 dense_flops_per_seq: float, dense_params: int, content_flops_per_item: float,
                 loader_us_per_sequence: float, bf16: bool, state_rows: float = 0.0) -> dict:
    """One full-scale step on ``world`` H100s from the recorded assumptions (seconds per component).

    ``unique_ids`` are the item rows a rank looks up (and its fused optimizer updates); ``state_rows``
    the rows of state tables (MTIN's memory: ``2 s`` per example) it looks up and writes back through
    their SGD. Both kinds travel in the same all-to-all (one ``EmbeddingCollection``) and cost the same
    row bytes (``calibrate.embedding_bytes``: a read, then the update's read and write); only item rows
    feed a content encoder. ``batch`` counts sequences (examples, for MTIN).
    """
    gpu, node, eff = a["gpu"], a["node"], a["efficiency"]
    gpn = int(node["gpus"])
    flops_s = gpu["bf16_dense_tflops"] * 1e12 * eff["dense_mfu"]
    rows = unique_ids + state_rows
    vol = cm.a2a_bytes(unique_ids=rows, dim=dim, out_bytes=2 if bf16 else 4, world=world)["total"] * imbalance
    a2a = cm.a2a_seconds(vol, world=world, gpus_per_node=gpn, intra_gb_s=gpu["nvlink_gb_s_per_direction"],
                         inter_gb_s=node["nic_gb_s_per_gpu"], efficiency=eff["a2a_link_efficiency"])
    sync_link = node["nic_gb_s_per_gpu"] if world > gpn else gpu["nvlink_gb_s_per_direction"]
    data_s = batch * loader_us_per_sequence * 1e-6 / (eff["loader_workers_per_gpu"] * node["cpu_core_speed_vs_this_machine"])
    return cm.step_seconds(
        data_s=data_s, overlap_data=bool(eff["loader_overlap"]), overhead_s=eff["step_overhead_ms"] / 1e3,
        dense_flops=dense_flops_per_seq * batch, content_flops=content_flops_per_item * unique_ids,
        flops_per_s=flops_s, embedding_bytes=embedding_bytes(rows, dim),
        mem_bytes_per_s=gpu["hbm_bw_gb_s"] * 1e9 * eff["hbm_efficiency"], a2a_s=a2a,
        latency_s=eff["collective_latency_us"] * 1e-6 if world > 1 else 0.0, collectives=int(eff["collectives_per_step"]),
        sync_bytes=(2 * 2 * dense_params * (world - 1) / world) if world > 1 else 0.0,
        sync_bytes_per_s=sync_link * 1e9 * eff["a2a_link_efficiency"])


def check_and_project(ctx: Any, res: dict, a: dict, cfg: Any, batch: int, dims: list[int], worlds: list[int]) -> None:
    """Fill ``res`` with the CPU check, the ingestion check and the full-scale projections (and their figures)."""
    cpu = _cpu_check(ctx, res)
    ingest = _ingest_check(ctx, res)
    res["data"]["check"] = {"cpu": cpu, "ingest": ingest}
    d, work, epoch = a["dataset"], res["data"]["workload"], res["data"]["epoch"]
    # Loader cost per sequence: the training runs' data phase (reading, windowing, collating without negatives)
    # plus collating with the full preset's sampled negatives (workload simulation): conservative, the
    # padding work is counted twice.
    read_us = cpu["loader_us_per_sequence"] if cpu else 0.0
    if not cpu:
        res["notes"].append("projection without a measured shard-reading cost: only collation counted as loading")
    loader_us = read_us + work["collate_us_per_sequence"]
    res["data"]["loader_us_per_sequence"] = {"read_and_window": read_us, "collate_with_negatives":
                                             work["collate_us_per_sequence"], "total": loader_us}
    bf16 = cfg.parallel.precision == "bf16"
    gpus = sorted(set(a["training"]["gpu_counts_projected"]) | set(worlds))
    series: dict[str, dict] = {}

    def project(label: str, dim: int, content: float) -> None:
        dense = res["data"]["dense_flops"][str(dim)]
        rows = {}
        for w in gpus:
            imb = work["shard_load_max_over_mean"].get(str(w), 1.0)
            step = project_step(a=a, world=w, dim=dim, batch=batch, unique_ids=work["unique_ids"], imbalance=imb,
                                dense_flops_per_seq=dense["total"], dense_params=dense["dense_params"],
                                content_flops_per_item=content, loader_us_per_sequence=loader_us, bf16=bf16)
            ev = cm.eval_seconds(users=d["users"], items=d["items"], dim=dim, world=w,
                                 flops_per_s=a["gpu"]["bf16_dense_tflops"] * 1e12 * a["efficiency"]["eval_mfu"],
                                 mem_bytes_per_s=a["gpu"]["hbm_bw_gb_s"] * 1e9 * a["efficiency"]["hbm_efficiency"])
            rows[str(w)] = {"step": step, "epoch": cm.epoch_seconds(windows=epoch["windows"], batch_per_rank=batch,
                                                                    world=w, step_s=step["total"], eval_s=ev)}
        series[label] = {"dim": dim, "content_flops_per_item": content, "by_gpus": rows}

    for dim in dims:
        project(f"SASRec ID, D={dim}", dim, 0.0)
    base_dim = cfg.model.embedding_dim if str(cfg.model.embedding_dim) in res["data"]["dense_flops"] else dims[0]
    for name, v in res["data"]["video_flops"].items():
        for mode in ("top", "top_cached_trunk"):
            project(f"SASRec V ({name}, {mode.replace('_', ' ')}), D={base_dim}", base_dim, v["train"][mode])
    res["data"]["projection"] = {"gpus": gpus, "series": series}
    _ingest_projection(res, a, ingest)
    _figures(ctx, res)


def _ingest_projection(res: dict, a: dict, ingest: dict | None) -> None:
    if ingest is None:
        return
    if "stage_core_seconds_per_interaction" not in ingest:
        res["notes"].append("ingestion projection skipped: the ingest_scale result has no stage breakdown (re-run it)")
        return
    d, ic = a["dataset"], a["ingest_cluster"]
    n_int, speed = d["interactions"], a["node"]["cpu_core_speed_vs_this_machine"]
    rows = {}
    for n in ic["nodes"]:
        rows[str(n)] = cm.ingest_seconds(
            stage_core_seconds={k: v * n_int / speed for k, v in ingest["stage_core_seconds_per_interaction"].items()},
            stage_bytes={k: v * n_int for k, v in ingest["stage_bytes_per_interaction"].items()},
            serial_s=ingest["serial_seconds_per_interaction"] * n_int / speed, nodes=n,
            cores_per_node=ic["cores_per_node"], parallel_efficiency=ic["parallel_efficiency"],
            network_gb_s=ic["network_gb_s_per_node"], storage_gb_s=ic["storage_write_gb_s_per_node"],
            fixed_s=ic["fixed_seconds"])
    res["data"]["ingest_projection"] = rows


def _figures(ctx: Any, res: dict) -> None:
    proj = res["data"]["projection"]
    path, rel = ctx.figure_path("plan_epoch_time_vs_gpus")
    line_plot(path, {label: ([int(w) for w in s["by_gpus"]], [s["by_gpus"][w]["epoch"]["total_s"] / 60
                                                              for w in s["by_gpus"]])
                     for label, s in proj["series"].items() if "cached" in label or "ID" in label},
              title="Projected epoch time of the full MicroLens vs H100 GPUs", xlabel="GPUs (8 per node)",
              ylabel="minutes per epoch (train + validation)", logx=True, logy=True)
    res["figures"].append(figure(rel, "Projected epoch time (training over all 1.0B interactions' windows plus one "
                                      "full-ranking validation) vs GPUs, from the cost model and the recorded "
                                      "assumptions", unit="min", command=res["command"], repeats=1))
    ing = res["data"].get("ingest_projection")
    if ing:
        path, rel = ctx.figure_path("plan_ingest_time_vs_nodes")
        nodes = [int(n) for n in ing]
        line_plot(path, {"projected ingestion time": (nodes, [ing[str(n)]["total"] / 60 for n in nodes])},
                  title="Projected ingestion time of the full MicroLens vs CPU nodes", xlabel="CPU nodes",
                  ylabel="minutes", logx=True, logy=True)
        res["figures"].append(figure(rel, "Projected ingestion time of 1.0B interactions vs CPU nodes (cost model "
                                          "calibrated on the measured ingestion of this machine)", unit="min",
                                     command=res["command"], repeats=1))
