"""What one training step of the full MicroLens looks like, from the full-shaped synthetic data.

Parts of the synthetic generator configured with the full release's totals (the same parts the
ingestion benchmark writes) are turned into training windows exactly as the loader does
(leave-one-out split, ``training_windows``), shuffled, and collated with ``collate_train`` into
per-rank batches with the preset's sampled-softmax negatives. Measured per step: sequences,
target positions, unique ids looked up (what the all-to-all carries), and how those ids fall on
the row-wise shards of W ranks. Epoch sizes come from the generator's length distribution
(expected windows and targets per user), checked against the simulated parts. ``mtin_step_workload``
collates the same windows with MTIN's collate instead (items and per-user memory rows per step).
"""

from __future__ import annotations

import io
import math
import time
from typing import Callable, NamedTuple

import numpy as np

__all__ = ["Drawn", "draw_windows", "step_workload", "mtin_step_workload", "epoch_size"]


def _train_sequences(csv: bytes) -> tuple[list[np.ndarray], list[int]]:
    """Per-user item sequences in time order, without the last two (valid and test targets), and their users."""
    import pyarrow.csv as pcsv

    t = pcsv.read_csv(io.BytesIO(csv))
    user, item, ts = (t.column(c).to_numpy() for c in ("user", "item", "timestamp"))
    order = np.lexsort((ts, user))
    user, item = user[order], item[order]
    starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
    ends = np.r_[starts[1:], len(user)]
    keep = [(a, b) for a, b in zip(starts, ends) if b - a >= 5]
    return [item[a:b - 2] for a, b in keep], [int(user[a]) for a, _ in keep]


class Drawn(NamedTuple):
    """Training windows of the first generator parts, as the loader cuts them."""

    seqs: list
    """Per drawn user, the train sequence."""
    users: list
    """Per drawn user, the generator's user id (parts hold users ``1..parts * chunk_users``)."""
    windows: list
    """Every training window (``training_windows``, mode ``all``)."""
    owner: np.ndarray
    """``[windows]`` index of each window's user in ``seqs``."""
    window_index: np.ndarray
    """``[windows]`` index of each window within its user's windows."""


def draw_windows(*, users: int, items: int, interactions: int, chunk_users: int, parts: int, max_seq_len: int,
                 seed: int = 0) -> Drawn:
    """The training windows of the first ``parts`` parts of the generator configured with the given totals.

    Args:
        users: Generator totals (the full release).
        items: N.
        interactions: Total interactions.
        chunk_users: Users per part.
        parts: Parts to draw windows from.
        max_seq_len: L.
        seed: Generator seed.
    """
    from mvrec_dist.config import SyntheticConfig
    from mvrec_dist.data.batch import training_windows
    from mvrec_dist.data.synthetic import generate_part

    cfg = SyntheticConfig(enabled=True, users=users, items=items, interactions=interactions, seed=seed,
                          chunk_users=chunk_users)
    seqs, owners = [], []
    for p in range(parts):
        s, u = _train_sequences(generate_part(cfg, p))
        seqs += s
        owners += u
    per_user = [training_windows(s, max_seq_len, "all") for s in seqs]
    counts = np.array([len(w) for w in per_user], dtype=np.int64)
    owner = np.repeat(np.arange(len(seqs)), counts)
    window_index = np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts)
    return Drawn(seqs, owners, [w for ws in per_user for w in ws], owner, window_index)


