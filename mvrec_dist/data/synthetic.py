"""MicroLens-shaped synthetic interactions (``user,item,timestamp`` csv parts) at any scale.

Shape, fitted to the real MicroLens-50K file (``fit_sequence_lengths`` / ``fit_popularity`` below
reproduce the constants; ``tests/data/test_synthetic.py`` refits them from ``../shared``):

* sequence length ``n = 5 + floor(X)``, ``X ~ Lomax(alpha, scale)`` (a shifted power law; 50K:
  alpha 2.915, scale 5.068, mean n 7.19, max 218). For another mean interactions-per-user the
  scale is solved for that mean and the cap grows with it; the tail exponent stays.
* item popularity by rank ``r``: Zipf-Mandelbrot with a boosted head,
  ``p(r) ~ (r + q)^-s * (1 + a * exp(-r / h))``, ``q = 1.28 N``, ``s = 6``, ``a = 2.26``,
  ``h = 0.0058 N``, over a seeded permutation of item ids. The plain power law (``a = 0``; MLE
  ``s = 3.0``, ``q = 0.44 N``) fits the body but gives the top 100 items half their real traffic
  (mean 94 vs 180 interactions); with the head term it is 181. The likelihood keeps rising slowly
  along a ridge ``s, q -> inf`` (an exponential body) by under 0.001 nats per interaction beyond
  ``s = 6``; the fit caps ``s`` there so the family stays a power law.
* no item repeats within a user (as in MicroLens), strictly increasing timestamps per user (ms).

Learnable structure (``structure = p > 0``; 0, the default, is exactly the generator above, byte for
byte, so the benchmarks' inputs stay what they were measured on). With popularity and length alone a
sequential model has nothing to learn beyond popularity (the demo's SASRec reached test HR@10 0.014,
the popularity baseline 0.022), so a newcomer cannot tell a working recommender from a broken one. Items are split at
random (seeded, shared by all parts) into latent clusters of ``cluster_size``; every interaction has a
cluster, a Markov chain per user: the first one, and any other with probability ``1 - p``, draws a
cluster by its popularity mass, the rest keep the previous one (visits of about ``1 / (1 - p)`` items,
the "sessions of one interest" a sequence model picks up from the last items). The item is then
drawn by popularity within its cluster. Why these choices:

* The item marginal stays the fitted law exactly: the chain's stationary distribution is the cluster
  mass it draws from, so every position's cluster has that law, and popularity within it gives
  ``P(item) = mass(c) * p(item) / mass(c) = p(item)``. Lengths are drawn first, unchanged.
* Repeats within a user are resolved by swapping the repeated item with a random position of the same
  cluster (``_swap_repeats``): counts and clusters are kept. Redrawing instead moves mass from each
  cluster's head to its tail (a visit keeps hitting its cluster's top items): at ``p = 0.5`` and 25
  items per cluster the top 10 items lost 19% of their interactions. Repeats left when a user's visit
  outlasts its cluster fall back to the redraw (rare for the cluster sizes used).
* Random clusters mix head and tail items, so every cluster has a popular core, like a topic; with
  25 items a cluster's top 10 hold 78% of its mass on the demo (66-87%), so a model that recognises
  the cluster from the last items ranks the next one in its top 10 often.

Measured on the 50K-sized synthetic set at ``p = 0.3`` (the demo's), against MicroLens-50K: share of
5-item users 0.406 (real 0.407), median length 6 (6), top-100 items' mean interactions 184 (180;
unstructured 180), refitted popularity ``(s, q/N, a, h/N) = (6.0, 1.229, 2.19, 0.0057)`` (constants
above: 6.0, 1.281, 2.257, 0.0058; unstructured: 6.0, 1.225, 2.07, 0.0059); consecutive items share
a cluster 30.2% of the time (0.3 + 0.7 * sum of squared cluster masses). On the demo (20,000 users,
5,000 items) a 3-epoch SASRec reaches test HR@10 0.21 against the popularity baseline's 0.022
(``mvrec_dist.eval.baselines``); on MicroLens-50K it is 0.0725 against 0.0024.

Exposures (``exposures = r > 0``, needs ``structure > 0``; 0 leaves the csv byte for byte as above): each
user also gets about ``r`` label-0 rows (shown, not clicked) per interaction, and the csv a ``label``
column (``user,item,timestamp,label``, the interactions labelled 1). An exposure's cluster is drawn by
popularity mass among the clusters none of the user's interactions is in, its item by popularity within
it, so what a user is shown but skips is learnable: other interests than the ones they click (MTIN's
negative branch, ``task.negatives: exposures``). Each exposure is shown shortly before one of the user's
interactions (a uniform time in the gap before it), no item twice to a user. Exposures use their own
random stream: the interactions are exactly those of ``exposures = 0``.

Play times (``plays``; 0 exposures): every interaction also gets a playing time and the item's duration in
milliseconds, drawn clip by clip from latent user tastes for clip topics (``synthetic_plays``), and the csv is
FRAME's ``user,item,playing_time,duration,timestamp`` (``plays_csv``); the interactions are those without.

Users are generated ``chunk_users`` at a time into ``part-%05d.csv`` files by parallel Ray tasks
(or in-process without Ray); each part depends only on ``(seed, part)`` and the global totals, so
the same config gives byte-identical files and no process holds more than one part. Totals are
exact: part ``p`` gets ``floor(T*hi/U) - floor(T*lo/U)`` of the ``T`` interactions.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv

from mvrec_dist.config.ingest import SyntheticConfig
from mvrec_dist.data import fs as dfs
from mvrec_dist.data import synthetic_plays

__all__ = ["SEQ_ALPHA", "SEQ_SCALE", "POP_EXPONENT", "POP_OFFSET_FRACTION", "POP_HEAD_BOOST",
           "POP_HEAD_FRACTION", "MIN_LEN", "fit_sequence_lengths",
           "fit_popularity", "length_distribution", "popularity", "item_clusters", "generate_part", "generate",
           "generated_bytes", "part_path"]

# Fitted to MicroLens-50K by maximum likelihood (fit_* below, grid search); see the module doc.
SEQ_ALPHA = 2.915
SEQ_SCALE = 5.068
POP_EXPONENT = 6.0
POP_OFFSET_FRACTION = 1.281
POP_HEAD_BOOST = 2.257
POP_HEAD_FRACTION = 0.00582
MIN_LEN = 5
MAX_LEN_50K = 218
_TS_START_MS = 1_559_347_200_000  # 2019-06-01, MicroLens' collection period
_TS_SPAN_MS = 2 * 365 * 86_400_000
_GAP_MEAN_MS = 6 * 3_600_000
_CSV_HEADER = b"user,item,timestamp\n"
_LABELED_CSV_HEADER = b"user,item,timestamp,label\n"
_PLAYS_CSV_HEADER = b"user,item,playing_time,duration,timestamp\n"
_EXPOSURE_ROUNDS = 16
"""Redraws of an exposure that lands in a followed cluster or repeats an item; what is left is dropped."""


def _grid_max(f, a: tuple[float, float], b: tuple[float, float], *, log_a: bool = False, log_b: bool = False,
              rounds: int = 10, points: int = 21) -> tuple[float, float]:
    """Maximise ``f(a, b)`` by repeatedly refined grids (no scipy in the stack).

    Each round keeps two grid steps either side of the best point: the likelihoods here have
    long, narrow ridges (shape and scale trade off), on which a tighter window stalls.
    """
    (a0, a1), (b0, b1) = a, b
    for _ in range(rounds):
        xs = np.geomspace(a0, a1, points) if log_a else np.linspace(a0, a1, points)
        ys = np.geomspace(b0, b1, points) if log_b else np.linspace(b0, b1, points)
        _, i, j = max((f(x, y), i, j) for i, x in enumerate(xs) for j, y in enumerate(ys))
        a0, a1 = xs[max(i - 2, 0)], xs[min(i + 2, points - 1)]
        b0, b1 = ys[max(j - 2, 0)], ys[min(j + 2, points - 1)]
    return float(xs[i]), float(ys[j])


def fit_sequence_lengths(lengths: np.ndarray) -> tuple[float, float]:
    """Fit ``n - 5 = floor(X)``, ``X ~ Lomax(alpha, scale)``, by maximum likelihood.

    Args:
        lengths: Interactions per user, int [U] (all >= 5).

    Returns:
        ``(alpha, scale)``.
    """
    k = np.asarray(lengths, dtype=np.int64) - MIN_LEN
    values, counts = np.unique(k, return_counts=True)

    def loglik(alpha: float, scale: float) -> float:
        p = (1 + values / scale) ** -alpha - (1 + (values + 1) / scale) ** -alpha
        return float(np.sum(counts * np.log(np.maximum(p, 1e-300))))

    return _grid_max(loglik, (1.05, 8.0), (0.05, 100.0), log_b=True)


def _popularity_weights(ranks: np.ndarray, num_items: int, s: float, q_frac: float, a: float,
                        h_frac: float) -> np.ndarray:
    """Log of the unnormalised popularity of each rank."""
    return -s * np.log(ranks + q_frac * num_items) + np.log1p(a * np.exp(-ranks / (h_frac * num_items)))


def fit_popularity(item_counts: np.ndarray, rounds: int = 3) -> tuple[float, float, float, float]:
    """Fit ``p(r) ~ (r + q)^-s (1 + a exp(-r/h))`` to interactions per item, by maximum likelihood.

    Head ``(a, h)`` and body ``(s, q)`` are fitted in turn (``s`` capped at 6, see the module doc).

    Args:
        item_counts: Interactions of each item, int [N].
        rounds: Alternations of the two 2-parameter fits.

    Returns:
        ``(s, q / N, a, h / N)``.
    """
    c = np.sort(np.asarray(item_counts, dtype=np.float64))[::-1]
    n = len(c)
    ranks = np.arange(1, n + 1, dtype=np.float64)

    def loglik(s: float, q_frac: float, a: float, h_frac: float) -> float:
        lw = _popularity_weights(ranks, n, s, q_frac, a, h_frac)
        top = lw.max()
        return float(np.sum(c * (lw - top - np.log(np.exp(lw - top).sum()))))

    s, q_frac = _grid_max(lambda x, y: loglik(x, y, 0.0, 1.0), (0.3, 6.0), (1e-3, 10.0), log_a=True, log_b=True)
    a, h_frac = 0.0, 1.0
    for _ in range(rounds):
        a, h_frac = _grid_max(lambda x, y: loglik(s, q_frac, x, y), (0.01, 100.0), (1e-4, 0.5),
                              log_a=True, log_b=True)
        s, q_frac = _grid_max(lambda x, y: loglik(x, y, a, h_frac), (0.3, 6.0), (1e-3, 10.0),
                              log_a=True, log_b=True)
    return s, q_frac, a, h_frac


def length_distribution(mean: float, max_len: int) -> np.ndarray:
    """Probabilities of lengths ``5..cap`` with the fitted tail and the given mean.

    Args:
        mean: Target mean interactions per user (>= 5).
        max_len: Longest allowed sequence (distinct items a user can have).

    Returns:
        ``p`` float64 [cap - 4], ``p[k]`` the probability of length ``5 + k``.
    """
    def pmf(scale: float) -> np.ndarray:
        cap = max(min(round((MAX_LEN_50K - MIN_LEN) * scale / SEQ_SCALE), max_len - MIN_LEN), 0)
        k = np.arange(cap + 1, dtype=np.float64)
        p = (1 + k / scale) ** -SEQ_ALPHA - (1 + (k + 1) / scale) ** -SEQ_ALPHA
        return p / p.sum()

    lo, hi = 1e-3, 1e6
    for _ in range(200):  # the mean grows monotonically with the scale
        mid = math.sqrt(lo * hi)
        p = pmf(mid)
        if MIN_LEN + float(np.dot(np.arange(len(p)), p)) < mean:
            lo = mid
        else:
            hi = mid
    return pmf(hi)


def _rank_weights(num_items: int) -> np.ndarray:
    """Unnormalised popularity of ranks ``1..N`` (float64 [N], the largest 1)."""
    ranks = np.arange(1, num_items + 1, dtype=np.float64)
    lw = _popularity_weights(ranks, num_items, POP_EXPONENT, POP_OFFSET_FRACTION, POP_HEAD_BOOST,
                             POP_HEAD_FRACTION)
    return np.exp(lw - lw.max())


def popularity(num_items: int) -> np.ndarray:
    """Cumulative popularity over ranks ``1..N`` (float64 [N], last entry 1)."""
    cdf = np.cumsum(_rank_weights(num_items))
    return cdf / cdf[-1]


class _Clusters:
    """The latent item clusters: popularity-weighted draws of an item rank within a given cluster.

    Ranks are laid out cluster by cluster (ascending within one), so a cluster is a contiguous slice
    of that layout and of the cumulative popularity over it. Without structure there is one cluster
    holding every rank in rank order, and ``draw`` is exactly the unclustered popularity draw.
    """

    def __init__(self, cfg: SyntheticConfig):
        if cfg.structure > 0:
            count = max(cfg.items // cfg.cluster_size, 1)
            slot = np.random.default_rng([cfg.seed, (1 << 32) + 1]).permutation(cfg.items)  # rank -> slot, shared
            of_rank = np.minimum(slot // cfg.cluster_size, count - 1)
        else:
            count, of_rank = 1, np.zeros(cfg.items, dtype=np.int64)
        self.of_rank = of_rank
        """Cluster of each rank (int64 [N])."""
        self.layout = np.argsort(of_rank, kind="stable")  # position -> rank
        sizes = np.bincount(of_rank, minlength=count)
        self.hi = np.cumsum(sizes)
        self.lo = self.hi - sizes
        cum = np.cumsum(_rank_weights(cfg.items)[self.layout])
        self.cum = cum / cum[-1]
        self.cum_lo = np.where(self.lo > 0, self.cum[self.lo - 1], 0.0)
        mass = self.cum[self.hi - 1] - self.cum_lo
        self.cdf = np.cumsum(mass) / mass.sum()
        """Cumulative popularity mass over clusters (float64 [C])."""

    def draw(self, cluster: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Ranks drawn with probability proportional to popularity within each ``cluster`` (``u`` in [0, 1))."""
        lo, hi, base = self.lo[cluster], self.hi[cluster], self.cum_lo[cluster]
        pos = np.searchsorted(self.cum, base + u * (self.cum[hi - 1] - base), side="right")
        return self.layout[pos.clip(lo, hi - 1)]


