"""MTIN's sharded memory table on real gloo ranks: 1 rank and 2 ranks train the same steps alike.

Three steps of hand-made examples through ``ParallelModel`` (TorchRec row-wise tables with the
memory's fused SGD at lr 1, DeepSpeed ZeRO-1): on 2 ranks each rank gets its part of every step,
on 1 rank the whole step. A user appears on both ranks in one step (its writes add up on the row's
owner) and twice on one rank; in the last step rank 1 has no data and trains a dummy batch. The
losses, every memory row and every item row must agree within 1e-6 (float sums in another
order; measured: 4e-9 on the memory, 1.5e-8 on the items; the steps move memory rows by ~3e-3).
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers.dist import run_ranks
from tests.tasks.test_mtin import N, TINY, USERS

pytestmark = pytest.mark.integration

# Per step, the (user, window) rows of rank 0 and rank 1.
STEPS = [
    [[(1, 0), (2, 0)], [(1, 1), (3, 0)]],  # user 1 on both ranks
    [[(3, 0), (3, 0), (2, 0)], [(1, 0)]],  # user 3 twice on rank 0 (the same window twice)
    [[(1, 1), (2, 0)], []],                # rank 1 out of data: a dummy batch
]
TOLERANCE = dict(rtol=0, atol=1e-6)


def _train(ctx, overrides):
    from types import SimpleNamespace

    from mvrec_dist.config import TrainJobConfig, load_config
    from mvrec_dist.models.user_encoders.mtin import USER_FEATURE, memory_row_ids
    from mvrec_dist.parallel.facade import ParallelModel
    from mvrec_dist.tasks import build_task
    from tests.tasks.test_mtin import _batch, _collate

    cfg = load_config(TrainJobConfig, None, TINY + overrides + [f"parallel.num_workers={ctx.world_size}"])
    task = build_task(cfg)
    torch.manual_seed(cfg.train.seed)  # as train.worker.build_rank: the same dense init on every rank
    model = task.build_model(SimpleNamespace(num_items=N, num_users=USERS), device="meta")
    pm = ParallelModel(model, cfg, ctx, total_steps=10)
    collate = _collate(cfg)
    losses = []
    for parts in STEPS:
        rows = parts[ctx.rank] if ctx.world_size == 2 else parts[0] + parts[1]
        batch = _batch(collate, rows) if rows else collate.dummy()
        _, targets, sequences = pm.sync_step(bool(rows), *task.count(batch))
        losses.append(pm.train_step(batch, global_targets=targets, global_sequences=sequences).loss)
    with pm.evaluating():
        memory = pm.lookup(memory_row_ids(torch.arange(USERS + 1), cfg.task.mtin), USER_FEATURE)
        items = pm.lookup(torch.arange(N + 1))
    return {"losses": losses, "memory": memory.reshape(USERS + 1, -1).cpu(), "items": items.cpu(),
            "plan": pm.sparse.plan_text}


def test_one_rank_and_two_ranks_train_the_memory_alike():
    overrides = ["parallel.sharding_type=row_wise", "parallel.zero_stage=1"]
    one, = run_ranks(_train, 1, overrides)
    two = run_ranks(_train, 2, overrides)
    assert "mtin_memory: row_wise" in two[0]["plan"]
    for r in two:
        torch.testing.assert_close(torch.tensor(r["losses"]), torch.tensor(one["losses"]), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(r["memory"], one["memory"], **TOLERANCE)
        torch.testing.assert_close(r["items"], one["items"], **TOLERANCE)
    # The one-process reference (unsharded tables, torch SGD at lr 1 on the memory: old + sum of deltas,
    # hand-checked in test_mtin.py) agrees with the sharded runs.
    from mvrec_dist.train.reference import PlainTrainer
    from tests.tasks.test_mtin import _batch, _cfg, _collate, _memory, _model

    cfg = _cfg(*overrides)
    reference = PlainTrainer(_model(cfg), cfg, num_items=N, total_steps=10)
    collate = _collate(cfg)
    for parts in STEPS:
        reference.train_step([_batch(collate, rows) for rows in parts if rows])
    torch.testing.assert_close(_memory(reference, list(range(USERS + 1))), one["memory"], **TOLERANCE)
    # The memory moved for the users trained on, and not for the others (4, 5, 6) nor the padding user.

    start = _model(cfg).tables.sequence.embeddings["mtin_memory"].weight.detach().reshape(USERS + 1, -1)
    moved = (one["memory"] - start).abs().amax(1)
    assert (moved[1:4] > 1e-3).all() and torch.equal(one["memory"][4:], start[4:])
    assert torch.equal(one["memory"][0], start[0])
