"""The cost model of a training step, an epoch and the ingestion of the full MicroLens.

Pure functions of recorded inputs (workload figures, FLOP counts, machine rates, efficiencies);
``benchmarks/bench_plan.py`` fits nothing here except where it says so: it calibrates the machine
rates of *this* machine at one worker and checks the prediction at two workers.

Per rank and step, with U looked-up ids, D, W ranks and row-wise sharding (ids spread over the
W row blocks; the workload simulation measures how evenly):

* all-to-all bytes sent to other ranks: ids ``8 U (W-1)/W`` (input distribution), embeddings
  ``b D U (W-1)/W`` (output distribution, ``b`` = 2 for bf16 outputs, 4 for fp32) and the same
  again for their gradients in backward;
* time = data loading (hidden behind the step when the loader runs ahead) + fixed overhead +
  dense FLOPs / achieved FLOP/s + content-encoder FLOPs / achieved FLOP/s + embedding rows moved
  / achieved memory bandwidth + all-to-all bytes / link bandwidth (intra-node share over NVLink,
  the rest over the NIC, concurrently) + collective latencies + dense-gradient synchronisation.
"""

from __future__ import annotations

import math

__all__ = ["a2a_bytes", "a2a_seconds", "step_seconds", "epoch_seconds", "INGEST_STAGES", "ingest_seconds",
           "eval_seconds"]


def a2a_bytes(*, unique_ids: float, dim: int, out_bytes: int, world: int, id_bytes: int = 8) -> dict:
    """All-to-all bytes one rank sends to the others per step (row-wise sharding, even spread).

    Returns:
        ``index`` (forward ids), ``forward`` (embeddings), ``backward`` (gradients), ``total``.
    """
    remote = (world - 1) / world
    out = {"index": unique_ids * id_bytes * remote, "forward": unique_ids * dim * out_bytes * remote,
           "backward": unique_ids * dim * out_bytes * remote}
    out["total"] = sum(out.values())
    return out


def a2a_seconds(total_bytes: float, *, world: int, gpus_per_node: int, intra_gb_s: float, inter_gb_s: float,
                efficiency: float) -> float:
    """Time of an all-to-all volume: the intra-node share over NVLink, the rest over the NIC, concurrently."""
    if world <= 1:
        return 0.0
    peers = world - 1
    intra = min(gpus_per_node, world) - 1
    intra_bytes = total_bytes * intra / peers
    inter_bytes = total_bytes - intra_bytes
    return max(intra_bytes / (intra_gb_s * 1e9 * efficiency), inter_bytes / (inter_gb_s * 1e9 * efficiency))


def step_seconds(*, data_s: float, overlap_data: bool, overhead_s: float, dense_flops: float, content_flops: float,
                 flops_per_s: float, embedding_bytes: float, mem_bytes_per_s: float, a2a_s: float,
                 latency_s: float, collectives: int, sync_bytes: float, sync_bytes_per_s: float) -> dict:
    """One step's components and total (seconds).

    Args:
        data_s: Loader time of the rank's batch.
        overlap_data: The loader runs ahead (worker processes / pipelining): the step takes the max.
        overhead_s: Fixed per-step cost (launches, Python, framework bookkeeping).
        dense_flops: Dense tower forward + backward FLOPs of the step.
        content_flops: Content-encoder FLOPs of the step (0 for the ID tower).
        flops_per_s: Achieved FLOP/s.
        embedding_bytes: Table and optimizer-state bytes read and written by the lookup and update.
        mem_bytes_per_s: Achieved memory bandwidth for them.
        a2a_s: All-to-all time.
        latency_s: Base latency of one collective.
        collectives: Collectives per step.
        sync_bytes: Dense gradient (and ZeRO parameter) bytes exchanged.
        sync_bytes_per_s: Their bandwidth.
    """
    parts = {"overhead": overhead_s, "dense_compute": dense_flops / flops_per_s,
             "content_compute": content_flops / flops_per_s, "embedding_memory": embedding_bytes / mem_bytes_per_s,
             "all_to_all": a2a_s, "collective_latency": latency_s * collectives,
             "dense_sync": sync_bytes / sync_bytes_per_s if sync_bytes else 0.0}
    compute = sum(parts.values())
    parts["data"] = data_s
    parts["total"] = max(data_s, compute) if overlap_data else data_s + compute
    parts["bound"] = "data" if overlap_data and data_s > compute else max(
        (k for k in parts if k not in ("data", "total")), key=lambda k: parts[k])
    return parts


