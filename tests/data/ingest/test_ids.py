"""Dense ids: summaries of grouped blocks, their merge (with the whole-groups check) and the mapping."""

import numpy as np
import pyarrow as pa
import pytest

from mvrec_dist.data.ingest.errors import IngestError
from mvrec_dist.data.ingest.grouping import group_users
from mvrec_dist.data.ingest.ids import MergeTree, assign_dense, count_by_id, lookup, merge_summaries, summarize


def grouped(users, items, min_seq_len=3):
    n = len(users)
    table = pa.table({"user": np.asarray(users, np.int64), "item": np.asarray(items, np.int64),
                      "ts": np.zeros(n, np.int64), "order": np.arange(n, dtype=np.int64)})
    return group_users(table, min_seq_len=min_seq_len, with_ts=False)


def test_summaries_merge_into_sorted_ids_and_train_counts():
    # User 2 has 1 interaction: dropped. User 7 has item 50 twice at the same time (all ts are 0 and
    # there is no tsv line flag): one exact duplicate row, kept and counted.
    a = grouped([7, 7, 7, 7, 2], [50, 10, 50, 30, 99])
    b = grouped([4, 4, 4], [30, 20, 10])
    s = merge_summaries([summarize(a), summarize(b)])
    assert s.users.tolist() == [4, 7]
    assert s.items.tolist() == [10, 20, 30, 50]  # item 99 belongs to a dropped user: no id
    # train = all but the last two: user 7 -> [50, 10], user 4 -> [30]
    assert s.train_counts.tolist() == [1, 0, 1, 1]
    # every kept interaction, the valid and test targets too: user 7 -> 50, 10, 50, 30; user 4 -> 30, 20, 10
    assert s.interaction_counts.tolist() == [2, 1, 2, 2]
    assert s.interaction_counts.sum() == s.counts["kept_interactions"]
    assert s.counts == {"kept_users": 2, "kept_rows": 7, "kept_interactions": 7, "filtered_users": 1,
                        "filtered_rows": 1, "filtered_interactions": 1, "train_interactions": 3,
                        "duplicate_users": 1, "duplicate_rows": 1, "dropped_rows": 0, "dropped_interactions": 0}


def test_summaries_count_duplicates_and_dropped_rows():
    table = pa.table({"user": np.array([7, 7, 7, 7, 7, 4, 4, 4, 4]), "item": np.array([1, 2, 1, 3, 4, 5, 6, 5, 7]),
                      "ts": np.array([1, 1, 1, 2, 3, 1, 2, 2, 2]), "order": np.arange(9, dtype=np.int64)})
    a, b = table.slice(0, 5), table.slice(5)  # user 7: item 1 at ts 1 twice; user 4: none (5 at ts 1 and 2)
    keep = merge_summaries([summarize(group_users(t, min_seq_len=3, with_ts=True, duplicates="keep")) for t in (a, b)])
    assert {k: keep.counts[k] for k in ("duplicate_users", "duplicate_rows", "dropped_rows", "dropped_interactions",
                                        "kept_rows", "kept_interactions")} == \
        {"duplicate_users": 1, "duplicate_rows": 1, "dropped_rows": 0, "dropped_interactions": 0,
         "kept_rows": 9, "kept_interactions": 9}
    drop = merge_summaries([summarize(group_users(t, min_seq_len=3, with_ts=True, duplicates="drop")) for t in (a, b)])
    assert {k: drop.counts[k] for k in ("duplicate_users", "duplicate_rows", "dropped_rows", "dropped_interactions",
                                        "kept_rows", "kept_interactions")} == \
        {"duplicate_users": 1, "duplicate_rows": 1, "dropped_rows": 1, "dropped_interactions": 1,
         "kept_rows": 8, "kept_interactions": 8}


def test_a_user_in_two_blocks_fails_instead_of_duplicating():
    a, b = grouped([5, 5, 5], [1, 2, 3]), grouped([5, 5, 5], [4, 5, 6])
    with pytest.raises(IngestError, match="user 5 was grouped in two partitions"):
        merge_summaries([summarize(a), summarize(b)])


def test_assign_dense_maps_raw_ids_and_shards(ray_local):
    g = grouped([7, 7, 7, 7, 4, 4, 4], [50, 10, 50, 30, 30, 20, 10])
    s = summarize(g)
    out = assign_dense(g, [ray_local.put(s.users), ray_local.put(s.items)], shard_size=1, with_ts=False)
    d = out.to_pydict()
    assert d["user"] == [1, 2] and d["raw_user"] == [4, 7] and d["shard"] == [0, 1]
    assert d["items"] == [[3, 2, 1], [4, 1, 4, 3]]


def test_lookup_rejects_unknown_ids():
    assert lookup(np.array([3, 8, 9]), np.array([9, 3]), "item").tolist() == [2, 0]
    with pytest.raises(IngestError, match="raw item id 10 is missing"):
        lookup(np.array([3, 8, 9]), np.array([3, 10]), "item")


def test_summaries_merged_as_they_arrive_equal_one_merge(ray_local):
    import ray
    rng = np.random.Generator(np.random.PCG64(8))
    parts = []
    for k in range(19):  # 19 partitions, fan-in 3: three levels and a remainder at each
        users = np.arange(k * 50, k * 50 + 50, dtype=np.int64)
        t = pa.table({"user": np.repeat(users, 4), "item": rng.integers(0, 300, 200),
                      "ts": np.tile(np.arange(4, dtype=np.int64), 50), "order": np.arange(200, dtype=np.int64)})
        parts.append(summarize(group_users(t, min_seq_len=3, with_ts=True)))
    tree = MergeTree(fan_in=3)
    for p in parts:
        tree.add(ray.put(p))
    got, want = tree.result(), merge_summaries(parts)
    assert np.array_equal(got.users, want.users) and np.array_equal(got.items, want.items)
    assert np.array_equal(got.train_counts, want.train_counts) and got.counts == want.counts
    assert len(MergeTree().result().users) == 0


@pytest.mark.parametrize("high", [50, 10 ** 12])  # a compact id range (counted over it) and a sparse one (sorted)
def test_counting_by_id_and_lookup_equal_sorting(high):
    rng = np.random.Generator(np.random.PCG64(high % 97))
    ids = rng.integers(0, high, 20_000)
    mask, weights, extra = rng.random(20_000) < 0.3, rng.integers(0, 9, 20_000), rng.integers(0, high, 50)
    uniq, (masked, weighted, plain) = count_by_id(ids, [mask, weights, None], extra=extra)
    want, inverse = np.unique(np.concatenate([ids, extra]), return_inverse=True)
    inverse = inverse[:len(ids)]
    assert np.array_equal(uniq, want)
    assert np.array_equal(masked, np.bincount(inverse[mask], minlength=len(want)))
    assert np.array_equal(weighted, np.bincount(inverse, weights=weights, minlength=len(want)).astype(np.int64))
    assert np.array_equal(plain, np.bincount(inverse, minlength=len(want)))
    assert np.array_equal(lookup(uniq, ids, "item"), np.searchsorted(uniq, ids))
    absent = np.setdiff1d(np.arange(-1, high + 2) if high < 100 else rng.integers(0, high, 100), uniq)[:1]
    for raw in (absent, np.array([uniq.max() + 1]), np.array([-5])):
        with pytest.raises(IngestError, match=r"raw item id -?\d+ is missing from the merged id map"):
            lookup(uniq, np.concatenate([ids, raw]), "item")
