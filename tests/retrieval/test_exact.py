"""Exact cosine top-k: equals brute force (float64, sorted by similarity then id), ties and duplicates
included; never returns the query; only index items come back; block size changes nothing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mvrec_dist.retrieval.exact import exact_topk


def brute_force(vectors: np.ndarray, query_ids: np.ndarray, index_ids: np.ndarray, k: int):
    """Every pair's cosine in float64, the query's own pair removed, sorted by (-sim, id)."""
    q, x = vectors[query_ids].astype(np.float64), vectors[index_ids].astype(np.float64)
    s = q @ x.T
    s[query_ids[:, None] == index_ids[None, :]] = -np.inf
    order = np.lexsort((np.broadcast_to(index_ids, s.shape), -s), axis=-1)[:, :k]
    ids, sims = index_ids[order], np.take_along_axis(s, order, axis=1)
    out = np.zeros((len(query_ids), k), dtype=np.int64)  # padded with 0 past the items found
    out[:, :ids.shape[1]] = np.where(np.isfinite(sims), ids, 0)
    return out, np.isfinite(sims).sum(axis=1)


def unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def padded(rows: np.ndarray) -> np.ndarray:
    """Row 0 = padding (ids start at 1)."""
    return np.concatenate([np.zeros((1, rows.shape[1]), np.float32), rows])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("block_mib", [1, 256])
def test_random_vectors_equal_brute_force(seed, block_mib):
    rng = np.random.default_rng(seed)
    n, k = 700, 20
    vectors = padded(unit_rows(rng.standard_normal((n, 24))))
    index_ids = np.sort(rng.choice(np.arange(1, n + 1), 560, replace=False))
    queries = np.arange(1, n + 1)
    res = exact_topk(vectors[queries], queries, vectors[index_ids], index_ids, k, block_mib=block_mib)
    ids, counts = brute_force(vectors, queries, index_ids, k)
    np.testing.assert_array_equal(res.ids, ids)
    np.testing.assert_array_equal(res.counts, counts)
    np.testing.assert_allclose(res.sims, np.einsum("qd,qkd->qk", vectors[queries], vectors[res.ids]), atol=1e-6)
    assert not (res.ids == queries[:, None]).any()
    assert np.isin(res.ids, index_ids).all()


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 60), k=st.integers(1, 25), dims=st.integers(4, 7),
       index_share=st.floats(0.05, 1.0), duplicates=st.integers(0, 20))
def test_ties_and_duplicates_are_ordered_by_id(seed, n, k, dims, index_share, duplicates):
    """Unit vectors with exactly four entries of +-1/2: every product and sum is exact in float32 (with
    or without FMA), every cosine a multiple of 1/4, so ties are real ties (many of them) and
    duplicates are bitwise equal. (1/sqrt(2) entries would not do: an FMA rounds one product and not
    the other, and equal cosines come out 1e-8 apart.)"""
    rng = np.random.default_rng(seed)
    rows = np.zeros((n, dims), np.float32)
    for r in rows:
        cols = rng.choice(dims, 4, replace=False)
        r[cols] = rng.choice([-0.5, 0.5], 4)
    for _ in range(duplicates):  # exact copies of other items
        a, b = rng.integers(0, n, 2)
        rows[a] = rows[b]
    vectors = padded(rows)
    index_ids = np.sort(rng.choice(np.arange(1, n + 1), max(1, int(index_share * n)), replace=False))
    queries = rng.permutation(np.arange(1, n + 1))  # any query order
    res = exact_topk(vectors[queries], queries, vectors[index_ids], index_ids, k, block_mib=1)
    ids, counts = brute_force(vectors, queries, index_ids, k)
    np.testing.assert_array_equal(res.ids, ids)
    np.testing.assert_array_equal(res.counts, counts)
    assert not (res.ids == queries[:, None]).any()


def test_a_duplicate_of_the_query_is_a_neighbour_but_the_query_is_not():
    v = padded(unit_rows(np.array([[1, 0], [1, 0], [0, 1], [1, 1]], np.float64)))
    ids = np.arange(1, 5)
    res = exact_topk(v[ids], ids, v[ids], ids, 3)
    assert res.ids[0].tolist() == [2, 4, 3] and res.ids[1].tolist() == [1, 4, 3]
    np.testing.assert_allclose(res.sims[0], [1.0, np.sqrt(0.5), 0.0], atol=1e-6)


def test_an_index_smaller_than_k_gives_every_other_item_and_pads():
    rng = np.random.default_rng(0)
    v = padded(unit_rows(rng.standard_normal((6, 4))))
    index_ids = np.array([1, 2, 3])
    queries = np.array([1, 4])
    res = exact_topk(v[queries], queries, v[index_ids], index_ids, 5)
    assert res.counts.tolist() == [2, 3]  # item 1 is indexed: 2 others; item 4 is not: all 3
    assert set(res.ids[0, :2].tolist()) == {2, 3} and res.ids[0, 2:].tolist() == [0, 0, 0]
    assert res.sims[0, 2:].tolist() == [0.0, 0.0, 0.0]


def test_index_ids_must_ascend():
    v = padded(unit_rows(np.eye(3)))
    with pytest.raises(ValueError, match="ascending"):
        exact_topk(v[[1]], np.array([1]), v[[3, 2]], np.array([3, 2]), 1)
