"""Training and evaluation batches, and the pure functions that build them.

``docs/DESIGN.md`` ("Training batches") is the contract. Everything here runs in loader workers:
plain numpy/torch on CPU, vectorised over the whole batch (no per-item Python loops), and
deterministic given the inputs and the ``torch.Generator`` passed in.

Invariants every ``SequenceBatch`` built here keeps (the losses rely on them):

* ``unique_items`` is sorted and ``unique_items[0] == 0``, the padding id, whether or not the batch
  has padding; so the real candidates of a step are always ``unique_items[1:]``.
* ``inverse`` maps every position of ``items`` to its slot in ``unique_items``
  (``unique_items[inverse] == items``); padding points at slot 0.
* With ``all_items=True`` (full softmax) ``unique_items == arange(N + 1)``, so ``inverse == items``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "TensorBatch", "SequenceBatch", "EvalBatch", "training_windows", "collate_train", "dummy_batch",
    "collate_eval", "negative_sampling_probs",
]


def _move(value: Any, fn) -> Any:
    return fn(value) if isinstance(value, Tensor) else value


class TensorBatch:
    """What every training batch (a dataclass of tensors) can do: move, pin, be marked as used by a stream.

    Fields named in ``kept`` (cursors, provenance) are shared by the copies, never moved.
    """

    kept: ClassVar[tuple[str, ...]] = ("cursor", "provenance")

    def to(self, device: torch.device | str, non_blocking: bool = False):
        """Return a copy with every tensor moved to ``device``.

        Args:
            device: Target device.
            non_blocking: Passed to ``Tensor.to`` (asynchronous copies from pinned memory).

        Returns:
            A new batch of the same type; ``kept`` fields are shared, not copied.
        """
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self):
        """Return a copy whose tensors live in page-locked memory (DataLoader ``pin_memory``)."""
        return self._map(lambda t: t.pin_memory())

    def record_stream(self, stream: torch.Stream) -> None:
        """Mark every tensor as in use by ``stream`` (CUDA caching allocator; TorchRec's train pipeline calls it).

        Args:
            stream: The CUDA stream that will read the tensors.
        """
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                value.record_stream(stream)

    def _map(self, fn):
        return dataclasses.replace(self, **{f.name: _move(getattr(self, f.name), fn)
                                            for f in dataclasses.fields(self) if f.name not in self.kept})


@dataclass
class SequenceBatch(TensorBatch):
    """One training step's sequences (see ``docs/DESIGN.md``, "Training batches").

    Attributes:
        items: ``LongTensor[B, L+1]`` right-padded dense item ids (0 = pad); inputs are
            ``items[:, :-1]``, targets ``items[:, 1:]``.
        lengths: ``LongTensor[B]`` real items per row (>= 2 for real rows, 0 for a dummy row).
        users: ``LongTensor[B]`` dense user ids (0 for a dummy row).
        unique_items: ``LongTensor[U]`` sorted unique ids the step needs, ``unique_items[0] == 0``.
        inverse: ``LongTensor[B, L+1]`` slot of each position of ``items`` in ``unique_items``.
        negatives: ``LongTensor[K]`` slots in ``unique_items`` of the sampled negatives, shared by
            every row (may repeat: sampling is with replacement); empty without sampling.
        content: content of the unique items that have it, in ``unique_items`` order
            (``[U_c, ...]``: ``uint8 [U_c, F, S, S, 3]`` frames or float trunk features), or None.
            Each unique item is loaded and encoded once, however often it occurs in the batch.
        content_mask: ``BoolTensor[U]`` which of ``unique_items`` have content (``U_c`` = its sum);
            items without (padding, videos missing at ingestion) get no placeholder rows. None
            with ``content`` set means every unique item has content.
        cursor: opaque position of the batch's end in its consumer's stream, set by the caller.
        provenance: ``int64 [B, 2]`` (global sample index, window index) of each row, set by the
            loader; audits of exactly-once delivery read it. None for dummy batches.
    """

    items: Tensor
    lengths: Tensor
    users: Tensor
    unique_items: Tensor
    inverse: Tensor
    negatives: Tensor
    content: Tensor | None = None
    content_mask: Tensor | None = None
    cursor: Any = None
    provenance: np.ndarray | None = None

    @property
    def max_seq_len(self) -> int:
        """L: history positions the user encoder sees (``items`` has L+1 columns)."""
        return self.items.shape[1] - 1


@dataclass
class EvalBatch:
    """Users to score against every item (leave-one-out evaluation).

    Attributes:
        history: ``LongTensor[B, L]`` the last L history items, right-padded with 0.
        lengths: ``LongTensor[B]`` real items in ``history`` (1..L).
        targets: ``LongTensor[B]`` the held-out item of each user.
        users: ``LongTensor[B]`` dense user ids.
        history_values: ``LongTensor[H]`` every user's full history, concatenated (jagged values).
        history_offsets: ``LongTensor[B+1]`` user ``b``'s full history is
            ``history_values[history_offsets[b]:history_offsets[b+1]]``.
    """

    history: Tensor
    lengths: Tensor
    targets: Tensor
    users: Tensor
    history_values: Tensor
    history_offsets: Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "EvalBatch":
        """Return a copy with every tensor moved to ``device`` (see ``SequenceBatch.to``)."""
        return dataclasses.replace(self, **{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
                                            for f in dataclasses.fields(self)})

    def pin_memory(self) -> "EvalBatch":
        """Return a copy whose tensors live in page-locked memory."""
        return dataclasses.replace(self, **{f.name: getattr(self, f.name).pin_memory()
                                            for f in dataclasses.fields(self)})


def training_windows(seq: np.ndarray, max_seq_len: int, mode: Literal["all", "last"]) -> list[np.ndarray]:
    """Cut one user's training sequence into windows of at most L+1 items.

    With ``mode='all'`` every item except the first is a target exactly once: window ``k`` ends at
    ``n - k*L`` and starts ``L+1`` items earlier (clipped at 0), so consecutive windows overlap by one
    item, the input that precedes the next window's first target. ``mode='last'`` keeps only the
    newest window (MicroLens VideoRec trains on the last ``L+1`` items of each user).

    Args:
        seq: ``[n]`` integer item ids in time order.
        max_seq_len: L, the history length the user encoder sees.
        mode: ``'all'`` or ``'last'``.

    Returns:
        Views of ``seq``, newest window first, each of length 2..L+1. A sequence of fewer than two
        items has no target and gives no window.
    """
    seq = np.asarray(seq)
    if seq.ndim != 1 or not np.issubdtype(seq.dtype, np.integer):
        raise ValueError(f"training_windows: seq must be a 1-D integer array, got shape {seq.shape} "
                         f"dtype {seq.dtype}")
    if max_seq_len < 1:
        raise ValueError(f"training_windows: max_seq_len must be >= 1, got {max_seq_len}")
    if mode not in ("all", "last"):
        raise ValueError(f"training_windows: mode must be 'all' or 'last', got {mode!r}")
    n = len(seq)
    ends = range(n, 1, -max_seq_len) if mode == "all" else ([n] if n >= 2 else [])
    return [seq[max(0, end - max_seq_len - 1):end] for end in ends]


def negative_sampling_probs(sampler: Literal["uniform", "popularity"], item_train_counts: np.ndarray | Tensor
                            ) -> np.ndarray:
    """The distribution sampled-softmax negatives are drawn from, shared by collation and the loss.

    Args:
        sampler: ``'uniform'`` over ids 1..N, or ``'popularity'`` proportional to train counts.
        item_train_counts: ``[N+1]`` interactions per item in the train split (entry 0 ignored).

    Returns:
        ``float64 [N+1]`` probabilities summing to 1, entry 0 (padding) = 0.
    """
    counts = np.asarray(item_train_counts, dtype=np.float64)
    if counts.ndim != 1 or len(counts) < 2:
        raise ValueError(f"item_train_counts must be a 1-D array [N+1] with N >= 1, got shape {counts.shape}")
    if (counts < 0).any():
        raise ValueError("item_train_counts has negative entries")
    if sampler == "uniform":
        weights = np.ones_like(counts)
    elif sampler == "popularity":
        weights = counts.copy()
    else:
        raise ValueError(f"sampler must be 'uniform' or 'popularity', got {sampler!r}")
    weights[0] = 0.0
    total = weights.sum()
    if total <= 0:
        raise ValueError("popularity sampler: every item has a train count of 0")
    return weights / total


def _pad_rows(rows: Sequence[np.ndarray], width: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad 1-D integer arrays into ``int64 [B, width]``; returns (padded, lengths)."""
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    if (lengths > width).any():
        b = int(np.argmax(lengths > width))
        raise ValueError(f"{what} {b} has {lengths[b]} items, more than the {width} allowed")
    flat = np.concatenate(rows) if len(rows) else np.zeros(0, np.int64)
    if not np.issubdtype(flat.dtype, np.integer):
        raise ValueError(f"{what}s must hold integer item ids, got dtype {flat.dtype}")
    flat = flat.astype(np.int64, copy=False)
    row = np.repeat(np.arange(len(rows)), lengths)
    col = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out = np.zeros((len(rows), width), dtype=np.int64)
    out[row, col] = flat
    return out, lengths


def _check_ids(ids: np.ndarray, num_items: int, what: str) -> None:
    if ids.size and (ids.min() < 1 or ids.max() > num_items):
        bad = ids[(ids < 1) | (ids > num_items)][0]
        raise ValueError(f"{what}: item id {bad} is outside 1..{num_items} (0 is padding and may not "
                         "appear inside a sequence)")


def collate_train(windows: Sequence[np.ndarray], users: Sequence[int] | np.ndarray, *, max_seq_len: int,
                  num_items: int, negatives: int = 0, sampler_probs: np.ndarray | None = None,
                  generator: torch.Generator | None = None, all_items: bool = False) -> SequenceBatch:
    """Pad training windows into a ``SequenceBatch``, dedupe its items, sample shared negatives.

    Args:
        windows: B windows (``training_windows`` output), each 2..L+1 item ids in 1..N.
        users: B dense user ids, one per window.
        max_seq_len: L.
        num_items: N, the largest item id.
        negatives: K negatives to sample for the sampled softmax (0: none).
        sampler_probs: ``[N+1]`` negative distribution (``negative_sampling_probs``); None samples
            uniformly from 1..N.
        generator: Source of randomness for the negatives (deterministic resume).
        all_items: Full softmax: ``unique_items`` becomes every id 0..N so that each step looks up
            (and updates) every item.

    Returns:
        The batch, on CPU, ``cursor`` None (the caller sets it).
    """
    if len(windows) == 0:
        raise ValueError("collate_train: no windows (use dummy_batch for a rank with nothing left)")
    users_arr = np.asarray(users, dtype=np.int64)
    if users_arr.shape != (len(windows),):
        raise ValueError(f"collate_train: {len(windows)} windows but users has shape {users_arr.shape}")
    items_np, lengths_np = _pad_rows(windows, max_seq_len + 1, "window")
    if (lengths_np < 2).any():
        b = int(np.argmax(lengths_np < 2))
        raise ValueError(f"collate_train: window {b} has {lengths_np[b]} item(s); a training window "
                         "needs at least 2 (one input, one target)")
    _check_ids(items_np[np.arange(items_np.shape[1]) < lengths_np[:, None]], num_items, "collate_train")
    items = torch.from_numpy(items_np)
    neg_ids = _sample_negatives(negatives, num_items, sampler_probs, generator)
    if all_items:
        unique_items = torch.arange(num_items + 1)
        inverse, neg_slots = items, neg_ids
    else:
        pool = torch.cat([torch.zeros(1, dtype=torch.long), items.reshape(-1), neg_ids])
        unique_items, pool_inverse = torch.unique(pool, sorted=True, return_inverse=True)
        inverse = pool_inverse[1:1 + items.numel()].reshape(items.shape)
        neg_slots = pool_inverse[1 + items.numel():]
    return SequenceBatch(items=items, lengths=torch.from_numpy(lengths_np), users=torch.from_numpy(users_arr),
                         unique_items=unique_items, inverse=inverse, negatives=neg_slots)


def _sample_negatives(k: int, num_items: int, probs: np.ndarray | None,
                      generator: torch.Generator | None) -> Tensor:
    if k < 0:
        raise ValueError(f"negatives must be >= 0, got {k}")
    if k == 0:
        return torch.zeros(0, dtype=torch.long)
    if probs is None:
        return torch.randint(1, num_items + 1, (k,), generator=generator)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape != (num_items + 1,) or probs[0] != 0 or (probs < 0).any() or probs.sum() <= 0:
        raise ValueError(f"sampler_probs must be [N+1] = [{num_items + 1}] non-negative with entry 0 = 0 "
                         f"and a positive sum, got shape {probs.shape}")
    return torch.multinomial(torch.from_numpy(probs), k, replacement=True, generator=generator)


def dummy_batch(max_seq_len: int, *, num_items: int | None = None, all_items: bool = False) -> SequenceBatch:
    """A one-row batch with ``lengths == 0``: zero targets, zero loss, zero gradients.

    A rank whose share of an uneven epoch is used up steps on this so collectives stay in step.

    Args:
        max_seq_len: L.
        num_items: N; needed with ``all_items``.
        all_items: Full softmax layout (``unique_items == arange(N + 1)``).

    Returns:
        The batch, on CPU.
    """
    if all_items and num_items is None:
        raise ValueError("dummy_batch: all_items=True needs num_items")
    items = torch.zeros(1, max_seq_len + 1, dtype=torch.long)
    unique_items = torch.arange(num_items + 1) if all_items else torch.zeros(1, dtype=torch.long)
    return SequenceBatch(items=items, lengths=torch.zeros(1, dtype=torch.long),
                         users=torch.zeros(1, dtype=torch.long), unique_items=unique_items,
                         inverse=items.clone(), negatives=torch.zeros(0, dtype=torch.long))


def collate_eval(histories: Sequence[np.ndarray], targets: Sequence[int] | np.ndarray,
                 users: Sequence[int] | np.ndarray, *, max_seq_len: int) -> EvalBatch:
    """Build an ``EvalBatch``: the last L history items for the encoder, the full history for exclusion.

    Args:
        histories: B non-empty 1-D integer arrays, each user's history in time order.
        targets: B held-out item ids.
        users: B dense user ids.
        max_seq_len: L.

    Returns:
        The batch, on CPU.
    """
    b = len(histories)
    targets_arr = np.asarray(targets, dtype=np.int64).reshape(-1)
    users_arr = np.asarray(users, dtype=np.int64).reshape(-1)
    if targets_arr.shape != (b,) or users_arr.shape != (b,):
        raise ValueError(f"collate_eval: {b} histories but targets has {targets_arr.size} and users "
                         f"{users_arr.size} entries")
    full_lengths = np.fromiter((len(h) for h in histories), dtype=np.int64, count=b)
    if (full_lengths == 0).any():
        raise ValueError(f"collate_eval: user {users_arr[np.argmax(full_lengths == 0)]} has an empty history")
    values = np.concatenate(histories) if b else np.zeros(0, np.int64)
    if not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"collate_eval: histories must hold integer item ids, got dtype {values.dtype}")
    values = values.astype(np.int64, copy=False)
    if (values <= 0).any() or (targets_arr <= 0).any():
        raise ValueError("collate_eval: histories and targets must hold item ids >= 1 (0 is padding)")
    offsets = np.zeros(b + 1, dtype=np.int64)
    np.cumsum(full_lengths, out=offsets[1:])
    lengths = np.minimum(full_lengths, max_seq_len)
    # The last `lengths[b]` items of user b, left-aligned: flat index of history[b, j] in `values`.
    col = np.arange(max_seq_len)
    src = (offsets[1:] - lengths)[:, None] + col
    history = np.where(col < lengths[:, None], values[np.minimum(src, max(len(values) - 1, 0))], 0)
    return EvalBatch(history=torch.from_numpy(history), lengths=torch.from_numpy(lengths),
                     targets=torch.from_numpy(targets_arr), users=torch.from_numpy(users_arr),
                     history_values=torch.from_numpy(values), history_offsets=torch.from_numpy(offsets))
