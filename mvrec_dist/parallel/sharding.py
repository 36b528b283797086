"""TorchRec sharding of the item ID table: device support, planner, DMP, fused optimizer, init.

Everything that knows TorchRec's distributed API lives here. What works where was measured on
this project's machines (``../shared/STACK.md``): on CPU, ``EmbeddingCollection`` shards
table_wise, row_wise and column_wise (data_parallel returns a wrong output shape from fbgemm's CPU
dense path; table_row_wise / table_column_wise fail), and the fused optimizers are the exact
(row-wise) Adagrad and SGD (fbgemm's CPU TBE has no Adam).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from mvrec_dist.config.parallel import ParallelConfig
from mvrec_dist.models.embedding_init import init_table_block
from mvrec_dist.models.recommender import ITEM_FEATURE
from mvrec_dist.parallel.process_groups import DistContext

__all__ = ["SUPPORTED_SHARDING_TYPES", "SUPPORTED_EMBEDDING_OPTIMIZERS", "sharding_problems",
           "ShardedEmbeddings", "shard_item_embeddings", "lookup_features", "describe_plan", "sparse_gradient_scale"]

log = logging.getLogger(__name__)

SUPPORTED_SHARDING_TYPES = {
    "cpu": ("table_wise", "row_wise", "column_wise"),
    "cuda": ("table_wise", "row_wise", "column_wise", "table_row_wise"),
}
SUPPORTED_EMBEDDING_OPTIMIZERS = {
    "cpu": ("rowwise_adagrad", "adagrad", "sgd"),
    "cuda": ("rowwise_adagrad", "adagrad", "sgd", "adam"),
}
_WHY_NOT = {
    ("cpu", "table_row_wise"): "fbgemm's CPU kernels fail for EmbeddingCollection with table_row_wise",
    ("cpu", "adam"): "fbgemm's CPU TBE has no fused Adam ('Optimizer adam is not supported in CPU mode')",
}


def sharding_problems(cfg: ParallelConfig) -> list[str]:
    """What in ``cfg`` the target device cannot do, each naming its key (empty when fine).

    Args:
        cfg: The ``parallel`` section.

    Returns:
        Problems as ``"parallel.<key>: reason"`` strings.
    """
    device = "cuda" if cfg.use_gpu else "cpu"
    problems = []
    if cfg.sharding_type != "auto" and cfg.sharding_type not in SUPPORTED_SHARDING_TYPES[device]:
        why = _WHY_NOT.get((device, cfg.sharding_type), "not supported for EmbeddingCollection here")
        problems.append(f"parallel.sharding_type: '{cfg.sharding_type}' is not available on {device} ({why}); "
                        f"choose one of {list(SUPPORTED_SHARDING_TYPES[device])} or 'auto'")
    if cfg.embedding_optimizer not in SUPPORTED_EMBEDDING_OPTIMIZERS[device]:
        why = _WHY_NOT.get((device, cfg.embedding_optimizer), "not supported")
        problems.append(f"parallel.embedding_optimizer: '{cfg.embedding_optimizer}' is not available on {device} "
                        f"({why}); choose one of {list(SUPPORTED_EMBEDDING_OPTIMIZERS[device])}")
    return problems


def sparse_gradient_scale(world_size: int) -> float:
    """Factor that makes the embedding gradient the gradient of the *sum* of the ranks' losses.

    TorchRec's all-to-all backward divides by the world size by default (``gradient_division``, to
    match DDP's averaging); when it does not, the caller must divide itself.
    """
    from torchrec.distributed.comm_ops import get_gradient_division

    return 1.0 if get_gradient_division() else 1.0 / world_size


def _fused_params(cfg: ParallelConfig, output_bf16: bool) -> dict:
    from fbgemm_gpu.split_embedding_configs import EmbOptimType

    optimizer = {
        "rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD,
        "adagrad": EmbOptimType.EXACT_ADAGRAD,
        "sgd": EmbOptimType.EXACT_SGD,
        "adam": EmbOptimType.ADAM,
    }[cfg.embedding_optimizer]
    params = {"optimizer": optimizer, "learning_rate": cfg.embedding_lr, "eps": cfg.embedding_eps,
              "weight_decay": cfg.embedding_weight_decay}
    if output_bf16:
        # fbgemm's enum: torchrec.distributed.types has no SparseType (ImportError on every bf16 GPU run).
        from fbgemm_gpu.split_embedding_configs import SparseType

        # Halves the all-to-all volume of lookups; the dense tower computes in bf16 anyway.
        params["output_dtype"] = SparseType.BF16
    return params


@dataclass
class ShardedEmbeddings:
    """The sharded item table and what was decided about it."""

    module: nn.Module
    """``DistributedModelParallel`` around the ``EmbeddingCollection``."""
    plan_text: str
    """Human-readable plan: sharding type, kernel and ranks per table."""
    sharding_type: str
    """The sharding type the plan uses for the item table."""


def shard_item_embeddings(ec: nn.Module, cfg: ParallelConfig, ctx: DistContext, *, init_std: float,
                          seed: int, batch_size: int) -> ShardedEmbeddings:
    """Plan, shard and initialise the item ``EmbeddingCollection`` with a fused optimizer.

    Args:
        ec: Unsharded ``EmbeddingCollection`` (normally on ``meta``) with one table ``item``.
        cfg: The ``parallel`` section (sharding type, fused optimizer and its hyper-parameters).
        ctx: Process group and device.
        init_std: Std of the table's normal init.
        seed: Table seed; the same seed gives the same table under every sharding and world size.
        batch_size: Per-rank batch hint for the planner's cost model.

    Returns:
        ``ShardedEmbeddings`` holding the DMP.
    """
    from torchrec.distributed import DistributedModelParallel
    from torchrec.distributed.embedding import EmbeddingCollectionSharder
    from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
    from torchrec.distributed.types import ShardingEnv

    problems = sharding_problems(cfg)
    if problems:
        raise ValueError("; ".join(problems))
    device_type = "cuda" if ctx.is_cuda else "cpu"
    sharder = EmbeddingCollectionSharder(
        fused_params=_fused_params(cfg, output_bf16=ctx.is_cuda and cfg.precision == "bf16"))
    allowed = ([cfg.sharding_type] if cfg.sharding_type != "auto"
               else list(SUPPORTED_SHARDING_TYPES[device_type]))
    constraints = {name: ParameterConstraints(sharding_types=allowed)
                   for name in _table_names(ec)}
    topology = Topology(world_size=ctx.world_size, compute_device=device_type)
    planner = EmbeddingShardingPlanner(topology=topology, batch_size=batch_size, constraints=constraints,
                                       debug=False)
    plan = planner.collective_plan(ec, [sharder], ctx.group)
    dmp = DistributedModelParallel(ec, env=ShardingEnv.from_process_group(ctx.group), device=ctx.device,
                                   plan=plan, sharders=[sharder])
    _init_shards(dmp, init_std=init_std, seed=seed)
    module_plan = next(iter(plan.plan.values()))
    chosen = {name: ps.sharding_type for name, ps in module_plan.items()}
    if cfg.embedding_optimizer == "rowwise_adagrad" and "column_wise" in chosen.values():
        log.warning("column_wise sharding with rowwise_adagrad keeps one accumulator per row *per column "
                    "shard*: updates differ from an unsharded table (use adagrad or sgd for exact equivalence)")
    return ShardedEmbeddings(module=dmp, plan_text=describe_plan(plan), sharding_type=chosen.get("item", "?"))


def lookup_features(ids: torch.Tensor):
    """The sharded table's input that looks up ``ids`` in order.

    One bag holding all U ids (not U bags of one): every rank sends a KJT of batch size 1, also a
    rank that looks up nothing (U = 0 in evaluation chunks).

    Args:
        ids: ``LongTensor[U]`` item ids.

    Returns:
        A ``KeyedJaggedTensor`` with key ``item_id``, values ``ids`` and lengths ``[U]``; the table's
        output ``[ITEM_FEATURE].values()`` is ``[U, D]`` in the order of ``ids``.
    """
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    return KeyedJaggedTensor(keys=[ITEM_FEATURE], values=ids,
                             lengths=torch.tensor([ids.numel()], dtype=torch.int32, device=ids.device))


def _table_names(ec: nn.Module) -> list[str]:
    return [t.name for t in ec.embedding_configs()]


@torch.no_grad()
def _init_shards(dmp: nn.Module, *, init_std: float, seed: int) -> None:
    """Fill every local shard from the table's global, sharding-invariant init."""
    for key, value in dmp.state_dict().items():
        if not key.endswith(".weight"):
            continue
        dim = value.size(1)
        for shard in value.local_shards():
            r0, c0 = shard.metadata.shard_offsets
            rows, cols = shard.metadata.shard_sizes
            block = init_table_block(row_start=r0, row_end=r0 + rows, col_start=c0, col_end=c0 + cols,
                                     dim=dim, std=init_std, seed=seed)
            shard.tensor.copy_(block.to(shard.tensor.device, shard.tensor.dtype))


def describe_plan(plan: object) -> str:
    """One line per sharded table: sharding type, compute kernel and ranks."""
    lines = []
    for module_path, module_plan in plan.plan.items():
        for table, ps in module_plan.items():
            lines.append(f"{module_path or '<root>'}.{table}: {ps.sharding_type} / {ps.compute_kernel} "
                         f"on ranks {ps.ranks}")
    return "\n".join(lines)
