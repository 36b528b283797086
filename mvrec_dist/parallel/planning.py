"""Planning the sharding of a model's embedding tables: what each device supports, sharders, topology, planner.

One place for the decisions both the trainer (``parallel.sharding``) and the full-scale projection
(``benchmarks/fullscale/planner.py``) make: which sharding types a table of each kind may use on a
device, the per-table fused optimizer, the sharders of ``EmbeddingCollection`` and
``EmbeddingBagCollection``, the planner's constraints, and the ``Topology`` (built through TorchRec's
``TopologyFactory``, which validates it; constructing ``Topology`` directly is deprecated and warns).

What works where was measured on this project's machines (``../shared/STACK.md``;
``benchmarks/sharding_support.py`` re-measures the CPU rows).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mvrec_dist.config.parallel import ParallelConfig
from mvrec_dist.models.tables import TableSpec

__all__ = ["SUPPORTED_SHARDING_TYPES", "SUPPORTED_EMBEDDING_OPTIMIZERS", "TablePlan", "table_plans",
           "sharding_problems", "table_sharders", "table_constraints", "make_topology", "make_planner",
           "fused_params", "apply_table_optimizers", "table_weight_name", "STORAGE_RESERVE_FRACTION",
           "STATE_TABLE_OPTIMIZER"]

SUPPORTED_SHARDING_TYPES: dict[tuple[str, str], tuple[str, ...]] = {
    ("cpu", "sequence"): ("table_wise", "row_wise", "column_wise"),
    ("cpu", "pooled"): ("table_wise", "column_wise", "table_column_wise"),
    ("cpu", "weighted"): ("table_wise", "column_wise", "table_column_wise"),
    ("cuda", "sequence"): ("table_wise", "row_wise", "column_wise", "table_row_wise"),
    ("cuda", "pooled"): ("table_wise", "row_wise", "column_wise", "table_row_wise", "table_column_wise"),
    ("cuda", "weighted"): ("table_wise", "row_wise", "column_wise", "table_row_wise", "table_column_wise"),
}
"""(device, table kind) -> sharding types the trainer offers: measured on CPU, TorchRec's set on CUDA."""

SUPPORTED_EMBEDDING_OPTIMIZERS = {
    "cpu": ("rowwise_adagrad", "adagrad", "sgd"),
    "cuda": ("rowwise_adagrad", "adagrad", "sgd", "adam"),
}
_WHY_NOT = {
    ("cpu", "sequence", "table_row_wise"): "fbgemm's CPU kernels fail for EmbeddingCollection with table_row_wise",
    ("cpu", "sequence", "data_parallel"): "fbgemm's CPU dense path returns a wrong output shape for "
                                          "EmbeddingCollection",
    ("cpu", "pooled", "row_wise"): "TorchRec does not offer row_wise for EmbeddingBagCollection on CPU",
    ("cpu", "weighted", "row_wise"): "TorchRec does not offer row_wise for EmbeddingBagCollection on CPU",
    ("cpu", "adam"): "fbgemm's CPU TBE has no fused Adam ('Optimizer adam is not supported in CPU mode')",
}


STATE_TABLE_OPTIMIZER = "sgd"
"""The fused optimizer of every state table (``TableSpec.state``): plain SGD, learning rate 1, no decay."""


@dataclass(frozen=True)
class TablePlan:
    """A table with the sharding and fused optimizer settings it gets (defaults with its overrides)."""

    spec: TableSpec
    sharding_type: str
    """``auto`` or one sharding type."""
    optimizer: str
    lr: float
    eps: float
    weight_decay: float


def table_plans(specs: tuple[TableSpec, ...], cfg: ParallelConfig) -> list[TablePlan]:
    """Each table's settings: ``parallel``'s defaults, replaced by its ``parallel.tables`` entry.

    Raises:
        ValueError: when ``parallel.tables`` names a table the model does not have.
    """
    overrides = {t.name: t for t in cfg.tables}
    unknown = sorted(set(overrides) - {s.name for s in specs})
    if unknown:
        raise ValueError(f"parallel.tables: the model has no table {unknown}; its tables are "
                         f"{[s.name for s in specs]}")
    plans = []
    for spec in specs:
        o = overrides.get(spec.name)
        if spec.state:
            # Rows written by the tower (TableSpec.state): SGD at lr 1 applies minus the gradient, i.e. the
            # write-back itself; any other optimizer or rate would rescale or distort the update.
            plans.append(TablePlan(spec=spec, sharding_type=(o and o.sharding_type) or cfg.sharding_type,
                                   optimizer=STATE_TABLE_OPTIMIZER, lr=1.0, eps=cfg.embedding_eps, weight_decay=0.0))
            continue
        plans.append(TablePlan(spec=spec, sharding_type=(o and o.sharding_type) or cfg.sharding_type,
                               optimizer=(o and o.embedding_optimizer) or cfg.embedding_optimizer,
                               lr=(o and o.embedding_lr) or cfg.embedding_lr, eps=cfg.embedding_eps,
                               weight_decay=cfg.embedding_weight_decay))
    return plans


