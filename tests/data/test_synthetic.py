"""The synthetic MicroLens-shaped generator: exact totals, invariants, determinism, fitted shape."""

import io

import numpy as np
import pytest

from mvrec_dist.config.ingest import SyntheticConfig
from mvrec_dist.data import synthetic
from mvrec_dist.data.synthetic import (POP_EXPONENT, POP_HEAD_BOOST, POP_HEAD_FRACTION, POP_OFFSET_FRACTION,
                                       SEQ_ALPHA, SEQ_SCALE, fit_popularity, fit_sequence_lengths, generate,
                                       generate_part, length_distribution)

SMALL = SyntheticConfig(users=3000, items=800, interactions=40_000, seed=7, chunk_users=1000)


def rows_of(data: bytes) -> np.ndarray:
    assert data.startswith(b"user,item,timestamp\n")
    return np.loadtxt(io.BytesIO(data), delimiter=",", skiprows=1, dtype=np.int64).reshape(-1, 3)


def test_parts_hold_exact_totals_and_microlens_invariants():
    rows = np.concatenate([rows_of(generate_part(SMALL, p)) for p in range(3)])
    assert len(rows) == 40_000
    users, counts = np.unique(rows[:, 0], return_counts=True)
    assert users.tolist() == list(range(1, 3001)) and counts.min() >= 5
    assert rows[:, 1].min() >= 1 and rows[:, 1].max() <= 800
    assert len(np.unique(rows[:, 0] * 1000 + rows[:, 1])) == len(rows)  # no item repeats within a user
    order = np.lexsort((rows[:, 2], rows[:, 0]))
    same_user = np.diff(rows[order, 0]) == 0
    assert np.all(np.diff(rows[order, 2])[same_user] > 0)  # strictly increasing timestamps per user


def test_same_seed_same_bytes_other_seed_other_bytes():
    assert generate_part(SMALL, 1) == generate_part(SMALL, 1)
    other = SyntheticConfig(**{**SMALL.__dict__, "seed": 8})
    assert generate_part(other, 1) != generate_part(SMALL, 1)


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
    # A synthetic 50K-sized dataset has the real one's shape.
    cfg = SyntheticConfig(users=50_000, items=19_220, interactions=359_708, seed=0, chunk_users=50_000)
    fake = rows_of(generate_part(cfg, 0))
    fake_lengths = np.unique(fake[:, 0], return_counts=True)[1]
    assert np.mean(fake_lengths == 5) == pytest.approx(np.mean(lengths == 5), abs=0.02)
    assert np.median(fake_lengths) == np.median(lengths)
    fake_top = np.sort(np.unique(fake[:, 1], return_counts=True)[1])[::-1]
    real_top = np.sort(item_counts)[::-1]
    assert fake_top[:100].mean() == pytest.approx(real_top[:100].mean(), rel=0.2)
    assert synthetic.MIN_LEN == lengths.min()
