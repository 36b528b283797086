"""Which TorchRec sharding types work on CPU with 2 gloo ranks, per embedding module and table size, measured.

For every combination of

* module: ``EmbeddingCollection`` (``ec``: sequence look-ups, one id per position, output
  ``[N, D]``), ``EmbeddingBagCollection`` unweighted (``ebc``: sum pooling, output ``[B, D]``) and
  ``EmbeddingBagCollection`` with per-sample weights (``ebc_weighted``: ``is_weighted=True``, KJT
  with ``weights=``, weighted sum pooling);
* table: ``small`` (1,000 rows x dim 16) and ``large``, a user-keyed table (1,048,577 rows x dim 64
  by default, looked up by random user ids; the odd row count makes row-wise shards uneven);
* sharding type: data_parallel, table_wise, row_wise, column_wise, table_row_wise,
  table_column_wise, forced through the planner with ``ParameterConstraints(sharding_types=[t])`` as
  ``mvrec_dist/parallel/sharding.py`` does (``Topology(world_size=2, compute_device="cpu")``);
* fused optimizer: fbgemm ``EXACT_ROWWISE_ADAGRAD`` and ``EXACT_SGD`` (in the sharder's
  ``fused_params``),

both ranks run plan -> ``DistributedModelParallel`` -> every local shard filled from one seeded
global table -> forward of a fixed-seed batch (each rank its own ids, both ranks also share a few
ids, and the row-wise shard boundary and the last row are always looked up) -> compared with the
unsharded reference computed in float64 from the same global table -> backward of
``sum(output * R)`` (R a fixed random tensor) with the fused optimizer stepping inside backward ->
every local shard compared with the reference update of the unsharded table (all rows: updated
rows against the reference, the others must be unchanged).

The reference gradient is the sum of both ranks' gradients times a scale ``s``. ``s`` is measured
(least-squares fit of the SGD update against ``-lr * G_sum``) and the check uses the scale that
TorchRec declares (``1/world_size`` when ``torchrec.distributed.comm_ops.get_gradient_division()``,
as ``mvrec_dist.parallel.sharding.sparse_gradient_scale`` assumes). Row-wise Adagrad's first step
does not depend on ``s`` (``g / sqrt(mean g^2)``) up to ``eps``; its reference keeps one
accumulator per *full* row (the unsharded table's semantics).

data_parallel tables get TorchRec's ``dense`` kernel: the fused optimizer does not apply, DMP's DDP
wrapper all-reduces (averages) the gradient into ``weight.grad``. The script records whether the
weights moved in backward, then steps a dense optimizer of the same kind (``torch.optim.SGD`` or
``torchrec.optim.RowWiseAdagrad``) and checks that update.

When the planner refuses a type, the combination is tried once more with a hand-made plan
(``torchrec.distributed.sharding_plan`` generators, compute kernel ``fused``) to tell "the planner
does not offer it" from "the kernels cannot do it" (``--no-manual`` skips that).

Per combination: ``ok`` (forward and update match within the tolerances below), ``wrong`` (runs but
mismatches: max abs error), ``fails`` (exception: first line), ``refused`` (planner found no plan).
For the large table also seconds per forward+backward(+fused update) step (median of ``--steps``
after one warm-up; max over ranks) and per-rank RSS during those steps (current and peak, MiB; the
benchmark's own copy of the global table is freed before).

Tolerances: forward ``|out - ref| <= 1e-5 + 1e-4 * |ref|`` (fp32 kernels vs float64 reference);
update ``|w - w_ref| <= 1e-5 + 1e-4 * |w_ref|`` on every element of every local shard.

Run (from the repository root; about 3 min on 2 busy CPU cores)::

    python benchmarks/sharding_support.py [--rows-large 1048577] [--steps 5] [--only ec,small]

Writes ``benchmarks/results/sharding_support.json`` and ``benchmarks/results/sharding_support.md``.
Each combination is one task on a pool of 2 rank processes (``benchmarks.harness.ranks.RankPool``);
failures are caught per combination; after one that hangs (``--timeout``) or kills a process, or after
which the group fails a collective health check, the next combination gets a fresh pool.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.harness.ranks import RankPool  # noqa: E402

MODULES = ("ec", "ebc", "ebc_weighted")
SHARDING_TYPES = ("data_parallel", "table_wise", "row_wise", "column_wise", "table_row_wise", "table_column_wise")
OPTIMIZERS = ("rowwise_adagrad", "sgd")
WORLD_SIZE = 2
FEATURE = "f"
TABLE = "t"
LR = 0.1
EPS = 1e-8
INIT_STD = 0.1
TABLE_SEED = 1234
BATCH_SEED = 5678
FWD_ATOL, FWD_RTOL = 1e-5, 1e-4
UPD_ATOL, UPD_RTOL = 1e-5, 1e-4
MAX_BAG = 3  # ids per sample (EBC bag / EC sequence): 0..MAX_BAG, so empty bags occur too


def table_specs(rows_large: int) -> dict[str, dict[str, int]]:
    """Table shapes and per-rank batch sizes: a small item-like table and a large user-keyed one."""
    return {"small": {"rows": 1000, "dim": 16, "batch": 64},
            "large": {"rows": rows_large, "dim": 64, "batch": 512}}


# --------------------------------------------------------------------------- data and reference (float64)

def _batch(rows: int, batch: int, rank: int, step: int, weighted: bool, dim: int, seq: bool):
    """One rank's deterministic batch: ids, lengths, per-sample weights (or None), output-gradient R.

    Every rank's first ids are fixed: the first and last row, the two rows around the even row-wise
    split (looked up by both ranks, so their gradients meet across ranks).
    """
    import torch

    g = torch.Generator().manual_seed(BATCH_SEED + 1000 * step + rank)
    lengths = torch.randint(0, MAX_BAG + 1, (batch,), generator=g)
    lengths[:4] = torch.clamp(lengths[:4], min=1)
    n = int(lengths.sum())
    ids = torch.randint(0, rows, (n,), generator=g)
    half = (rows + WORLD_SIZE - 1) // WORLD_SIZE
    fixed = torch.tensor([0, rows - 1, half - 1, half][: n])
    ids[: fixed.numel()] = fixed
    weights = (torch.rand(n, generator=g) + 0.5) if weighted else None
    out_rows = n if seq else batch
    r = torch.randn(out_rows, dim, generator=g)
    return ids, lengths.to(torch.int32), weights, r


def _global_table(rows: int, dim: int):
    """The unsharded table every shard is cut from (float32, seeded)."""
    import torch

    g = torch.Generator().manual_seed(TABLE_SEED)
    return torch.randn(rows, dim, generator=g) * INIT_STD


def _bag_index(lengths):
    import torch

    return torch.repeat_interleave(torch.arange(lengths.numel()), lengths.long())


def _reference_forward(full, ids, lengths, weights, seq: bool):
    import torch

    rows = full[ids].double()
    if seq:
        return rows
    if weights is not None:
        rows = rows * weights.double()[:, None]
    out = torch.zeros(lengths.numel(), full.size(1), dtype=torch.float64)
    return out.index_add_(0, _bag_index(lengths), rows)


def _reference_grad(batches, seq: bool):
    """Unique touched rows and the sum over ranks of d(sum(out * R))/d(row), float64."""
    import torch

    all_ids, contribs = [], []
    for ids, lengths, weights, r in batches:
        c = r.double() if seq else r.double()[_bag_index(lengths)]
        if weights is not None:
            c = c * weights.double()[:, None]
        all_ids.append(ids)
        contribs.append(c)
    ids = torch.cat(all_ids)
    uniq, inv = torch.unique(ids, return_inverse=True)
    grad = torch.zeros(uniq.numel(), contribs[0].size(1), dtype=torch.float64).index_add_(0, inv, torch.cat(contribs))
    return uniq, grad


def _reference_update(w0, g, optimizer: str, col_groups: list[tuple[int, int]] | None = None):
    """Updated rows of one step. ``col_groups``: rowwise Adagrad's accumulator per column block."""
    import torch

    if optimizer == "sgd":
        return w0 - LR * g
    out = torch.empty_like(w0)
    for c0, c1 in col_groups or [(0, w0.size(1))]:
        gb = g[:, c0:c1]
        acc = (gb * gb).mean(dim=1, keepdim=True)
        out[:, c0:c1] = w0[:, c0:c1] - LR * gb / (acc.sqrt() + EPS)
    return out


