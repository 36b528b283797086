"""Grouping into per-user sequences, against a plain Python reference (ties broken by file, position)."""

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from mvrec_dist.data.ingest.grouping import group_users, user_order


def reference(rows, min_seq_len):
    """``{user: (n, rows, kept, items, ts)}`` by sorting each user's rows with Python's sort."""
    out = {}
    for user in sorted({r[0] for r in rows}):
        mine = sorted((r for r in rows if r[0] == user), key=lambda r: (r[2], r[3]))
        kept = len(mine) >= min_seq_len
        out[user] = (len(mine), sum(r[4] for r in mine), kept,
                     [r[1] for r in mine] if kept else [], [r[2] for r in mine] if kept else [])
    return out


interaction = st.tuples(st.integers(0, 6), st.integers(0, 50), st.integers(0, 3), st.booleans())


@settings(max_examples=300, deadline=None)
@given(st.lists(interaction, max_size=60), st.integers(3, 6), st.booleans(), st.randoms(), st.booleans())
def test_group_users_matches_reference(raw, min_seq_len, tsv, rnd, presorted):
    # Unique order keys (file << 40 | position), in any order, or sorted by (user, ts, order) as the
    # range partitioning's reducers deliver them (then no sort is needed).
    orders = rnd.sample(range(1 << 41), len(raw))
    rows = [(u, i, 0 if tsv else t, o, int(first)) for (u, i, t, first), o in zip(raw, orders)]
    rnd.shuffle(rows)
    if presorted:
        rows.sort(key=lambda r: (r[0], r[2], r[3]))
        assert len(rows) < 2 or user_order(*(np.array([r[k] for r in rows]) for k in (0, 2, 3))) is None
    cols = list(zip(*rows)) if rows else [[], [], [], [], []]
    data = {"user": pa.array(cols[0], pa.int64()), "item": pa.array(cols[1], pa.int64()),
            "ts": pa.array(cols[2], pa.int64()), "order": pa.array(cols[3], pa.int64())}
    if tsv:
        data["first"] = pa.array([bool(x) for x in cols[4]], pa.bool_())
    out = group_users(pa.table(data), min_seq_len=min_seq_len, with_ts=not tsv).to_pydict()
    expected = reference(rows if tsv else [r[:4] + (1,) for r in rows], min_seq_len)
    assert out["user"] == list(expected)
    for k, user in enumerate(out["user"]):
        n, nrows, kept, items, ts = expected[user]
        assert (out["n"][k], out["rows"][k], out["kept"][k], out["items"][k]) == (n, nrows, kept, items)
        if not tsv:
            assert out["ts"][k] == ts


def test_ties_on_timestamp_follow_file_then_position():
    f = lambda file, pos: (file << 40) | pos  # noqa: E731
    table = pa.table({"user": [1, 1, 1, 1, 1], "item": [10, 11, 12, 13, 14], "ts": [5, 5, 5, 4, 5],
                      "order": [f(1, 0), f(0, 900), f(0, 20), f(3, 3), f(0, 21)]})
    out = group_users(table, min_seq_len=3, with_ts=True).to_pydict()
    assert out["items"] == [[13, 12, 14, 11, 10]] and out["ts"] == [[4, 5, 5, 5, 5]]


def test_nearly_sorted_blocks_are_sorted():
    user, ts, order = np.array([1, 1, 2, 2]), np.array([5, 5, 1, 2]), np.array([9, 8, 1, 2])
    assert user_order(user, ts, order).tolist() == [1, 0, 2, 3]  # a tie on ts broken by order
    assert user_order(user, np.array([5, 4, 1, 2]), order).tolist() == [1, 0, 2, 3]
    assert user_order(np.array([2, 1]), np.array([0, 0]), np.array([0, 1])).tolist() == [1, 0]


