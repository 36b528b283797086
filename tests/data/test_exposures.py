"""Exposure selection against plain Python references: recent exposures before a time, candidate pools,
times for items without their own, padding times."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mvrec_dist.data.exposures import exposure_pools, hold_last, jagged, recent_before, spread_times

row = st.lists(st.tuples(st.integers(1, 30), st.integers(0, 40)), max_size=12)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(row, st.integers(-1, 45)), min_size=1, max_size=6), st.integers(1, 5))
def test_recent_before_takes_the_last_exposures_strictly_before_the_time(rows, length):
    # Each row's exposures in time order (what the exposures split stores), and a positive's time.
    exposures = [sorted(r, key=lambda e: e[1]) for r, _ in rows]
    before = np.array([t for _, t in rows], dtype=np.int64)
    items, offsets = jagged([np.array([i for i, _ in e], dtype=np.int64) for e in exposures])
    times, _ = jagged([np.array([t for _, t in e], dtype=np.int64) for e in exposures])
    got, got_t, first = recent_before(items, times, offsets, before, length)
    assert got.shape == got_t.shape == (len(rows), length)
    for r, e in enumerate(exposures):
        earlier = [x for x in e if x[1] < before[r]]
        want = earlier[-length:]
        assert got[r, :len(want)].tolist() == [i for i, _ in want] and not got[r, len(want):].any()
        assert got_t[r, :len(want)].tolist() == [t for _, t in want]
        # Padding holds the last real time (0 without any): every padding distance is 0.
        assert set(got_t[r, len(want):].tolist()) <= {want[-1][1] if want else 0}
        assert first[r] == max(len(earlier) - length, 0)


def test_pools_leave_out_the_negative_history_and_the_excluded_items_wherever_they_were_shown():
    items, offsets = jagged([np.array([5, 6, 7, 5, 8, 9]), np.array([], dtype=np.int64), np.array([3, 4])])
    chosen = np.array([[6, 5], [0, 0], [0, 0]])
    pools = exposure_pools(items, offsets, chosen, np.array([0, 0, 0]), [np.array([9]), np.array([1]), np.array([])])
    # Item 5 was shown twice: it is in H_neg, so neither showing is a candidate.
    assert [p.tolist() for p in pools] == [[7, 8], [], [3, 4]]


def test_spread_times_cover_the_history_in_order_and_hold_last_pads():
    times = np.array([[10, 20, 30, 0], [7, 0, 0, 0], [0, 0, 0, 0]])
    lengths = np.array([3, 1, 0])
    out = spread_times(times, lengths, 6)
    assert out.tolist() == [[10, 10, 20, 20, 30, 30], [7] * 6, [0] * 6]
    assert hold_last(times, lengths).tolist() == [[10, 20, 30, 30], [7, 7, 7, 7], [0, 0, 0, 0]]