def item_clusters(cfg: SyntheticConfig) -> np.ndarray:
    """The latent cluster of every raw item id (for analysis and tests).

    Args:
        cfg: The synthetic settings.

    Returns:
        ``int64 [N+1]``: entry ``i`` is item ``i``'s cluster (all 0 without structure); entry 0 is -1.
    """
    out = np.full(cfg.items + 1, -1, dtype=np.int64)
    out[_raw_ids(cfg)] = _Clusters(cfg).of_rank
    return out


def _raw_ids(cfg: SyntheticConfig) -> np.ndarray:
    """Raw item id of each popularity rank (int64 [N]), a seeded permutation shared by all parts."""
    return np.random.default_rng([cfg.seed, 1 << 32]).permutation(cfg.items) + 1


def _cluster_chain(rng: np.random.Generator, first: np.ndarray, length: int, structure: float,
                   cluster_cdf: np.ndarray) -> np.ndarray:
    """The latent cluster of every interaction (int64 [length], users' interactions consecutive, in
    time order, user ``u``'s first at ``first[u]``): a user's first one, and any other with
    probability ``1 - structure``, draws a cluster by popularity mass; the rest keep the previous one."""
    fresh = rng.random(length) >= structure
    fresh[first] = True
    drawn = np.searchsorted(cluster_cdf, rng.random(int(fresh.sum())), side="right").clip(0, len(cluster_cdf) - 1)
    return drawn[np.cumsum(fresh) - 1]


