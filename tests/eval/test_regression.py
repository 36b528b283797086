"""Popularity metrics (``eval/regression.py``) against scipy and numpy on random data, ties included."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from mvrec_dist.eval.regression import average_ranks, batched_regression_metrics, regression_metrics, spearman

TOL = 1e-10


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-3, 3), min_size=1, max_size=40))
def test_average_ranks_equal_scipy_rankdata_with_ties(values):
    x = np.asarray(values, dtype=np.float64)
    np.testing.assert_allclose(average_ranks(x), stats.rankdata(x, method="average"), rtol=0, atol=TOL)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.floats(-5, 5, allow_nan=False, width=32)), min_size=2, max_size=60))
def test_spearman_equals_scipy_including_ties_and_constants(pairs):
    label = np.asarray([p[0] for p in pairs], dtype=np.float64)  # few values: many ties
    pred = np.asarray([p[1] for p in pairs], dtype=np.float64)
    ours = spearman(pred, label)
    if np.ptp(label) == 0 or np.ptp(pred) == 0:
        assert np.isnan(ours)  # scipy warns and returns nan too
        return
    assert ours == pytest.approx(stats.spearmanr(pred, label).statistic, abs=1e-9)


def test_whole_set_metrics_match_their_definitions():
    rng = np.random.default_rng(0)
    label = np.round(rng.gamma(2.0, 1.5, 1000), 1)  # rounded: ties
    pred = label + rng.normal(0, 0.7, 1000)
    m = regression_metrics(pred, label)
    assert m["mae"] == pytest.approx(np.mean(np.abs(pred - label)), abs=TOL)
    assert m["nmse"] == pytest.approx(np.mean((pred - label) ** 2) / np.var(label), abs=TOL)
    assert m["src"] == pytest.approx(stats.spearmanr(pred, label).statistic, abs=1e-12)
    assert m["mae_nmse"] == pytest.approx(m["mae"] + m["nmse"], abs=TOL)


def test_per_batch_metrics_are_mmra_test_py_averages():
    rng = np.random.default_rng(1)
    label = np.round(rng.gamma(2.0, 1.5, 1000), 1)
    pred = label + rng.normal(0, 0.7, 1000)
    m = batched_regression_metrics(pred, label, 256)
    # MMRA's test.py: the mean over its loader's batches (the last one short) of each batch's metric.
    mae, nmse, src = [], [], []
    for lo in range(0, 1000, 256):
        p, y = pred[lo:lo + 256], label[lo:lo + 256]
        mae.append(np.mean(np.abs(p - y)))
        nmse.append(np.mean(np.square(p - y)) / (y.std() ** 2))
        src.append(stats.spearmanr(p, y).statistic)
    assert m["batches"] == 4
    assert m["mae_b"] == pytest.approx(np.mean(mae), abs=TOL)
    assert m["nmse_b"] == pytest.approx(np.mean(nmse), abs=TOL)
    assert m["src_b"] == pytest.approx(np.mean(src), abs=1e-12)
    # ... which is not the whole-set figure.
    assert abs(m["src_b"] - regression_metrics(pred, label)["src"]) > 1e-4


def test_undefined_batches_are_left_out_and_counted():
    label = np.array([1.0, 1.0, 1.0, 2.0, 3.0, 4.0])  # first batch of 3: constant labels
    pred = np.array([0.5, 1.0, 2.0, 2.0, 3.5, 3.0])
    m = batched_regression_metrics(pred, label, 3)
    assert m["undefined_src"] == 1 and m["undefined_nmse"] == 1
    second = regression_metrics(pred[3:], label[3:])
    assert m["src_b"] == pytest.approx(second["src"]) and m["nmse_b"] == pytest.approx(second["nmse"])
    assert m["mae_b"] == pytest.approx(np.mean([np.mean(np.abs(pred[:3] - 1)), second["mae"]]))


def test_shapes_must_agree():
    with pytest.raises(ValueError, match="1-D"):
        regression_metrics(np.zeros(3), np.zeros(4))
