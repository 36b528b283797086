"""The MTIN task's pieces in one process: collation, config, the loss, and the memory's write-back.

The write-back is checked through ``PlainTrainer`` (unsharded tables, the state table's SGD at lr 1
from ``parallel.planning.table_plans``): a user appearing twice in one step ends with
``old + delta_1 + delta_2``, each delta computed by ``MTIN.user_state`` from the memory at the step's
start. The sharded version (1 rank vs 2 ranks) is ``test_mtin_distributed.py``.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mvrec_dist.config import ConfigError, TrainJobConfig, load_config
from mvrec_dist.models.recommender import scaled_loss
from mvrec_dist.models.user_encoders.mtin import History, click_loss_sum, memory_row_ids
from mvrec_dist.tasks import build_task
from mvrec_dist.tasks.mtin_batch import MTINBatch, MTINCollate

N, USERS, L = 30, 6, 4
TINY = ["task.name=mtin", "model.embedding_dim=8", "task.mtin.num_groups=2", "task.mtin.num_temporal_masks=2",
        f"data.max_seq_len={L}", "task.num_negatives=3", "task.negative_length=5", "train.seed=3",
        "train.batch_size=4", "parallel.num_workers=1"]
SEQS = {1: np.array([1, 2, 3, 4, 5, 6, 7]), 2: np.array([8, 9, 10]), 3: np.array([11, 12, 13, 14])}


def _cfg(*extra):
    return load_config(TrainJobConfig, None, TINY + list(extra))


def _collate(cfg) -> MTINCollate:
    t = cfg.task
    return MTINCollate(num_items=N, max_seq_len=L, negative_length=t.negative_length, num_negatives=t.num_negatives,
                       seed=cfg.train.seed)


def _batch(collate, rows, epoch=0):
    """``rows``: (user, window index) pairs; windows as ``training_windows(seq, L, 'all')`` cuts them."""
    from mvrec_dist.data.batch import training_windows

    windows = [training_windows(SEQS[u], L, "all")[w] for u, w in rows]
    return collate(windows, [u for u, _ in rows], [SEQS[u] for u, _ in rows],
                   np.array([[u, w] for u, w in rows], dtype=np.int64), epoch)


def _model(cfg):
    torch.manual_seed(cfg.train.seed)
    return build_task(cfg).build_model(SimpleNamespace(num_items=N, num_users=USERS), device="cpu")


def test_collate_makes_one_example_per_window_with_draws_outside_the_users_sequence():
    collate = _collate(_cfg())
    batch = _batch(collate, [(1, 0), (2, 0), (1, 1)])
    # training_windows(1..7, L=4): newest first, [3..7] then [1..3].
    assert batch.positive.tolist() == [[3, 4, 5, 6], [8, 9, 0, 0], [1, 2, 0, 0]]
    assert batch.candidates[:, 0].tolist() == [7, 10, 3]
    assert batch.negative.shape == (3, 5) and batch.candidates.shape == (3, 4)
    for row, user in zip(range(3), [1, 2, 1]):
        drawn = set(batch.negative[row].tolist()) | set(batch.candidates[row, 1:].tolist())
        assert not drawn & set(SEQS[user].tolist()) and min(drawn) >= 1
    u = batch.unique_items
    assert u[0] == 0 and torch.equal(u, u.unique())
    for ids, slots in ((batch.positive, batch.positive_slots), (batch.negative, batch.negative_slots),
                       (batch.candidates, batch.candidate_slots)):
        assert torch.equal(u[slots], ids)
    assert batch.real_rows.tolist() == [True, True, True]


def test_draws_follow_the_row_not_the_batch_and_change_with_the_epoch():
    collate = _collate(_cfg())
    together = _batch(collate, [(1, 0), (2, 0), (3, 0)])
    alone = [_batch(collate, [row]) for row in [(3, 0), (1, 0)]]
    assert torch.equal(alone[0].negative[0], together.negative[2])
    assert torch.equal(alone[1].candidates[0], together.candidates[0])
    later = _batch(collate, [(1, 0), (2, 0), (3, 0)], epoch=1)
    assert not torch.equal(later.negative, together.negative)


def test_a_dummy_batch_has_no_targets_and_the_counts_are_real_pairs():
    cfg = _cfg()
    task, collate = build_task(cfg), _collate(cfg)
    dummy = collate.dummy()
    assert task.count(dummy) == (0, 0) and dummy.unique_items.tolist() == [0]
    assert task.count(_batch(collate, [(1, 0), (2, 0)])) == (8, 2)
    assert task.sparse_features(dummy)["user_id"].tolist() == [0, 1, 2, 3]  # user 0's 2 s rows, never written


def _memory(model, users):
    table = dict(model.tables.named_parameters())["sequence.embeddings.mtin_memory.weight"]
    return table[memory_row_ids(torch.as_tensor(users), model.dense.mtin.cfg)].detach().reshape(len(users), -1).clone()


def _deltas(model, batch, memory):
    """Each row's delta, from MTIN.user_state on the memory given (the step's start)."""
    dense = model.dense
    emb = model.tables(**model.sparse_inputs(batch))["item_id"]
    items = dense.item_representations(emb, None)
    with torch.no_grad():
        state = dense.mtin.user_state(History(items[batch.positive_slots], batch.positive > 0),
                                      History(items[batch.negative_slots], batch.negative > 0), memory)
    return state.memory.reshape(memory.shape) - memory


def test_the_loss_is_eq12_per_target_and_the_write_back_gradient_is_minus_the_update():
    cfg = _cfg()
    model = _model(cfg)
    collate = _collate(cfg)
    batch = _batch(collate, [(1, 0), (2, 0)])
    batch = MTINBatch.of(torch.cat([batch.positive, collate.dummy().positive]).numpy(),
                         torch.cat([batch.negative, collate.dummy().negative]).numpy(),
                         torch.cat([batch.candidates, collate.dummy().candidates]).numpy(), np.array([1, 2, 0]))
    inputs = model.sparse_inputs(batch)
    embeddings = model.embed(inputs)
    loss, out = scaled_loss(model.dense, embeddings, batch, 0.25)
    # The data term and lambda ||Theta||^2 once per real (row, candidate) pair; the write-back adds 0.
    dense = model.dense
    items = dense.item_representations(embeddings["item_id"], None)
    logits = dense.mtin(History(items[batch.positive_slots], batch.positive > 0),
                        History(items[batch.negative_slots], batch.negative > 0),
                        embeddings["user_id"].reshape(3, -1), items[batch.candidate_slots]).logits
    labels = torch.zeros(3, 4)
    labels[:, 0] = 1
    valid = (batch.candidates > 0) & torch.tensor([True, True, False])[:, None]
    expected = click_loss_sum(logits, labels, valid) + cfg.task.mtin.l2 * dense.mtin.l2_penalty() * 8
    torch.testing.assert_close(out.loss_sum, expected)
    assert int(out.num_targets) == 8 and int(out.num_sequences) == 2
    assert float(out.write_back.detach()) == 0.0
    assert float(loss.detach()) == pytest.approx(0.25 * float(expected.detach()))
    # The write-back's gradient, unscaled by the loss scale: -delta on the real users' rows, 0 for the dummy.
    rows = embeddings["user_id"]
    grad, = torch.autograd.grad(out.write_back, rows)
    memory = rows.detach().reshape(3, -1)
    want = -_deltas(model, batch, memory) * torch.tensor([1.0, 1.0, 0.0])[:, None]
    torch.testing.assert_close(grad.reshape(3, -1), want, rtol=1e-6, atol=1e-7)
    assert grad.reshape(3, -1)[2].abs().sum() == 0 and grad.reshape(3, -1)[:2].abs().sum() > 0


def test_a_user_twice_in_one_step_gets_the_memory_of_the_start_plus_both_updates():
    from mvrec_dist.train.reference import PlainTrainer

    cfg = _cfg()
    model = _model(cfg)
    trainer = PlainTrainer(model, cfg, num_items=N, total_steps=10)
    collate = _collate(cfg)
    batch = _batch(collate, [(1, 0), (2, 0), (1, 1)])  # user 1 twice (its two windows)
    before = _memory(trainer, [1, 2, 3])
    deltas = _deltas(trainer, batch, _memory(trainer, [1, 2, 1]))
    trainer.train_step(batch)
    after = _memory(trainer, [1, 2, 3])
    torch.testing.assert_close(after[0], before[0] + deltas[0] + deltas[2], rtol=0, atol=1e-6)
    torch.testing.assert_close(after[1], before[1] + deltas[1], rtol=0, atol=1e-6)
    assert torch.equal(after[2], before[2])  # user 3 not in the step: untouched
    # The same examples split as two ranks would see them (user 1 on both): the same memory.
    again = PlainTrainer(_model(cfg), cfg, num_items=N, total_steps=10)
    again.train_step([_batch(collate, [(1, 0), (2, 0)]), _batch(collate, [(1, 1)])])
    torch.testing.assert_close(_memory(again, [1, 2, 3]), after, rtol=0, atol=1e-6)


def test_config_checks_and_metrics():
    cfg = _cfg()
    assert cfg.task.negatives == "sampled" and cfg.select_metric.name == "ndcg@10"
    assert [m.name for m in cfg.metrics] == ["hr@10", "ndcg@10", "hr@20", "ndcg@20", "auc", "precision@50",
                                             "recall@50", "f1@50"]
    assert all(m.higher_is_better for m in cfg.metrics)
    # What the dataset must hold for these is checked against its manifest (test_mtin_exposures.py).
    both = _cfg("task.negatives=exposures", "task.mtin.time_distance=timestamp")
    assert both.task.negatives == "exposures" and both.task.mtin.time_distance == "timestamp"
    for override, fragment in [("parallel.zero_stage=3", "parallel.zero_stage: task mtin adds lambda"),
                               ("model.item_tower=content", "model.item_tower: task mtin reads item IDs only")]:
        extra = [override] + (["model.content_encoder.name=minilm", "model.loss.name=inbatch_softmax"]
                              if "content" in override else [])
        with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
            _cfg(*extra)
    _cfg("parallel.zero_stage=3", "task.mtin.l2=0")  # without the L2 term ZeRO-3 is fine
