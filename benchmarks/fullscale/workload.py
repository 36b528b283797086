"""What one training step of the full MicroLens looks like, from the full-shaped synthetic data.

Parts of the synthetic generator configured with the full release's totals (the same parts the
ingestion benchmark writes) are turned into training windows exactly as the loader does
(leave-one-out split, ``training_windows``), shuffled, and collated with ``collate_train`` into
per-rank batches with the preset's sampled-softmax negatives. Measured per step: sequences,
target positions, unique ids looked up (what the all-to-all carries), and how those ids fall on
the row-wise shards of W ranks. Epoch sizes come from the generator's length distribution
(expected windows and targets per user), checked against the simulated parts.
"""

from __future__ import annotations

import io
import math
import time

import numpy as np

__all__ = ["step_workload", "epoch_size"]


def _train_sequences(csv: bytes) -> list[np.ndarray]:
    """Per-user item sequences in time order, without the last two (valid and test targets)."""
    import pyarrow.csv as pcsv

    t = pcsv.read_csv(io.BytesIO(csv))
    user, item, ts = (t.column(c).to_numpy() for c in ("user", "item", "timestamp"))
    order = np.lexsort((ts, user))
    user, item = user[order], item[order]
    starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
    ends = np.r_[starts[1:], len(user)]
    return [item[a:b - 2] for a, b in zip(starts, ends) if b - a >= 5]


def step_workload(*, users: int, items: int, interactions: int, chunk_users: int, parts: int, batch: int,
                  max_seq_len: int, negatives: int, sampler: str, world_sizes: list[int], seed: int = 0,
                  max_steps: int = 40, sample_batch: int = 64) -> tuple[dict, object]:
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

    Returns:
        ``(summary, sample batch)``; the summary holds means per step: ``sequences``, ``targets``,
        ``unique_ids`` (incl. negatives and the pad id), ``unique_batch_ids``, ``collate_us_per_sequence``
        (``collate_train`` with the negatives, one thread of this machine);
        ``shard_load_max_over_mean`` per W; ``windows_per_user`` and ``targets_per_user`` of the drawn users.
    """
    import torch

    from mvrec_dist.config import SyntheticConfig
    from mvrec_dist.data.batch import collate_train, negative_sampling_probs, training_windows
    from mvrec_dist.data.synthetic import generate_part

    cfg = SyntheticConfig(enabled=True, users=users, items=items, interactions=interactions, seed=seed,
                          chunk_users=chunk_users)
    seqs = [s for p in range(parts) for s in _train_sequences(generate_part(cfg, p))]
    windows = [w for s in seqs for w in training_windows(s, max_seq_len, "all")]
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
            shard = (ids * w) // (items + 1)  # row-wise: contiguous blocks of ids per rank
            per = np.bincount(shard, minlength=w)
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