# --------------------------------------------------------------------------- rank side

def _rss_mib() -> tuple[float, float]:
    """(current RSS, peak RSS since the last reset) of this process, MiB."""
    cur = peak = 0.0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    return cur, peak


def _release_freed_memory() -> None:
    """Give freed heap pages back to the OS (glibc ``malloc_trim``) so RSS reflects live memory."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _make_module(module: str, rows: int, dim: int):
    import torch
    from torchrec.modules.embedding_configs import EmbeddingBagConfig, EmbeddingConfig, PoolingType
    from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

    meta = torch.device("meta")
    if module == "ec":
        return EmbeddingCollection(tables=[EmbeddingConfig(name=TABLE, embedding_dim=dim, num_embeddings=rows,
                                                           feature_names=[FEATURE])], device=meta)
    return EmbeddingBagCollection(tables=[EmbeddingBagConfig(name=TABLE, embedding_dim=dim, num_embeddings=rows,
                                                             feature_names=[FEATURE], pooling=PoolingType.SUM)],
                                  is_weighted=(module == "ebc_weighted"), device=meta)


def _make_sharder(module: str, optimizer: str):
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from torchrec.distributed.embedding import EmbeddingCollectionSharder
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder

    fused = {"optimizer": {"rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD,
                           "sgd": EmbOptimType.EXACT_SGD}[optimizer],
             "learning_rate": LR, "eps": EPS, "weight_decay": 0.0}
    return (EmbeddingCollectionSharder if module == "ec" else EmbeddingBagCollectionSharder)(fused_params=fused)


def _manual_plan(unsharded, sharder, sharding_type: str):
    """A hand-made plan for ``sharding_type`` (compute kernel ``fused``; dense for data_parallel)."""
    from torchrec.distributed import sharding_plan as sp
    from torchrec.distributed.types import ShardingPlan

    gen = {"data_parallel": lambda: sp.data_parallel(),
           "table_wise": lambda: sp.table_wise(rank=0, compute_kernel="fused"),
           "row_wise": lambda: sp.row_wise(compute_kernel="fused"),
           "column_wise": lambda: sp.column_wise(ranks=list(range(WORLD_SIZE)), compute_kernel="fused"),
           "table_row_wise": lambda: sp.table_row_wise(host_index=0),
           # no generator: column-wise shards over the one host's ranks, labelled table_column_wise
           "table_column_wise": lambda: sp.column_wise(ranks=list(range(WORLD_SIZE)), compute_kernel="fused"),
           }[sharding_type]()
    module_plan = sp.construct_module_sharding_plan(unsharded, {TABLE: gen}, sharder=sharder, local_size=WORLD_SIZE,
                                                    world_size=WORLD_SIZE, device_type="cpu")
    ps = module_plan[TABLE]
    if sharding_type != "data_parallel":
        ps.compute_kernel = "fused"
    ps.sharding_type = sharding_type
    return ShardingPlan({"": module_plan})


def _kjt(ids, lengths, weights):
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    return KeyedJaggedTensor(keys=[FEATURE], values=ids, lengths=lengths, weights=weights)


def _output_values(module: str, out):
    """The module output as one tensor: EC ``[N, D]`` (jagged values), EBC ``[B, D]``."""
    if module == "ec":
        return out[FEATURE].values()
    return out[FEATURE]


def _weight_views(dmp) -> list[tuple[tuple[int, int], Any]]:
    """``((row offset, column offset), tensor)`` of every table block this rank holds (views, not copies)."""
    views = []
    for key, value in dmp.state_dict().items():
        if not key.endswith(f"{TABLE}.weight"):
            continue
        if hasattr(value, "local_shards"):
            for shard in value.local_shards():
                views.append((tuple(shard.metadata.shard_offsets), shard.tensor))
        elif type(value).__name__ == "DTensor":
            raise TypeError(f"{key} is a DTensor; this script reads ShardedTensor / plain tensors only")
        else:
            views.append(((0, 0), value))
    return views


def _dense_weight_params(dmp):
    return [p for name, p in dmp.named_parameters() if name.endswith(f"{TABLE}.weight") and p.requires_grad]


def run_combination(ctx, module: str, size: str, rows: int, dim: int, batch: int, sharding_type: str,
                    optimizer: str, manual: bool, steps: int) -> dict:
    """One combination on this rank; never raises (a failure is reported with its phase)."""
    import logging
    import warnings

    import torch

    logging.getLogger("torchrec").setLevel(logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    res: dict[str, Any] = {"rank": ctx.rank, "phase": "setup", "notes": []}
    _release_freed_memory()
    res["baseline_rss_mib"] = _rss_mib()[0]
    try:
        return _run_combination(ctx, res, module, rows, dim, batch, sharding_type, optimizer, manual, steps,
                                timed=(size == "large"))
    except Exception as exc:  # noqa: BLE001 - recorded per combination
        res.update(status="fails", error=_first_line(exc), traceback=traceback.format_exc()[-3000:])
        return res
    finally:
        gc.collect()
        torch.set_grad_enabled(True)


def _run_combination(ctx, res, module, rows, dim, batch, sharding_type, optimizer, manual, steps, timed) -> dict:
    import torch
    from torchrec.distributed import DistributedModelParallel
    from torchrec.distributed.comm_ops import get_gradient_division
    from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
    from torchrec.distributed.types import ShardingEnv

    seq = module == "ec"
    weighted = module == "ebc_weighted"
    res["gradient_division"] = bool(get_gradient_division())
    res["phase"] = "plan"
    unsharded = _make_module(module, rows, dim)
    sharder = _make_sharder(module, optimizer)
    res["sharder_offers_cpu"] = list(sharder.sharding_types("cpu"))
    constraint = ParameterConstraints(sharding_types=[sharding_type])
    if sharding_type in ("column_wise", "table_column_wise"):
        # the planner's default min_partition (MIN_CW_DIM = 128) keeps a dim <= 128 table in ONE column shard,
        # which is table-wise placement; force a real split over both ranks
        constraint = ParameterConstraints(sharding_types=[sharding_type], min_partition=dim // ctx.world_size)
    planner = EmbeddingShardingPlanner(
        topology=Topology(world_size=ctx.world_size, compute_device="cpu"), batch_size=batch,
        constraints={TABLE: constraint}, debug=False)
    # plan() on every rank (deterministic, no collective): a refusal never leaves a peer in a broadcast
    try:
        plan = planner.plan(unsharded, [sharder])
        res["planned_by"] = "planner"
    except Exception as exc:  # noqa: BLE001
        res["planner_error"] = _first_line(exc)
        if not manual:
            res.update(status="refused")
            return res
        res["phase"] = "manual plan"
        plan = _manual_plan(unsharded, sharder, sharding_type)
        res["planned_by"] = "manual"
    ps = plan.plan[""][TABLE]
    res.update(plan_sharding_type=ps.sharding_type, compute_kernel=ps.compute_kernel, plan_ranks=ps.ranks,
               plan_shards=[[*m.shard_offsets, *m.shard_sizes, str(m.placement)] for m in ps.sharding_spec.shards]
               if ps.sharding_spec is not None else None)
    if ps.sharding_type != sharding_type:
        res["notes"].append(f"planner chose {ps.sharding_type}")

    res["phase"] = "shard"
    dmp = DistributedModelParallel(unsharded, env=ShardingEnv.from_process_group(ctx.group), device=ctx.device,
                                   plan=plan, sharders=[sharder])
    res["rss_mib_after_dmp"] = _rss_mib()[0]
    full = _global_table(rows, dim)
    views = _weight_views(dmp)
    with torch.no_grad():
        for (r0, c0), t in views:
            t.copy_(full[r0:r0 + t.size(0), c0:c0 + t.size(1)])
    res["local_blocks"] = [[r0, c0, t.size(0), t.size(1)] for (r0, c0), t in views]
    fused = getattr(dmp, "fused_optimizer", None)
    res["fused_optimizer_params"] = len(list(fused.params)) if fused is not None else 0
    dense_params = _dense_weight_params(dmp) if ps.compute_kernel == "dense" else []
    dense_opt = None
    if dense_params:  # data_parallel: DDP-averaged .grad, no fused optimizer
        from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

        dense_opt = (torch.optim.SGD(dense_params, lr=LR) if optimizer == "sgd"
                     else RowWiseAdagrad(dense_params, lr=LR, eps=EPS))
        res["dense_optimizer"] = type(dense_opt).__name__

    batches = [_batch(rows, batch, r, 0, weighted, dim, seq) for r in range(ctx.world_size)]
    ids, lengths, weights, r_grad = batches[ctx.rank]

    res["phase"] = "forward"
    out = dmp(_kjt(ids, lengths, weights))
    try:
        vals = _output_values(module, out)
    except RuntimeError as exc:
        if seq and "split_with_sizes" in str(exc):
            res["notes"].append(EC_DP_NOTE)
            res["lookup_rows_expected"] = int(ids.numel())
        raise
    ref = _reference_forward(full, ids, lengths, weights, seq)
    res["out_shape"], res["ref_shape"] = list(vals.shape), list(ref.shape)
    if tuple(vals.shape) != tuple(ref.shape):
        res.update(status="wrong", forward_ok=False,
                   error=f"output shape {list(vals.shape)}, expected {list(ref.shape)}")
        return res
    fwd_err = (vals.detach().double() - ref).abs()
    res["forward_max_abs_err"] = float(fwd_err.max()) if fwd_err.numel() else 0.0
    res["forward_ok"] = bool((fwd_err <= FWD_ATOL + FWD_RTOL * ref.abs()).all())

    res["phase"] = "backward"
    before = [t.detach().clone() for _, t in views]
    (vals * r_grad).sum().backward()
    moved_in_backward = any(not torch.equal(b, t) for b, (_, t) in zip(before, views))
    res["weights_moved_in_backward"] = moved_in_backward
    if dense_opt is not None:
        res["dense_grad_present"] = all(p.grad is not None for p in dense_params)
        res["phase"] = "dense optimizer step"
        dense_opt.step()
        dense_opt.zero_grad()

    res["phase"] = "update check"
    uniq, g_sum = _reference_grad(batches, seq)
    scale = 1.0 / ctx.world_size if res["gradient_division"] else 1.0
    res.update(_check_update(views, before, full, uniq, g_sum, scale, optimizer, res["notes"]))
    upd_ok = res["update_ok"]
    res["status"] = "ok" if (res["forward_ok"] and upd_ok) else "wrong"
    del before, full, out, vals, ref
    _release_freed_memory()

    if timed:
        res["phase"] = "timed steps"
        step_batches = [_batch(rows, batch, ctx.rank, s + 1, weighted, dim, seq) for s in range(steps + 1)]
        res["rss_mib_before_steps"] = _rss_mib()[0]
        _reset_peak_rss()
        times = []
        for ids_s, len_s, w_s, r_s in step_batches:
            t0 = time.perf_counter()
            v = _output_values(module, dmp(_kjt(ids_s, len_s, w_s)))
            (v * r_s).sum().backward()
            if dense_opt is not None:
                dense_opt.step()
                dense_opt.zero_grad()
            times.append(time.perf_counter() - t0)
        res["step_s"] = times[1:]
        res["rss_mib"], res["peak_rss_mib"] = _rss_mib()
    res["phase"] = "done"
    return res


def _check_update(views, before, full, uniq, g_sum, scale: float, optimizer: str, notes: list[str]) -> dict:
    """Every local block after one step vs the unsharded reference update (in a function: its temporaries,
    some as large as a shard, are freed on return)."""
    num = den = 0.0
    upd_err = untouched_err = 0.0
    upd_ok = True
    for ((r0, c0), t), b in zip(views, before):
        nr, nc = t.size(0), t.size(1)
        mask = (uniq >= r0) & (uniq < r0 + nr)
        local = uniq[mask] - r0
        g_blk = g_sum[mask][:, c0:c0 + nc]
        w0 = full[uniq[mask]][:, c0:c0 + nc].double()
        w1 = t.detach()[local].double()
        if optimizer == "sgd":  # fit s in w1 = w0 - lr * s * g
            num += float(-((w1 - w0) * LR * g_blk).sum())
            den += float(((LR * g_blk) ** 2).sum())
        # rowwise adagrad: the unsharded table's accumulator is per full row; the block's may cover fewer columns
        expect = _reference_update(full[uniq[mask]].double(), scale * g_sum[mask], optimizer)[:, c0:c0 + nc]
        e = (w1 - expect).abs()
        ok = bool((e <= UPD_ATOL + UPD_RTOL * expect.abs()).all())
        if optimizer == "rowwise_adagrad" and nc < full.size(1) and not ok:
            blockwise = _reference_update(w0, scale * g_blk, optimizer)
            if bool(((w1 - blockwise).abs() <= UPD_ATOL + UPD_RTOL * blockwise.abs()).all()):
                notes.append("rowwise-adagrad accumulator per column shard (matches a per-block reference)")
        diff = (t.detach() - b).abs()
        diff[local] = 0
        u_err = float(diff.max()) if diff.numel() else 0.0
        del diff
        upd_err = max(upd_err, float(e.max()) if e.numel() else 0.0)
        untouched_err = max(untouched_err, u_err)
        upd_ok = upd_ok and ok and u_err == 0.0
    return {"update_max_abs_err": upd_err, "untouched_rows_max_abs_change": untouched_err, "update_ok": upd_ok,
            "sgd_fit": [num, den]}


def warm_up(ctx) -> float:
    """Import what every combination uses, so that RSS baselines do not include first-time imports."""
    import fbgemm_gpu.split_embedding_configs  # noqa: F401
    import torchrec.distributed.embedding  # noqa: F401
    import torchrec.distributed.embeddingbag  # noqa: F401
    import torchrec.distributed.planner  # noqa: F401
    import torchrec.optim.rowwise_adagrad  # noqa: F401

    _release_freed_memory()
    return _rss_mib()[0]


def health_check(ctx) -> bool:
    """A collective on the pool's group: is it still usable after a combination failed?"""
    import torch
    import torch.distributed as dist

    t = torch.ones(4)
    dist.all_reduce(t, group=ctx.group)
    return bool((t == ctx.world_size).all())


