"""Fused-optimizer parameters and per-table sharding choices (the parts that need no process group)."""

from __future__ import annotations

import pytest

from mvrec_dist.config.parallel import ParallelConfig, TableParallelConfig
from mvrec_dist.models.tables import TableSpec
from mvrec_dist.parallel.planning import fused_params, sharding_problems, table_plans


def test_bf16_outputs_use_fbgemm_sparse_type():
    # The GPU presets run bf16: the lookup output dtype must resolve (it is only built on CUDA runs,
    # so nothing else on a CPU machine would import it).
    from fbgemm_gpu.split_embedding_configs import EmbOptimType, SparseType

    params = fused_params("rowwise_adagrad", lr=0.05, eps=1e-8, weight_decay=0.0, output_bf16=True)
    assert params["output_dtype"] == SparseType.BF16
    assert params["optimizer"] == EmbOptimType.EXACT_ROWWISE_ADAGRAD and params["learning_rate"] == 0.05
    assert "output_dtype" not in fused_params("sgd", lr=0.1, eps=1e-8, weight_decay=0.0, output_bf16=False)


ITEM = TableSpec(name="item", num_embeddings=10, embedding_dim=4, features=("item_id",))
USER = TableSpec(name="user", num_embeddings=1_048_577, embedding_dim=4, features=("user_id",), keyed_by="user")
CLIPS = TableSpec(name="clip", num_embeddings=10, embedding_dim=4, features=("clips",), pooled=True, weighted=True)


def test_each_table_gets_the_defaults_or_its_own_overrides():
    cfg = ParallelConfig(sharding_type="row_wise", embedding_lr=0.05, tables=(
        TableParallelConfig(name="clip", sharding_type="table_wise", embedding_optimizer="sgd", embedding_lr=0.5),))
    plans = {p.spec.name: p for p in table_plans((ITEM, USER, CLIPS), cfg)}
    assert (plans["item"].sharding_type, plans["item"].optimizer, plans["item"].lr) == ("row_wise", "rowwise_adagrad", 0.05)
    assert (plans["clip"].sharding_type, plans["clip"].optimizer, plans["clip"].lr) == ("table_wise", "sgd", 0.5)
    assert sharding_problems(cfg, (ITEM, USER, CLIPS)) == []
    with pytest.raises(ValueError, match=r"parallel.tables: the model has no table \['clips'\]"):
        table_plans((ITEM,), ParallelConfig(tables=(TableParallelConfig(name="clips"),)))


def test_what_a_device_cannot_do_for_a_tables_kind_is_named():
    # Measured (benchmarks/sharding_support.py): the planner offers row_wise for bag collections on CUDA only.
    [problem] = sharding_problems(ParallelConfig(sharding_type="row_wise"), (ITEM, CLIPS))
    assert problem.startswith("parallel.sharding_type: 'row_wise' is not available on cpu for the weighted "
                              "EmbeddingBagCollection table 'clip'") and "table_column_wise" in problem
    cfg = ParallelConfig(tables=(TableParallelConfig(name="item", sharding_type="table_row_wise"),))
    [problem] = sharding_problems(cfg, (ITEM,))
    assert problem.startswith("parallel.tables[item].sharding_type: 'table_row_wise' is not available on cpu for "
                              "the EmbeddingCollection table 'item' (fbgemm's CPU kernels fail")
    assert sharding_problems(ParallelConfig(sharding_type="row_wise", use_gpu=True), (ITEM, CLIPS)) == []
    assert "'adam' is not available on cpu" in sharding_problems(ParallelConfig(embedding_optimizer="adam"))[0]


def test_a_state_table_gets_plain_sgd_at_rate_one_whatever_the_defaults():
    memory = TableSpec(name="memory", num_embeddings=24, embedding_dim=4, features=("user_id",), keyed_by="user",
                       state=True)
    cfg = ParallelConfig(embedding_optimizer="adagrad", embedding_lr=0.3, embedding_weight_decay=0.01,
                         tables=(TableParallelConfig(name="memory", sharding_type="row_wise"),))
    plans = {p.spec.name: p for p in table_plans((ITEM, memory), cfg)}
    assert (plans["item"].optimizer, plans["item"].lr, plans["item"].weight_decay) == ("adagrad", 0.3, 0.01)
    assert (plans["memory"].sharding_type, plans["memory"].optimizer, plans["memory"].lr,
            plans["memory"].weight_decay) == ("row_wise", "sgd", 1.0, 0.0)
    assert sharding_problems(cfg, (ITEM, memory)) == []
    bad = ParallelConfig(tables=(TableParallelConfig(name="memory", embedding_optimizer="adagrad"),))
    assert sharding_problems(bad, (ITEM, memory)) == [
        "parallel.tables[memory]: 'memory' holds state the model writes back (plain SGD at learning rate 1 applies "
        "the update exactly); leave its embedding_optimizer and embedding_lr unset"]
    with pytest.raises(ValueError, match="a state table is written row by row; it cannot be pooled"):
        TableSpec(name="m", num_embeddings=2, embedding_dim=2, features=("f",), pooled=True, state=True)


class _Shard:
    def __init__(self, r0: int, c0: int, rows: int, cols: int) -> None:
        from types import SimpleNamespace

        import torch

        self.metadata = SimpleNamespace(shard_offsets=[r0, c0], shard_sizes=[rows, cols])
        self.tensor = torch.full((rows, cols), float("nan"))


class _ShardedModule:
    """What ``_init_table_shards`` reads of a sharded module: ``state_dict()`` of ShardedTensor-likes."""

    def __init__(self, shards: dict[str, list[_Shard]]) -> None:
        from types import SimpleNamespace

        self.weights = {f"embedding_bags.{name}.weight": SimpleNamespace(local_shards=lambda s=s: s)
                        for name, s in shards.items()}

    def state_dict(self) -> dict:
        return self.weights


@pytest.mark.parametrize("chunk_rows", [3, 4, 1000])
def test_a_tables_column_shards_on_one_rank_read_its_initial_rows_once(chunk_rows):
    import torch

    from mvrec_dist.parallel.sharding import _init_table_shards

    full = torch.arange(10 * 8, dtype=torch.float32).reshape(10, 8)
    calls: list[tuple[int, int]] = []

    def rows(r0: int, r1: int) -> torch.Tensor:
        calls.append((r0, r1))
        return full[r0:r1]

    spec = TableSpec(name="clip", num_embeddings=10, embedding_dim=8, features=("clips",), pooled=True,
                     weighted=True, init_rows=rows)
    cols = [_Shard(0, 0, 10, 2), _Shard(0, 4, 10, 4)]  # two column shards of this rank (2..4 is another's)
    item_rows = [_Shard(0, 0, 6, 4), _Shard(6, 0, 4, 4)]  # a seeded table in row blocks
    _init_table_shards(_ShardedModule({"clip": cols, "item": item_rows}), {"clip": spec, "item": ITEM},
                       chunk_rows=chunk_rows)
    assert torch.equal(cols[0].tensor, full[:, 0:2]) and torch.equal(cols[1].tensor, full[:, 4:8])
    expected = [(a, min(10, a + chunk_rows)) for a in range(0, 10, chunk_rows)]
    assert calls == expected  # every row once, in chunks: not once per column shard
    from mvrec_dist.models.tables import initial_rows

    seeded = initial_rows(ITEM, row_start=0, row_end=10, col_start=0, col_end=4)
    assert torch.equal(torch.cat([item_rows[0].tensor, item_rows[1].tensor]), seeded)
