"""Several tables of several kinds, sharded on 2 gloo ranks, against the same tables unsharded.

A sequence item table, a 1,048,577-row user-keyed sequence table and a weighted pooled clip table
(FRAME's ``A C``: per-sample weights), each with its own sharding type and the clip table with its
own fused optimizer and learning rate (``parallel.tables``). One lookup on every rank (each its own
ids), one backward of ``sum(out * R)`` with the fused optimizers, then every row read back: forward
and update must equal the unsharded ``EmbeddingTables`` with SGD at the same learning rates, the
gradient summed over ranks and divided by the world size (TorchRec's gradient division).
Tolerance 1e-6 absolute (float32 sums in another order); the updates move rows by ~1e-2.
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers.dist import run_ranks

pytestmark = pytest.mark.integration

D = 8
USERS = 1_048_577


def _specs():
    from mvrec_dist.models.tables import TableSpec

    return (TableSpec(name="item", num_embeddings=61, embedding_dim=D, features=("item_id",), seed=1),
            TableSpec(name="user", num_embeddings=USERS, embedding_dim=D, features=("user_id",), keyed_by="user",
                      seed=2),
            TableSpec(name="clip", num_embeddings=40, embedding_dim=4, features=("clips_pos", "clips_neg"),
                      pooled=True, weighted=True, keyed_by="clip", seed=3))


def _features(rank: int):
    from mvrec_dist.models.tables import Bags

    g = torch.Generator().manual_seed(100 + rank)
    bags = 3 + rank  # the ranks' batch sizes differ
    lengths = torch.randint(0, 4, (bags,), generator=g)
    n = int(lengths.sum())
    pos = Bags(ids=torch.randint(1, 40, (n,), generator=g), lengths=lengths, weights=torch.rand(n, generator=g))
    neg_len = torch.randint(0, 2, (bags,), generator=g)
    m = int(neg_len.sum())
    neg = Bags(ids=torch.randint(1, 40, (m,), generator=g), lengths=neg_len, weights=torch.rand(m, generator=g))
    return {"item_id": torch.randint(0, 61, (5 + rank,), generator=g),
            "user_id": torch.randint(1, USERS, (4,), generator=g), "clips_pos": pos, "clips_neg": neg}


def _loss(out: dict, rank: int):
    g = torch.Generator().manual_seed(7 + rank)
    return sum((v * torch.randn(v.shape, generator=g)).sum() for _, v in sorted(out.items()))


def _overrides():
    return ["parallel.embedding_optimizer=sgd", "parallel.embedding_lr=0.1", "parallel.sharding_type=row_wise",
            "parallel.tables=[{name: item, sharding_type: table_wise}, "
            "{name: clip, sharding_type: table_wise, embedding_lr: 0.5}]"]


def _sharded(ctx):
    from mvrec_dist.config import TrainJobConfig, load_config
    from mvrec_dist.models.tables import Bags, EmbeddingTables, table_inputs
    from mvrec_dist.parallel.sharding import shard_tables

    cfg = load_config(TrainJobConfig, None, _overrides() + [f"parallel.num_workers={ctx.world_size}"])
    specs = _specs()
    sharded = shard_tables(EmbeddingTables(specs, device="meta"), cfg.parallel, ctx, batch_size=8)
    out = sharded.module(**table_inputs(specs, _features(ctx.rank)))
    before = {k: torch.tensor(v.detach().numpy()) for k, v in out.items()}
    _loss(out, ctx.rank).backward()  # the fused optimizers update the rows inside the backward
    with torch.no_grad():  # every row of every table, read back through the sharded lookups (collective)
        rows = {"item_id": torch.arange(61), "user_id": torch.arange(USERS),
                "clips_pos": Bags(ids=torch.arange(40), lengths=torch.ones(40, dtype=torch.long),
                                  weights=torch.ones(40)),
                "clips_neg": Bags(ids=torch.zeros(0, dtype=torch.long), lengths=torch.zeros(40, dtype=torch.long),
                                  weights=torch.zeros(0))}
        after = sharded.module(**table_inputs(specs, rows))
    tables = {"item": after["item_id"], "user": after["user_id"], "clip": after["clips_pos"]}
    tables = {k: torch.tensor(v.detach().numpy()) for k, v in tables.items()}  # plain tensors to send back
    return {"before": before, "types": sharded.sharding_types,
            "tables": tables if ctx.rank == 0 else None}


def test_tables_of_every_kind_shard_and_train_like_the_unsharded_tables():
    from mvrec_dist.models.tables import EmbeddingTables, table_inputs

    results = run_ranks(_sharded, 2)
    assert results[0]["types"] == {"item": "table_wise", "user": "row_wise", "clip": "table_wise"}
    specs = _specs()
    ref = EmbeddingTables(specs)
    loss = 0.0
    for rank in (0, 1):
        out = ref(**table_inputs(specs, _features(rank)))
        for k, v in out.items():
            torch.testing.assert_close(results[rank]["before"][k], v.detach(), rtol=0, atol=1e-6, msg=k)
        loss = loss + _loss(out, rank)
    (loss / 2).backward()  # TorchRec divides the summed gradient by the world size
    weights = {n.split(".")[-2]: p for n, p in ref.named_parameters()}
    lr = {"item": 0.1, "user": 0.1, "clip": 0.5}
    for name, got in results[0]["tables"].items():
        expected = (weights[name] - lr[name] * weights[name].grad).detach()
        moved = (expected - weights[name].detach()).abs().max()
        assert moved > 1e-3, name  # the update is large against the tolerance
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6, msg=name)
