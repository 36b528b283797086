"""Sampling items a user never interacted with: exclusion, determinism, uniformity, the fallbacks."""

from __future__ import annotations

import numpy as np
import pytest

from mvrec_dist.data.negatives import MAX_ATTEMPTS, row_keys, sample_non_interacted

N = 50


def _histories(rng, b, n=N, most=30):
    return [rng.choice(np.arange(1, n + 1), size=int(rng.integers(0, most)), replace=True) for _ in range(b)]


@pytest.mark.parametrize("seed", range(5))
def test_never_returns_an_interacted_item_and_stays_in_range(seed):
    rng = np.random.default_rng(seed)
    excluded = _histories(rng, 64)
    keys = row_keys(seed, "train", 3, np.arange(1, 65), np.zeros(64, dtype=np.int64))
    out = sample_non_interacted(keys, 20, excluded, N)
    assert out.shape == (64, 20) and out.dtype == np.int64
    assert ((out >= 1) & (out <= N)).all()
    for row, ex in zip(out, excluded):
        assert not set(row.tolist()) & set(ex.tolist())


def test_draws_are_a_function_of_the_row_key_slot_and_exclusion_only():
    rng = np.random.default_rng(0)
    excluded = _histories(rng, 8)
    keys = row_keys(7, "train", 1, np.arange(1, 9), np.arange(8))
    out = sample_non_interacted(keys, 6, excluded, N)
    np.testing.assert_array_equal(out, sample_non_interacted(keys, 6, excluded, N))
    # Rows in another batch, order or grouping draw the same items (world size and resume independence).
    perm = rng.permutation(8)
    np.testing.assert_array_equal(sample_non_interacted(keys[perm], 6, [excluded[i] for i in perm], N), out[perm])
    np.testing.assert_array_equal(sample_non_interacted(keys[:3], 6, excluded[:3], N), out[:3])
    # Slots are independent draws: a later range of slots is the tail of a longer call.
    np.testing.assert_array_equal(sample_non_interacted(keys, 4, excluded, N, first_slot=2), out[:, 2:])
    # Another epoch, window, stream, seed or user changes the key.
    users = np.arange(1, 9)
    others = [row_keys(7, "train", 2, users, np.arange(8)), row_keys(7, "train", 1, users, np.arange(8) + 1),
              row_keys(7, "valid", 1, users, np.arange(8)), row_keys(8, "train", 1, users, np.arange(8)),
              row_keys(7, "train", 1, users + 1, np.arange(8))]
    assert all(len(set(k.tolist()) & set(keys.tolist())) == 0 for k in others)


def test_draws_are_uniform_over_the_complement():
    excluded = [np.arange(1, 11)] * 4000  # items 11..50 remain: 40 of them
    keys = row_keys(0, "train", 0, np.arange(4000), np.zeros(4000, dtype=np.int64))
    out = sample_non_interacted(keys, 10, excluded, N)
    counts = np.bincount(out.ravel(), minlength=N + 1)[11:]
    expected = out.size / 40
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert counts.min() > 0 and chi2 < 90  # 39 degrees of freedom: p < 1e-5 above 90


def test_a_user_of_nearly_every_item_falls_back_to_the_exact_complement_and_of_every_item_gets_padding():
    keys = row_keys(0, "valid", 0, np.array([1, 2]))
    almost = np.setdiff1d(np.arange(1, N + 1), [17, 33])
    out = sample_non_interacted(keys, 200, [almost, np.arange(1, N + 1)], N)
    assert set(out[0].tolist()) == {17, 33}  # 2 of 50 free: many slots need more than MAX_ATTEMPTS rounds
    assert (out[1] == 0).all()
    assert MAX_ATTEMPTS < 200


def test_empty_inputs():
    assert sample_non_interacted(np.zeros(0, dtype=np.uint64), 5, [], N).shape == (0, 5)
    keys = row_keys(0, "test", 0, np.array([3]))
    assert sample_non_interacted(keys, 0, [np.array([1])], N).shape == (1, 0)
    with pytest.raises(ValueError, match="2 keys but 1 excluded"):
        sample_non_interacted(np.zeros(2, dtype=np.uint64), 1, [np.array([1])], N)


def test_pool_draws_are_distinct_members_of_the_pool_and_count_what_they_filled():
    from mvrec_dist.data.negatives import sample_from_pools

    pools = [np.array([4, 9, 4, 7, 2]), np.array([], dtype=np.int64), np.array([3, 3]), np.arange(1, 40)]
    keys = row_keys(1, "train", 0, np.arange(1, 5), np.zeros(4, dtype=np.int64))
    out, filled = sample_from_pools(keys, pools, 3)
    assert filled.tolist() == [3, 0, 1, 3]
    for r, pool in enumerate(pools):
        got = out[r, :filled[r]].tolist()
        assert len(set(got)) == len(got) and set(got) <= set(pool.tolist()) and not out[r, filled[r]:].any()
    # A function of the key and the pool's items only: order and repeats of the pool do not matter.
    again, _ = sample_from_pools(keys, [p[::-1] for p in pools], 3)
    np.testing.assert_array_equal(again, out)


def test_pool_draws_are_uniform_subsets():
    from mvrec_dist.data.negatives import sample_from_pools

    pool = np.arange(10, 20)
    keys = row_keys(5, "train", 0, np.arange(1, 4001), np.zeros(4000, dtype=np.int64))
    out, filled = sample_from_pools(keys, [pool] * 4000, 2)
    assert (filled == 2).all()
    counts = np.bincount(out.ravel(), minlength=20)[10:]
    assert counts.min() > 0.8 * 800 and counts.max() < 1.2 * 800  # 8,000 draws over 10 items
