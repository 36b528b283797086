"""FRAME's user x clip graphs: a hand-computed table under both rules, row sums, transposes, a brute-force
property check, the clip labels, and the pooled-lookup form through TorchRec equal to dense ``A @ C``."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mvrec_dist.data.clip_graphs import (CLIPS, build_clip_graphs, clip_labels, clip_positive_weights, play_ratios,
                                         video_labels, watched_clips)

# (user, item, play ratio); 3 users, 2 items, so 12 clip columns (clips 0-3 belong to padding item 0).
TABLE = [(1, 1, 0.6),   # k=2: clips 4, 5 watched, left in 6
         (1, 2, 1.0),   # k=4: clips 8-11 watched, no negative
         (2, 1, 0.1),   # k=0: nothing watched, left in 4
         (2, 2, 0.8),   # k=3: clips 8-10 watched, left in 11
         (2, 2, 0.3),   # the same video again, k=1: clip 8 watched, left in 9
         (3, 1, 1.7)]   # above 1 counts as 1: clips 4-7 watched
USERS, ITEMS, RATIOS = (np.array(c) for c in zip(*TABLE))
S = 1 / 6
POSITIVE = np.array([[0] * 12,
                     [0, 0, 0, 0, S, S, 0, 0, S, S, S, S],
                     [0, 0, 0, 0, 0, 0, 0, 0, .5, .25, .25, 0],  # clip 8 twice
                     [0, 0, 0, 0, .25, .25, .25, .25, 0, 0, 0, 0]])
T = 1 / 3
NEGATIVE = {"left_once": np.array([[0] * 12,
                                   [0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0],
                                   [0, 0, 0, 0, T, 0, 0, 0, 0, T, 0, T],
                                   [0] * 12]),
            # Weight k per negative edge: 2 for clip 6; clip 4 (k=0) none, clip 11 3, clip 9 1.
            "released": np.array([[0] * 12,
                                  [0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0],
                                  [0, 0, 0, 0, 0, 0, 0, 0, 0, .25, 0, .75],
                                  [0] * 12])}


@pytest.mark.parametrize("rule", ["left_once", "released"])
def test_hand_table_gives_the_hand_computed_graphs(rule):
    g = build_clip_graphs(USERS, ITEMS, RATIOS, num_users=3, num_items=2, rule=rule)
    np.testing.assert_allclose(g.positive.to_dense(), POSITIVE, rtol=0, atol=1e-15)
    np.testing.assert_allclose(g.negative.to_dense(), NEGATIVE[rule], rtol=0, atol=1e-15)
    for graph, transposed in ((g.positive, g.positive_t), (g.negative, g.negative_t)):
        assert transposed.num_rows == graph.num_cols == 12 and transposed.num_cols == graph.num_rows == 4
        np.testing.assert_array_equal(transposed.to_dense(), graph.to_dense().T)
        sums = graph.to_dense().sum(axis=1)
        nonempty = np.diff(graph.indptr) > 0
        np.testing.assert_allclose(sums[nonempty], 1.0, rtol=0, atol=1e-12)
        assert not sums[~nonempty].any() and not nonempty[0]  # padding user 0 has no edges


def test_clip_labels_weights_and_video_labels_from_the_ratio():
    np.testing.assert_array_equal(clip_labels(RATIOS), [[1, 1, 0, -1], [1, 1, 1, 1], [0, -1, -1, -1],
                                                        [1, 1, 1, 0], [1, 0, -1, -1], [1, 1, 1, 1]])
    np.testing.assert_array_equal(clip_positive_weights(RATIOS), [.5, 1, 0, .75, .25, 1])
    np.testing.assert_array_equal(video_labels(RATIOS), [0, 1, 0, 0, 0, 1])
    # Boundaries belong to the clip they start: r = j/4 has watched j clips through.
    np.testing.assert_array_equal(watched_clips([0.0, 0.25, 0.5, 0.75, 1.0, 0.2499999]), [0, 1, 2, 3, 4, 0])
    np.testing.assert_array_equal(watched_clips(play_ratios([250, 999, 1000, 5], [1000, 1000, 1000, 4])),
                                  [1, 3, 4, 4])
    with pytest.raises(ValueError, match=">= 0"):
        watched_clips([np.nan])


def test_bad_ids_are_refused():
    with pytest.raises(ValueError, match="item ids must be in 1 .. 2"):
        build_clip_graphs([1], [0], [0.5], num_users=3, num_items=2)
    with pytest.raises(ValueError, match="user ids must be in 1 .. 3"):
        build_clip_graphs([4], [1], [0.5], num_users=3, num_items=2)


def _brute(table, num_users, num_items, rule):
    """Dense graphs by a loop over plays and clips, the rules as the module docstring states them."""
    pos = np.zeros((num_users + 1, (num_items + 1) * CLIPS))
    neg = np.zeros_like(pos)
    for u, i, r in table:
        watched = 0
        for j in range(CLIPS):
            if min(r, 1.0) >= (j + 1) / CLIPS:
                pos[u, i * CLIPS + j] += 1
                watched += 1
        if watched < CLIPS and (rule == "left_once" or watched > 0):
            neg[u, i * CLIPS + watched] += 1 if rule == "left_once" else watched
    for a in (pos, neg):
        rows = a.sum(axis=1, keepdims=True)
        np.divide(a, rows, out=a, where=rows > 0)
    return pos, neg


RATIO = st.one_of(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0, 1.5]), st.floats(0.0, 2.0))


@settings(max_examples=150, deadline=None)
@given(table=st.lists(st.tuples(st.integers(1, 5), st.integers(1, 4), RATIO), max_size=30),
       rule=st.sampled_from(["left_once", "released"]))
def test_graphs_match_a_brute_force_loop(table, rule):
    users, items, ratios = (np.array(c, dtype=d) for c, d in
                            zip(zip(*table) if table else ([], [], []), (np.int64, np.int64, np.float64)))
    g = build_clip_graphs(users, items, ratios, num_users=5, num_items=4, rule=rule)
    pos, neg = _brute(table, 5, 4, rule)
    np.testing.assert_allclose(g.positive.to_dense(), pos, rtol=0, atol=1e-12)
    np.testing.assert_allclose(g.negative.to_dense(), neg, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(g.positive_t.to_dense(), g.positive.to_dense().T)
    np.testing.assert_array_equal(g.negative_t.to_dense(), g.negative.to_dense().T)
    for graph in (g.positive, g.negative, g.positive_t):
        assert np.all(np.diff(graph.indptr) >= 0) and np.all(graph.weights > 0)
        for r in range(graph.num_rows):  # columns ascending within a row
            assert np.all(np.diff(graph.indices[graph.indptr[r]:graph.indptr[r + 1]]) > 0)


def test_row_bags_through_a_weighted_torchrec_bag_table_equal_dense_a_times_c():
    import torch

    from mvrec_dist.models.tables import Bags, EmbeddingTables, TableSpec, table_inputs

    rng = np.random.default_rng(11)
    num_users, num_items, plays = 40, 25, 300
    ratios = np.where(rng.random(plays) < 0.3, 1.0, rng.random(plays))
    users = rng.integers(1, num_users + 1, plays)
    users[users == 7] = 8  # user 7 has no plays: an empty bag
    g = build_clip_graphs(users, rng.integers(1, num_items + 1, plays), ratios, num_users=num_users,
                          num_items=num_items)
    spec = TableSpec(name="clip", num_embeddings=(num_items + 1) * CLIPS, embedding_dim=6,
                     features=("clips_pos", "clips_neg"), pooled=True, weighted=True, keyed_by="clip", seed=2)
    tables = EmbeddingTables([spec])
    c = next(tables.parameters()).detach().double().numpy()  # [(N+1) C, D]
    batch = np.array([3, 7, 3, 40, 1, 0])  # repeats, an empty user, padding user 0
    features = {}
    for name, graph in (("clips_pos", g.positive), ("clips_neg", g.negative)):
        bags = graph.row_bags(batch)
        assert bags.ids.dtype == np.int64 and bags.weights.dtype == np.float32 and bags.lengths.tolist()[1] == 0
        features[name] = Bags(ids=torch.from_numpy(bags.ids), lengths=torch.from_numpy(bags.lengths),
                              weights=torch.from_numpy(bags.weights))
    out = tables(**table_inputs((spec,), features))
    for name, graph in (("clips_pos", g.positive), ("clips_neg", g.negative)):
        expected = graph.to_dense()[batch] @ c  # [B, D]
        np.testing.assert_allclose(out[name].detach().double().numpy(), expected, rtol=1e-5, atol=1e-7)
    # The transposed graph's bags pool user vectors per clip the same way (a segment sum here).
    u = rng.standard_normal((num_users + 1, 3))
    clips = np.array([4, 5, 99, 4, 0])
    bags = g.positive_t.row_bags(clips)
    pooled = np.zeros((len(clips), 3))
    np.add.at(pooled, np.repeat(np.arange(len(clips)), bags.lengths), bags.weights[:, None] * u[bags.ids])
    np.testing.assert_allclose(pooled, g.positive.to_dense().T[clips] @ u, rtol=1e-6, atol=1e-7)
    assert bags.lengths[-1] == 0  # a padding clip has no users
