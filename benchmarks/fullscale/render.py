"""Markdown of the plan part: assumptions, workload, FLOPs, plans, the check on this machine, projections."""

from __future__ import annotations

from benchmarks.fullscale import costmodel as cm
from benchmarks.harness.parts import RenderContext
from benchmarks.harness.report import fmt, table

__all__ = ["render_plan"]


def _assumptions(raw: dict) -> str:
    rows = []
    for sec, entries in raw.items():
        if sec.startswith("_"):
            continue
        for key, e in entries.items():
            rows.append([f"{sec}.{key}", fmt(e["value"]) if not isinstance(e["value"], list) else str(e["value"]),
                         e["unit"], e["source"]])
    return table(["input", "value", "unit", "source"], rows)


def _by_int(d: dict) -> list:
    """Items of a dict keyed by numbers as strings (JSON sorts them as text), in numeric order."""
    return sorted(d.items(), key=lambda kv: int(kv[0]))


def _series_key(item: tuple) -> tuple:
    """Projection rows: ID models before video ones, then by D numerically, then by name."""
    label = item[0]
    dim = int(label.rsplit("D=", 1)[1]) if "D=" in label else 0
    return ("ID" not in label, dim, label)


def _workload(res: dict) -> str:
    w, e, s = res["data"]["workload"], res["data"]["epoch"], res["settings"]
    imb = ", ".join(f"W={k}: {fmt(v)}" for k, v in _by_int(w["shard_load_max_over_mean"]))
    return (f"Per rank and step ({s['batch_per_rank']:,} sequences, {s['negatives']:,} popularity-sampled negatives, "
            f"mean over {w['steps']} collated steps of {w['drawn_users']:,} full-shaped users): {fmt(w['targets'])} "
            f"targets, {fmt(w['unique_batch_ids'])} unique ids in the windows, {fmt(w['unique_ids'])} unique ids looked "
            f"up with the negatives (pooling factor {fmt(w['unique_ids'] / s['batch_per_rank'])} ids per sequence). "
            f"Row-wise shard load, max / mean over ranks: {imb}. One epoch: {fmt(e['windows'])} windows, "
            f"{fmt(e['targets'])} targets ({fmt(e['windows_per_user'])} windows and {fmt(e['targets_per_user'])} targets "
            f"per user; simulated parts: {fmt(w['windows_per_user'])} and {fmt(w['targets_per_user'])}).\n")


def _flops(res: dict) -> str:
    dense = res["data"]["dense_flops"]
    out = [table(["D", "forward FLOPs/sequence", "backward FLOPs/sequence", "total", "dense params"],
                 [[k, fmt(v["forward"]), fmt(v["backward"]), fmt(v["total"]), v["dense_params"]] for k, v in _by_int(dense)])]
    video = res["data"]["video_flops"]
    if video:
        modes = list(next(iter(video.values()))["train"])
        rows = [[n, f"{v['frames']} x {v['size']}^2", fmt(v["params"]), fmt(v["forward"] / 1e9)]
                + [fmt(v["train"][m] / 1e9) for m in modes] for n, v in video.items()]
        out.append("Video encoders, GFLOPs per item (training: forward + the backward autograd runs; `top` trains the "
                   "top blocks, `cached trunk` reads the frozen trunk's stored output):\n")
        out.append(table(["encoder", "frames", "params", "forward"] + [f"train {m.replace('_', ' ')}" for m in modes], rows))
    return "\n".join(out)


def _plans(res: dict) -> str:
    rows = []
    for p in res["data"]["plans"]:
        pr = p["per_rank"]
        worst = max(pr.values(), key=lambda r: r["total_ms"])
        rows.append([f"{p['nodes']}x{p['gpus_per_node']}", p["dim"], p["sharding_type"], p["kernel"], p["num_shards"],
                     fmt(p["table_gib"]), fmt(p["max_hbm_gib"]),
                     f"{fmt(worst['fwd_compute_ms'])} / {fmt(worst['fwd_comms_ms'] + worst['input_dist_ms'])} / "
                     f"{fmt(worst['bwd_compute_ms'])} / {fmt(worst['bwd_comms_ms'])}", fmt(p["max_rank_ms"])])
    return table(["cluster", "D", "sharding", "kernel", "shards", "table GiB (fp32)", "max HBM per rank GiB",
                  "slowest rank fwd compute / fwd comms / bwd compute / bwd comms ms", "planner estimate ms/step"], rows)