def _shard_load(ids: np.ndarray, rows: int, world: int) -> np.ndarray:
    """Ids per rank when a table of ``rows`` rows is sharded row-wise in contiguous blocks over ``world`` ranks."""
    return np.bincount((ids * world) // rows, minlength=world)


def step_workload(*, users: int, items: int, interactions: int, chunk_users: int, parts: int, batch: int,
                  max_seq_len: int, negatives: int, sampler: str, world_sizes: list[int], seed: int = 0,
                  max_steps: int = 40, sample_batch: int = 64, drawn: Drawn | None = None) -> tuple[dict, object]:
    """Unique ids and shard balance of per-rank steps drawn from the first ``parts`` generator parts.

    Args:
        users: Generator totals (the full release).
        items: N.
        interactions: Total interactions.
        chunk_users: Users per part.
        parts: Parts to draw windows from.
        batch: Sequences per rank per step.
        max_seq_len: L.
        negatives: Sampled-softmax negatives per rank per step (0: none).
        sampler: ``uniform`` or ``popularity`` (train counts of the drawn parts).
        world_sizes: W values for the row-wise shard balance.
        seed: Generator seed.
        max_steps: Steps to collate at most.
        sample_batch: Size of an extra batch of the same windows, returned for FLOP counting.
        drawn: The windows, when already drawn (``draw_windows`` with the same totals); else drawn here.

    Returns:
        ``(summary, sample batch)``; the summary holds means per step: ``sequences``, ``targets``,
        ``unique_ids`` (incl. negatives and the pad id), ``unique_batch_ids``, ``collate_us_per_sequence``
        (``collate_train`` with the negatives, one thread of this machine);
        ``shard_load_max_over_mean`` per W; ``windows_per_user`` and ``targets_per_user`` of the drawn users.
    """
    import torch

    from mvrec_dist.data.batch import collate_train, negative_sampling_probs

    if drawn is None:
        drawn = draw_windows(users=users, items=items, interactions=interactions, chunk_users=chunk_users,
                             parts=parts, max_seq_len=max_seq_len, seed=seed)
    seqs, windows = drawn.seqs, drawn.windows
    counts = np.bincount(np.concatenate(seqs), minlength=items + 1).astype(np.int64)
    counts[0] = 0
    probs = negative_sampling_probs(sampler, counts) if negatives else None
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(windows))
    gen = torch.Generator().manual_seed(seed)
    steps = min(max_steps, len(windows) // batch)
    if steps < 1:
        raise ValueError(f"{len(windows)} windows do not fill one batch of {batch}; draw more parts")
    uniq, uniq_batch, targets, load = [], [], [], {w: [] for w in world_sizes}
    collate_s = 0.0
    for s in range(steps):
        rows = [windows[i] for i in order[s * batch:(s + 1) * batch]]
        t = time.perf_counter()
        b = collate_train(rows, np.zeros(len(rows), dtype=np.int64), max_seq_len=max_seq_len, num_items=items,
                          negatives=negatives, sampler_probs=probs, generator=gen)
        collate_s += time.perf_counter() - t
        ids = b.unique_items.numpy()
        uniq.append(len(ids))
        uniq_batch.append(len(np.unique(b.items.numpy())))
        targets.append(int((b.lengths - 1).sum()))
        for w in world_sizes:
            per = _shard_load(ids, items + 1, w)
            load[w].append(per.max() / per.mean())
    sample = collate_train([windows[i] for i in order[:sample_batch]], np.zeros(sample_batch, dtype=np.int64),
                           max_seq_len=max_seq_len, num_items=items, negatives=negatives, sampler_probs=probs,
                           generator=gen)
    return {"steps": steps, "sequences": batch, "targets": float(np.mean(targets)), "unique_ids": float(np.mean(uniq)),
            "unique_batch_ids": float(np.mean(uniq_batch)),
            "collate_us_per_sequence": 1e6 * collate_s / (steps * batch),
            "shard_load_max_over_mean": {str(w): float(np.mean(v)) for w, v in load.items()},
            "drawn_users": len(seqs), "windows_per_user": len(windows) / len(seqs),
            "targets_per_user": float(np.mean([len(s) - 1 for s in seqs]))}, sample


def mtin_step_workload(drawn: Drawn, *, users: int, items: int, batch: int, collate: Callable,
                       memory_rows: Callable, memory_table_rows: int, world_sizes: list[int], seed: int = 0,
                       max_steps: int = 40, sample_batch: int = 64) -> tuple[dict, object]:
    """Per-rank MTIN steps of the drawn windows: item ids, memory rows and how both fall on row-wise shards.

    One example per window, collated by MTIN's own collate. The drawn users get distinct dense ids
    spread uniformly over ``1..users``: the parts hold only the generator's first users, and a dense
    id (ingestion order) says nothing about a user's activity, so their memory rows then land on the
    row-wise shards as a full run's would.

    Args:
        drawn: The windows (``draw_windows``).
        users: Users of the full release (dense ids ``1..users``).
        items: N.
        batch: Examples per rank per step.
        collate: ``MTINCollate``: ``(windows, users, sequences, provenance, epoch) -> MTINBatch``.
        memory_rows: ``LongTensor`` of dense user ids -> their memory-table rows (``memory_row_ids``).
        memory_table_rows: Rows of the memory table.
        world_sizes: W values for the shard balance.
        seed: Seed of the dense ids and the order.
        max_steps: Steps to collate at most.
        sample_batch: Size of an extra batch, returned for FLOP counting.

    Returns:
        ``(summary, sample batch)``; the summary holds means per step: ``examples``, ``unique_items``
        (incl. the pad id), ``memory_rows`` (looked up and written back, one set per example: a user in
        two windows is looked up twice), ``distinct_users``, ``collate_us_per_example`` (one thread of this
        machine); per W the max / mean over ranks of the ids each rank serves: ``shard_load_max_over_mean``
        (both tables; they share one all-to-all), ``item_shard_load`` and ``memory_shard_load``.
    """
    rng = np.random.default_rng(seed)
    dense = rng.choice(users, size=len(drawn.seqs), replace=False) + 1
    order = rng.permutation(len(drawn.windows))
    steps = min(max_steps, len(order) // batch)
    if steps < 1:
        raise ValueError(f"{len(order)} windows do not fill one batch of {batch}; draw more parts")

    def collated(rows: np.ndarray):
        owner = drawn.owner[rows]
        provenance = np.stack([owner, drawn.window_index[rows]], 1).astype(np.int64)
        return collate([drawn.windows[i] for i in rows], dense[owner], [drawn.seqs[o] for o in owner],
                       provenance, 0)

    stats: dict[str, list] = {k: [] for k in ("unique_items", "memory_rows", "distinct_users")}
    load = {k: {w: [] for w in world_sizes} for k in ("all", "item", "memory")}
    collate_s = 0.0
    for s in range(steps):
        t = time.perf_counter()
        b = collated(order[s * batch:(s + 1) * batch])
        collate_s += time.perf_counter() - t
        item_ids, mem_ids = b.unique_items.numpy(), memory_rows(b.users).numpy()
        stats["unique_items"].append(len(item_ids))
        stats["memory_rows"].append(len(mem_ids))
        stats["distinct_users"].append(len(np.unique(b.users.numpy())))
        for w in world_sizes:
            per_item, per_mem = _shard_load(item_ids, items + 1, w), _shard_load(mem_ids, memory_table_rows, w)
            for key, per in (("all", per_item + per_mem), ("item", per_item), ("memory", per_mem)):
                load[key][w].append(per.max() / per.mean())
    out = {"steps": steps, "examples": batch, **{k: float(np.mean(v)) for k, v in stats.items()},
           "collate_us_per_example": 1e6 * collate_s / (steps * batch), "dense_user_ids": "uniform over 1..users"}
    for key, name in (("all", "shard_load_max_over_mean"), ("item", "item_shard_load"), ("memory", "memory_shard_load")):
        out[name] = {str(w): float(np.mean(v)) for w, v in load[key].items()}
    return out, collated(order[:sample_batch])


def epoch_size(*, users: int, items: int, interactions: int, max_seq_len: int) -> dict:
    """Expected training windows and targets of one epoch under the generator's length distribution.

    A user with n interactions keeps ``t = n - 2`` for training (leave-one-out), which gives
    ``ceil((t - 1) / L)`` windows and ``t - 1`` targets (``mvrec_dist.data.batch.training_windows``).

    Returns:
        ``windows``, ``targets`` and ``train_interactions`` of the epoch, and per-user means.
    """
    from mvrec_dist.data.synthetic import MIN_LEN, length_distribution

    p = length_distribution(interactions / users, items // 2)
    n = MIN_LEN + np.arange(len(p), dtype=np.float64)
    t = n - 2
    windows = float(np.dot(p, np.ceil((t - 1) / max_seq_len)))
    targets = float(np.dot(p, t - 1))
    return {"windows": users * windows, "targets": users * targets, "windows_per_user": windows,
            "targets_per_user": targets, "train_interactions": interactions - 2 * users,
            "mean_interactions_per_user": interactions / users, "max_len": int(n[-1]),
            "sum_check": math.isclose(float(np.dot(p, n)), interactions / users, rel_tol=1e-3)}
