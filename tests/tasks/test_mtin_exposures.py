"""MTIN's negative branch from exposures and its time gaps, in one process: the collate against the rules
(H_neg = the user's last exposures before the positive; label-0 candidates from the other exposures,
sampled where too few, counted), the times it carries, evaluation inputs, and the refusals of a dataset
that lacks labels or timestamps. The same on ingested data and through 2 ranks: ``test_mtin_exposures_training.py``."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mvrec_dist.config import TrainJobConfig, load_config
from mvrec_dist.data.batch import collate_eval, training_windows
from mvrec_dist.data.manifest import Manifest, ManifestError
from mvrec_dist.tasks import build_task
from mvrec_dist.tasks.mtin import MTINData, dataset_problems
from mvrec_dist.tasks.mtin_batch import DRAW_COUNTS, MTINCollate, eval_inputs

N, L, L_NEG, K = 60, 4, 3, 2
TINY = ["task.name=mtin", "model.embedding_dim=8", "task.mtin.num_groups=2", "task.mtin.num_temporal_masks=2",
        f"data.max_seq_len={L}", f"task.num_negatives={K}", f"task.negative_length={L_NEG}", "train.seed=3",
        "train.batch_size=4", "parallel.num_workers=1", "task.negatives=exposures",
        "task.mtin.time_distance=timestamp"]


def _collate(negatives="exposures", times=True) -> MTINCollate:
    return MTINCollate(num_items=N, max_seq_len=L, negative_length=L_NEG, num_negatives=K, seed=3,
                       negatives=negatives, times=times)


def _call(collate, users, epoch=0, ids=None):
    """``users``: per row ``(sequence, times, exposure items, exposure times, window index)``; ``ids``: the
    rows' user ids (default 1, 2, ...)."""
    windows, extras = [], {"times": [], "exposures": []}
    for seq, ts, e_items, e_ts, w in users:
        windows.append(training_windows(seq, L, "all")[w])
        extras["times"].append(training_windows(ts, L, "all")[w])
        extras["exposures"].append((e_items, e_ts))
    provenance = np.array([[r, u[4]] for r, u in enumerate(users)], dtype=np.int64)
    return collate(windows, ids or list(range(1, len(users) + 1)), [u[0] for u in users], provenance, epoch,
                   extras={k: v for k, v in extras.items() if k in collate.needs})


@st.composite
def user(draw):
    """A user: distinct clicked items at increasing times, exposures (any items, sorted times), a window."""
    n = draw(st.integers(3, 9))
    seq = np.array(draw(st.permutations(range(1, N + 1)))[:n], dtype=np.int64)
    ts = np.cumsum(draw(st.lists(st.integers(0, 5), min_size=n, max_size=n))).astype(np.int64) + 100
    shown = draw(st.lists(st.tuples(st.integers(1, N), st.integers(95, 150)), max_size=10))
    shown.sort(key=lambda e: e[1])
    e_items = np.array([i for i, _ in shown], dtype=np.int64)
    e_ts = np.array([t for _, t in shown], dtype=np.int64)
    w = draw(st.integers(0, len(training_windows(seq, L, "all")) - 1))
    return seq, ts, e_items, e_ts, w


@settings(max_examples=150, deadline=None)
@given(st.lists(user(), min_size=1, max_size=6), st.integers(0, 2))
def test_negative_history_and_candidates_come_from_the_users_exposures(users, epoch):
    batch = _call(_collate(), users, epoch)
    fallback = empty = 0
    for r, (seq, ts, e_items, e_ts, w) in enumerate(users):
        window_ts = training_windows(ts, L, "all")[w]
        t = window_ts[-1]  # the positive's time
        earlier = [(int(i), int(s)) for i, s in zip(e_items, e_ts) if s < t]
        want = earlier[-L_NEG:]
        neg = batch.negative[r].tolist()
        # Every H_neg item is an exposure of this user before the positive: the most recent ones, in order.
        assert neg[:len(want)] == [i for i, _ in want] and not any(neg[len(want):])
        assert batch.negative_times[r, :len(want)].tolist() == [s for _, s in want]
        empty += not want
        assert batch.candidates[r, 0] == training_windows(seq, L, "all")[w][-1]
        pool = {int(i) for i in e_items} - {i for i, _ in want} - set(seq.tolist())
        label0 = batch.candidates[r, 1:].tolist()
        from_pool = [c for c in label0 if c in pool]
        assert len(set(from_pool)) == len(from_pool) == min(K, len(pool))  # distinct draws, the pool first
        assert label0[:len(from_pool)] == from_pool
        sampled = label0[len(from_pool):]
        fallback += len(sampled)
        assert not set(sampled) & (set(seq.tolist()) | {i for i, _ in want} | set(from_pool))
        assert batch.positive_times[r, :len(window_ts) - 1].tolist() == window_ts[:-1].tolist()
    assert batch.draws.tolist() == [K * len(users), fallback, empty]
    assert list(DRAW_COUNTS) == ["exposure_candidates", "exposure_fallback", "exposure_empty_train"]


