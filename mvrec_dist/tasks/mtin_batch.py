"""MTIN's training batch: positive history, negative history, candidates, users (and timestamps).

One example per training window of a user (``data.batch.training_windows``, ``data.train_windows``):

* ``positive`` (H_pos): the window's items but the last, right-padded to L = ``data.max_seq_len``;
* ``candidates``: the window's last item, *the positive* (label 1), then ``num_negatives`` label-0 items;
* ``negative`` (H_neg): up to ``negative_length`` items.

``task.negatives: sampled`` (MicroLens has no exposures): H_neg and the label-0 candidates are items
the user never interacted with. Both samples exclude the user's *whole* train sequence (the loader
hands each window's sequence to the collate) and come from ``data.negatives`` keyed by
``(train.seed, epoch, user, window index)``: the same rows get the same draws on any world size,
loader-worker count and after any resume. The held-out valid/test items are unknown to training, as
they must be: a training draw may hit one (probability ``negative_length / N`` per user and epoch).

``task.negatives: exposures`` (a labelled dataset, ``data/exposures.py``): H_neg is the user's last
``negative_length`` exposures strictly before the positive's time (fewer, padded, when the user has
fewer; none is an empty history); the label-0 candidates are drawn without replacement from the
user's other exposures (not in H_neg, not of an item in the train sequence), keyed like the samples.
A row with fewer such exposures than ``num_negatives`` fills the rest with sampled non-interacted
items (also excluding H_neg and the drawn exposures); ``MTINBatch.draws`` counts those fallbacks and
the rows with an empty H_neg, and the task reports them (``MTINData.negatives_report``).

``mtin.time_distance: timestamp``: ``positive_times`` are the window's timestamps (as stored: the
input's unit), ``negative_times`` the exposures' own, or, for sampled H_neg (items without a time of
their own), the positive history's times spread evenly over its slots (``exposures.spread_times``).
Padding slots hold the row's last time (``exposures.hold_last``: distance 0, never an overflow).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from torch import Tensor

from mvrec_dist.data.batch import TensorBatch
from mvrec_dist.data.exposures import exposure_pools, hold_last, jagged, recent_before, spread_times
from mvrec_dist.data.negatives import row_keys, sample_from_pools, sample_non_interacted

__all__ = ["MTINBatch", "MTINCollate", "eval_negative_history", "eval_inputs", "DRAW_COUNTS"]

DRAW_COUNTS = ("exposure_candidates", "exposure_fallback", "exposure_empty_train")
"""What ``MTINBatch.draws`` counts (with ``negatives: exposures``): label-0 candidate slots of real rows,
those of them filled by sampling because the user had too few exposures, real rows with an empty H_neg."""


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
        positive_times: ``LongTensor[B, L]`` timestamps of ``positive`` (``time_distance='timestamp'``), or None.
        negative_times: ``LongTensor[B, L_neg]`` timestamps of ``negative`` (module docstring), or None.
        draws: ``int64 [len(DRAW_COUNTS)]`` the batch's exposure counts (``negatives: exposures``), or None.
    """

    kept: ClassVar[tuple[str, ...]] = ("cursor", "provenance", "draws")

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
    positive_times: Tensor | None = None
    negative_times: Tensor | None = None
    draws: np.ndarray | None = None

    @staticmethod
    def of(positive: np.ndarray, negative: np.ndarray, candidates: np.ndarray, users: np.ndarray,
           positive_times: np.ndarray | None = None, negative_times: np.ndarray | None = None) -> "MTINBatch":
        """Collate id arrays (numpy, int) into a batch: one lookup slot per distinct id (times as given)."""
        parts = [np.asarray(a, dtype=np.int64) for a in (positive, negative, candidates)]
        unique, inverse = np.unique(np.concatenate([[0]] + [a.ravel() for a in parts]), return_inverse=True)
        slots, start = [], 1
        for a in parts:
            slots.append(torch.from_numpy(inverse[start:start + a.size].reshape(a.shape).astype(np.int64)))
            start += a.size
        times = [None if t is None else torch.from_numpy(np.asarray(t, dtype=np.int64))
                 for t in (positive_times, negative_times)]
        return MTINBatch(positive=torch.from_numpy(parts[0]), negative=torch.from_numpy(parts[1]),
                         candidates=torch.from_numpy(parts[2]), users=torch.from_numpy(np.asarray(users, np.int64)),
                         unique_items=torch.from_numpy(unique.astype(np.int64)), positive_slots=slots[0],
                         negative_slots=slots[1], candidate_slots=slots[2], positive_times=times[0],
                         negative_times=times[1])

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
        negatives: ``task.negatives``: ``sampled`` or ``exposures`` (module docstring).
        times: Carry ``positive_times``/``negative_times`` (``mtin.time_distance='timestamp'``).
    """

    def __init__(self, *, num_items: int, max_seq_len: int, negative_length: int, num_negatives: int, seed: int,
                 negatives: str = "sampled", times: bool = False):
        if negatives not in ("sampled", "exposures"):
            raise ValueError(f"negatives must be 'sampled' or 'exposures', got {negatives!r}")
        self.num_items, self.max_seq_len = num_items, max_seq_len
        self.negative_length, self.num_negatives, self.seed = negative_length, num_negatives, seed
        self.negatives, self.times = negatives, times
        # What the loader reads besides the windows: exposures are placed before a positive by time.
        self.needs = frozenset(({"times"} if times or negatives == "exposures" else set())
                               | ({"exposures"} if negatives == "exposures" else set()))

    def __call__(self, windows: Sequence[np.ndarray], users: Sequence[int], sequences: Sequence[np.ndarray],
                 provenance: np.ndarray, epoch: int, extras: dict[str, list] | None = None) -> MTINBatch:
        """The batch of a consumer's windows.

        Args:
            windows: Per row, the window's items (2..L+1 of them, in time order).
            users: Per row, the dense user id.
            sequences: Per row, the user's whole train sequence (what the draws exclude).
            provenance: ``int64 [B, 2]`` (global sample index, window index) per row.
            epoch: The training epoch.
            extras: What ``needs`` asked the loader for: ``times`` (per row, the window's timestamps)
                and ``exposures`` (per row, the user's ``(items, timestamps)``).

        Returns:
            The ``MTINBatch`` (``cursor`` and ``provenance`` are the loader's to set).
        """
        missing = self.needs - set(extras or ())
        if missing:
            raise ValueError(f"MTINCollate: the loader did not pass {sorted(missing)} (collate.needs)")
        b, length = len(windows), self.max_seq_len
        positive = np.zeros((b, length), dtype=np.int64)
        for r, w in enumerate(windows):
            positive[r, :len(w) - 1] = w[:-1]
        targets = np.array([w[-1] for w in windows], dtype=np.int64)
        keys = row_keys(self.seed, "train", epoch, np.asarray(users), provenance[:, 1])
        negative_times = draws = None
        if self.negatives == "exposures":
            before = np.array([t[-1] for t in extras["times"]], dtype=np.int64)  # the positive's time
            negative, negative_times, drawn, draws = self._from_exposures(keys, extras["exposures"], before,
                                                                          sequences)
        else:
            negative = sample_non_interacted(keys, self.negative_length, sequences, self.num_items)
            drawn = sample_non_interacted(keys, self.num_negatives, sequences, self.num_items,
                                          first_slot=self.negative_length)
        positive_times = None
        if self.times:
            positive_times = np.zeros((b, length), dtype=np.int64)
            for r, t in enumerate(extras["times"]):
                positive_times[r, :len(t) - 1] = t[:-1]
            positive_times = hold_last(positive_times, (positive > 0).sum(1))
            if negative_times is None:
                negative_times = spread_times(positive_times, (positive > 0).sum(1), self.negative_length)
        else:
            negative_times = None  # position gaps: the model reads no times
        batch = MTINBatch.of(positive, negative, np.concatenate([targets[:, None], drawn], 1), np.asarray(users),
                             positive_times, negative_times)
        batch.draws = draws
        return batch

    def _from_exposures(self, keys: np.ndarray, exposures: Sequence[tuple[np.ndarray, np.ndarray]],
                        before: np.ndarray, sequences: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
        """H_neg, its times, the label-0 candidates and the draw counts of rows with exposures (module docstring)."""
        items, offsets = jagged([e[0] for e in exposures])
        times, _ = jagged([e[1] for e in exposures])
        negative, negative_times, first = recent_before(items, times, offsets, before, self.negative_length)
        pools = exposure_pools(items, offsets, negative, first, sequences)
        k = self.num_negatives
        drawn, filled = sample_from_pools(keys, pools, k)
        if (filled < k).any():  # too few exposures: the rest of the slots are sampled (counted in ``draws``)
            excluded = [np.concatenate([np.asarray(seq, dtype=np.int64), negative[r], drawn[r, :filled[r]]])
                        for r, seq in enumerate(sequences)]
            sampled = sample_non_interacted(keys, k, excluded, self.num_items, first_slot=self.negative_length)
            drawn = np.where(np.arange(k)[None, :] < filled[:, None], drawn, sampled)
        draws = np.array([len(keys) * k, int((k - filled).sum()), int((negative[:, 0] == 0).sum())], dtype=np.int64)
        return negative, negative_times, drawn, draws

    def dummy(self) -> MTINBatch:
        """One row without examples (user 0, every id padding): keeps a rank that ran out of data in step."""
        times = (np.zeros((1, self.max_seq_len)), np.zeros((1, self.negative_length))) if self.times else (None, None)
        return MTINBatch.of(np.zeros((1, self.max_seq_len)), np.zeros((1, self.negative_length)),
                            np.zeros((1, 1 + self.num_negatives)), np.zeros(1), *times)


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


def eval_inputs(*, batch: Any, split: str, seed: int, length: int, num_items: int, negatives: str, times: bool,
                split_rows: Any = None, exposure_rows: Any = None) -> tuple[Tensor, Tensor | None, Tensor | None, int]:
    """What MTIN reads of a batch of evaluation users besides H_pos: H_neg and the histories' times.

    Args:
        batch: The ``EvalBatch`` (H_pos = ``batch.history``, the last L history items).
        split: ``valid`` or ``test``.
        seed: ``train.seed`` (sampled H_neg).
        length: L_neg.
        num_items: N.
        negatives: ``task.negatives``.
        times: Return the times (``mtin.time_distance='timestamp'``).
        split_rows: ``data.exposures.UserRows`` of ``split`` with ``ts.npy`` and ``targets_ts.npy``
            (needed with ``times`` or exposures).
        exposure_rows: ``UserRows`` of the ``exposures`` split with ``items.npy`` and ``ts.npy``
            (needed with exposures).

    Returns:
        ``(negative [B, L_neg], positive_times [B, W] or None, negative_times [B, L_neg] or None, empty)``:
        H_neg is the user's last L_neg exposures before the target's time (``exposures``; ``empty``
        counts the users with none) or ``eval_negative_history``'s draw (``sampled``; ``empty`` 0).
    """
    users = batch.users.numpy()
    empty = 0
    negative_times = None
    if negatives == "exposures":
        items, offsets = exposure_rows.gather(users, "items.npy")
        exposure_times, _ = exposure_rows.gather(users, "ts.npy")
        before = split_rows.values(users, "targets_ts.npy")
        negative, negative_times, _ = recent_before(items, exposure_times, offsets, before, length)
        empty = int((negative[:, 0] == 0).sum())
        negative = torch.from_numpy(negative)
    else:
        negative = eval_negative_history(seed=seed, split=split, users=batch.users, history_values=batch.history_values,
                                         history_offsets=batch.history_offsets, targets=batch.targets, length=length,
                                         num_items=num_items)
    if not times:
        return negative, None, None, empty
    values, offsets = split_rows.gather(users, "ts.npy")
    if not np.array_equal(offsets, batch.history_offsets.numpy()):
        raise ValueError(f"{split}: the stored timestamps do not line up with the histories")
    # The layout of collate_eval: row b holds its last lengths[b] history items, left-aligned.
    lengths = batch.lengths.numpy()
    col = np.arange(batch.history.shape[1])
    src = (offsets[1:] - lengths)[:, None] + col
    positive_times = hold_last(np.where(col < lengths[:, None], values[np.minimum(src, max(len(values) - 1, 0))], 0),
                               lengths)
    if negative_times is None:
        negative_times = spread_times(positive_times, lengths, length)
    return negative, torch.from_numpy(positive_times), torch.from_numpy(negative_times), empty