def test_short_users_are_dropped_but_counted():
    table = pa.table({"user": np.array([2, 2, 9, 9, 9]), "item": np.arange(5), "ts": np.zeros(5, np.int64),
                      "order": np.arange(5)})
    out = group_users(table, min_seq_len=3, with_ts=False).to_pydict()
    assert out == {"user": [2, 9], "n": [2, 3], "rows": [2, 3], "dup_rows": [0, 0], "dropped": [0, 0],
                   "kept": [False, True], "items": [[], [2, 3, 4]]}


labelled = st.tuples(st.integers(0, 5), st.integers(0, 30), st.integers(0, 4), st.integers(0, 1))


@settings(max_examples=200, deadline=None)
@given(st.lists(labelled, max_size=50), st.integers(2, 4), st.randoms(),
       st.sampled_from(["keep", "drop"]))
def test_labelled_rows_split_into_sequences_and_exposures(raw, min_seq_len, rnd, duplicates):
    # Label-0 rows never enter the sequence or its length; they are kept per user in time order.
    orders = rnd.sample(range(1 << 41), len(raw))
    rows = [(u, i, t, o, lab) for (u, i, t, lab), o in zip(raw, orders)]
    cols = list(zip(*rows)) if rows else [[], [], [], [], []]
    table = pa.table({"user": pa.array(cols[0], pa.int64()), "item": pa.array(cols[1], pa.int64()),
                      "ts": pa.array(cols[2], pa.int64()), "order": pa.array(cols[3], pa.int64()),
                      "label": pa.array(cols[4], pa.int8())})
    out = group_users(table, min_seq_len=min_seq_len, with_ts=True, duplicates=duplicates, labels=True).to_pydict()
    assert out["user"] == sorted({r[0] for r in rows})
    for k, user in enumerate(out["user"]):
        mine = sorted((r for r in rows if r[0] == user), key=lambda r: (r[2], r[3]))
        classes = {}
        for lab in (1, 0):
            seen, kept, dups = set(), [], 0
            for r in (r for r in mine if r[4] == lab):  # a duplicate repeats (item, ts) within its class
                dups += (r[1], r[2]) in seen
                if (r[1], r[2]) not in seen or duplicates == "keep":
                    kept.append(r)
                seen.add((r[1], r[2]))
            classes[lab] = (kept, dups)
        (pos, pos_dups), (neg, neg_dups) = classes[1], classes[0]
        is_kept = len(pos) >= min_seq_len
        assert (out["n"][k], out["exposures"][k], out["rows"][k], out["kept"][k]) == \
            (len(pos), len(neg), len(pos) + len(neg), is_kept)
        assert out["dup_rows"][k] == pos_dups + neg_dups
        assert (out["dropped"][k], out["exp_dropped"][k]) == ((pos_dups, neg_dups) if duplicates == "drop" else (0, 0))
        assert out["items"][k] == ([r[1] for r in pos] if is_kept else [])
        assert out["exp_items"][k] == ([r[1] for r in neg] if is_kept else [])
        assert out["exp_ts"][k] == ([r[2] for r in neg] if is_kept else [])


def test_a_duplicate_exposure_is_named_like_a_duplicate_interaction():
    import pytest

    from mvrec_dist.data.ingest.errors import IngestError

    table = pa.table({"user": [1] * 5, "item": [1, 2, 3, 9, 9], "ts": [1, 2, 3, 5, 5], "order": [0, 10, 20, 30, 40],
                      "label": pa.array([1, 1, 1, 0, 0], pa.int8())})
    with pytest.raises(IngestError, match=r"byte 40: exact duplicate of .*byte 30 \(user 1, item 9, timestamp 5\)"):
        group_users(table, min_seq_len=3, with_ts=True, duplicates="error", labels=True)
    # The same (user, item, timestamp) once clicked and once only shown is no duplicate.
    table = table.set_column(4, "label", pa.array([1, 1, 1, 1, 0], pa.int8()))
    out = group_users(table, min_seq_len=3, with_ts=True, duplicates="error", labels=True).to_pydict()
    assert out["items"] == [[1, 2, 3, 9]] and out["exp_items"] == [[9]] and out["dup_rows"] == [0]