def _check(res: dict) -> str:
    c = res["data"]["check"]
    out = []
    if c.get("cpu"):
        cpu = c["cpu"]
        rows = []
        for w, x in _by_int(cpu["check"]):
            comp = ", ".join(f"{k} {fmt(v)}" for k, v in x["components_ms"].items())
            rows.append([w, fmt(x["measured_ms"]), fmt(x["predicted_ms"]), fmt(x["predicted_over_measured"]),
                         "fitted here" if x["fitted"] else "predicted", fmt(x["a2a_bytes_model"]),
                         fmt(x["a2a_bytes_counted"]), comp])
        r0 = cpu["rates"][min(cpu["rates"], key=int)]
        out += [f"On this machine (`{cpu['preset']}`, D={cpu['dim']}; {cpu['note']}): fp32 matmul "
                f"{fmt(r0['flops_per_s'] / 1e9)} GFLOP/s per rank, row gather/update {fmt(r0['gather_bytes_per_s'] / 1e9)} "
                f"GB/s; dense tower {fmt(cpu['flops_per_sequence'] / 1e6)} MFLOPs per sequence (fwd+bwd); loader "
                f"{fmt(cpu['loader_us_per_sequence'])} us per sequence. The fixed overhead is fitted at the fewest "
                "workers; the other row is a prediction.\n",
                table(["workers", "measured ms/step", "predicted ms/step", "predicted / measured", "", "a2a bytes model",
                       "a2a bytes counted", "predicted components (ms)"], rows)]
    if c.get("ingest"):
        i = c["ingest"]
        out.append(f"Ingestion: fixed {fmt(i['fixed_s'])} s + {fmt(1e6 * i['marginal_s'])} us per interaction (from the "
                   f"two smallest sizes) predicts {fmt(i['predicted_s'])} s for {i['interactions']:,} interactions; "
                   f"measured {fmt(i['measured_s'])} s. Marginal CPU cost {fmt(1e6 * i['core_seconds_per_interaction'])} "
                   f"core-us per interaction on {i['cores']} cores.\n")
    return "\n".join(out) or "No check: run the scaling and ingest_scale parts first.\n"


def _projection(res: dict, rctx: RenderContext) -> str:
    p = res["data"]["projection"]
    gpus = [str(g) for g in p["gpus"]]
    rows = []
    for label, s in sorted(p["series"].items(), key=_series_key):
        rows.append([label] + [f"{fmt(s['by_gpus'][g]['epoch']['total_s'] / 60)} ({s['by_gpus'][g]['step']['bound']})"
                               for g in gpus])
    lu = res["data"].get("loader_us_per_sequence", {})
    out = [f"Data loading per sequence on one CPU core: {fmt(lu.get('read_and_window', 0))} us reading, windowing and "
           f"collating as measured in the training runs + {fmt(lu.get('collate_with_negatives', 0))} us collating "
           "again with the full preset's sampled negatives (workload simulation; the window padding is counted twice, "
           "a conservative sum), spread over the preset's loader workers per GPU.\n",
           "Projected minutes per epoch (training windows of all users + one full-ranking validation); in parentheses "
           "what bounds the step:\n", table(["model"] + [f"{g} GPUs" for g in gpus], rows)]
    first_label = min(p["series"], key=lambda k: _series_key((k, None)))
    first = p["series"][first_label]
    g = "32" if "32" in first["by_gpus"] else gpus[-1]
    step = first["by_gpus"][g]["step"]
    out.append(f"Step anatomy, {first_label} on {g} GPUs (ms): "
               + ", ".join(f"{k} {fmt(1e3 * v)}" for k, v in step.items() if k not in ("bound",)) + ".\n")
    ing = res["data"].get("ingest_projection")
    if ing:
        out.append("Projected ingestion of the full MicroLens (minutes; the longest stage and what bounds it; seconds "
                   "per stage, each the slowest of its CPU work, storage I/O and network share; the driver's serial "
                   "work; from the largest ingest_scale run's stage breakdown on this machine):\n")
        out.append(table(["CPU nodes", "minutes", "bound", "read s", "group s", "write s", "serial s"],
                         [[n, fmt(x["total"] / 60), x["bound"],
                           *[f"{fmt(x['stages'][k]['total'])} ({x['stages'][k]['bound']})" for k in cm.INGEST_STAGES],
                           fmt(x["serial"])] for n, x in _by_int(ing)]))
    for f in res["figures"]:
        out.append(rctx.figure_md(f))
    return "\n".join(out)