# --------------------------------------------------------------------------- driver

def _merge(ranks: list[dict], spec: dict) -> dict:
    """One record per combination from the per-rank results."""
    order = {"ok": 0, "refused": 1, "wrong": 2, "fails": 3}
    statuses = [r.get("status", "fails") for r in ranks]
    status = max(statuses, key=lambda s: order.get(s, 3))
    rec = dict(spec)
    rec["status"] = status
    r0 = ranks[0]
    for key in ("planned_by", "planner_error", "plan_sharding_type", "compute_kernel", "plan_ranks", "plan_shards",
                "gradient_division", "dense_optimizer", "out_shape", "ref_shape", "sharder_offers_cpu"):
        if key in r0:
            rec[key] = r0[key]
    errors = [f"rank {r['rank']} ({r.get('phase')}): {r['error']}" for r in ranks if r.get("error")]
    if errors:
        rec["error"] = errors[0]
        rec["errors_per_rank"] = errors
        rec["failed_phase"] = sorted({r.get("phase") for r in ranks if r.get("error")})
        rec["traceback"] = next(r["traceback"] for r in ranks if r.get("traceback")) if any(
            r.get("traceback") for r in ranks) else None
    for key in ("forward_max_abs_err", "update_max_abs_err", "untouched_rows_max_abs_change"):
        vals = [r[key] for r in ranks if key in r]
        if vals:
            rec[key] = max(vals)
    for key in ("forward_ok", "update_ok", "weights_moved_in_backward", "dense_grad_present"):
        vals = [r[key] for r in ranks if key in r]
        if vals:
            rec[key] = all(vals) if key != "weights_moved_in_backward" else any(vals)
    fits = [r["sgd_fit"] for r in ranks if "sgd_fit" in r]
    if fits and spec["optimizer"] == "sgd" and sum(f[1] for f in fits) > 0:
        rec["measured_grad_scale"] = round(sum(f[0] for f in fits) / sum(f[1] for f in fits), 6)
    rec["local_blocks"] = {r["rank"]: r.get("local_blocks") for r in ranks}
    rec["fused_optimizer_params"] = {r["rank"]: r.get("fused_optimizer_params") for r in ranks}
    notes = sorted({n for r in ranks for n in r.get("notes", [])})
    if notes:
        rec["notes"] = notes
    if all("step_s" in r for r in ranks):
        rec["step_s_median"] = round(max(statistics.median(r["step_s"]) for r in ranks), 4)
        rec["step_s_per_rank"] = {r["rank"]: [round(x, 4) for x in r["step_s"]] for r in ranks}
        rec["rss_mib_per_rank"] = {r["rank"]: round(r["rss_mib"]) for r in ranks}
        rec["peak_rss_mib_per_rank"] = {r["rank"]: round(r["peak_rss_mib"]) for r in ranks}
        for key in ("baseline_rss_mib", "rss_mib_after_dmp", "rss_mib_before_steps"):
            rec[f"{key}_per_rank"] = {r["rank"]: round(r[key]) for r in ranks if key in r}
    return rec