def epoch_seconds(*, windows: float, batch_per_rank: int, world: int, step_s: float, eval_s: float) -> dict:
    """Steps and seconds of one epoch (training + one validation)."""
    steps = math.ceil(windows / (batch_per_rank * world))
    return {"steps": steps, "train_s": steps * step_s, "eval_s": eval_s, "total_s": steps * step_s + eval_s}


def eval_seconds(*, users: int, items: int, dim: int, world: int, flops_per_s: float, mem_bytes_per_s: float,
                 score_passes: float = 3.0) -> float:
    """Full ranking of every user against every item, split over ``world`` ranks.

    The matmul is ``2 users N D`` FLOPs; each score is also written and read ``score_passes`` times
    (scores, history mask, comparison with the target) as 4-byte floats, which dominates at small D.
    """
    flops = 2.0 * users * (items + 1) * dim
    traffic = 4.0 * users * (items + 1) * score_passes
    return (flops / flops_per_s + traffic / mem_bytes_per_s) / world


INGEST_STAGES = ("read", "group", "write")
"""The ingestion's parallel stages, in order (``mvrec_dist.data.ingest.pipeline``); each ends at a barrier."""


def ingest_seconds(*, stage_core_seconds: dict, stage_bytes: dict, serial_s: float, nodes: int, cores_per_node: int,
                   parallel_efficiency: float, network_gb_s: float, storage_gb_s: float, fixed_s: float) -> dict:
    """Ingestion time on ``nodes`` CPU nodes, stage by stage.

    The stages run one after another (``INGEST_STAGES``: the group stage needs every piece, the write stage
    every partition's ids). Each is bounded by the slowest of its CPU work spread over every core at
    ``parallel_efficiency`` (1.0 on one node), its bytes through the shared storage at every node's rate,
    and, on more than one node, the share ``(nodes-1)/nodes`` of those bytes that crosses the NICs (a
    task reads pieces other nodes wrote). ``serial_s`` (the driver's id maps, item shards and manifest)
    does not spread.

    Args:
        stage_core_seconds: Core-seconds of CPU work per stage.
        stage_bytes: Bytes each stage reads and writes on shared storage (read: the input and the pieces;
            group: the pieces and the grouped files; write: the grouped files and the shards).
        serial_s: Seconds of work on the driver alone.
        nodes: CPU nodes.
        cores_per_node: Cores of each.
        parallel_efficiency: Share of the cores' work that counts across nodes (stragglers, scheduling).
        network_gb_s: NIC rate per node.
        storage_gb_s: Shared-storage rate per node.
        fixed_s: Start-up and commit.

    Returns:
        Per stage ``{cpu, io, network, total, bound}``, and ``serial``, ``fixed``, ``total`` and ``bound`` (the
        longest stage and what bounds it).
    """
    eff = 1.0 if nodes == 1 else parallel_efficiency
    stages = {}
    for name in INGEST_STAGES:
        moved = stage_bytes.get(name, 0.0)
        parts = {"cpu": stage_core_seconds.get(name, 0.0) / (nodes * cores_per_node * eff),
                 "io": moved / (nodes * storage_gb_s * 1e9),
                 "network": moved * (nodes - 1) / nodes / (nodes * network_gb_s * 1e9)}
        bound = max(parts, key=parts.get)
        stages[name] = {**parts, "total": parts[bound], "bound": bound}
    longest = max(stages, key=lambda k: stages[k]["total"])
    return {"stages": stages, "serial": serial_s, "fixed": fixed_s,
            "total": fixed_s + serial_s + sum(st["total"] for st in stages.values()),
            "bound": f"{longest}: {stages[longest]['bound']}"}
