"""Exact cosine top-k by blocked matrix products (MicroLens-50K/100K scale).

Vectors are L2-normalised beforehand (``features.py``), so a cosine is an inner product. The queries
are cut into blocks whose score matrix ``[B, M]`` (B queries x M index items) stays within a memory
budget; each block is one matmul and one ``torch.topk``. A query that is itself in the index has its
own column set to -inf, so it never retrieves itself (by id: an identical vector of another item is
still a neighbour, it is another item).

**Ties are deterministic**: equal similarities (as computed, in float32) are ordered by ascending item id. ``torch.topk`` does
not promise an order among equal values (nor which of several equal values at the k-th place it
keeps), so a block takes every candidate at least as similar as its k-th value (``width >= k``
columns, more only where values tie at the boundary), orders them by (similarity descending, id
ascending) with a stable sort, and keeps k. Without ties this costs one extra comparison pass.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["exact_topk", "NeighbourResult"]


class NeighbourResult:
    """Top-k neighbours of a run of queries.

    Attributes:
        ids: ``int64 [Q, k]`` neighbour item ids, most similar first; 0 past ``counts``.
        sims: ``float32 [Q, k]`` their cosine similarities; 0 past ``counts``.
        counts: ``int64 [Q]`` neighbours found (k unless the index holds fewer other items).
    """

    def __init__(self, ids: np.ndarray, sims: np.ndarray, counts: np.ndarray):
        self.ids, self.sims, self.counts = ids, sims, counts


def _queries_per_block(num_index: int, block_mib: int) -> int:
    return max(1, (block_mib << 20) // (4 * max(num_index, 1)))


@torch.no_grad()
def exact_topk(queries: np.ndarray, query_ids: np.ndarray, index: np.ndarray, index_ids: np.ndarray, k: int,
               *, block_mib: int = 256) -> NeighbourResult:
    """The k most cosine-similar index items of every query, excluding the query itself.

    Args:
        queries: ``float32 [Q, D]`` L2-normalised query vectors.
        query_ids: ``int64 [Q]`` their item ids.
        index: ``float32 [M, D]`` L2-normalised index vectors.
        index_ids: ``int64 [M]`` their item ids, strictly ascending.
        k: Neighbours per query.
        block_mib: Memory budget of one block's score matrix (sets the queries per matmul).

    Returns:
        A ``NeighbourResult``: per query, ``min(k, M - [query in index])`` neighbours ordered by
        (similarity descending, id ascending).
    """
    index_ids = np.asarray(index_ids, dtype=np.int64)
    if len(index_ids) > 1 and not (np.diff(index_ids) > 0).all():
        raise ValueError("index_ids must be strictly ascending (ties are broken by id through column order)")
    q_ids = torch.from_numpy(np.asarray(query_ids, dtype=np.int64))
    x = torch.from_numpy(np.ascontiguousarray(index, dtype=np.float32))
    q_all = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    ids_t = torch.from_numpy(index_ids)
    num_q, m = len(q_ids), len(index_ids)
    out_ids = np.zeros((num_q, k), dtype=np.int64)
    out_sims = np.zeros((num_q, k), dtype=np.float32)
    counts = np.zeros(num_q, dtype=np.int64)
    if m == 0 or num_q == 0:
        return NeighbourResult(out_ids, out_sims, counts)
    # Where each query sits in the index (if it is there): its column is masked.
    pos = torch.searchsorted(ids_t, q_ids).clamp_(max=m - 1)
    in_index = ids_t[pos] == q_ids
    take = min(k, m)
    step = _queries_per_block(m, block_mib)
    for lo in range(0, num_q, step):
        hi = min(lo + step, num_q)
        scores = q_all[lo:hi] @ x.T  # B,M
        rows = torch.nonzero(in_index[lo:hi]).squeeze(1)
        scores[rows, pos[lo:hi][rows]] = float("-inf")
        kth = torch.topk(scores, take, dim=1, sorted=False).values.min(dim=1, keepdim=True).values
        width = int((scores >= kth).sum(dim=1).max())  # >= take; more where values tie at the k-th place
        cand_vals, cand_cols = torch.topk(scores, width, dim=1, sorted=False)
        cand_cols, perm = cand_cols.sort(dim=1)  # ascending column = ascending item id
        cand_vals = cand_vals.gather(1, perm)
        order = torch.sort(cand_vals, dim=1, descending=True, stable=True).indices[:, :take]
        cols, vals = cand_cols.gather(1, order), cand_vals.gather(1, order)
        valid = torch.isfinite(vals)  # only the query's own masked column is -inf
        out_ids[lo:hi, :take] = torch.where(valid, ids_t[cols], 0).numpy()
        out_sims[lo:hi, :take] = torch.where(valid, vals, 0.0).numpy()
        counts[lo:hi] = valid.sum(dim=1).numpy()
    return NeighbourResult(out_ids, out_sims, counts)
