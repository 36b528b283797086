"""TorchRec's ``EmbeddingShardingPlanner`` on simulated H100 clusters, for the full item table.

Planning needs no GPU: the table is an ``EmbeddingCollection`` on the ``meta`` device and the
``Topology`` describes the cluster (``compute_device='cuda'``, HBM and host-memory capacities, HBM,
DDR, PCIe, NVLink and network bandwidths; TorchRec takes bandwidths in bytes per millisecond). The
sharder carries the job's fused optimizer (row-wise Adagrad: one extra float per row) and, with
bf16 precision, bf16 lookup outputs, as ``mvrec_dist.parallel.sharding`` builds it; the sharding
types offered are the ones the project supports on CUDA. A ``Stats`` hook captures the chosen
sharding options, from which per-rank memory and the planner's per-rank time estimate are read.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["plan_item_table", "GB_S_TO_BYTES_PER_MS"]

GB_S_TO_BYTES_PER_MS = 1e9 / 1e3  # TorchRec's bandwidth unit is bytes/ms


def _capture_stats():
    from torchrec.distributed.planner.types import Stats

    class CaptureStats(Stats):
        """Keeps the best plan's sharding options (TorchRec calls ``log`` once per ``plan``)."""

        best_plan: list = []

        def log(self, sharding_plan, topology, batch_size, storage_reservation, num_proposals, num_plans,
                run_time, best_plan, *args: Any, **kwargs: Any) -> None:
            self.best_plan = list(best_plan)
            self.num_proposals, self.num_plans, self.run_time = num_proposals, num_plans, run_time

    return CaptureStats()


def plan_item_table(*, rows: int, dim: int, nodes: int, gpus_per_node: int, batch_per_rank: int,
                    ids_per_sequence: float, gpu: dict, node: dict, reserve_fraction: float,
                    sharding_types: list[str], bf16_output: bool, learning_rate: float) -> dict:
    """Plan the item table on ``nodes x gpus_per_node`` simulated GPUs.

    Args:
        rows: Table rows (N + 1).
        dim: D.
        nodes: Nodes.
        gpus_per_node: GPUs (ranks) per node.
        batch_per_rank: Sequences per rank per step (the planner's batch size).
        ids_per_sequence: Looked-up ids per sequence (unique ids per step / batch): the pooling factor.
        gpu: ``hbm_bytes``, ``hbm_bw_gb_s``, ``pcie_gb_s``, ``nvlink_gb_s_per_direction`` (values).
        node: ``host_memory_bytes``, ``host_ddr_bw_gb_s``, ``nic_gb_s_per_gpu``, ``gpus`` (values).
        reserve_fraction: HBM share reserved for the dense tower, activations and buffers.
        sharding_types: Sharding types the planner may choose.
        bf16_output: Lookups return bf16 (halves the output all-to-all).
        learning_rate: Fused optimizer learning rate (does not change the plan; the sharder wants one).

    Returns:
        ``plan`` (one row per shard: rank, sharding type, kernel, offsets, sizes), ``per_rank``
        (HBM/DDR bytes and the planner's fwd/bwd compute/comms estimate in ms), the chosen sharding
        type and kernel, and the planner's search statistics.
    """
    import torch
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from torchrec import EmbeddingCollection, EmbeddingConfig
    from torchrec.distributed.embedding import EmbeddingCollectionSharder
    from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
    from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation

    world = nodes * gpus_per_node
    ec = EmbeddingCollection(tables=[EmbeddingConfig(name="item", embedding_dim=dim, num_embeddings=rows,
                                                     feature_names=["item_id"])], device=torch.device("meta"))
    bw = GB_S_TO_BYTES_PER_MS
    topology = Topology(world_size=world, compute_device="cuda", local_world_size=gpus_per_node,
                        hbm_cap=int(gpu["hbm_bytes"]), ddr_cap=int(node["host_memory_bytes"] / node["gpus"]),
                        hbm_mem_bw=gpu["hbm_bw_gb_s"] * bw, ddr_mem_bw=node["host_ddr_bw_gb_s"] / node["gpus"] * bw,
                        hbm_to_ddr_mem_bw=gpu["pcie_gb_s"] * bw, intra_host_bw=gpu["nvlink_gb_s_per_direction"] * bw,
                        inter_host_bw=node["nic_gb_s_per_gpu"] * bw)
    fused = {"optimizer": EmbOptimType.EXACT_ROWWISE_ADAGRAD, "learning_rate": learning_rate}
    if bf16_output:
        from fbgemm_gpu.split_embedding_configs import SparseType

        fused["output_dtype"] = SparseType.BF16
    stats = _capture_stats()
    planner = EmbeddingShardingPlanner(
        topology=topology, batch_size=batch_per_rank,
        constraints={"item": ParameterConstraints(sharding_types=sharding_types, pooling_factors=[ids_per_sequence])},
        storage_reservation=FixedPercentageStorageReservation(reserve_fraction), stats=[stats], debug=False)
    quiet = logging.getLogger("torchrec.distributed.planner")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the "constructed directly" warning: this *is* a simulated topology
    try:
        planner.plan(ec, [EmbeddingCollectionSharder(fused_params=fused)])
    finally:
        quiet.setLevel(level)
    per_rank = {r: {"hbm_bytes": 0, "ddr_bytes": 0, "fwd_compute_ms": 0.0, "fwd_comms_ms": 0.0,
                    "bwd_compute_ms": 0.0, "bwd_comms_ms": 0.0, "input_dist_ms": 0.0} for r in range(world)}
    shards = []
    for so in stats.best_plan:
        for sh in so.shards:
            p = per_rank[sh.rank]
            p["hbm_bytes"] += sh.storage.hbm
            p["ddr_bytes"] += sh.storage.ddr
            p["fwd_compute_ms"] += sh.perf.fwd_compute
            p["fwd_comms_ms"] += sh.perf.fwd_comms
            p["bwd_compute_ms"] += sh.perf.bwd_compute
            p["bwd_comms_ms"] += sh.perf.bwd_comms
            p["input_dist_ms"] += sh.perf.input_dist_comms
            shards.append({"rank": sh.rank, "sharding_type": so.sharding_type, "kernel": so.compute_kernel,
                           "offsets": list(sh.offset), "sizes": list(sh.size)})
    for p in per_rank.values():
        p["total_ms"] = sum(v for k, v in p.items() if k.endswith("_ms"))
    chosen = stats.best_plan[0]
    return {"world_size": world, "nodes": nodes, "gpus_per_node": gpus_per_node, "dim": dim, "rows": rows,
            "sharding_type": chosen.sharding_type, "kernel": chosen.compute_kernel, "num_shards": len(shards),
            "shards": shards, "per_rank": per_rank,
            "max_rank_ms": max(p["total_ms"] for p in per_rank.values()),
            "max_hbm_gib": max(p["hbm_bytes"] for p in per_rank.values()) / 2**30,
            "table_gib": rows * dim * 4 / 2**30,
            "search": {"proposals": stats.num_proposals, "plans": stats.num_plans, "seconds": stats.run_time}}