def _mtin(res: dict) -> str:
    """MTIN's tables, the planner's choice per cluster and the projected step (issue 15)."""
    m = res["data"].get("mtin")
    if not m:
        return "Not run (no MTIN data in this result).\n"
    w, f = m["workload"], m["flops"]
    first = m["plans"][0]
    out = [f"The MTIN task (`{m['preset']}` with {', '.join(f'`{o}`' for o in m['overrides'])}; d={m['dim']}, "
           f"s={m['groups']}, p={m['temporal_masks']}, {m['precision']}) at {m['batch_per_rank']:,} examples per rank: "
           f"H_pos {m['positive_length']}, H_neg {m['negative_length']} sampled, {m['candidates']} candidates and "
           f"{m['memory_rows_per_user']} memory rows per example. Its tables are `MTINTask.table_specs` of that config "
           "for the full release, planned as the trainer plans them (the memory is a state table: plain SGD at lr 1, "
           "no optimizer state). Per rank-step (MTIN's collate over the full-shaped windows, mean of "
           f"{w['steps']} steps): {fmt(w['unique_items'])} unique item ids and {fmt(w['memory_rows'])} memory rows "
           f"({fmt(w['distinct_users'])} distinct users; every example reads and writes its user's rows); shard "
           "load max / mean over ranks, both tables: "
           + ", ".join(f"W={k}: {fmt(v)}" for k, v in _by_int(w["shard_load_max_over_mean"]))
           + " (memory rows alone: " + ", ".join(f"W={k}: {fmt(v)}" for k, v in _by_int(w["memory_shard_load"]))
           + f"). Dense tower {fmt(f['total'] / 1e6)} MFLOPs per example (forward {fmt(f['forward'] / 1e6)}, backward "
           f"{fmt(f['backward'] / 1e6)}; {f['trainable_params']:,} trainable of {f['dense_params']:,} parameters).\n",
           table(["table", "rows", "width", "GiB (fp32)", "fused optimizer", "optimizer state GiB",
                  "state the planner counts", f"planner storage GiB, all ranks ({first['nodes']}x{first['gpus_per_node']})"],
                 [[name, t["rows"], t["dim"], fmt(t["table_gib"], 5), t["optimizer"], fmt(t["optimizer_state_gib"]),
                   t["planner_optimizer"] or "none (sharder default)",
                   fmt(t["planner_hbm_gib"] + t["planner_ddr_gib"], 5)]
                  for name, t in first["tables"].items()])]
    rows = []
    for p in m["plans"]:
        proj = m["projection"][str(p["world_size"])]["step"]
        cluster, step, bound = f"{p['nodes']}x{p['gpus_per_node']}", fmt(1e3 * proj["total"]), proj["bound"]
        for name, t in p["tables"].items():
            rows.append([cluster, name, t["sharding_type"], t["kernel"], fmt(t["max_rank_hbm_gib"]), fmt(t["max_rank_ms"]),
                         step, bound])
        fit = "fits in HBM" if p["fits_in_hbm"] else "spills: " + (", ".join(p["spill_kernels"]) or "over HBM")
        rows.append([cluster, "all tables", "", fit, fmt(p["max_hbm_gib"]), fmt(p["max_rank_ms"]), step, bound])
    out += [f"Planner's choice and per-rank figures (GiB per rank: the fullest rank's HBM, of "
            f"{fmt(first['hbm_usable_gib'])} GiB usable after the 15% reserve; planner ms: the slowest rank's TorchRec "
            "estimate of lookup, update and their all-to-alls). Projected step: the cost model (**projection**, not "
            "a measurement) at a fixed batch per rank:\n",
            table(["cluster", "table", "sharding", "kernel", "GiB per rank", "planner ms", "projected step ms",
                   "bound"], rows)]
    anatomy = []
    for g, x in _by_int(m["projection"]):
        st, tr = x["step"], x["traffic"]
        compute = sum(v for k, v in st.items() if k not in ("data", "total", "bound"))
        anatomy.append([g, fmt(1e3 * st["data"]), fmt(1e3 * compute), fmt(1e3 * st["embedding_memory"]),
            fmt(1e3 * st["all_to_all"]), fmt(1e3 * st["dense_compute"]), fmt(tr["mtin_memory"]["hbm_bytes"] / 1e6),
            fmt(tr["item"]["hbm_bytes"] / 1e6), fmt((tr["mtin_memory"]["a2a_bytes"] + tr["item"]["a2a_bytes"]) / 1e6),
            fmt(x["epoch_train"]["train_s"] / 60)])
    lu = m["loader_us_per_example"]
    out += [f"Projected step anatomy (ms) and embedding traffic per rank-step (MB; a row costs a read, then the fused "
            f"update's read and write). Loading: {fmt(lu['read_and_window'])} us reading and windowing (the SASRec runs' "
            f"measurement) + {fmt(lu['collate'])} us MTIN's collate with its sampled H_neg and candidates, per example, "
            "over the loader workers per GPU. Training minutes per epoch: one example per window, no validation:\n",
            table(["GPUs", "data", "compute (all but data)", "embedding memory", "all-to-all", "dense compute",
                   "memory rows read+written MB", "item rows MB", "all-to-all MB", "train min/epoch"], anatomy)]
    return "\n".join(out)


def render_plan(res: dict, rctx: RenderContext) -> str:
    """The plan section."""
    return "\n".join([
        "### Assumptions (recorded inputs)", "", _assumptions(res["settings"]["assumptions"]),
        "### Workload of one step", "", _workload(res),
        "### FLOPs", "", _flops(res),
        "### TorchRec sharding plans (simulated H100-80GB clusters, planned on this CPU-only machine)", "",
        "Batch per rank and pooling factor from the workload above; row-wise Adagrad state and bf16 lookup outputs as "
        "the full preset builds them; sharding types the project supports on CUDA. Memory and times are the "
        "planner's own estimates (TorchRec's perf model), per rank.", "", _plans(res),
        "### The cost model checked on this machine", "", _check(res),
        "### Projection", "", _projection(res, rctx),
        "### MTIN at full scale (planned, then projected)", "", _mtin(res)])
