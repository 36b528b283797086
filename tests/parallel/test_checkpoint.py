"""Checkpoints of the sparse tables written before ``EmbeddingTables`` (the item collection at the DMP's root) load."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.dist import run_ranks

pytestmark = pytest.mark.integration

N, D = 50, 8


def _trained_step(dmp, lookup):
    """One rowwise-Adagrad step on ids 1..9 through ``lookup`` (so the optimizer state is not zero)."""
    out = lookup(dmp, torch.arange(1, 10))
    (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()


def _legacy_then_new(ctx, directory: str):
    import torch.distributed.checkpoint as dcp
    from torchrec import EmbeddingCollection, EmbeddingConfig
    from torchrec.distributed import DistributedModelParallel
    from torchrec.distributed.embedding import EmbeddingCollectionSharder
    from torchrec.distributed.types import ShardingEnv
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    from mvrec_dist.config.parallel import ParallelConfig
    from mvrec_dist.models.builders import item_table_spec
    from mvrec_dist.models.tables import EmbeddingTables, table_inputs
    from mvrec_dist.parallel.checkpoint import read_sparse
    from mvrec_dist.parallel.planning import fused_params, make_planner, make_topology, table_constraints, table_plans
    from mvrec_dist.parallel.sharding import shard_tables

    cfg = ParallelConfig(sharding_type="row_wise", embedding_lr=0.3)
    # The layout of checkpoints before the task seam: DMP around the bare item EmbeddingCollection.
    ec = EmbeddingCollection(tables=[EmbeddingConfig(name="item", embedding_dim=D, num_embeddings=N + 1,
                                                     feature_names=["item_id"])], device=torch.device("meta"))
    sharder = EmbeddingCollectionSharder(fused_params=fused_params("rowwise_adagrad", lr=0.3, eps=1e-8,
                                                                   weight_decay=0.0, output_bf16=False))
    spec = item_table_spec(num_items=N, embedding_dim=D, init_std=0.02, seed=5)
    planner = make_planner(make_topology(world_size=ctx.world_size, compute_device="cpu"), batch_size=8,
                           constraints=table_constraints(table_plans((spec,), cfg), "cpu"))
    plan = planner.collective_plan(ec, [sharder], ctx.group)
    old = DistributedModelParallel(ec, env=ShardingEnv.from_process_group(ctx.group), device=ctx.device, plan=plan,
                                   sharders=[sharder])
    with torch.no_grad():
        for shard in old.state_dict()["embeddings.item.weight"].local_shards():
            shard.tensor.normal_(generator=torch.Generator().manual_seed(ctx.rank))

    def old_lookup(dmp, ids):
        kjt = KeyedJaggedTensor(keys=["item_id"], values=ids, lengths=torch.tensor([ids.numel()], dtype=torch.int32))
        return dmp(kjt)["item_id"].values()

    _trained_step(old, old_lookup)
    dcp.save({"model": old.state_dict(), "optim": old.fused_optimizer.state_dict()},
             storage_writer=dcp.FileSystemWriter(directory), process_group=ctx.group)
    with torch.no_grad():
        old_rows = old_lookup(old, torch.arange(N + 1))
    _trained_step(old, old_lookup)  # the state the loaded table must reproduce
    with torch.no_grad():
        old_next = old_lookup(old, torch.arange(N + 1))

    new = shard_tables(EmbeddingTables((spec,), device="meta"), cfg, ctx, batch_size=8).module
    read_sparse(new, directory, ctx)

    def new_lookup(dmp, ids):
        return dmp(**table_inputs((spec,), {"item_id": ids}))["item_id"]

    with torch.no_grad():
        new_rows = new_lookup(new, torch.arange(N + 1))
    _trained_step(new, new_lookup)  # equal only if the Adagrad accumulators were loaded too
    with torch.no_grad():
        new_next = new_lookup(new, torch.arange(N + 1))
    return [torch.tensor(t.numpy()) for t in (old_rows, new_rows, old_next, new_next)]


def test_a_checkpoint_of_the_old_layout_loads_weights_and_optimizer_state(tmp_path):
    for old_rows, new_rows, old_next, new_next in run_ranks(_legacy_then_new, 2, str(tmp_path / "sparse")):
        torch.testing.assert_close(new_rows, old_rows, rtol=0, atol=0)
        assert (old_next - old_rows).abs().max() > 1e-3
        torch.testing.assert_close(new_next, old_next, rtol=0, atol=1e-7)
