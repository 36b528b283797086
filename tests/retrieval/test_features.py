"""Item vectors from feature stores: the combination rule, and bad input named by item or store."""

from __future__ import annotations

import numpy as np
import pytest

from mvrec_dist.data.manifest import load_manifest
from mvrec_dist.retrieval.features import RetrievalError, assemble_item_features, combine_modalities
from tests.retrieval.conftest import feature_store, item_dataset


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_cosine_of_the_combination_is_the_weighted_mean_of_the_modality_cosines():
    rng = np.random.default_rng(0)
    t, f = _unit(rng.standard_normal((5, 8))), _unit(rng.standard_normal((5, 3)))
    ids = np.arange(1, 6)
    v, present = combine_modalities([(ids, t, 2.0), (ids, f, 0.5)], 5)
    assert present[1:].all() and not present[0]
    np.testing.assert_allclose(np.linalg.norm(v[1:], axis=1), 1, atol=1e-6)
    expected = (2.0 * t @ t.T + 0.5 * f @ f.T) / 2.5
    np.testing.assert_allclose(v[1:] @ v[1:].T, expected, atol=1e-6)


def test_a_missing_modality_is_a_zero_block_and_no_modality_means_no_vector():
    t = _unit(np.array([[1.0, 0.0], [1.0, 0.0]]))
    f = _unit(np.array([[0.0, 1.0]]))
    v, present = combine_modalities([(np.array([1, 2]), t, 1.0), (np.array([1]), f, 1.0)], 3)
    assert present.tolist() == [False, True, True, False]
    np.testing.assert_allclose(v[1] @ v[2], 1 / np.sqrt(2), atol=1e-6)  # w_t cos_t / sqrt(w_t (w_t + w_f))
    assert not v[3].any()


def test_stores_assemble_into_normalised_vectors(dataset, tmp_path):
    rng = np.random.default_rng(1)
    titles = {i: rng.standard_normal(6).astype(np.float32) * 3 for i in range(1, 31)}
    frames = {i: rng.standard_normal(4).astype(np.float16) for i in range(1, 31)}
    t = feature_store(tmp_path / "t", dataset, titles)
    f = feature_store(tmp_path / "f", dataset, frames)
    feats = assemble_item_features(load_manifest(str(dataset)), [("title", t, 1.0), ("frames", f, 1.0)])
    assert feats.dims == 10 and feats.present[1:].all() and not feats.missing
    np.testing.assert_allclose(np.linalg.norm(feats.vectors[1:], axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(feats.vectors[7, :6], _unit(titles[7]) / np.sqrt(2), atol=1e-6)
    assert [m["items"] for m in feats.modalities] == [30, 30]


def test_a_missing_feature_names_the_item_and_partial_skips_items_with_none(dataset, tmp_path):
    titles = {i: np.ones(3, np.float32) * i for i in range(1, 31) if i not in (4, 9)}
    frames = {i: np.ones(2, np.float32) for i in (9,)}
    t = feature_store(tmp_path / "t", dataset, titles)
    f = feature_store(tmp_path / "f", dataset, frames)
    manifest = load_manifest(str(dataset))
    with pytest.raises(RetrievalError, match=r"item 4 \(raw id 104\) has no title feature \(2 of 30"):
        assemble_item_features(manifest, [("title", t, 1.0)])
    feats = assemble_item_features(manifest, [("title", t, 1.0), ("frames", f, 1.0)], on_missing="partial")
    assert feats.missing == {4: "no feature in any configured store"}
    assert feats.present[9] and not feats.present[4]


@pytest.mark.parametrize("make, message", [
    (lambda ds, p: feature_store(p, item_dataset(p.parent / "other", 30, "fp-other"), {1: np.ones(2, np.float32)}),
     "computed for another dataset"),
    (lambda ds, p: feature_store(p, ds, {i: np.ones((2, 3), np.float32) for i in range(1, 31)}),
     r"of shape \[2, 3\] per item; the retriever needs one vector"),
    (lambda ds, p: feature_store(p, ds, {i: np.full(2, np.nan if i == 5 else 1, np.float32) for i in range(1, 31)}),
     r"item 5 \(raw id 105\) has a non-finite title feature"),
    (lambda ds, p: feature_store(p, ds, {i: np.full(2, 0 if i == 6 else 1, np.float32) for i in range(1, 31)}),
     r"item 6 \(raw id 106\) has an all-zero title feature"),
    (lambda ds, p: str(p), "not found; compute the trunk features first"),
])
def test_bad_stores_are_refused_naming_the_store_or_item(dataset, tmp_path, make, message):
    path = make(dataset, tmp_path / "store")
    with pytest.raises(RetrievalError, match=message):
        assemble_item_features(load_manifest(str(dataset)), [("title", path, 1.0)])
