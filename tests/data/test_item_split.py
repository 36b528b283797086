"""The item split and the popularity labels (``mvrec_dist.data.item_split``): the split's properties, its
unchanged behaviour over all items, the labels, and the loaders' clear error on a dataset from before them."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mvrec_dist.data.item_split import (NO_LABEL, item_split, load_item_counts, load_item_split,
                                        popularity_labels_from_counts, split_codes, split_of_codes, split_sha256)
from mvrec_dist.data.manifest import ManifestError, load_manifest


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 300), st.integers(0, 2**32 - 1), st.data())
def test_the_split_partitions_the_given_items_in_their_fractions(n, seed, data):
    drawn = data.draw(st.sets(st.integers(1, n), max_size=n)) if n else set()
    items = np.array(sorted(drawn), dtype=np.int64)
    split = item_split(n, valid_fraction=0.1, test_fraction=0.1, seed=seed, items=items)
    every = np.concatenate([split["train"], split["valid"], split["test"]])
    assert sorted(every.tolist()) == items.tolist()  # disjoint and covering exactly the given items
    assert all(np.all(np.diff(v) > 0) for v in split.values())
    m = len(items)
    expected = max(1, round(0.1 * m)) if m >= 3 else 0
    assert len(split["valid"]) == len(split["test"]) == expected
    again = item_split(n, valid_fraction=0.1, test_fraction=0.1, seed=seed, items=items)
    assert all(np.array_equal(split[k], again[k]) for k in split)  # fixed by the seed


def test_other_seeds_give_other_splits_and_fractions_are_respected():
    a = item_split(1000, valid_fraction=0.1, test_fraction=0.2, seed=0)
    b = item_split(1000, valid_fraction=0.1, test_fraction=0.2, seed=1)
    assert (len(a["train"]), len(a["valid"]), len(a["test"])) == (700, 100, 200)
    assert not np.array_equal(a["test"], b["test"])


@pytest.mark.parametrize("n", [0, 1, 2, 3, 10, 101])
def test_over_all_items_it_splits_exactly_as_before_the_move(n):
    # The item task's split (what existing runs and neighbour stores used): permutation(N) + 1.
    perm = np.random.Generator(np.random.PCG64(7)).permutation(n) + 1
    k = max(1, round(0.1 * n)) if n >= 3 else 0
    split = item_split(n, valid_fraction=0.1, test_fraction=0.1, seed=7)
    assert split["test"].tolist() == sorted(perm[:k].tolist())
    assert split["valid"].tolist() == sorted(perm[k:2 * k].tolist())
    assert split["train"].tolist() == sorted(perm[2 * k:].tolist())
    from mvrec_dist.tasks.item_popularity import item_split as task_split  # still importable from the task

    assert task_split is item_split


def test_items_outside_the_dataset_are_refused():
    with pytest.raises(ValueError, match="distinct dense ids in 1..5"):
        item_split(5, valid_fraction=0.1, test_fraction=0.1, seed=0, items=np.array([1, 6]))
    with pytest.raises(ValueError, match="distinct"):
        item_split(5, valid_fraction=0.1, test_fraction=0.1, seed=0, items=np.array([2, 2, 3]))


def test_labels_are_log2_of_the_count_and_nan_without_one():
    labels = popularity_labels_from_counts(np.array([0, 1, 2, 0, 1024], dtype=np.int64))
    assert labels.dtype == np.float32
    assert np.isnan(labels[[0, 3]]).all() and labels[[1, 2, 4]].tolist() == [0.0, 1.0, 10.0]


def test_split_codes_round_trip_and_digest():
    split = item_split(9, valid_fraction=0.2, test_fraction=0.2, seed=3, items=np.array([1, 2, 4, 5, 7, 9]))
    codes = split_codes(9, split)
    assert codes.dtype == np.int8 and codes[0] == NO_LABEL and codes[[3, 6, 8]].tolist() == [NO_LABEL] * 3
    back = split_of_codes(codes)
    assert all(np.array_equal(back[k], split[k]) for k in split)
    assert split_sha256(back) == split_sha256(split) != split_sha256(dict(split, valid=split["test"]))


def test_a_dataset_from_before_the_labels_gets_a_clear_error(manifest_dataset):
    m = load_manifest(str(manifest_dataset))
    for load in (load_item_counts, load_item_split):
        with pytest.raises(ManifestError, match="no 'item_labels' section") as info:
            load(m)
        assert str(manifest_dataset) in str(info.value) and "ingest.overwrite=true" in str(info.value)