def planner_default_column_shards(dims=(16, 64, 128, 256)) -> dict[int, int]:
    """How many column shards the planner makes, unconstrained but for the type, per embedding dim."""
    import logging

    from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology

    logging.getLogger("torchrec").setLevel(logging.ERROR)
    out = {}
    for dim in dims:
        planner = EmbeddingShardingPlanner(topology=Topology(world_size=WORLD_SIZE, compute_device="cpu"),
                                           batch_size=64, constraints={TABLE: ParameterConstraints(
                                               sharding_types=["column_wise"])})
        ps = planner.plan(_make_module("ebc", 1000, dim), [_make_sharder("ebc", "sgd")]).plan[""][TABLE]
        out[dim] = len(ps.sharding_spec.shards)
    return out


def _versions() -> dict:
    import importlib.metadata as md

    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for dist_name in ("torchrec", "fbgemm-gpu-cpu", "fbgemm-gpu"):
        try:
            out[dist_name] = md.version(dist_name)
        except md.PackageNotFoundError:
            pass
    return out


EC_DP_NOTE = ("EC output construction received one looked-up row per sample ([batch, D], the split's input size) "
              "instead of one per id ([N, D], the split sizes)")
ADAGRAD_PER_SHARD = "rowwise-adagrad accumulator per column shard (matches a per-block reference)"


