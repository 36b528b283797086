"""FRAME's training batch: the window's plays as examples with clip labels, and each user's rows of the graphs.

The loader (``data.loader``) hands the collate one row per training window of a user, with the window's
items, the user's whole train sequence and, for FRAME's input (``plays_csv``), the playing times and
durations of both (``needs = {"plays"}``). From them:

* **Examples.** Every item of a window but its first is an example (with ``data.train_windows=all``,
  windows overlap by one item: each play of a user but the first is an example exactly once per epoch,
  on any world size and after any resume, the stream's guarantee). Each has its video, the clip labels of
  its play ratio (``data.clip_graphs.clip_labels``: 1 watched through, 0 left in, -1 not reached, no loss)
  and FRAME's weight ``k / C`` of the positive term (``clip_positive_weights``).
* **The user's graph rows.** Row ``u`` of ``A_pos`` and of ``A_neg`` (``data.clip_graphs``, rule
  ``frame.graph_rule``) built from the user's whole train sequence: clip ids ``item * C + j`` and the
  row-normalised weights, as weighted bags (``pos_*``, ``neg_*``), one per batch row: the input of the
  sharded weighted pooled lookup ``A C`` (a TorchRec ``EmbeddingBagCollection`` with per-sample weights).
  The row depends on the user alone, so it is the same whichever rank the user lands on.
* **BPR pairs.** Each example's negative video (``task.bpr_negatives``): ``sampled`` (default), a video the
  user never played, uniform, keyed by ``(train.seed, epoch, user, window, slot)`` (``data.negatives``: the same
  draw on any world size and resume), as the evaluation's candidates are; ``in_batch``, the video of the
  example ``E // 2`` places later in the rank's batch (cyclic; none, 0, when it is the same video or one the
  user played). In-batch videos follow popularity, as the positives do, so that term never learns to put the
  popular above the unpopular: on the synthetic demo it left test AUC at 0.50 (``tasks/frame.py``).

**Without play times** (MicroLens records comments only; ``plays`` absent from the manifest) every play
counts as watched through, ``r = 1``: ``A_pos`` holds every clip of each commented video, ``A_neg`` is
empty and every clip label is 1 (FRAME's negative graph and pointwise negatives then do not exist; the
BPR term still ranks each video above another in the batch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from mvrec_dist.data.batch import TensorBatch
from mvrec_dist.data.clip_graphs import (CLIPS, GraphRule, clip_edges, clip_labels, clip_positive_weights,
                                         graph_from_edges, play_ratios)
from mvrec_dist.data.negatives import row_keys, sample_non_interacted

__all__ = ["FRAMEBatch", "FRAMECollate", "user_graph_rows"]


@dataclass
class FRAMEBatch(TensorBatch):
    """One rank's FRAME examples of a step.

    Attributes:
        users: ``LongTensor[B]`` dense user id of each row (0: a dummy row).
        example_rows: ``LongTensor[E]`` the row (user) of each example.
        items: ``LongTensor[E]`` the video of each example.
        labels: ``Int8Tensor[E, C]`` clip labels (1, 0, -1: no loss).
        positive_weights: ``FloatTensor[E]`` weight of the positive BCE terms, ``k / C``.
        negatives: ``LongTensor[E]`` the in-batch BPR negative video of each example (0: none).
        pos_ids, pos_lengths, pos_weights: the rows' ``A_pos`` bags (clip ids ``[n]``, ``[B]``, float ``[n]``).
        neg_ids, neg_lengths, neg_weights: the rows' ``A_neg`` bags.
        unique_items: ``LongTensor[U]`` sorted unique videos of the examples and negatives, ``[0] == 0``.
        content: Item content of ``unique_items`` (content towers), or None.
        content_mask: Which unique items have content, or None.
        cursor: Where the batch ends in its consumer's stream (set by the loader).
        provenance: ``int64 [B, 2]`` (global sample index, window index) of each row (set by the loader).
    """

    users: Tensor
    example_rows: Tensor
    items: Tensor
    labels: Tensor
    positive_weights: Tensor
    negatives: Tensor
    pos_ids: Tensor
    pos_lengths: Tensor
    pos_weights: Tensor
    neg_ids: Tensor
    neg_lengths: Tensor
    neg_weights: Tensor
    unique_items: Tensor
    content: Tensor | None = None
    content_mask: Tensor | None = None
    cursor: Any = None
    provenance: np.ndarray | None = None

    @property
    def num_examples(self) -> int:
        """Examples (plays) in the batch."""
        return int(self.items.numel())

    @property
    def num_targets(self) -> int:
        """Clip labels that enter the loss (``labels >= 0``)."""
        return int((self.labels >= 0).sum())


def user_graph_rows(sequences: Sequence[np.ndarray], ratios: Sequence[np.ndarray], *, num_items: int,
                    clips: int = CLIPS, rule: GraphRule = "left_once") -> tuple[tuple[np.ndarray, ...], ...]:
    """Row ``b`` of ``A_pos`` and ``A_neg`` for each of the given users' train sequences, as weighted bags.

    Args:
        sequences: Per user, the dense ids of the train interactions.
        ratios: Per user, their play ratios.
        num_items: N (clip ids range over ``(N + 1) C``).
        clips: Clips per video C.
        rule: The negative-edge rule (``data.clip_graphs``).

    Returns:
        ``((pos ids, lengths, weights), (neg ids, lengths, weights))``: int64 clip ids, int64 ``[B]`` bag
        lengths, float32 weights; bag ``b`` is user ``b``'s row (row-normalised: its weights sum to 1).
    """
    b = len(sequences)
    rows = np.repeat(np.arange(b, dtype=np.int64), [len(s) for s in sequences])
    items = np.concatenate([np.asarray(s, dtype=np.int64) for s in sequences]) if b else np.zeros(0, np.int64)
    r = np.concatenate([np.asarray(x, dtype=np.float64) for x in ratios]) if b else np.zeros(0)
    out = []
    for edges in clip_edges(rows, items, r, clips=clips, rule=rule):
        graph = graph_from_edges(*edges, num_rows=b, num_cols=(num_items + 1) * clips)
        bags = graph.row_bags(np.arange(b))
        out.append((bags.ids, bags.lengths, bags.weights))
    return tuple(out)


class FRAMECollate:
    """The loader's collate of FRAME examples (``data.loader.TrainData``'s ``collate``; picklable).

    Args:
        num_items: N.
        plays: The dataset has play times (``plays_csv``); otherwise every ratio is 1 (module docstring).
        clips: Clips per video C.
        rule: The negative-edge rule of the graphs.
        seed: ``train.seed`` (sampled BPR negatives).
        bpr_negatives: ``sampled`` or ``in_batch`` (module docstring).
    """

    def __init__(self, *, num_items: int, plays: bool, clips: int = CLIPS, rule: GraphRule = "left_once",
                 seed: int = 0, bpr_negatives: str = "sampled"):
        if bpr_negatives not in ("sampled", "in_batch"):
            raise ValueError(f"bpr_negatives must be 'sampled' or 'in_batch', got {bpr_negatives!r}")
        self.num_items, self.plays, self.clips, self.rule = num_items, plays, clips, rule
        self.seed, self.bpr_negatives = seed, bpr_negatives
        self.needs = frozenset({"plays"} if plays else ())

    def __call__(self, windows: Sequence[np.ndarray], users: Sequence[int], sequences: Sequence[np.ndarray],
                 provenance: np.ndarray, epoch: int, extras: dict[str, list] | None = None) -> FRAMEBatch:
        """The batch of a consumer's windows (``MTINCollate.__call__``'s arguments; ``extras["plays"]`` per row:
        the window's playing times and durations, then the whole sequence's)."""
        if self.plays and "plays" not in (extras or {}):
            raise ValueError("FRAMECollate: the loader did not pass the play times (collate.needs)")
        if self.plays:
            window_ratios = [play_ratios(wp, wd) for wp, wd, _, _ in extras["plays"]]
            sequence_ratios = [play_ratios(p, d) for _, _, p, d in extras["plays"]]
        else:
            window_ratios = [np.ones(len(w)) for w in windows]
            sequence_ratios = [np.ones(len(s)) for s in sequences]
        counts = [max(len(w) - 1, 0) for w in windows]
        items = (np.concatenate([np.asarray(w[1:], dtype=np.int64) for w in windows]) if windows
                 else np.zeros(0, np.int64))
        ratios = np.concatenate([r[1:] for r in window_ratios]) if windows else np.zeros(0)
        rows = np.repeat(np.arange(len(windows), dtype=np.int64), counts)
        if self.bpr_negatives == "sampled":
            keys = row_keys(self.seed, "train", epoch, np.asarray(users, dtype=np.int64), provenance[:, 1])
            drawn = sample_non_interacted(keys, max(counts, default=0), sequences, self.num_items)
            negatives = np.concatenate([drawn[r, :c] for r, c in enumerate(counts)] + [np.zeros(0, np.int64)])
        else:
            negatives = self._in_batch(items, rows, sequences)
        (pos, neg) = user_graph_rows(sequences, sequence_ratios, num_items=self.num_items, clips=self.clips,
                                     rule=self.rule)
        return _batch(np.asarray(users, dtype=np.int64), rows, items, clip_labels(ratios, self.clips),
                      clip_positive_weights(ratios, self.clips), negatives, pos, neg)

    @staticmethod
    def _in_batch(items: np.ndarray, rows: np.ndarray, sequences: Sequence[np.ndarray]) -> np.ndarray:
        e = len(items)
        if e < 2:
            return np.zeros(e, dtype=np.int64)
        other = np.roll(items, -(e // 2))
        seen = np.array([other[i] == items[i] or other[i] in sequences[rows[i]] for i in range(e)], dtype=bool)
        return np.where(seen, 0, other)

    def dummy(self) -> FRAMEBatch:
        """One row without examples (user 0, empty bags): keeps a rank that ran out of data in step."""
        empty = (np.zeros(0, np.int64), np.zeros(1, np.int64), np.zeros(0, np.float32))
        return _batch(np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64),
                      np.zeros((0, self.clips), np.int8), np.zeros(0), np.zeros(0, np.int64), empty, empty)


def _batch(users, rows, items, labels, weights, negatives, pos, neg) -> FRAMEBatch:
    t = torch.from_numpy
    unique = np.unique(np.concatenate([[0], items, negatives]).astype(np.int64))
    return FRAMEBatch(users=t(users), example_rows=t(rows), items=t(items), labels=t(labels),
                      positive_weights=t(np.asarray(weights, dtype=np.float32)), negatives=t(negatives),
                      pos_ids=t(pos[0]), pos_lengths=t(pos[1]), pos_weights=t(pos[2]),
                      neg_ids=t(neg[0]), neg_lengths=t(neg[1]), neg_weights=t(neg[2]), unique_items=t(unique))