def test_draws_follow_the_row_and_times_only_with_timestamps():
    seq, ts = np.arange(1, 8), np.arange(100, 107)
    rows = [(seq, ts, np.array([30, 31, 32, 33, 34, 35]), np.array([99, 100, 101, 102, 110, 111]), w) for w in (0, 1)]
    together = _call(_collate(), rows)
    alone = _call(_collate(), rows[1:], ids=[2])
    assert torch.equal(alone.candidates[0], together.candidates[1]) and torch.equal(alone.negative[0],
                                                                                    together.negative[1])
    # Position gaps: the loader still passes times (exposures are placed by time), the batch carries none.
    plain = _call(_collate(times=False), rows)
    assert plain.positive_times is None and plain.negative_times is None
    assert torch.equal(plain.negative, together.negative)
    # Padding slots hold the row's last time (a 0 beside Unix ms would overflow exp in Eq. 6).
    short = _call(_collate(), [(np.arange(1, 4), np.array([5, 6, 7]), np.array([9]), np.array([1]), 0)])
    assert short.positive_times.tolist() == [[5, 6, 6, 6]] and short.negative_times.tolist() == [[1, 1, 1]]
    dummy = _collate().dummy()
    assert dummy.positive_times.shape == (1, L) and dummy.negative_times.shape == (1, L_NEG)


def test_sampled_negatives_get_the_positive_historys_times_spread_over_their_slots():
    collate = _collate(negatives="sampled")
    assert collate.needs == {"times"}
    batch = _call(collate, [(np.arange(1, 8), np.arange(100, 107) * 10, np.zeros(0, np.int64),
                             np.zeros(0, np.int64), 0)])
    assert batch.positive_times.tolist() == [[1020, 1030, 1040, 1050]]  # the window [3..7]'s first four
    assert batch.negative_times.tolist() == [[1020, 1030, 1040]] and batch.draws is None
    assert _collate(negatives="sampled", times=False).needs == frozenset()


def test_evaluation_takes_exposures_before_the_target_and_the_stored_times():
    batch = collate_eval([np.array([1, 2, 3, 4, 5]), np.array([7])], [6, 8], [1, 2], max_seq_len=L)

    class Rows:  # data.exposures.UserRows for users 1 and 2
        def __init__(self, jagged, per_user=None):
            self.j, self.p = jagged, per_user or {}

        def gather(self, users, member):
            rows = [self.j[member][u] for u in users]
            return np.concatenate(rows).astype(np.int64), np.cumsum([0] + [len(r) for r in rows])

        def values(self, users, member):
            return np.array([self.p[member][u] for u in users])

    split = Rows({"ts.npy": {1: [10, 11, 12, 13, 14], 2: [70]}}, {"targets_ts.npy": {1: 15, 2: 80}})
    shown = Rows({"items.npy": {1: [40, 41, 42], 2: [43]}, "ts.npy": {1: [9, 14, 15], 2: [90]}})
    negative, pos_t, neg_t, empty = eval_inputs(batch=batch, split="valid", seed=3, length=L_NEG, num_items=N,
                                                negatives="exposures", times=True, split_rows=split,
                                                exposure_rows=shown)
    assert negative.tolist() == [[40, 41, 0], [0, 0, 0]] and empty == 1  # 42 is shown at the target's time
    assert pos_t.tolist() == [[11, 12, 13, 14], [70, 70, 70, 70]] and neg_t.tolist() == [[9, 14, 14], [0, 0, 0]]


def _manifest(fmt, *, labels=False, splits=None):
    data = {"config": {"ingest": {"format": fmt}}, "counts": {"items": N, "users": 3}}
    if labels:
        data["labels"] = {"column": "label"}
    if splits is not None:
        data["timestamps"] = {"splits": splits}
    return Manifest(root=f"/data/{fmt}-ds", data=data)


def test_a_dataset_without_labels_or_timestamps_is_refused_naming_it():
    t = load_config(TrainJobConfig, None, TINY).task
    assert dataset_problems(t, _manifest("pairs_csv", labels=True, splits=["train", "valid", "test", "exposures"])) \
        == []
    tsv = dataset_problems(t, _manifest("pairs_tsv"))
    assert tsv[0].startswith("/data/pairs_tsv-ds: task.negatives=exposures needs shown-but-not-clicked rows, and "
                             "this dataset has none (its pairs_tsv input had no label column")
    assert tsv[1] == ("/data/pairs_tsv-ds: task.mtin.time_distance=timestamp needs timestamps in train, valid and "
                      "test, and test, train, valid hold none (its pairs_tsv input has no timestamps); set "
                      "task.mtin.time_distance=position")
    old_csv = dataset_problems(t, _manifest("pairs_csv"))  # ingested before valid/test timestamps existed
    assert "test, valid hold none (it was ingested before valid/test timestamps were stored; re-ingest it with " \
           "ingest.overwrite=true)" in old_csv[1]
    cfg = load_config(TrainJobConfig, None, TINY)
    with pytest.raises(ManifestError, match="task.negatives=exposures needs"):
        MTINData(cfg, _manifest("pairs_tsv"), rank=0, world_size=1)


def test_the_tower_reads_the_batches_times():
    cfg = load_config(TrainJobConfig, None, TINY)
    torch.manual_seed(3)
    model = build_task(cfg).build_model(SimpleNamespace(num_items=N, num_users=3), device="cpu")
    batch = _call(_collate(), [(np.arange(1, 8), np.arange(7) * 86_400_000, np.array([30, 31]),
                                np.array([0, 86_400_000]), 0)])
    out = model.dense(model.tables(**model.sparse_inputs(batch)), batch)
    assert torch.isfinite(out.loss_sum)
    batch.positive_times = None
    with pytest.raises(ValueError, match="time_distance='timestamp' needs the histories' timestamps"):
        model.dense(model.tables(**model.sparse_inputs(batch)), batch)
