"""TorchRec sharding of a model's embedding tables: planner, DMP, fused optimizers, sharding-invariant init.

``shard_tables`` turns the model's unsharded ``EmbeddingTables`` into a ``DistributedModelParallel``;
what each device supports per table kind, the sharders, constraints, topology and planner are
``planning.py``'s (shared with ``benchmarks/fullscale``). The fused optimizers are the exact
(row-wise) Adagrad and SGD on CPU (fbgemm's CPU TBE has no Adam), plus Adam on CUDA.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from mvrec_dist.config.parallel import ParallelConfig
from mvrec_dist.models.tables import initial_rows
from mvrec_dist.parallel.process_groups import DistContext

__all__ = ["ShardedEmbeddings", "shard_tables", "describe_plan", "sparse_gradient_scale"]

log = logging.getLogger(__name__)


def sparse_gradient_scale(world_size: int) -> float:
    """Factor that makes the embedding gradient the gradient of the *sum* of the ranks' losses.

    TorchRec's all-to-all backward divides by the world size by default (``gradient_division``, to
    match DDP's averaging); when it does not, the caller must divide itself.
    """
    from torchrec.distributed.comm_ops import get_gradient_division

    return 1.0 if get_gradient_division() else 1.0 / world_size


@dataclass
class ShardedEmbeddings:
    """The sharded tables and what was decided about them."""

    module: nn.Module
    """``DistributedModelParallel`` around the ``EmbeddingTables``."""
    plan_text: str
    """Human-readable plan: sharding type, kernel and ranks per table."""
    sharding_type: str
    """The sharding type the plan uses for the item table."""
    sharding_types: dict[str, str] = field(default_factory=dict)
    """Sharding type of every table, by table name."""


def shard_tables(tables: nn.Module, cfg: ParallelConfig, ctx: DistContext, *, batch_size: int) -> ShardedEmbeddings:
    """Plan, shard and initialise a model's ``EmbeddingTables`` with their fused optimizers.

    Every table gets the sharding type and fused optimizer of ``parallel`` (or of its
    ``parallel.tables`` entry); ``auto`` lets the planner choose among the types the device supports
    for the table's kind (``planning.SUPPORTED_SHARDING_TYPES``). What the device cannot do is
    refused before anything is built.

    Args:
        tables: Unsharded ``EmbeddingTables`` (normally on ``meta``).
        cfg: The ``parallel`` section.
        ctx: Process group and device.
        batch_size: Per-rank batch hint for the planner's cost model.

    Returns:
        ``ShardedEmbeddings`` holding the DMP.
    """
    from torchrec.distributed import DistributedModelParallel
    from torchrec.distributed.types import ShardingEnv

    from mvrec_dist.parallel.planning import (apply_table_optimizers, fused_params, make_planner, make_topology,
                                              sharding_problems, table_constraints, table_plans, table_sharders)

    problems = sharding_problems(cfg, tables.specs)
    if problems:
        raise ValueError("; ".join(problems))
    device_type = "cuda" if ctx.is_cuda else "cpu"
    plans = table_plans(tables.specs, cfg)
    default = next((p for p in plans if p.spec.name == "item"), plans[0])
    bf16 = ctx.is_cuda and cfg.precision == "bf16"
    sharders = table_sharders(fused_params(default.optimizer, lr=default.lr, eps=default.eps,
                                           weight_decay=default.weight_decay, output_bf16=bf16))
    apply_table_optimizers(tables, plans, default)
    planner = make_planner(make_topology(world_size=ctx.world_size, compute_device=device_type),
                           batch_size=batch_size, constraints=table_constraints(plans, device_type))
    plan = planner.collective_plan(tables, sharders, ctx.group)
    dmp = DistributedModelParallel(tables, env=ShardingEnv.from_process_group(ctx.group), device=ctx.device,
                                   plan=plan, sharders=sharders)
    _init_table_shards(dmp, {s.name: s for s in tables.specs})
    chosen = {name: ps.sharding_type for module_plan in plan.plan.values() for name, ps in module_plan.items()}
    for p in plans:
        if p.optimizer == "rowwise_adagrad" and chosen.get(p.spec.name) == "column_wise":
            log.warning(f"table {p.spec.name}: column_wise sharding with rowwise_adagrad keeps one accumulator per "
                        "row *per column shard*: updates differ from an unsharded table (use adagrad or sgd for exact "
                        "equivalence)")
    return ShardedEmbeddings(module=dmp, plan_text=describe_plan(plan), sharding_type=chosen.get("item", "?"),
                             sharding_types=chosen)


INIT_CHUNK_ROWS = 65_536
"""Rows of a table's initial values produced at once while filling its shards (bounds the memory of
``TableSpec.init_rows`` tables, read from a feature store)."""


@torch.no_grad()
def _init_table_shards(dmp: nn.Module, specs: dict, *, chunk_rows: int = INIT_CHUNK_ROWS) -> None:
    """Fill every local shard of every table from the table's global, sharding-invariant init.

    The local shards of a table that cover the same rows (column-wise sharding puts several on one
    rank) are filled from one pass over those rows, in chunks of ``chunk_rows``: a table whose initial
    values are read from a store (``TableSpec.init_rows``) is read once per rank, not once per shard.
    """
    by_rows: dict[tuple[str, int, int], list[tuple[int, int, torch.Tensor]]] = {}
    for key, value in dmp.state_dict().items():
        if not key.endswith(".weight"):
            continue
        name = key.split(".")[-2]
        # The width comes from the spec (initial_rows): ShardedTensor.size() is deprecated (FutureWarning,
        # TorchRec's state dict still holds ShardedTensors); the shards' metadata below is not.
        for shard in value.local_shards():
            r0, c0 = shard.metadata.shard_offsets
            rows, cols = shard.metadata.shard_sizes
            by_rows.setdefault((name, r0, r0 + rows), []).append((c0, c0 + cols, shard.tensor))
    for (name, r0, r1), shards in by_rows.items():
        lo, hi = min(c0 for c0, _, _ in shards), max(c1 for _, c1, _ in shards)
        for a in range(r0, r1, chunk_rows):
            b = min(r1, a + chunk_rows)
            block = initial_rows(specs[name], row_start=a, row_end=b, col_start=lo, col_end=hi)  # b-a,hi-lo
            for c0, c1, tensor in shards:
                tensor[a - r0:b - r0].copy_(block[:, c0 - lo:c1 - lo].to(tensor.device, tensor.dtype))


def describe_plan(plan: object) -> str:
    """One line per sharded table: sharding type, compute kernel and ranks."""
    lines = []
    for module_path, module_plan in plan.plan.items():
        for table, ps in module_plan.items():
            lines.append(f"{module_path or '<root>'}.{table}: {ps.sharding_type} / {ps.compute_kernel} "
                         f"on ranks {ps.ranks}")
    return "\n".join(lines)
