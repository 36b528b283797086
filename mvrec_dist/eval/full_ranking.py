"""Full-ranking evaluation: the rank of each user's target among ALL items, history excluded.

MicroLens protocol (westlake-repl/MicroLens ``Code/VideoRec/SASRec/utils/metrics.py``,
``eval_model``): score every item 1..N with the dot product of the user state and the item
representation, exclude the items of the user's history, and rank the held-out target among the rest.

Differences from that code, both deliberate:

* The target is never excluded, even when it also occurs in the history (MicroLens sets the
  history's scores to -inf after reading nothing, so a repeated target would score -inf and rank
  last; with ``history = s[0..n-3]`` and a repeated item that happens on real data).
* Ties count against the target: its rank is the number of other candidates scoring ``>=`` it
  (MicroLens sorts, which breaks ties by position). Optimistic or positional tie-breaking lets a
  degenerate model (constant scores, a collapsed embedding) look perfect or depend on item order;
  pessimistic ranks give it the worst rank instead.

The work is chunked over users: one matmul ``[chunk, D] x [D, N+1]`` per chunk into a reused
buffer, history exclusion by one ``index_fill_`` on the flattened chunk (the jagged history is
flattened once), and the count as a uint8 sum; no per-user Python loop.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["target_ranks"]

_COUNT_ROWS = 128


def _validate(user_states: Tensor, item_repr: Tensor, targets: Tensor, history_values: Tensor,
              history_offsets: Tensor) -> list[int]:
    if user_states.dim() != 2 or item_repr.dim() != 2 or user_states.shape[1] != item_repr.shape[1]:
        raise ValueError(f"target_ranks: user_states [B, D] and item_repr [N+1, D] must share D, got "
                         f"{tuple(user_states.shape)} and {tuple(item_repr.shape)}")
    b, n1 = user_states.shape[0], item_repr.shape[0]
    if targets.shape != (b,) or history_offsets.shape != (b + 1,) or history_values.dim() != 1:
        raise ValueError(f"target_ranks: for B={b} users expected targets [B], history_offsets [B+1] and 1-D "
                         f"history_values, got {tuple(targets.shape)}, {tuple(history_offsets.shape)}, "
                         f"{tuple(history_values.shape)}")
    offsets = history_offsets.tolist()
    if offsets[0] != 0 or offsets[-1] != history_values.shape[0] or any(a > c for a, c in zip(offsets, offsets[1:])):
        raise ValueError("target_ranks: history_offsets must start at 0, be non-decreasing and end at "
                         f"len(history_values) = {history_values.shape[0]}")
    if b and (int(targets.min()) < 1 or int(targets.max()) >= n1):
        raise ValueError(f"target_ranks: targets must be item ids in 1..{n1 - 1}")
    if history_values.numel() and (int(history_values.min()) < 1 or int(history_values.max()) >= n1):
        raise ValueError(f"target_ranks: history_values must be item ids in 1..{n1 - 1}")
    if not (torch.isfinite(user_states).all() and torch.isfinite(item_repr).all()):
        raise ValueError("target_ranks: user_states or item_repr contain NaN/inf (a diverged model?)")
    return offsets


@torch.no_grad()
def target_ranks(user_states: Tensor, item_repr: Tensor, targets: Tensor, history_values: Tensor,
                 history_offsets: Tensor, *, chunk_size: int = 128) -> Tensor:
    """0-based rank of each user's target among all items 1..N, the user's history excluded.

    Args:
        user_states: ``[B, D]`` user states.
        item_repr: ``[N+1, D]`` representations of every id (row 0, padding, is never a candidate).
        targets: ``LongTensor[B]`` target ids in 1..N.
        history_values: ``LongTensor[H]`` every user's history, concatenated (ids in 1..N).
        history_offsets: ``LongTensor[B+1]``; user b's history is ``history_values[o[b]:o[b+1]]``.
        chunk_size: Users per matmul block; working memory is about ``5 * chunk_size * (N+1)`` bytes
            (64-128 was fastest on the 2-core CPU machine: the block stays in cache).

    Returns:
        ``LongTensor[B]``: the number of candidates other than the target, outside the user's
        history, scoring ``>=`` the target (ties pessimistic, see the module docstring).
    """
    if chunk_size < 1:
        raise ValueError(f"target_ranks: chunk_size must be >= 1, got {chunk_size}")
    offsets = _validate(user_states, item_repr, targets, history_values, history_offsets)
    b, n1 = user_states.shape[0], item_repr.shape[0]
    device = user_states.device
    states = user_states.float()
    items_t = item_repr.float().T.contiguous()  # D,N+1
    value_rows = torch.repeat_interleave(torch.arange(b, device=device),
                                         (history_offsets[1:] - history_offsets[:-1]).to(device))  # H
    flat_history = value_rows * n1 + history_values.to(device)  # H, flat index in a [B, N+1] matrix
    targets = targets.to(device)
    chunk = min(chunk_size, max(b, 1))
    scores_buf = torch.empty(chunk, n1, device=device)
    above_buf = torch.empty(chunk, n1, dtype=torch.bool, device=device)
    ranks = torch.empty(b, dtype=torch.long, device=device)
    for s in range(0, b, chunk):
        e = min(s + chunk, b)
        scores = torch.mm(states[s:e], items_t, out=scores_buf[:e - s])  # b,N+1
        target_scores = scores.gather(1, targets[s:e, None])  # b,1
        flat = scores.view(-1)
        flat.index_fill_(0, flat_history[offsets[s]:offsets[e]] - s * n1, float("-inf"))
        scores[:, 0] = float("-inf")
        # Last, so a target that is also in the history keeps its score for target_scores above.
        flat.index_fill_(0, torch.arange(e - s, device=device) * n1 + targets[s:e], float("-inf"))
        above = torch.ge(scores, target_scores, out=above_buf[:e - s]).view(torch.uint8)  # b,N+1
        # Row blocks: on the CPU machine a uint8 row-sum over more than ~256 rows takes a ~20x
        # slower reduction path.
        for r in range(s, e, _COUNT_ROWS):
            r_end = min(r + _COUNT_ROWS, e)
            ranks[r:r_end] = above[r - s:r_end - s].sum(1, dtype=torch.int32)
    return ranks
