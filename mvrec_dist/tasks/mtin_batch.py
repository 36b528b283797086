"""MTIN's training batch: positive history, sampled negative history, candidates and users.

One example per training window of a user (``data.batch.training_windows``, ``data.train_windows``):

* ``positive`` (H_pos): the window's items but the last, right-padded to L = ``data.max_seq_len``;
* ``candidates``: the window's last item (label 1) then ``num_negatives`` items the user never
  interacted with (label 0);
* ``negative`` (H_neg): ``negative_length`` items the user never interacted with (``negatives:
  sampled``; MicroLens has no exposures).

Both samples exclude the user's *whole* train sequence (the loader hands each window's sequence to
the collate) and come from ``data.negatives`` keyed by ``(train.seed, epoch, user, window index)``:
the same rows get the same draws on any world size, loader-worker count and after any resume.
The held-out valid/test items are unknown to training, as they must be: a training draw may hit one
(probability ``negative_length / N`` per user and epoch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from mvrec_dist.data.batch import TensorBatch
from mvrec_dist.data.negatives import row_keys, sample_non_interacted

__all__ = ["MTINBatch", "MTINCollate", "eval_negative_history"]


@dataclass
class MTINBatch(TensorBatch):
    """One rank's MTIN examples of a step.

    Attributes:
        positive: ``LongTensor[B, L]`` H_pos item ids, right-padded with 0.
        negative: ``LongTensor[B, L_neg]`` H_neg item ids (0: none, e.g. a dummy row).
        candidates: ``LongTensor[B, C]`` candidate ids, ``C = 1 + num_negatives``: column 0 the
            positive, the rest label 0 (0: padding, not a target).
        users: ``LongTensor[B]`` dense user ids (0: a dummy row, whose memory is never written).
        unique_items: ``LongTensor[U]`` sorted unique ids to look up, ``unique_items[0] == 0``.
        positive_slots: ``LongTensor[B, L]`` slot of each ``positive`` id in ``unique_items``.
        negative_slots: ``LongTensor[B, L_neg]`` slot of each ``negative`` id.
        candidate_slots: ``LongTensor[B, C]`` slot of each candidate id.
        content: Item content (content towers; unused by MTIN in this version), or None.
        content_mask: Which unique items have content, or None.
        cursor: Where the batch ends in its consumer's stream (set by the loader).
        provenance: ``int64 [B, 2]`` (global sample index, window index) of each row (set by the loader).
    """

    positive: Tensor
    negative: Tensor
    candidates: Tensor
    users: Tensor
    unique_items: Tensor
    positive_slots: Tensor
    negative_slots: Tensor
    candidate_slots: Tensor
    content: Tensor | None = None
    content_mask: Tensor | None = None
    cursor: Any = None
    provenance: np.ndarray | None = None

    @staticmethod
    def of(positive: np.ndarray, negative: np.ndarray, candidates: np.ndarray, users: np.ndarray) -> "MTINBatch":
        """Collate id arrays (numpy, int) into a batch: one lookup slot per distinct id."""
        parts = [np.asarray(a, dtype=np.int64) for a in (positive, negative, candidates)]
        unique, inverse = np.unique(np.concatenate([[0]] + [a.ravel() for a in parts]), return_inverse=True)
        slots, start = [], 1
        for a in parts:
            slots.append(torch.from_numpy(inverse[start:start + a.size].reshape(a.shape).astype(np.int64)))
            start += a.size
        return MTINBatch(positive=torch.from_numpy(parts[0]), negative=torch.from_numpy(parts[1]),
                         candidates=torch.from_numpy(parts[2]), users=torch.from_numpy(np.asarray(users, np.int64)),
                         unique_items=torch.from_numpy(unique.astype(np.int64)), positive_slots=slots[0],
                         negative_slots=slots[1], candidate_slots=slots[2])

    @property
    def real_rows(self) -> Tensor:
        """``BoolTensor[B]`` rows of a real example (dummy rows have user 0 and no history)."""
        return (self.users > 0) & (self.positive > 0).any(1)


class MTINCollate:
    """The loader's collate of MTIN examples (``data.loader.TrainData``'s ``collate``; picklable).

    Args:
        num_items: N.
        max_seq_len: L, the width of H_pos.
        negative_length: L_neg, the width of H_neg.
        num_negatives: Label-0 candidates per example.
        seed: ``train.seed``.
    """

    def __init__(self, *, num_items: int, max_seq_len: int, negative_length: int, num_negatives: int, seed: int):
        self.num_items, self.max_seq_len = num_items, max_seq_len
        self.negative_length, self.num_negatives, self.seed = negative_length, num_negatives, seed

    def __call__(self, windows: Sequence[np.ndarray], users: Sequence[int], sequences: Sequence[np.ndarray],
                 provenance: np.ndarray, epoch: int) -> MTINBatch:
        """The batch of a consumer's windows.

        Args:
            windows: Per row, the window's items (2..L+1 of them, in time order).
            users: Per row, the dense user id.
            sequences: Per row, the user's whole train sequence (what the draws exclude).
            provenance: ``int64 [B, 2]`` (global sample index, window index) per row.
            epoch: The training epoch.

        Returns:
            The ``MTINBatch`` (``cursor`` and ``provenance`` are the loader's to set).
        """
        b, length = len(windows), self.max_seq_len
        positive = np.zeros((b, length), dtype=np.int64)
        for r, w in enumerate(windows):
            positive[r, :len(w) - 1] = w[:-1]
        targets = np.array([w[-1] for w in windows], dtype=np.int64)
        keys = row_keys(self.seed, "train", epoch, np.asarray(users), provenance[:, 1])
        negative = sample_non_interacted(keys, self.negative_length, sequences, self.num_items)
        drawn = sample_non_interacted(keys, self.num_negatives, sequences, self.num_items,
                                      first_slot=self.negative_length)
        return MTINBatch.of(positive, negative, np.concatenate([targets[:, None], drawn], 1), np.asarray(users))

    def dummy(self) -> MTINBatch:
        """One row without examples (user 0, every id padding): keeps a rank that ran out of data in step."""
        return MTINBatch.of(np.zeros((1, self.max_seq_len)), np.zeros((1, self.negative_length)),
                            np.zeros((1, 1 + self.num_negatives)), np.zeros(1))


def eval_negative_history(*, seed: int, split: str, users: Tensor, history_values: Tensor, history_offsets: Tensor,
                          targets: Tensor, length: int, num_items: int) -> Tensor:
    """H_neg of evaluation users: ``length`` items outside each user's history and target.

    Keyed by ``(train.seed, split, user)``: every evaluation of a split draws the same items.

    Args:
        seed: ``train.seed``.
        split: ``valid`` or ``test``.
        users: ``LongTensor[B]`` dense user ids.
        history_values: ``LongTensor[H]`` the users' full histories, concatenated.
        history_offsets: ``LongTensor[B+1]``.
        targets: ``LongTensor[B]`` the held-out items.
        length: L_neg.
        num_items: N.

    Returns:
        ``LongTensor[B, length]``.
    """
    offsets = history_offsets.tolist()
    values = history_values.numpy()
    excluded = [np.append(values[offsets[r]:offsets[r + 1]], int(targets[r])) for r in range(len(users))]
    keys = row_keys(seed, split, 0, users.numpy())
    return torch.from_numpy(sample_non_interacted(keys, length, excluded, num_items))
