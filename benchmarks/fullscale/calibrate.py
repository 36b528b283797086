"""Checking the cost model on this machine: calibrate at one worker, predict two, compare with the measurement.

``machine_rates_task`` measures this machine's primitives on every rank of a pool at once (so the
ranks contend for cores and memory as in training): fp32 matmul FLOP/s at the dense tower's
shapes, row gather/scatter bandwidth of an embedding table, ``all_to_all_single`` bandwidth and the
latency of a small all-reduce. ``check_against_phases`` predicts the phase-timed steps of the scaling
part (``bench_scaling.py``) from those rates, the counted FLOPs and the modelled all-to-all bytes:
the fixed per-step overhead is the one quantity fitted, at the fewest workers; the prediction at
more workers is then compared with what was measured.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks.fullscale.costmodel import a2a_bytes

__all__ = ["machine_rates_task", "check_against_phases", "embedding_bytes"]


def _timed(fn, repeats: int) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats


def machine_rates_task(ctx: Any, *, rows_by_dim: int, dim: int, lookups: int, batch_positions: int,
                       a2a_bytes_per_rank: int) -> dict:
    """This rank's achieved rates (all ranks run it together).

    Args:
        rows_by_dim: Rows of the table the gather runs on.
        dim: D.
        lookups: Rows gathered and scattered per repetition (U).
        batch_positions: M of the ``[M, D] x [D, 4D]`` matmul (the FFN shape) and of ``[M, D] x [D, N]``.
        a2a_bytes_per_rank: Bytes each rank contributes to the timed all-to-all.

    Returns:
        ``flops_per_s`` (matmul), ``gather_bytes_per_s``, ``a2a_bytes_per_s`` (bytes sent to others per
        second per rank; 0 on one rank) and ``collective_latency_s``.
    """
    import torch
    import torch.distributed as dist

    torch.manual_seed(ctx.rank)
    a, b = torch.randn(batch_positions, dim), torch.randn(dim, 4 * dim)
    t = _timed(lambda: torch.mm(a, b), 10)
    flops = 2 * batch_positions * dim * 4 * dim / t
    table = torch.randn(rows_by_dim, dim)
    idx = torch.randint(0, rows_by_dim, (lookups,))
    grad = torch.randn(lookups, dim)
    t = _timed(lambda: (table.index_select(0, idx), table.index_add_(0, idx, grad, alpha=1e-9)), 10)
    gather = 3 * lookups * dim * 4 / t  # one read of the rows, a read and a write in the update
    out = {"flops_per_s": flops, "gather_bytes_per_s": gather, "a2a_bytes_per_s": 0.0, "collective_latency_s": 0.0}
    w = ctx.world_size
    if w > 1:
        n = a2a_bytes_per_rank // 4 // w * w
        send, recv = torch.randn(n), torch.empty(n)
        dist.barrier()
        t = _timed(lambda: dist.all_to_all_single(recv, send), 10)
        out["a2a_bytes_per_s"] = n * 4 * (w - 1) / w / t
        flag = torch.zeros(3, dtype=torch.long)
        dist.barrier()
        out["collective_latency_s"] = _timed(lambda: dist.all_reduce(flag), 50)
    return out


def embedding_bytes(unique_ids: float, dim: int) -> float:
    """Table bytes a step moves for U rows: the forward read, and the fused update's read and write."""
    return 3 * unique_ids * dim * 4


def check_against_phases(phases: dict, rates: dict, flops_per_sequence: float, *, dim: int,
                         out_bytes: int = 4) -> dict:
    """Predict the scaling part's phase-timed steps; fit the overhead at the fewest workers.

    Args:
        phases: ``scaling.json`` data.phases (per worker count: ms per phase, per-rank details).
        rates: ``machine_rates_task`` results of rank 0 for the pool sizes (``{W: rates}``).
        flops_per_sequence: Dense forward + backward FLOPs per sequence of that model and batch.
        dim: D.
        out_bytes: Bytes per looked-up element on the wire (4: fp32 on CPU).

    Returns:
        Per worker count: measured and predicted ms per step by component, the predicted and counted
        all-to-all bytes, and ``predicted / measured``.
    """
    ws = sorted(phases, key=int)
    base = str(ws[0])
    out: dict = {}
    overhead_ms = None
    data_us_per_seq = None
    for w in ws:
        p = phases[w]
        r0 = p["per_rank"][0]
        rate = rates[str(w)]
        seqs, uniq = r0["sequences_per_step"], r0["unique_items_per_step"]
        measured = sum(p["ms_per_step"].values())
        if data_us_per_seq is None:  # the loader's cost per sequence is an input, taken at the base count
            data_us_per_seq = 1e3 * p["ms_per_step"]["data"] / seqs
        model_bytes = a2a_bytes(unique_ids=uniq, dim=dim, out_bytes=out_bytes, world=int(w))
        counted = {ph: sum(k.values()) for ph, k in r0["a2a_bytes_per_step"].items()}
        comp = {"data": data_us_per_seq * seqs / 1e3,
                "dense_compute": 1e3 * flops_per_sequence * seqs / rate["flops_per_s"],
                "embedding_memory": 1e3 * embedding_bytes(uniq, dim) / rate["gather_bytes_per_s"],
                "all_to_all": 1e3 * model_bytes["total"] / rate["a2a_bytes_per_s"] if rate["a2a_bytes_per_s"] else 0.0,
                "collective_latency": 1e3 * rate["collective_latency_s"] * 6}
        if str(w) == base:
            overhead_ms = measured - sum(comp.values())
        comp["overhead (fitted at the fewest workers)"] = overhead_ms
        predicted = sum(comp.values())
        out[str(w)] = {"measured_ms": measured, "predicted_ms": predicted, "predicted_over_measured": predicted / measured,
                       "components_ms": comp, "measured_phases_ms": p["ms_per_step"],
                       "a2a_bytes_model": model_bytes["total"], "a2a_bytes_counted": sum(counted.values()),
                       "a2a_counted_by_phase": counted, "fitted": str(w) == base}
    return out