def sharding_problems(cfg: ParallelConfig, specs: tuple[TableSpec, ...] | None = None) -> list[str]:
    """What in ``cfg`` the target device cannot do for these tables, each naming its key (empty when fine).

    Args:
        cfg: The ``parallel`` section.
        specs: The model's tables; None checks the defaults as they apply to the item table (a
            sequence table), which is what the driver knows before building the model.

    Returns:
        Problems as ``"parallel.<key>: reason"`` strings.
    """
    device = "cuda" if cfg.use_gpu else "cpu"
    if specs is None:
        specs = (TableSpec(name="item", num_embeddings=2, embedding_dim=2, features=("item_id",)),)
    problems: list[str] = []
    try:
        plans = table_plans(tuple(specs), cfg)
    except ValueError as exc:
        return [str(exc)]
    overridden = {t.name for t in cfg.tables}
    for t in cfg.tables:
        spec = next((s for s in specs if s.name == t.name), None)
        if spec is not None and spec.state and (t.embedding_optimizer not in (None, STATE_TABLE_OPTIMIZER)
                                                or t.embedding_lr not in (None, 1.0)):
            problems.append(f"parallel.tables[{t.name}]: '{t.name}' holds state the model writes back (plain SGD at "
                            "learning rate 1 applies the update exactly); leave its embedding_optimizer and "
                            "embedding_lr unset")
    for plan in plans:
        kind = plan.spec.kind
        key = (f"parallel.tables[{plan.spec.name}]." if plan.spec.name in overridden else "parallel.")
        allowed = SUPPORTED_SHARDING_TYPES[(device, kind)]
        if plan.sharding_type != "auto" and plan.sharding_type not in allowed:
            why = _WHY_NOT.get((device, kind, plan.sharding_type), f"not supported for {kind} tables here")
            what = "EmbeddingCollection" if kind == "sequence" else f"{kind} EmbeddingBagCollection"
            problems.append(f"{key}sharding_type: '{plan.sharding_type}' is not available on {device} for the "
                            f"{what} table '{plan.spec.name}' ({why}); choose one of {list(allowed)} or 'auto'")
        if plan.optimizer not in SUPPORTED_EMBEDDING_OPTIMIZERS[device]:
            why = _WHY_NOT.get((device, plan.optimizer), "not supported")
            problems.append(f"{key}embedding_optimizer: '{plan.optimizer}' is not available on {device} "
                            f"({why}); choose one of {list(SUPPORTED_EMBEDDING_OPTIMIZERS[device])}")
    return list(dict.fromkeys(problems))  # one line per problem when several tables share it


def fused_params(optimizer: str, *, lr: float, eps: float, weight_decay: float, output_bf16: bool) -> dict:
    """fbgemm fused-optimizer parameters of a sharder (or of one table)."""
    from fbgemm_gpu.split_embedding_configs import EmbOptimType

    params = {"optimizer": {"rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD,
                            "adagrad": EmbOptimType.EXACT_ADAGRAD, "sgd": EmbOptimType.EXACT_SGD,
                            "adam": EmbOptimType.ADAM}[optimizer],
              "learning_rate": lr, "eps": eps, "weight_decay": weight_decay}
    if output_bf16:
        # fbgemm's enum: torchrec.distributed.types has no SparseType (ImportError on every bf16 GPU run).
        from fbgemm_gpu.split_embedding_configs import SparseType

        # Halves the all-to-all volume of lookups; the dense tower computes in bf16 anyway.
        params["output_dtype"] = SparseType.BF16
    return params


def table_sharders(default: dict) -> list[Any]:
    """Sharders of ``EmbeddingCollection`` and ``EmbeddingBagCollection`` with the default fused parameters.

    A table whose optimizer differs carries its own (``apply_table_optimizers``); TorchRec merges
    them over these per table.
    """
    from torchrec.distributed.embedding import EmbeddingCollectionSharder
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder

    return [EmbeddingCollectionSharder(fused_params=dict(default)),
            EmbeddingBagCollectionSharder(fused_params=dict(default))]


