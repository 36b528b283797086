"""The synthetic MicroLens-shaped generator: exact totals, invariants, determinism, fitted shape, and the
optional sequential structure (same marginals, measurable cluster persistence)."""

import io

import numpy as np
import pytest

from mvrec_dist.config.fields import ConfigError
from mvrec_dist.config.ingest import SyntheticConfig
from mvrec_dist.data import synthetic
from mvrec_dist.data.synthetic import (POP_EXPONENT, POP_HEAD_BOOST, POP_HEAD_FRACTION, POP_OFFSET_FRACTION,
                                       SEQ_ALPHA, SEQ_SCALE, fit_popularity, fit_sequence_lengths, generate,
                                       generate_part, item_clusters, length_distribution)

SMALL = SyntheticConfig(users=3000, items=800, interactions=40_000, seed=7, chunk_users=1000)
STRUCTURED = SyntheticConfig(**{**SMALL.__dict__, "structure": 0.6})
DEMO = SyntheticConfig(users=20_000, items=5000, interactions=150_000, seed=0, chunk_users=5000)


def rows_of(data: bytes) -> np.ndarray:
    assert data.startswith(b"user,item,timestamp\n")
    return np.loadtxt(io.BytesIO(data), delimiter=",", skiprows=1, dtype=np.int64).reshape(-1, 3)