def _cell(rec: dict) -> str:
    s = rec["status"]
    if s == "ok":
        txt = "ok"
    elif s == "refused":
        txt = "refused by planner"
    elif s == "wrong":
        parts = []
        if rec.get("out_shape") and rec.get("out_shape") != rec.get("ref_shape"):
            parts.append(f"shape {rec['out_shape']} vs {rec['ref_shape']}")
        if rec.get("forward_ok") is False:
            parts.append(f"fwd err {rec.get('forward_max_abs_err', float('nan')):.2g}")
        if rec.get("update_ok") is False:
            parts.append(f"update err {rec.get('update_max_abs_err', float('nan')):.2g}")
        if ADAGRAD_PER_SHARD in rec.get("notes", []):
            parts.append("Adagrad state per column shard")
        txt = "WRONG: " + ", ".join(parts)
    else:
        phase = ",".join(rec.get("failed_phase") or ["?"])
        msg = rec.get("error", "?").split("): ", 1)[-1]
        if EC_DP_NOTE in rec.get("notes", []):
            msg = "lookup returns [B, D], not [N, D] (split_with_sizes error)"
        txt = f"FAILS in {phase}: {msg[:70]}"
    if rec.get("planned_by") == "manual":
        txt = f"no plan; manual plan: {txt}"
    return txt.replace("|", "/")