def apply_table_optimizers(tables: Any, plans: list[TablePlan], default: TablePlan | None) -> None:
    """Give each table whose optimizer settings differ from ``default`` its own fused optimizer.

    Uses TorchRec's ``apply_optimizer_in_backward`` on the unsharded (meta) table weights; the
    sharder turns it into that table's fused optimizer (``merge_fused_params``).
    """
    from torchrec.optim import RowWiseAdagrad
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
    import torch

    classes = {"rowwise_adagrad": RowWiseAdagrad, "adagrad": torch.optim.Adagrad, "sgd": torch.optim.SGD,
               "adam": torch.optim.Adam}
    for plan in plans:
        if default is not None and (plan.optimizer, plan.lr, plan.weight_decay) == (
                default.optimizer, default.lr, default.weight_decay):
            continue
        weight = dict(tables.named_parameters())[table_weight_name(plan.spec)]
        kwargs: dict[str, Any] = {"lr": plan.lr, "weight_decay": plan.weight_decay}
        if plan.optimizer != "sgd":
            kwargs["eps"] = plan.eps
        apply_optimizer_in_backward(classes[plan.optimizer], [weight], kwargs)


def table_weight_name(spec: TableSpec) -> str:
    """The table's weight in ``EmbeddingTables.named_parameters()``."""
    child = {"sequence": "sequence.embeddings", "pooled": "pooled.embedding_bags",
             "weighted": "weighted.embedding_bags"}[spec.kind]
    return f"{child}.{spec.name}.weight"


def table_constraints(plans: list[TablePlan], device: str, *, pooling_factors: dict[str, float] | None = None,
                      allowed: dict[tuple[str, str], tuple[str, ...]] | None = None) -> dict[str, Any]:
    """The planner's ``ParameterConstraints`` per table: its sharding type (or every supported one for
    ``auto``), whether it is weighted, and the expected ids per bag when known."""
    from torchrec.distributed.planner import ParameterConstraints

    allowed = allowed or SUPPORTED_SHARDING_TYPES
    out = {}
    for plan in plans:
        types = ([plan.sharding_type] if plan.sharding_type != "auto"
                 else list(allowed[(device, plan.spec.kind)]))
        extra = {"pooling_factors": [pooling_factors[plan.spec.name]]} if pooling_factors and \
            plan.spec.name in pooling_factors else {}
        out[plan.spec.name] = ParameterConstraints(sharding_types=types, is_weighted=plan.spec.weighted, **extra)
    return out


def make_topology(*, world_size: int, compute_device: str, local_world_size: int | None = None,
                  hardware: dict[str, float] | None = None) -> Any:
    """A TorchRec ``Topology`` through ``TopologyFactory`` (validated; no deprecation warning).

    Args:
        world_size: Ranks.
        compute_device: ``cpu`` or ``cuda``.
        local_world_size: Ranks per host (default: TorchRec's).
        hardware: ``HardwareConfig`` fields (capacities in bytes, bandwidths in bytes/ms) for
            simulated clusters; None uses TorchRec's defaults for the device.
    """
    from torchrec.distributed.planner.types import HardwareConfig, KernelConfig, TopologyFactory, TrainerConfig

    # Without use_hardware_based_bandwidth the factory ignores given bandwidths and keeps TorchRec's
    # defaults (the trainer's case: no figures given, the same topology as before).
    return TopologyFactory.create_topology(
        trainer_config=TrainerConfig(world_size=world_size, local_world_size=local_world_size),
        hardware_config=HardwareConfig(**(hardware or {})),
        kernel_config=KernelConfig(compute_device=compute_device, use_hardware_based_bandwidth=hardware is not None))


STORAGE_RESERVE_FRACTION = 0.15
"""Share of each device's memory the planner keeps free for what it does not place (TorchRec's default margin)."""


def make_planner(topology: Any, *, batch_size: int, constraints: dict[str, Any], storage_reservation: Any = None,
                 stats: list[Any] | None = None) -> Any:
    """TorchRec's ``EmbeddingShardingPlanner`` with this project's settings (no debug box).

    Args:
        topology: From ``make_topology``.
        batch_size: Per-rank batch hint for the cost model.
        constraints: ``table_constraints``.
        storage_reservation: A TorchRec ``StorageReservation``; None keeps ``STORAGE_RESERVE_FRACTION``
            of every device free (``FixedPercentageStorageReservation``).
        stats: The planner's ``Stats`` sinks; None: TorchRec's (logged, at INFO).
    """
    from torchrec.distributed.planner import EmbeddingShardingPlanner
    from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation

    # TorchRec's default, HeuristicalStorageReservation, is deprecated (a FutureWarning on every rank) and
    # estimates dense tensors from the module it plans; ours holds the tables only (the dense tower lives
    # in DeepSpeed), so there is nothing to estimate and a fixed margin is the reservation TorchRec recommends.
    extra: dict[str, Any] = {"storage_reservation": storage_reservation
                             or FixedPercentageStorageReservation(STORAGE_RESERVE_FRACTION)}
    if stats is not None:
        extra["stats"] = stats
    return EmbeddingShardingPlanner(topology=topology, batch_size=batch_size, constraints=constraints,
                                    debug=False, **extra)