def all_rows(cfg: SyntheticConfig) -> np.ndarray:
    """Every part's rows, sorted by user then time."""
    rows = np.concatenate([rows_of(generate_part(cfg, p)) for p in range(-(-cfg.users // cfg.chunk_users))])
    return rows[np.lexsort((rows[:, 2], rows[:, 0]))]


@pytest.mark.parametrize("cfg", [SMALL, STRUCTURED], ids=["unstructured", "structured"])
def test_parts_hold_exact_totals_and_microlens_invariants(cfg):
    rows = np.concatenate([rows_of(generate_part(cfg, p)) for p in range(3)])
    assert len(rows) == 40_000
    users, counts = np.unique(rows[:, 0], return_counts=True)
    assert users.tolist() == list(range(1, 3001)) and counts.min() >= 5
    assert rows[:, 1].min() >= 1 and rows[:, 1].max() <= 800
    assert len(np.unique(rows[:, 0] * 1000 + rows[:, 1])) == len(rows)  # no item repeats within a user
    order = np.lexsort((rows[:, 2], rows[:, 0]))
    same_user = np.diff(rows[order, 0]) == 0
    assert np.all(np.diff(rows[order, 2])[same_user] > 0)  # strictly increasing timestamps per user


@pytest.mark.parametrize("cfg", [SMALL, STRUCTURED], ids=["unstructured", "structured"])
def test_same_seed_same_bytes_other_seed_other_bytes(cfg):
    assert generate_part(cfg, 1) == generate_part(cfg, 1)
    other = SyntheticConfig(**{**cfg.__dict__, "seed": 8})
    assert generate_part(other, 1) != generate_part(cfg, 1)
    assert generate_part(STRUCTURED, 1) != generate_part(SMALL, 1)


def test_structure_keeps_the_length_and_item_marginals():
    # Lengths are drawn before anything structural: identical users and counts per user.
    plain = all_rows(DEMO)
    for structure in (0.3, 0.6):
        rows = all_rows(SyntheticConfig(**{**DEMO.__dict__, "structure": structure}))
        lengths = (np.unique(r[:, 0], return_counts=True)[1] for r in (rows, plain))
        assert np.array_equal(*lengths)
        # Same popularity curve: head, top 100 and the less popular half's share. Redrawing repeats
        # within a cluster instead of swapping them would cost the top 100 about 12% at structure 0.5.
        ours, theirs = (np.sort(np.bincount(r[:, 1], minlength=DEMO.items + 1)[1:])[::-1] for r in (rows, plain))
        assert ours[:10].mean() == pytest.approx(theirs[:10].mean(), rel=0.06)
        assert ours[:100].mean() == pytest.approx(theirs[:100].mean(), rel=0.03)
        assert ours[DEMO.items // 2:].sum() == pytest.approx(theirs[DEMO.items // 2:].sum(), rel=0.03)


@pytest.mark.parametrize("structure", [0.3, 0.6])
def test_consecutive_items_share_a_cluster_as_often_as_the_structure_says(structure):
    # A user's next item keeps the cluster with probability p, or draws a fresh one by mass, which may be
    # the same: P(same) = p + (1 - p) * sum_c mass_c^2 (about p + 0.006 here, 200 clusters of 25).
    cfg = SyntheticConfig(**{**DEMO.__dict__, "structure": structure})
    rows = all_rows(cfg)
    clusters = item_clusters(cfg)
    assert clusters[0] == -1 and np.bincount(clusters[1:]).tolist() == [25] * 200
    of = clusters[rows[:, 1]]
    same_user = rows[1:, 0] == rows[:-1, 0]
    same = np.mean((of[1:] == of[:-1])[same_user])
    mass = np.bincount(of) / len(of)
    assert same == pytest.approx(structure + (1 - structure) * np.sum(mass ** 2), abs=0.01)
    plain = item_clusters(DEMO)
    assert (plain[1:] == 0).all()  # without structure there is one cluster


def test_structure_settings_are_checked():
    with pytest.raises(ConfigError, match="structure"):
        SyntheticConfig(structure=1.0)
    with pytest.raises(ConfigError, match="cluster_size"):
        SyntheticConfig(cluster_size=0)


def test_generate_with_ray_equals_in_process_and_is_reused(ray_local, tmp_path):
    a = SyntheticConfig(**{**SMALL.__dict__, "output": str(tmp_path / "a")})
    b = SyntheticConfig(**{**SMALL.__dict__, "output": str(tmp_path / "b")})
    generate(a, use_ray=False)
    generate(b, use_ray=True)
    names = sorted(p.name for p in (tmp_path / "a").glob("part-*.csv"))
    assert names == ["part-00000.csv", "part-00001.csv", "part-00002.csv"]
    assert all((tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes() for n in names)
    stamp = (tmp_path / "a" / names[0]).stat().st_mtime_ns
    generate(a, use_ray=False)  # identical generation already there: not rewritten
    assert (tmp_path / "a" / names[0]).stat().st_mtime_ns == stamp


def test_length_distribution_hits_the_target_mean():
    for mean, max_len in ((7.19, 9610), (29.2, 500), (5.0, 100)):
        p = length_distribution(mean, max_len)
        assert abs(5 + np.dot(np.arange(len(p)), p) - mean) < 1e-3 and 5 + len(p) - 1 <= max_len


def test_too_many_interactions_for_the_items_is_refused():
    with pytest.raises(ValueError, match="exceed what 10 items allow"):
        generate_part(SyntheticConfig(users=10, items=10, interactions=60, chunk_users=10), 0)


@pytest.mark.shared_data
def test_fitted_constants_reproduce_from_microlens_50k(microlens_50k):
    seqs = [line.split("\t")[1].split() for line in
            (microlens_50k / "MicroLens-50k_pairs.tsv").read_text().splitlines()]
    lengths = np.array([len(s) for s in seqs])
    alpha, scale = fit_sequence_lengths(lengths)
    assert alpha == pytest.approx(SEQ_ALPHA, rel=0.02) and scale == pytest.approx(SEQ_SCALE, rel=0.02)
    _, item_counts = np.unique(np.array([int(x) for s in seqs for x in s]), return_counts=True)
    fitted = fit_popularity(item_counts)
    assert fitted == pytest.approx((POP_EXPONENT, POP_OFFSET_FRACTION, POP_HEAD_BOOST, POP_HEAD_FRACTION), rel=0.02)
    # A synthetic 50K-sized dataset has the real one's shape, with and without the demo's structure.
    for structure in (0.0, 0.3):
        cfg = SyntheticConfig(users=50_000, items=19_220, interactions=359_708, seed=0, chunk_users=50_000,
                              structure=structure)
        fake = rows_of(generate_part(cfg, 0))
        fake_lengths = np.unique(fake[:, 0], return_counts=True)[1]
        assert np.mean(fake_lengths == 5) == pytest.approx(np.mean(lengths == 5), abs=0.02)
        assert np.median(fake_lengths) == np.median(lengths)
        fake_top = np.sort(np.unique(fake[:, 1], return_counts=True)[1])[::-1]
        real_top = np.sort(item_counts)[::-1]
        assert fake_top[:100].mean() == pytest.approx(real_top[:100].mean(), rel=0.2)
    assert synthetic.MIN_LEN == lengths.min()


def test_exposures_come_from_clusters_the_user_never_clicks_and_leave_the_interactions_as_they_were():
    cfg = SyntheticConfig(**{**STRUCTURED.__dict__, "exposures": 1.0})
    data = generate_part(cfg, 1)
    assert data.startswith(b"user,item,timestamp,label\n")
    rows = np.loadtxt(io.BytesIO(data), delimiter=",", skiprows=1, dtype=np.int64)
    clicked, shown = rows[rows[:, 3] == 1, :3], rows[rows[:, 3] == 0, :3]
    # The interactions are exactly those of the generation without exposures (own random stream).
    plain = rows_of(generate_part(STRUCTURED, 1))
    assert np.array_equal(*(r[np.lexsort((r[:, 2], r[:, 0]))] for r in (clicked, plain)))
    assert 0.8 * len(clicked) < len(shown) <= 1.1 * len(clicked)  # about one per interaction (a few dropped)
    clusters = item_clusters(cfg)
    followed = set(zip(clicked[:, 0].tolist(), clusters[clicked[:, 1]].tolist()))
    assert not followed & set(zip(shown[:, 0].tolist(), clusters[shown[:, 1]].tolist()))
    assert len(np.unique(shown[:, 0] * 1000 + shown[:, 1])) == len(shown)  # no item shown twice to a user
    # Each is shown in the gap before one of the user's interactions: never after their last one.
    last_click = np.zeros(cfg.users + 1, dtype=np.int64)
    np.maximum.at(last_click, clicked[:, 0], clicked[:, 2])
    assert (shown[:, 2] < last_click[shown[:, 0]]).all()
    assert generate_part(cfg, 1) == data
    with pytest.raises(ConfigError, match="exposures: needs synthetic.structure"):
        SyntheticConfig(exposures=1.0)
