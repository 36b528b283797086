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
