"""TorchRec's ``EmbeddingShardingPlanner`` on simulated H100 clusters, for the full-size tables.

Planning needs no GPU: the tables are the model's ``EmbeddingTables`` on the ``meta`` device, and
everything but the cluster's hardware is the trainer's own planning code
(``mvrec_dist.parallel.planning``: sharders with the fused optimizer — row-wise Adagrad, one extra
float per row — and, with bf16 precision, bf16 lookup outputs; constraints; the ``Topology`` through
``TopologyFactory``; the planner). The topology describes the cluster (HBM and host-memory
capacities, HBM, DDR, PCIe, NVLink and network bandwidths; TorchRec takes bandwidths in bytes per
millisecond). A ``Stats`` hook captures the chosen sharding options, from which per-rank memory and
the planner's per-rank time estimate are read.
"""

from __future__ import annotations

from typing import Any

__all__ = ["plan_item_table", "plan_tables", "GB_S_TO_BYTES_PER_MS"]

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
    """Plan the item table on ``nodes x gpus_per_node`` simulated GPUs (``plan_tables`` with one table).

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
    from mvrec_dist.models.tables import TableSpec

    spec = TableSpec(name="item", num_embeddings=rows, embedding_dim=dim, features=("item_id",))
    return plan_tables([spec], nodes=nodes, gpus_per_node=gpus_per_node, batch_per_rank=batch_per_rank,
                       ids_per_bag={"item": ids_per_sequence}, gpu=gpu, node=node, reserve_fraction=reserve_fraction,
                       sharding_types={"item": sharding_types}, bf16_output=bf16_output, learning_rate=learning_rate)


def plan_tables(specs: list, *, nodes: int, gpus_per_node: int, batch_per_rank: int, ids_per_bag: dict[str, float],
                gpu: dict, node: dict, reserve_fraction: float, sharding_types: dict[str, list[str]],
                bf16_output: bool, learning_rate: float) -> dict:
    """Plan a model's tables (``TableSpec``s) on a simulated cluster, as the trainer plans them.

    The tables, sharders, constraints, topology and planner come from ``mvrec_dist.parallel.planning``
    (the trainer's own code); only the topology's hardware figures are the simulated cluster's.

    Args:
        specs: The tables.
        nodes, gpus_per_node, batch_per_rank, gpu, node, reserve_fraction, bf16_output, learning_rate:
            As ``plan_item_table``.
        ids_per_bag: Table name -> looked-up ids per sequence (the pooling factor).
        sharding_types: Table name -> sharding types the planner may choose for it.

    Returns:
        As ``plan_item_table``, over every table (``sharding_type``/``kernel``/``rows``/``dim`` of the
        first), plus ``tables``: each table's chosen sharding type and kernel.
    """
    from mvrec_dist.models.tables import EmbeddingTables
    from mvrec_dist.parallel.planning import (TablePlan, fused_params, make_planner, make_topology,
                                              table_constraints, table_sharders)
    from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation

    world = nodes * gpus_per_node
    tables = EmbeddingTables(specs, device="meta")
    bw = GB_S_TO_BYTES_PER_MS
    topology = make_topology(world_size=world, compute_device="cuda", local_world_size=gpus_per_node, hardware={
        "hbm_cap_bytes": int(gpu["hbm_bytes"]), "ddr_cap_bytes": int(node["host_memory_bytes"] / node["gpus"]),
        "hbm_mem_bw": gpu["hbm_bw_gb_s"] * bw, "ddr_mem_bw": node["host_ddr_bw_gb_s"] / node["gpus"] * bw,
        "hbm_to_ddr_mem_bw": gpu["pcie_gb_s"] * bw, "intra_host_bw": gpu["nvlink_gb_s_per_direction"] * bw,
        "inter_host_bw": node["nic_gb_s_per_gpu"] * bw})
    plans = [TablePlan(spec=s, sharding_type="auto", optimizer="rowwise_adagrad", lr=learning_rate, eps=1e-8,
                       weight_decay=0.0) for s in specs]
    allowed = {("cuda", s.kind): tuple(sharding_types[s.name]) for s in specs}
    constraints = table_constraints(plans, "cuda", pooling_factors=ids_per_bag, allowed=allowed)
    sharders = table_sharders(fused_params("rowwise_adagrad", lr=learning_rate, eps=1e-8, weight_decay=0.0,
                                           output_bf16=bf16_output))
    stats = _capture_stats()
    planner = make_planner(topology, batch_size=batch_per_rank, constraints=constraints,
                           storage_reservation=FixedPercentageStorageReservation(reserve_fraction), stats=[stats])
    planner.plan(tables, sharders)
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
    rows, dim = specs[0].num_embeddings, specs[0].embedding_dim
    return {"world_size": world, "nodes": nodes, "gpus_per_node": gpus_per_node, "dim": dim, "rows": rows,
            "tables": {so.name: {"sharding_type": so.sharding_type, "kernel": so.compute_kernel}
                       for so in stats.best_plan},
            "sharding_type": chosen.sharding_type, "kernel": chosen.compute_kernel, "num_shards": len(shards),
            "shards": shards, "per_rank": per_rank,
            "max_rank_ms": max(p["total_ms"] for p in per_rank.values()),
            "max_hbm_gib": max(p["hbm_bytes"] for p in per_rank.values()) / 2**30,
            "table_gib": sum(s.num_embeddings * s.embedding_dim * 4 for s in specs) / 2**30,
            "search": {"proposals": stats.num_proposals, "plans": stats.num_plans, "seconds": stats.run_time}}
