"""Synthetic playing times with clip-level structure (``synthetic.plays``), for FRAME's play-ratio graphs.

FRAME (Learning Fine-grained User Interests for Micro-video Recommendation, SIGIR'23; public code
tsinghua-fib-lab/FRAME) splits every video into 4 clips and reads from the play ratio
``r = min(playing_time / duration, 1)`` which clips a user watched through (clip ``j < floor(4 r)``) and in
which one they left. A generator that drew ``r`` independently of user and item would give those graphs
nothing to learn, so the play is simulated clip by clip from latent tastes (all seeded, numpy-vectorised):

* **Items.** Raw item ``i`` has a duration ``d_i`` in milliseconds (log-normal, median 15 s, clipped to
  [4 s, 120 s]) and, for each clip ``j``, a *topic* ``t_ij`` (uniform over ``TOPICS``) and an *appeal*
  ``a_ij ~ N(0, APPEAL_STD^2)``, a quality every user sees alike. Drawn from ``(seed, 2^34)``, shared
  by all parts (``item_clip_structure``).
* **Users.** User ``u`` has a taste ``w_u[k] ~ N(0, 1)`` for every topic ``k``, drawn per part from
  ``(seed, part, 2^34)`` (``user_tastes``).
* **A play.** The user reaches clip 0; at each reached clip ``j`` they stay to its end with probability
  ``sigmoid(STAY_BIAS + TASTE_SCALE * w_u[t_ij] + a_ij)`` and otherwise leave inside it, at a uniform
  point of the clip. So users stop at clips whose topic they dislike (or whose appeal is low), and a
  clip's topic is only ever visible through who watches it through (no frames carry it): what FRAME's
  positive and negative user x clip graphs and clip id embeddings can learn. Leaving in clip ``k``
  gives an integer ``playing_time`` in ``[ceil(k d / 4), ceil((k+1) d / 4))``, so
  ``floor(4 playing_time / duration) = k`` exactly (in integers and in the float ratio); staying through
  all four gives ``playing_time = duration`` (``r = 1``).

With the constants below about 30% of plays are complete, and the leaving clip spreads over all four.
The interactions themselves (users, items, timestamps) are exactly those without plays: the plays use
their own random stream.
"""

from __future__ import annotations

import numpy as np

from mvrec_dist.config.ingest import SyntheticConfig

__all__ = ["CLIPS", "TOPICS", "STAY_BIAS", "TASTE_SCALE", "APPEAL_STD", "item_clip_structure", "user_tastes",
           "draw_plays"]

CLIPS = 4
"""Clips per video, as FRAME's released code (``num_clips = 4``)."""
TOPICS = 8
"""Latent clip topics."""
STAY_BIAS = 1.5
"""Logit of staying through a clip of a neutral topic and appeal (sigmoid 0.82)."""
TASTE_SCALE = 2.0
"""Weight of the user's taste for the clip's topic in the stay logit: a taste of -1 gives 0.38, +1 gives 0.97."""
APPEAL_STD = 0.5
"""Spread of the clip's own appeal in the stay logit."""
_DURATION_MEDIAN_MS = 15_000
_DURATION_LOG_STD = 0.5
_DURATION_RANGE_MS = (4_000, 120_000)  # >= CLIPS ms, so every clip spans at least one playing-time value


def item_clip_structure(cfg: SyntheticConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every item's duration and its clips' topics and appeals (module docstring), indexed by raw item id.

    Args:
        cfg: The synthetic settings (only ``seed`` and ``items`` matter).

    Returns:
        ``(duration int64 [N+1] ms, topic int64 [N+1, CLIPS], appeal float64 [N+1, CLIPS])``; row 0 (no item)
        is 0.
    """
    rng = np.random.default_rng([cfg.seed, 1 << 34])
    n = cfg.items
    lo, hi = _DURATION_RANGE_MS
    duration = np.exp(np.log(_DURATION_MEDIAN_MS) + _DURATION_LOG_STD * rng.standard_normal(n))
    duration = np.concatenate([[0], np.clip(np.round(duration), lo, hi).astype(np.int64)])
    topic = np.concatenate([np.zeros((1, CLIPS), np.int64), rng.integers(0, TOPICS, size=(n, CLIPS))])
    appeal = np.concatenate([np.zeros((1, CLIPS)), APPEAL_STD * rng.standard_normal((n, CLIPS))])
    return duration, topic, appeal


def user_tastes(cfg: SyntheticConfig, part: int) -> np.ndarray:
    """The topic tastes of part ``part``'s users (``part * chunk_users + 1 ..``), ``float64 [U_part, TOPICS]``."""
    return _tastes(cfg, part, np.random.default_rng([cfg.seed, part, 1 << 34]))


def _tastes(cfg: SyntheticConfig, part: int, rng: np.random.Generator) -> np.ndarray:
    """The first draw of the part's play stream: every user's tastes."""
    users = min((part + 1) * cfg.chunk_users, cfg.users) - part * cfg.chunk_users
    return rng.standard_normal((users, TOPICS))


def draw_plays(cfg: SyntheticConfig, part: int, local: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Playing time and duration of each interaction of part ``part`` (module docstring).

    Args:
        cfg: The synthetic settings.
        part: Part index.
        local: The part's user of each interaction, 0-based within the part, int64 [M].
        items: Raw item id of each interaction, int64 [M].

    Returns:
        ``(playing_time, duration)``, int64 [M] milliseconds each, ``0 <= playing_time <= duration``.
    """
    duration, topic, appeal = item_clip_structure(cfg)
    rng = np.random.default_rng([cfg.seed, part, 1 << 34])
    taste = _tastes(cfg, part, rng)
    logit = STAY_BIAS + TASTE_SCALE * taste[local[:, None], topic[items]] + appeal[items]  # [M, CLIPS]
    stay = rng.random(logit.shape) < 1.0 / (1.0 + np.exp(-logit))
    # The clip the user leaves in: the first one not stayed through (CLIPS: watched to the end).
    left = np.where(stay.all(axis=1), CLIPS, np.argmin(stay, axis=1))
    d = duration[items]
    lo = -(-left * d // CLIPS)  # ceil(k d / C): the first playing time with floor(C p / d) = k
    hi = -(-(left + 1) * d // CLIPS)
    play = lo + (rng.random(len(d)) * (hi - lo)).astype(np.int64).clip(0, np.maximum(hi - lo - 1, 0))
    return np.where(left == CLIPS, d, play), d
