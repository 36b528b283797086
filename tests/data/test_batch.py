"""Tests of mvrec_dist.data.batch: windows, training/eval collation, dummy batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mvrec_dist.data.batch import (EvalBatch, SequenceBatch, collate_eval, collate_train, dummy_batch,
                                   negative_sampling_probs, training_windows)


# ---------------------------------------------------------------- training_windows
def test_training_windows_hand_case():
    seq = np.arange(1, 8)  # n = 7, L = 3
    wins = training_windows(seq, 3, "all")
    assert [w.tolist() for w in wins] == [[4, 5, 6, 7], [1, 2, 3, 4]]
    wins = training_windows(np.arange(1, 9), 3, "all")  # n = 8
    assert [w.tolist() for w in wins] == [[5, 6, 7, 8], [2, 3, 4, 5], [1, 2]]
    assert [w.tolist() for w in training_windows(np.arange(1, 9), 3, "last")] == [[5, 6, 7, 8]]


def test_training_windows_short_sequences_have_no_targets():
    assert training_windows(np.array([5]), 10, "all") == []
    assert training_windows(np.array([], dtype=np.int64), 10, "last") == []
    assert [w.tolist() for w in training_windows(np.array([5, 6]), 10, "last")] == [[5, 6]]


@pytest.mark.parametrize("seq, L, mode, match", [
    (np.array([[1, 2]]), 3, "all", "1-D integer"),
    (np.array([1.0, 2.0]), 3, "all", "1-D integer"),
    (np.array([1, 2]), 0, "all", "max_seq_len"),
    (np.array([1, 2]), 3, "first", "mode"),
])
def test_training_windows_rejects_bad_input(seq, L, mode, match):
    with pytest.raises(ValueError, match=match):
        training_windows(seq, L, mode)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 60), L=st.integers(1, 12))
def test_training_windows_every_item_but_first_is_a_target_once(n, L):
    seq = np.arange(100, 100 + n)  # distinct ids, so positions can be read back from values
    wins = training_windows(seq, L, "all")
    targets = [int(t) for w in wins for t in w[1:]]
    assert sorted(targets) == seq[1:].tolist()
    for w in wins:
        assert 2 <= len(w) <= L + 1
        start = int(w[0]) - 100
        assert w.tolist() == seq[start:start + len(w)].tolist()  # contiguous slice
    assert len(wins) == (0 if n < 2 else -(-(n - 1) // L))
    last = training_windows(seq, L, "last")
    assert [w.tolist() for w in last] == ([] if n < 2 else [seq[max(0, n - L - 1):].tolist()])


# ---------------------------------------------------------------- collate_train
def test_collate_train_hand_case():
    b = collate_train([np.array([3, 7, 3]), np.array([9, 2])], [11, 12], max_seq_len=3, num_items=10)
    assert b.items.tolist() == [[3, 7, 3, 0], [9, 2, 0, 0]]
    assert b.lengths.tolist() == [3, 2]
    assert b.users.tolist() == [11, 12]
    assert b.unique_items.tolist() == [0, 2, 3, 7, 9]
    assert b.inverse.tolist() == [[2, 3, 2, 0], [4, 1, 0, 0]]
    assert b.negatives.numel() == 0 and b.content is None and b.cursor is None
    assert b.max_seq_len == 3


def test_collate_train_keeps_padding_slot_without_padding():
    b = collate_train([np.array([4, 5])], [1], max_seq_len=1, num_items=5)
    assert b.unique_items.tolist() == [0, 4, 5]
    assert b.inverse.tolist() == [[1, 2]]


def test_collate_train_all_items_layout():
    b = collate_train([np.array([3, 7, 3])], [1], max_seq_len=4, num_items=8, all_items=True)
    assert b.unique_items.tolist() == list(range(9))
    assert torch.equal(b.inverse, b.items)


@settings(max_examples=100, deadline=None)
@given(data=st.data(), L=st.integers(1, 8), n_items=st.integers(1, 30), k=st.integers(0, 6),
       all_items=st.booleans())
def test_collate_train_inverse_reconstructs_items(data, L, n_items, k, all_items):
    rows = data.draw(st.lists(st.lists(st.integers(1, n_items), min_size=2, max_size=L + 1), min_size=1, max_size=6))
    b = collate_train([np.array(r) for r in rows], np.arange(len(rows)), max_seq_len=L, num_items=n_items,
                      negatives=k, generator=torch.Generator().manual_seed(0), all_items=all_items)
    assert torch.equal(b.unique_items[b.inverse], b.items)
    assert b.unique_items[0] == 0 and torch.all(b.unique_items[1:] > b.unique_items[:-1])
    for r, row in enumerate(rows):
        assert b.items[r, :len(row)].tolist() == row and b.items[r, len(row):].eq(0).all()
    assert b.negatives.shape == (k,)
    negs = b.unique_items[b.negatives]
    assert ((negs >= 1) & (negs <= n_items)).all()


def test_collate_train_negatives_deterministic_and_follow_probs():
    probs = negative_sampling_probs("popularity", np.array([0, 0, 1, 3]))
    wins = [np.array([1, 2])]
    a = collate_train(wins, [1], max_seq_len=2, num_items=3, negatives=4000, sampler_probs=probs,
                      generator=torch.Generator().manual_seed(7))
    b = collate_train(wins, [1], max_seq_len=2, num_items=3, negatives=4000, sampler_probs=probs,
                      generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.negatives, b.negatives)
    ids = a.unique_items[a.negatives]
    assert set(ids.tolist()) <= {2, 3}  # item 1 has probability 0
    assert abs((ids == 3).double().mean().item() - 0.75) < 0.03  # 4000 draws: std 0.007
    uni = collate_train(wins, [1], max_seq_len=2, num_items=3, negatives=3000,
                        generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(uni.unique_items[uni.negatives], minlength=4)
    assert counts[0] == 0 and (counts[1:] - 1000).abs().max() < 120


def test_negative_sampling_probs():
    np.testing.assert_allclose(negative_sampling_probs("uniform", np.array([5, 0, 1, 2, 9])), [0, .25, .25, .25, .25])
    np.testing.assert_allclose(negative_sampling_probs("popularity", np.array([5, 0, 1, 3])), [0, 0, .25, .75])
    with pytest.raises(ValueError, match="every item"):
        negative_sampling_probs("popularity", np.array([0, 0, 0]))
    with pytest.raises(ValueError, match="sampler"):
        negative_sampling_probs("zipf", np.array([0, 1]))


@pytest.mark.parametrize("windows, users, kwargs, match", [
    ([], [], {}, "no windows"),
    ([np.array([1, 2, 3, 4])], [1], {}, "more than the 3 allowed"),
    ([np.array([1])], [1], {}, "at least 2"),
    ([np.array([1, 11])], [1], {}, "outside 1..10"),
    ([np.array([1, 0, 2])], [1], {}, "outside 1..10"),
    ([np.array([1.0, 2.0])], [1], {}, "integer item ids"),
    ([np.array([1, 2])], [1, 2], {}, "users"),
    ([np.array([1, 2])], [1], {"negatives": 2, "sampler_probs": np.ones(11)}, "sampler_probs"),
    ([np.array([1, 2])], [1], {"negatives": -1}, "negatives"),
])
def test_collate_train_rejects_bad_input(windows, users, kwargs, match):
    with pytest.raises(ValueError, match=match):
        collate_train(windows, users, max_seq_len=2, num_items=10, **kwargs)


def test_dummy_batch_has_no_targets():
    d = dummy_batch(4)
    assert d.items.shape == (1, 5) and d.lengths.tolist() == [0] and d.unique_items.tolist() == [0]
    assert torch.equal(d.unique_items[d.inverse], d.items)
    full = dummy_batch(4, num_items=6, all_items=True)
    assert full.unique_items.tolist() == list(range(7))
    with pytest.raises(ValueError, match="num_items"):
        dummy_batch(4, all_items=True)


def test_batch_to_keeps_cursor_and_moves_tensors():
    b = collate_train([np.array([1, 2])], [3], max_seq_len=2, num_items=5)
    b.cursor = {"consumed": 7}
    moved = b.to("cpu")
    assert isinstance(moved, SequenceBatch) and moved.cursor is b.cursor
    assert torch.equal(moved.items, b.items)
    moved = b.to("meta")
    assert moved.items.device.type == "meta" and moved.content is None


@pytest.mark.skipif(not torch.accelerator.is_available(), reason="pinned memory needs an accelerator")
def test_pin_memory():
    b = collate_train([np.array([1, 2])], [3], max_seq_len=2, num_items=5).pin_memory()
    assert b.items.is_pinned() and b.negatives.is_pinned()
    e = collate_eval([np.array([1])], [2], [1], max_seq_len=2).pin_memory()
    assert e.history.is_pinned()


# ---------------------------------------------------------------- collate_eval
def test_collate_eval_hand_case():
    e = collate_eval([np.array([5, 6, 7, 8]), np.array([9])], [1, 2], [10, 20], max_seq_len=3)
    assert e.history.tolist() == [[6, 7, 8], [9, 0, 0]]
    assert e.lengths.tolist() == [3, 1]
    assert e.targets.tolist() == [1, 2] and e.users.tolist() == [10, 20]
    assert e.history_values.tolist() == [5, 6, 7, 8, 9]
    assert e.history_offsets.tolist() == [0, 4, 5]
    assert isinstance(e.to("meta"), EvalBatch)


@settings(max_examples=100, deadline=None)
@given(hist=st.lists(st.lists(st.integers(1, 50), min_size=1, max_size=15), min_size=1, max_size=8),
       L=st.integers(1, 6))
def test_collate_eval_matches_per_user_slices(hist, L):
    e = collate_eval([np.array(h) for h in hist], np.ones(len(hist), dtype=np.int64), np.arange(len(hist)),
                     max_seq_len=L)
    for b, h in enumerate(hist):
        last = h[-L:]
        assert e.history[b].tolist() == last + [0] * (L - len(last))
        assert e.lengths[b] == len(last)
        o = e.history_offsets
        assert e.history_values[o[b]:o[b + 1]].tolist() == h


@pytest.mark.parametrize("hist, targets, users, match", [
    ([np.array([], dtype=np.int64)], [1], [1], "empty history"),
    ([np.array([1, 0])], [1], [1], ">= 1"),
    ([np.array([1])], [0], [1], ">= 1"),
    ([np.array([1])], [1, 2], [1], "targets"),
    ([np.array([1.5])], [1], [1], "integer"),
])
def test_collate_eval_rejects_bad_input(hist, targets, users, match):
    with pytest.raises(ValueError, match=match):
        collate_eval(hist, targets, users, max_seq_len=3)