def write_markdown(path: Path, meta: dict, records: list[dict]) -> None:
    v = meta["versions"]
    lines = [
        "# TorchRec sharding support on CPU, 2 gloo ranks (measured)",
        "",
        f"Produced by `benchmarks/sharding_support.py` on {meta['date']} ({meta['host']}, {meta['cpus']} CPUs): "
        f"torch {v.get('torch')}, torchrec {v.get('torchrec')}, fbgemm-gpu-cpu {v.get('fbgemm-gpu-cpu')}, "
        f"Python {v.get('python')}; total {meta['total_s']:.0f} s; load average (1/5/15 min) "
        f"{meta['loadavg_start']} at start, {meta['loadavg_end']} at end (a shared machine: step times are indicative).",
        "",
        "Each cell: plan (planner forced with `ParameterConstraints(sharding_types=[t])`; on refusal a hand-made "
        "plan) -> DMP -> forward vs an unsharded float64 reference -> backward of `sum(out * R)` with the fused "
        "optimizer -> every local shard vs the reference update. "
        f"Tolerances: forward `|err| <= {FWD_ATOL:g} + {FWD_RTOL:g}*|ref|`, update `|err| <= {UPD_ATOL:g} + "
        f"{UPD_RTOL:g}*|ref|`, rows not looked up must not change. lr {LR}, eps {EPS:g}. "
        f"Tables: {meta['tables']}.",
        "",
        "Cells: `ok`; `WRONG: ...` (runs, but output or update differs from the reference: max abs error); "
        "`FAILS in <phase>: ...` (exception, first line); `no plan; manual plan: ...` (the planner found no plan "
        "for the forced type; the result is that of a hand-made plan, compute kernel `fused`).",
        "",
    ]
    for size in meta["sizes"]:
        lines += [f"## {size} table ({meta['tables'][size]['rows']:,} rows x {meta['tables'][size]['dim']})", ""]
        head = "| module | optimizer | " + " | ".join(SHARDING_TYPES) + " |"
        lines += [head, "|" + "---|" * (2 + len(SHARDING_TYPES))]
        for module in meta["modules"]:
            for opt in meta["optimizers"]:
                cells = []
                for st in SHARDING_TYPES:
                    rec = next((r for r in records if (r["module"], r["size"], r["sharding_type"], r["optimizer"])
                                == (module, size, st, opt)), None)
                    cells.append(_cell(rec) if rec else "-")
                lines.append(f"| {module} | {opt} | " + " | ".join(cells) + " |")
        lines.append("")
        timed = [r for r in records if r["size"] == size and "step_s_median" in r]
        if timed:
            lines += ["Step time (forward + backward + update; median of the timed steps, slower rank) and "
                      "per-rank RSS, MiB: after the timed steps / peak during them (baseline: the rank process "
                      "before the combination was built, after `malloc_trim`; the rank processes are reused "
                      "between combinations):", "",
                      "| module | optimizer | sharding | status | s/step | RSS rank0 | RSS rank1 | baseline r0 / r1 |",
                      "|---|---|---|---|---|---|---|---|"]
            for r in timed:
                rss = [f"{r['rss_mib_per_rank'][k]} / {r['peak_rss_mib_per_rank'][k]}" for k in sorted(r["rss_mib_per_rank"])]
                rss.append(" / ".join(str(r["baseline_rss_mib_per_rank"][k]) for k in sorted(r["rss_mib_per_rank"])))
                lines.append(f"| {r['module']} | {r['optimizer']} | {r['sharding_type']} | {r['status']} | "
                             f"{r['step_s_median']:.3f} | " + " | ".join(rss) + " |")
            lines.append("")
    scales = sorted({(r["sharding_type"], r.get("measured_grad_scale")) for r in records
                     if r.get("measured_grad_scale") is not None}, key=str)
    if scales:
        lines += ["Measured gradient scale (SGD update = -lr * s * sum of both ranks' gradients), per sharding type: "
                  + ", ".join(f"{st} {s:g}" for st, s in scales) + f"; TorchRec's gradient_division is "
                  f"{records[0].get('gradient_division')}.", ""]
    grouped: dict[str, list[str]] = {}
    for r in records:
        key = f"{r['module']}/{r['size']}/{r['sharding_type']}/{r['optimizer']}"
        texts = list(r.get("notes", []))
        if r.get("planner_error") and r.get("planned_by") == "manual":
            texts.append(f"planner: {r['planner_error'][:200]}")
        if r["status"] == "fails":
            texts.append(f"{r.get('error', '')[:300]}")
        if r.get("dense_optimizer") and r["status"] != "fails":
            texts.append(f"kernel {r.get('compute_kernel')}: fused optimizer holds no parameter, weights moved in "
                         f"backward: {r.get('weights_moved_in_backward')}, DDP-averaged .grad present: "
                         f"{r.get('dense_grad_present')}; update checked after a dense {r['dense_optimizer']} step")
        for t in texts:
            grouped.setdefault(t, []).append(key)
    if meta.get("planner_default_column_shards"):
        lines += ["Planner default for column_wise / table_column_wise without `min_partition` (2 ranks): column "
                  "shards per embedding dim: " + ", ".join(f"dim {d}: {n}" for d, n in
                                                           meta["planner_default_column_shards"].items())
                  + ". The measured column_wise / table_column_wise cells set `min_partition = dim / 2` to get a "
                  "real split over both ranks.", ""]
    if grouped:
        lines += ["## Notes", ""]
        lines += [f"- {t} — {', '.join(keys)}" for t, keys in grouped.items()] + [""]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows-large", type=int, default=1_048_577, help="rows of the large user-keyed table")
    p.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up (large table)")
    p.add_argument("--timeout", type=int, default=240, help="seconds a combination may take before its pool is killed")
    p.add_argument("--only", default="", help="comma-separated filters on module/size/sharding type/optimizer")
    p.add_argument("--no-manual", action="store_true", help="do not retry planner refusals with a hand-made plan")
    p.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    args = p.parse_args(argv)

    tables = table_specs(args.rows_large)
    only = [f for f in args.only.split(",") if f]
    combos = [dict(module=m, size=s, sharding_type=st, optimizer=o)
              for s in tables for m in MODULES for st in SHARDING_TYPES for o in OPTIMIZERS
              if all(f in (m, s, st, o) for f in only)]
    t_start = time.monotonic()
    load_start = os.getloadavg()
    records: list[dict] = []
    pool: RankPool | None = None
    try:
        for i, spec in enumerate(combos):
            if pool is None:
                pool = RankPool(WORLD_SIZE, threads=1, timeout_s=args.timeout).__enter__()
                pool.run(warm_up)
            tab = tables[spec["size"]]
            t0 = time.monotonic()
            try:
                ranks = pool.run(run_combination, spec["module"], spec["size"], tab["rows"], tab["dim"], tab["batch"],
                                 spec["sharding_type"], spec["optimizer"], not args.no_manual, args.steps)
                rec = _merge(ranks, spec)
                if any(r.get("status") == "fails" for r in ranks):
                    try:  # a failure mid-collective may leave the group unusable: check, else recreate
                        pool.run(health_check)
                    except RuntimeError:
                        pool = None
            except RuntimeError as exc:  # a rank hung or died: the pool closed itself
                rec = dict(spec, status="fails", error=f"rank pool: {str(exc).splitlines()[0][:200]}",
                           detail=str(exc)[-2000:])
                pool = None
            rec["seconds"] = round(time.monotonic() - t0, 1)
            records.append(rec)
            print(f"[{i + 1}/{len(combos)}] {spec['module']:12s} {spec['size']:5s} {spec['sharding_type']:17s} "
                  f"{spec['optimizer']:15s} {rec['seconds']:6.1f}s  {_cell(rec)}"
                  + (f"  step {rec['step_s_median']:.3f}s" if "step_s_median" in rec else ""), flush=True)
    finally:
        if pool is not None:
            pool.close()
    total = time.monotonic() - t_start
    meta = {"date": datetime.date.today().isoformat(), "host": platform.node(), "cpus": os.cpu_count(),
            "world_size": WORLD_SIZE, "backend": "gloo", "versions": _versions(), "total_s": round(total, 1),
            "loadavg_start": [round(x, 2) for x in load_start], "loadavg_end": [round(x, 2) for x in os.getloadavg()],
            "tables": tables, "modules": [m for m in MODULES if any(r["module"] == m for r in records)],
            "sizes": [s for s in tables if any(r["size"] == s for r in records)],
            "optimizers": [o for o in OPTIMIZERS if any(r["optimizer"] == o for r in records)],
            "lr": LR, "eps": EPS, "init_std": INIT_STD, "max_ids_per_sample": MAX_BAG, "timed_steps": args.steps,
            "tolerances": {"forward": {"atol": FWD_ATOL, "rtol": FWD_RTOL},
                           "update": {"atol": UPD_ATOL, "rtol": UPD_RTOL}, "untouched_rows": "exactly unchanged"},
            "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])}
    try:
        meta["planner_default_column_shards"] = planner_default_column_shards()
    except Exception as exc:  # noqa: BLE001
        meta["planner_default_column_shards_error"] = _first_line(exc)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "sharding_support.json").write_text(json.dumps({"meta": meta, "results": records}, indent=1))
    write_markdown(args.out_dir / "sharding_support.md", meta, records)
    print(f"total {total:.0f} s -> {args.out_dir / 'sharding_support.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
