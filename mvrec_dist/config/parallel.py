"""Distribution settings: workers, devices, TorchRec sharding of ID tables, DeepSpeed ZeRO for dense parts.

Which sharding types and optimizers work on which device is knowledge of ``mvrec_dist.parallel``
(it checks them before training starts); this schema only names the choices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mvrec_dist.config.fields import Problems, setting

__all__ = ["ParallelConfig", "TableParallelConfig"]

ShardingType = Literal["auto", "table_wise", "row_wise", "column_wise", "table_row_wise", "table_column_wise",
                       "data_parallel"]
EmbeddingOptimizer = Literal["rowwise_adagrad", "adagrad", "sgd", "adam"]


@dataclass(frozen=True, kw_only=True)
class TableParallelConfig:
    """Sharding and fused optimizer of one embedding table, where it differs from the ``parallel`` defaults."""

    name: str = setting(doc="Table name as the model declares it (item; a task's user or clip tables).")
    sharding_type: ShardingType | None = setting(None, doc="This table's sharding; null = parallel.sharding_type.")
    embedding_optimizer: EmbeddingOptimizer | None = setting(
        None, doc="This table's fused optimizer; null = parallel.embedding_optimizer.")
    embedding_lr: float | None = setting(None, doc="This table's learning rate; null = parallel.embedding_lr.")

    def __post_init__(self) -> None:
        p = Problems()
        p.check(bool(self.name.strip()), "name", "must name a table")
        p.check(self.embedding_lr is None or self.embedding_lr > 0, "embedding_lr",
                f"must be > 0 or null, got {self.embedding_lr}")
        p.raise_if_any()


@dataclass(frozen=True, kw_only=True)
class ParallelConfig:
    """How a run is spread over Ray Train workers."""

    num_workers: int = setting(2, doc="Ray Train workers (ranks); one per GPU on GPU clusters.")
    use_gpu: bool = setting(False, doc="One GPU per worker, nccl, fbgemm-gpu kernels; false runs on CPU with gloo.")
    cpus_per_worker: int = setting(1, doc="CPUs Ray reserves per worker; also the torch intra-op threads of a CPU worker.")
    sharding_type: ShardingType = setting(
        "auto", doc="TorchRec sharding of the embedding tables; 'auto' lets EmbeddingShardingPlanner choose among those the device supports for each table's kind.")
    embedding_optimizer: EmbeddingOptimizer = setting(
        "rowwise_adagrad", doc="Optimizer fused into the embedding backward ('adam' needs GPU).")
    embedding_lr: float = setting(0.05, doc="Learning rate of the fused embedding optimizer.")
    embedding_eps: float = setting(1e-8, doc="Epsilon of the fused embedding optimizer.")
    embedding_weight_decay: float = setting(0.0, doc="Weight decay of the fused embedding optimizer.")
    zero_stage: int = setting(1, doc="DeepSpeed ZeRO stage for the dense parameters: 0, 1, 2 or 3.")
    precision: Literal["fp32", "bf16", "bf16_autocast"] = setting(
        "fp32", doc="Dense precision: fp32; bf16 weights with fp32 master copies (DeepSpeed bf16); or fp32 weights under torch.autocast(bf16).")
    offload_optimizer: bool = setting(False, doc="ZeRO optimizer-state offload to CPU memory (stage >= 1).")
    pipeline: Literal["auto", "simple", "sparse_dist"] = setting(
        "auto", doc="Train step: 'sparse_dist' is TorchRec's TrainPipelineSparseDist (the next batches' input all-to-all and, on CUDA, host-to-device copy overlap the current step; same numbers as 'simple'; needs an ID table); 'auto' is sparse_dist on CUDA with an ID table, else 'simple'.")
    timeout_s: int = setting(
        1800, doc="Collective-operation timeout of the process group, in seconds. It is also how long a rank waits "
                  "on a peer cut off by a network partition (no reset arrives; Ray's node health check may or may not "
                  "fail the run sooner: in the partition test it did not): lower it where partitions are a concern, "
                  "but above the longest save, evaluation or data wait a rank sits through (the partition test uses "
                  "60 s; cluster/README.md).")
    tables: tuple[TableParallelConfig, ...] = setting(
        (), doc="Per-table overrides of sharding_type / embedding_optimizer / embedding_lr, by table name.")

    def __post_init__(self) -> None:
        p = Problems()
        p.check(self.num_workers >= 1, "num_workers", f"must be >= 1, got {self.num_workers}")
        p.check(self.cpus_per_worker >= 1, "cpus_per_worker", f"must be >= 1, got {self.cpus_per_worker}")
        p.check(self.zero_stage in (0, 1, 2, 3), "zero_stage",
                f"DeepSpeed ZeRO has stages 0, 1, 2 and 3; got {self.zero_stage}")
        p.check(self.embedding_lr > 0, "embedding_lr", f"must be > 0, got {self.embedding_lr}")
        p.check(not (self.offload_optimizer and self.zero_stage == 0), "offload_optimizer",
                "needs zero_stage >= 1")
        p.check(self.timeout_s >= 10, "timeout_s", f"must be >= 10, got {self.timeout_s}")
        names = [t.name for t in self.tables]
        p.check(len(set(names)) == len(names), "tables", f"names a table twice: {names}")
        p.raise_if_any()