def _repeats(local: np.ndarray, rank: np.ndarray, num_items: int) -> np.ndarray:
    """Positions whose item the same user already has at an earlier position."""
    key = local * num_items + rank
    order = np.argsort(key, kind="stable")
    return order[1:][key[order][1:] == key[order][:-1]]


def _swap_repeats(rng: np.random.Generator, local: np.ndarray, rank: np.ndarray, cluster: np.ndarray,
                  num_items: int, rounds: int = 64) -> None:
    """Resolve repeated items in place by swapping each with a random position of the same cluster.

    A swap keeps every item's count and every position's cluster, so the item marginal stays the
    popularity law (a redraw would move mass from each cluster's head to its tail). Repeats left
    after ``rounds`` (a user visiting a cluster for longer than it has items) are the caller's.
    """
    holders = np.argsort(cluster, kind="stable")  # positions grouped by cluster
    sizes = np.bincount(cluster)
    starts = np.cumsum(sizes) - sizes
    for _ in range(rounds):
        dup = _repeats(local, rank, num_items)
        if not len(dup):
            return
        c = cluster[dup]
        partner = holders[starts[c] + (rng.random(len(dup)) * sizes[c]).astype(np.int64).clip(0, sizes[c] - 1)]
        # Each position takes part in at most one swap a round; the rest wait for the next one.
        keep = ~np.isin(partner, dup)
        dup, partner = dup[keep], partner[keep]
        _, once = np.unique(partner, return_index=True)
        dup, partner = dup[once], partner[once]
        rank[dup], rank[partner] = rank[partner], rank[dup]


