"""TorchRec's ``EmbeddingShardingPlanner`` on simulated H100 clusters, for the full-size tables.

Planning needs no GPU: the tables are the model's ``EmbeddingTables`` on the ``meta`` device, and
everything but the cluster's hardware is the trainer's own planning code
(``mvrec_dist.parallel.planning``: each table's fused optimizer as ``table_plans`` gives it — row-wise
Adagrad for learnt tables, plain SGD at lr 1 for state tables such as MTIN's memory — and, with bf16
precision, bf16 lookup outputs; constraints; the ``Topology`` through ``TopologyFactory``; the
planner). The topology describes the cluster (HBM and host-memory capacities, HBM, DDR, PCIe, NVLink
and network bandwidths; TorchRec takes bandwidths in bytes per millisecond). A ``Stats`` hook captures the chosen sharding options, from which per-rank memory and
the planner's per-rank time estimate are read.
"""

from __future__ import annotations

from typing import Any

__all__ = ["plan_item_table", "plan_tables", "optimizer_state_bytes",
           "GB_S_TO_BYTES_PER_MS"]

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
        first), plus ``tables``: per table the chosen sharding type and kernel, its fp32 size, its fused
        optimizer and that optimizer's state, the optimizer class the planner sized state from (None:
        it counted none), the planner's storage of its shards (table, counted optimizer state, I/O
        buffers) in all and on the fullest rank, and its slowest rank's time; ``max_ddr_gib`` (host
        memory of UVM kernels) and ``hbm_usable_gib`` (HBM less the reserve).
    """
    from mvrec_dist.config.parallel import ParallelConfig
    from mvrec_dist.models.tables import EmbeddingTables
    from mvrec_dist.parallel.planning import (apply_table_optimizers, fused_params, make_planner, make_topology,
                                              table_constraints, table_plans, table_sharders, table_weight_name)
    from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation

    world = nodes * gpus_per_node
    tables = EmbeddingTables(specs, device="meta")
    bw = GB_S_TO_BYTES_PER_MS
    topology = make_topology(world_size=world, compute_device="cuda", local_world_size=gpus_per_node, hardware={
        "hbm_cap_bytes": int(gpu["hbm_bytes"]), "ddr_cap_bytes": int(node["host_memory_bytes"] / node["gpus"]),
        "hbm_mem_bw": gpu["hbm_bw_gb_s"] * bw, "ddr_mem_bw": node["host_ddr_bw_gb_s"] / node["gpus"] * bw,
        "hbm_to_ddr_mem_bw": gpu["pcie_gb_s"] * bw, "intra_host_bw": gpu["nvlink_gb_s_per_direction"] * bw,
        "inter_host_bw": node["nic_gb_s_per_gpu"] * bw})
    # The trainer's per-table settings (parallel.sharding.shard_tables): the item table's row-wise Adagrad is
    # the sharders' default, a state table (TableSpec.state) gets its own plain SGD at lr 1, attached to the
    # meta weight, which is also how TorchRec's planner learns that table's optimizer.
    plans = table_plans(tuple(specs), ParallelConfig(sharding_type="auto", embedding_optimizer="rowwise_adagrad",
                                                     embedding_lr=learning_rate, embedding_eps=1e-8))
    default = next((p for p in plans if p.spec.name == "item"), plans[0])
    apply_table_optimizers(tables, plans, default)
    allowed = {("cuda", s.kind): tuple(sharding_types[s.name]) for s in specs}
    constraints = table_constraints(plans, "cuda", pooling_factors=ids_per_bag, allowed=allowed)
    sharders = table_sharders(fused_params(default.optimizer, lr=default.lr, eps=default.eps,
                                           weight_decay=default.weight_decay, output_bf16=bf16_output))
    stats = _capture_stats()
    planner = make_planner(topology, batch_size=batch_per_rank, constraints=constraints,
                           storage_reservation=FixedPercentageStorageReservation(reserve_fraction), stats=[stats])
    planner.plan(tables, sharders)
    per_rank = {r: {"hbm_bytes": 0, "ddr_bytes": 0, "fwd_compute_ms": 0.0, "fwd_comms_ms": 0.0,
                    "bwd_compute_ms": 0.0, "bwd_comms_ms": 0.0, "input_dist_ms": 0.0} for r in range(world)}
    by_table: dict[str, dict[int, dict]] = {}  # table -> rank -> its shards' hbm/ddr bytes and planner ms there
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
            t = by_table.setdefault(so.name, {}).setdefault(sh.rank, {"hbm_bytes": 0, "ddr_bytes": 0, "ms": 0.0})
            t["hbm_bytes"] += sh.storage.hbm
            t["ddr_bytes"] += sh.storage.ddr
            t["ms"] += (sh.perf.fwd_compute + sh.perf.fwd_comms + sh.perf.bwd_compute + sh.perf.bwd_comms
                        + sh.perf.input_dist_comms)  # per_rank's terms
            shards.append({"table": so.name, "rank": sh.rank, "sharding_type": so.sharding_type,
                           "kernel": so.compute_kernel, "offsets": list(sh.offset), "sizes": list(sh.size)})
    for p in per_rank.values():
        p["total_ms"] = sum(v for k, v in p.items() if k.endswith("_ms"))
    chosen = stats.best_plan[0]
    rows, dim = specs[0].num_embeddings, specs[0].embedding_dim
    weights = dict(tables.named_parameters())
    table_info = {}
    for so in stats.best_plan:
        plan = next(tp for tp in plans if tp.spec.name == so.name)
        ranks = by_table[so.name].values()
        counted = getattr(weights[table_weight_name(plan.spec)], "_optimizer_classes", [None])[0]
        table_info[so.name] = {
            "sharding_type": so.sharding_type, "kernel": so.compute_kernel, "rows": plan.spec.num_embeddings,
            "dim": plan.spec.embedding_dim, "state": plan.spec.state, "num_shards": len(so.shards),
            "table_gib": plan.spec.num_embeddings * plan.spec.embedding_dim * 4 / 2**30,
            "optimizer": plan.optimizer,
            "optimizer_state_gib": optimizer_state_bytes(plan.optimizer, plan.spec.num_embeddings,
                                                         plan.spec.embedding_dim) / 2**30,
            # TorchRec sizes optimizer state from the class attached to the weight (apply_optimizer_in_backward);
            # a table on the sharders' default fused optimizer has none, and the planner counts no state for it.
            "planner_optimizer": counted.__name__ if counted is not None else None,
            "planner_hbm_gib": sum(r["hbm_bytes"] for r in ranks) / 2**30,
            "planner_ddr_gib": sum(r["ddr_bytes"] for r in ranks) / 2**30,
            "max_rank_hbm_gib": max(r["hbm_bytes"] for r in ranks) / 2**30,
            "max_rank_ddr_gib": max(r["ddr_bytes"] for r in ranks) / 2**30,
            "max_rank_ms": max(r["ms"] for r in ranks)}
    return {"world_size": world, "nodes": nodes, "gpus_per_node": gpus_per_node, "dim": dim, "rows": rows,
            "tables": table_info,
            "sharding_type": chosen.sharding_type, "kernel": chosen.compute_kernel, "num_shards": len(shards),
            "shards": shards, "per_rank": per_rank,
            "max_rank_ms": max(p["total_ms"] for p in per_rank.values()),
            "max_hbm_gib": max(p["hbm_bytes"] for p in per_rank.values()) / 2**30,
            "max_ddr_gib": max(p["ddr_bytes"] for p in per_rank.values()) / 2**30,
            "hbm_usable_gib": gpu["hbm_bytes"] * (1 - reserve_fraction) / 2**30,
            "table_gib": sum(s.num_embeddings * s.embedding_dim * 4 for s in specs) / 2**30,
            "search": {"proposals": stats.num_proposals, "plans": stats.num_plans, "seconds": stats.run_time}}


def optimizer_state_bytes(optimizer: str, rows: int, dim: int) -> int:
    """Bytes of a fused optimizer's state for a ``rows x dim`` table (fp32 state, as fbgemm keeps it).

    Row-wise Adagrad keeps one float per row, Adagrad one per element, Adam two per element, SGD none.
    """
    per_row = {"rowwise_adagrad": 1, "adagrad": dim, "adam": 2 * dim, "sgd": 0}[optimizer]
    return rows * per_row * 4
