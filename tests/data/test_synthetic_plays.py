"""Synthetic playing times (``synthetic.plays``): FRAME's csv format, the same interactions as without, a play
ratio in [0, 1], the stay-or-leave model the docstring states, a learnable taste signal, and ingestion."""

import io

import numpy as np
import pytest

from mvrec_dist.config.fields import ConfigError
from mvrec_dist.config.ingest import SyntheticConfig
from mvrec_dist.data.synthetic import generate, generate_part
from mvrec_dist.data.synthetic_plays import (APPEAL_STD, CLIPS, STAY_BIAS, TASTE_SCALE, TOPICS, item_clip_structure,
                                             user_tastes)
from tests.data.test_synthetic import SMALL, STRUCTURED, rows_of

PLAYS = SyntheticConfig(**{**SMALL.__dict__, "plays": True})


def play_rows(data: bytes) -> np.ndarray:
    """``[M, 5]`` user, item, playing_time, duration, timestamp."""
    assert data.startswith(b"user,item,playing_time,duration,timestamp\n")
    return np.loadtxt(io.BytesIO(data), delimiter=",", skiprows=1, dtype=np.int64).reshape(-1, 5)


@pytest.mark.parametrize("base", [SMALL, STRUCTURED], ids=["unstructured", "structured"])
def test_same_seed_same_bytes_and_the_interactions_are_those_without_plays(base):
    cfg = SyntheticConfig(**{**base.__dict__, "plays": True})
    data = generate_part(cfg, 1)
    assert generate_part(cfg, 1) == data
    assert generate_part(SyntheticConfig(**{**cfg.__dict__, "seed": 8}), 1) != data
    rows = play_rows(data)
    # Same rows in the same order: the plays have their own random stream.
    assert np.array_equal(rows[:, [0, 1, 4]], rows_of(generate_part(base, 1)))


def test_play_ratio_is_in_0_1_and_every_item_keeps_its_duration():
    rows = np.concatenate([play_rows(generate_part(PLAYS, p)) for p in range(3)])
    item, play, duration = rows[:, 1], rows[:, 2], rows[:, 3]
    assert (play >= 0).all() and (play <= duration).all() and (duration >= 4000).all()
    assert np.array_equal(duration, item_clip_structure(PLAYS)[0][item])
    ratio = play / duration
    assert 0.0 <= ratio.min() and ratio.max() == 1.0
    # The clip a play leaves in is the same read from integers and from the float ratio.
    assert np.array_equal((CLIPS * play) // duration, np.floor(CLIPS * ratio).astype(np.int64))


def _stay_probabilities(cfg: SyntheticConfig, part: int, rows: np.ndarray) -> np.ndarray:
    """``[M, CLIPS]`` the planted probability of staying through each clip of each row's video."""
    _, topic, appeal = item_clip_structure(cfg)
    taste = user_tastes(cfg, part)
    local, item = rows[:, 0] - part * cfg.chunk_users - 1, rows[:, 1]
    logit = STAY_BIAS + TASTE_SCALE * taste[local[:, None], topic[item]] + appeal[item]
    return 1.0 / (1.0 + np.exp(-logit))


def test_the_leaving_clip_follows_the_planted_stay_probabilities():
    rows = play_rows(generate_part(PLAYS, 1))
    left = (CLIPS * rows[:, 2]) // rows[:, 3]  # CLIPS: watched to the end
    s = _stay_probabilities(PLAYS, 1, rows)
    reach = np.cumprod(np.hstack([np.ones((len(s), 1)), s]), axis=1)  # [M, CLIPS + 1] P(reach clip k)
    p = reach * np.hstack([1.0 - s, np.ones((len(s), 1))])  # P(leave in k), P(watch all)
    expected, observed = p.sum(axis=0), np.bincount(left, minlength=CLIPS + 1)
    sd = np.sqrt((p * (1 - p)).sum(axis=0))
    assert np.all(np.abs(observed - expected) < 4 * sd), (observed, expected, sd)
    # Every outcome is common: the graphs get negative edges on every clip and positive ones too.
    assert (observed / len(left) > 0.08).all()


def test_users_leave_in_clips_whose_topic_they_dislike():
    cfg = PLAYS
    rows = play_rows(generate_part(cfg, 1))
    _, topic, _ = item_clip_structure(cfg)
    taste = user_tastes(cfg, 1)
    users = len(taste)
    local, left = rows[:, 0] - cfg.chunk_users - 1, (CLIPS * rows[:, 2]) // rows[:, 3]
    clip = np.arange(CLIPS)[None, :]
    reached, passed = clip <= left[:, None], clip < left[:, None]
    key = local[:, None] * TOPICS + topic[rows[:, 1]]  # (user, topic) of every clip
    n_reached = np.bincount(key[reached], minlength=users * TOPICS)
    n_passed = np.bincount(key[passed], minlength=users * TOPICS)
    enough = n_reached >= 5
    # The per-(user, topic) rate of watching a clip through tracks the planted taste (measured 0.83;
    # without the taste term it would be 0 up to noise).
    rate = n_passed[enough] / n_reached[enough]
    assert enough.sum() > 2000 and np.corrcoef(rate, taste.ravel()[enough])[0, 1] > 0.7
    # Per user: the clips watched through have a higher mean taste than the ones the user left in.
    t = taste[local[:, None], topic[rows[:, 1]]]
    out = left < CLIPS
    watched = np.bincount(local, (t * passed).sum(1), users) / np.maximum(np.bincount(local, passed.sum(1), users), 1)
    stopped = np.bincount(local[out], t[out, left[out]], users) / np.maximum(np.bincount(local[out], minlength=users), 1)
    assert np.mean(watched > stopped) > 0.95
    assert APPEAL_STD < TASTE_SCALE  # the appeal is the smaller term of the two, so the taste dominates


def test_plays_and_exposures_are_refused_together():
    with pytest.raises(ConfigError, match="plays: cannot be combined with synthetic.exposures"):
        SyntheticConfig(structure=0.3, exposures=1.0, plays=True)


@pytest.mark.integration
def test_the_generated_file_ingests_as_plays_csv_with_its_play_times(ray_local, tmp_path):
    from mvrec_dist.data.verify import verify_dataset
    from tests.helpers.shards import ingest_small_blocks, members_by_user

    cfg = SyntheticConfig(users=12, items=40, interactions=90, seed=3, chunk_users=7, plays=True,
                          output=str(tmp_path / "raw"))
    generate(cfg, use_ray=False)
    result = ingest_small_blocks(tmp_path / "raw", tmp_path / "ds")
    assert result.manifest["inputs"][0]["format"] == "plays_csv" and result.manifest["counts"]["users"] == 12
    rows = np.concatenate([play_rows((tmp_path / "raw" / f"part-{p:05d}.csv").read_bytes()) for p in range(2)])
    test = members_by_user(tmp_path / "ds", "test", {"play.npy", "duration.npy", "target_play.npy",
                                                      "target_duration.npy", "json"})
    for user, members in test.items():
        mine = rows[rows[:, 0] == user]
        mine = mine[np.argsort(mine[:, 4])]  # time order
        assert members["play.npy"].tolist() + members["target_play.npy"].tolist() == mine[:, 2].tolist()
        assert members["duration.npy"].tolist() + members["target_duration.npy"].tolist() == mine[:, 3].tolist()
    assert verify_dataset(str(tmp_path / "ds")) == []