def part_path(output: str, part: int) -> str:
    """Path of part file ``part``."""
    return f"{output.rstrip('/')}/part-{part:05d}.csv"


def _lengths(rng: np.random.Generator, users: int, total: int, probs: np.ndarray) -> np.ndarray:
    """Sample ``users`` lengths from ``probs`` and nudge them to sum exactly to ``total``."""
    cap = MIN_LEN + len(probs) - 1
    n = MIN_LEN + np.searchsorted(np.cumsum(probs), rng.random(users), side="right").clip(0, len(probs) - 1)
    while True:
        diff = total - int(n.sum())
        if diff == 0:
            return n
        candidates = np.flatnonzero(n < cap) if diff > 0 else np.flatnonzero(n > MIN_LEN)
        pick = rng.choice(candidates, size=min(abs(diff), len(candidates)), replace=False)
        n[pick] += 1 if diff > 0 else -1


def generate_part(cfg: SyntheticConfig, part: int) -> bytes:
    """The csv text (with header) of part ``part``: users ``part*chunk+1 ..``, rows shuffled.

    Args:
        cfg: The synthetic settings.
        part: Part index.

    Returns:
        The file content.
    """
    lo, hi = part * cfg.chunk_users, min((part + 1) * cfg.chunk_users, cfg.users)
    total = cfg.interactions * hi // cfg.users - cfg.interactions * lo // cfg.users
    rng = np.random.default_rng([cfg.seed, part])
    ids = _raw_ids(cfg)
    probs = length_distribution(cfg.interactions / cfg.users, cfg.items // 2)
    if total > (MIN_LEN + len(probs) - 1) * (hi - lo):
        raise ValueError(f"{cfg.interactions} interactions over {cfg.users} users exceed what {cfg.items} items "
                         f"allow (at most {MIN_LEN + len(probs) - 1} distinct items per user)")
    n = _lengths(rng, hi - lo, total, probs)
    local = np.repeat(np.arange(hi - lo, dtype=np.int64), n)
    first = np.cumsum(n) - n
    clusters = _Clusters(cfg)
    cluster = (_cluster_chain(rng, first, len(local), cfg.structure, clusters.cdf) if cfg.structure > 0
               else np.zeros(len(local), dtype=np.int64))
    rank = clusters.draw(cluster, rng.random(len(local)))
    if cfg.structure > 0:
        _swap_repeats(rng, local, rank, cluster, cfg.items)
    cdf = popularity(cfg.items)
    for attempt in range(1000):  # redraw repeated items within a user until there are none
        dup = _repeats(local, rank, cfg.items)
        if not len(dup):
            break
        draw = rng.random(len(dup))
        # Popular items keep colliding in long sequences; after a few popularity draws fall back
        # to uniform ones, which converge because no user has more than N/2 items.
        rank[dup] = (np.searchsorted(cdf, draw, side="right").clip(0, cfg.items - 1) if attempt < 8
                     else (draw * cfg.items).astype(np.int64).clip(0, cfg.items - 1))
    else:
        raise RuntimeError("synthetic generator could not remove repeated items")
    start = _TS_START_MS + (rng.random(hi - lo) * _TS_SPAN_MS).astype(np.int64)
    gaps = 1 + rng.exponential(_GAP_MEAN_MS, len(local)).astype(np.int64)
    csum = np.cumsum(gaps)
    ts = np.repeat(start, n) + csum - np.repeat(csum[first] - gaps[first], n)
    shuffle = rng.permutation(len(local))
    columns = {"user": (local + lo + 1)[shuffle], "item": ids[rank][shuffle], "timestamp": ts[shuffle]}
    header = _CSV_HEADER
    if cfg.plays:
        header = _PLAYS_CSV_HEADER
        play, duration = synthetic_plays.draw_plays(cfg, part, local, ids[rank])
        columns = {"user": columns["user"], "item": columns["item"], "playing_time": play[shuffle],
                   "duration": duration[shuffle], "timestamp": columns["timestamp"]}
    if cfg.exposures > 0:
        header = _LABELED_CSV_HEADER
        e_local, e_rank, e_ts = _exposures(cfg, part, clusters, local, rank, ts, gaps)
        mix = np.random.default_rng([cfg.seed, part, 1 << 33, 1]).permutation(len(local) + len(e_local))
        columns = {"user": np.concatenate([columns["user"], e_local + lo + 1])[mix],
                   "item": np.concatenate([columns["item"], ids[e_rank]])[mix],
                   "timestamp": np.concatenate([columns["timestamp"], e_ts])[mix],
                   "label": np.concatenate([np.ones(len(local), np.int8), np.zeros(len(e_local), np.int8)])[mix]}
    sink = pa.BufferOutputStream()
    pcsv.write_csv(pa.table(columns), sink, write_options=pcsv.WriteOptions(include_header=False,
                                                                            quoting_style="none"))
    return header + sink.getvalue().to_pybytes()


def _exposures(cfg: SyntheticConfig, part: int, clusters: _Clusters, local: np.ndarray, rank: np.ndarray,
               ts: np.ndarray, gaps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The exposures of one part: ``(local user, item rank, timestamp)``, int64 arrays (module docstring).

    Args:
        cfg: The synthetic settings (``exposures > 0``).
        part: Part index (with the seed, the exposures' own random stream).
        clusters: The latent clusters.
        local, rank, ts, gaps: The part's interactions (users' consecutive, in time order) and the
            gap before each.
    """
    rng = np.random.default_rng([cfg.seed, part, 1 << 33])
    users = int(local[-1]) + 1
    n = np.bincount(local, minlength=users)
    first = np.cumsum(n) - n
    # Stochastic rounding: the expected count is exactly r per interaction.
    m = np.floor(cfg.exposures * n + rng.random(users)).astype(np.int64)
    e_local = np.repeat(np.arange(users, dtype=np.int64), m)
    count = len(clusters.cdf)
    # Sorted (user, cluster) keys of the clusters each user clicks in (sparse: users x clusters is large at scale).
    followed = np.unique(local * count + clusters.of_rank[rank])
    cluster = np.zeros(len(e_local), dtype=np.int64)
    e_rank = np.zeros(len(e_local), dtype=np.int64)
    todo = np.arange(len(e_local))
    for _ in range(_EXPOSURE_ROUNDS):
        if not len(todo):
            break
        c = np.searchsorted(clusters.cdf, rng.random(len(todo)), side="right").clip(0, count - 1)
        cluster[todo], e_rank[todo] = c, clusters.draw(c, rng.random(len(todo)))
        key = e_local * count + cluster
        bad = followed[np.searchsorted(followed, key).clip(0, len(followed) - 1)] == key
        repeat = np.zeros(len(e_local), dtype=bool)
        repeat[_repeats(e_local, e_rank, cfg.items)] = True
        todo = np.flatnonzero(bad | repeat)
    keep = np.ones(len(e_local), dtype=bool)
    keep[todo] = False
    e_local, e_rank = e_local[keep], e_rank[keep]
    # Shown shortly before one of the user's interactions: a uniform time in the gap before it.
    at = first[e_local] + (rng.random(len(e_local)) * n[e_local]).astype(np.int64).clip(0, n[e_local] - 1)
    e_ts = ts[at] - (rng.random(len(e_local)) * gaps[at]).astype(np.int64).clip(0, gaps[at] - 1) - 1
    return e_local, e_rank, e_ts


def _write_part(cfg: SyntheticConfig, part: int) -> dict:
    data = generate_part(cfg, part)
    with dfs.open_output_stream(part_path(cfg.output, part)) as f:
        f.write(data)
    return {"path": part_path(cfg.output, part), "bytes": len(data)}


def _describe(cfg: SyntheticConfig) -> dict:
    return {"generator": "mvrec_dist.data.synthetic/1", "users": cfg.users, "items": cfg.items,
            "interactions": cfg.interactions, "seed": cfg.seed, "chunk_users": cfg.chunk_users,
            "fit": {"seq_alpha": SEQ_ALPHA, "seq_scale": SEQ_SCALE, "pop_exponent": POP_EXPONENT,
                    "pop_offset_fraction": POP_OFFSET_FRACTION, "pop_head_boost": POP_HEAD_BOOST,
                    "pop_head_fraction": POP_HEAD_FRACTION},
            # Only when on, so unstructured generations made before it existed stay reusable.
            **({"structure": cfg.structure, "cluster_size": cfg.cluster_size} if cfg.structure > 0 else {}),
            **({"exposures": cfg.exposures} if cfg.exposures > 0 else {}),
            **({"plays": True} if cfg.plays else {})}


def generate(cfg: SyntheticConfig, *, use_ray: bool | None = None) -> str:
    """Generate all parts into ``cfg.output`` unless an identical generation is already there.

    Args:
        cfg: The synthetic settings.
        use_ray: Generate parts in parallel Ray tasks (default: when Ray is initialised).

    Returns:
        The output directory (an ingest input: its ``*.csv`` files).
    """
    import ray

    if generated_bytes(cfg) is not None:
        return cfg.output
    desc = _describe(cfg)
    marker = f"{cfg.output.rstrip('/')}/_synthetic.json"
    parts = -(-cfg.users // cfg.chunk_users)
    if use_ray if use_ray is not None else ray.is_initialized():
        task = ray.remote(_write_part)
        written = ray.get([task.remote(cfg, p) for p in range(parts)])
    else:
        written = [_write_part(cfg, p) for p in range(parts)]
    with dfs.open_output_stream(marker) as f:
        f.write(json.dumps({"config": desc, "parts": written}, indent=1).encode("utf-8"))
    return cfg.output


def generated_bytes(cfg: SyntheticConfig) -> int | None:
    """Bytes of the identical generation already in ``cfg.output`` (which ``generate`` reuses), else None.

    Args:
        cfg: The synthetic settings.

    Returns:
        The parts' total size when ``cfg.output``'s marker describes ``cfg`` and every part has its size.
    """
    try:
        with dfs.open_input_file(f"{cfg.output.rstrip('/')}/_synthetic.json") as f:
            done = json.loads(f.read().decode("utf-8"))
        if done.get("config") == _describe(cfg) and all(_size(p["path"]) == p["bytes"] for p in done["parts"]):
            return sum(int(p["bytes"]) for p in done["parts"])
    except (FileNotFoundError, OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _size(path: str) -> int | None:
    filesystem, inner = dfs.resolve(path)
    return filesystem.get_file_info(inner).size
