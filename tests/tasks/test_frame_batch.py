"""FRAME's training batch (``tasks.frame_batch``): examples, clip labels, the users' graph rows, BPR pairs."""

from __future__ import annotations

import numpy as np
import pytest

from mvrec_dist.data.batch import training_windows
from mvrec_dist.data.clip_graphs import build_clip_graphs
from mvrec_dist.tasks.frame_batch import FRAMECollate, user_graph_rows

N = 6


def _rows(seqs, plays, durations, *, max_seq_len=2):
    """The loader's arguments for every window of the given users (as data.loader cuts them)."""
    windows, users, sequences, extras, origin = [], [], [], {"plays": []}, []
    for u, (seq, play, dur) in enumerate(zip(seqs, plays, durations), start=1):
        seq, play, dur = (np.asarray(a, dtype=np.int64) for a in (seq, play, dur))
        ws = training_windows(seq, max_seq_len, "all")
        wp, wd = training_windows(play, max_seq_len, "all"), training_windows(dur, max_seq_len, "all")
        for k, w in enumerate(ws):
            windows.append(w)
            users.append(u)
            sequences.append(seq)
            extras["plays"].append((wp[k], wd[k], play, dur))
            origin.append((u, k))
    return windows, users, sequences, np.asarray(origin, dtype=np.int64), extras


def test_a_hand_table_gives_the_hand_computed_batch():
    # User 1 watched item 2 through (r=1), left item 3 in clip 1 (r=0.3), item 5 in clip 0 (r=0.1);
    # user 2 left item 3 in clip 2 (r=0.6), then watched item 4 through twice the duration (r>1 -> 1).
    seqs = [[2, 3, 5], [3, 4]]
    plays, durations = [[10, 3, 1], [6, 20]], [[10, 10, 10], [10, 10]]
    windows, users, sequences, prov, extras = _rows(seqs, plays, durations)
    batch = FRAMECollate(num_items=N, plays=True, bpr_negatives="in_batch")(windows, users, sequences, prov, 0,
                                                                            extras)
    # Windows (L=2): user 1 -> [2,3,5]; user 2 -> [3,4]. Examples: every item but each user's first.
    assert batch.users.tolist() == [1, 2]
    assert batch.items.tolist() == [3, 5, 4] and batch.example_rows.tolist() == [0, 0, 1]
    assert batch.labels.tolist() == [[1, 0, -1, -1], [0, -1, -1, -1], [1, 1, 1, 1]]
    assert batch.positive_weights.tolist() == pytest.approx([0.25, 0.0, 1.0])
    assert batch.num_targets == 2 + 1 + 4
    # A_pos row of user 1: clips 8..11 of item 2, clip 12 of item 3 -> 5 edges of 1/5;
    # A_neg: clip 13 (item 3, left in clip 1) and clip 20 (item 5, left in clip 0) -> 1/2 each.
    # User 2: A_pos clips 12, 13 (item 3) and 16..19 (item 4) -> 1/6 each; A_neg clip 14 -> 1.
    assert batch.pos_lengths.tolist() == [5, 6] and batch.neg_lengths.tolist() == [2, 1]
    assert batch.pos_ids.tolist() == [8, 9, 10, 11, 12, 12, 13, 16, 17, 18, 19]
    assert batch.pos_weights.tolist() == pytest.approx([0.2] * 5 + [1 / 6] * 6)
    assert batch.neg_ids.tolist() == [13, 20, 14] and batch.neg_weights.tolist() == pytest.approx([0.5, 0.5, 1.0])
    # BPR: example i pairs with example (i + 1) % 3; 5 is in user 1's sequence, 4 is not, 3 is in user 2's.
    assert batch.negatives.tolist() == [0, 4, 0]
    assert batch.unique_items.tolist() == [0, 3, 4, 5]


def test_sampled_bpr_negatives_are_unplayed_and_keyed_by_the_row():
    seqs = [[2, 3, 5, 1], [3, 4, 6]]
    windows, users, sequences, prov, extras = _rows(seqs, [[1, 1, 1, 1], [1, 1, 1]], [[2, 2, 2, 2], [2, 2, 2]],
                                                    max_seq_len=3)
    collate = FRAMECollate(num_items=N, plays=True, seed=3)
    a = collate(windows, users, sequences, prov, 0, extras)
    assert len(a.negatives) == a.num_examples == 3 + 2
    for row, neg in zip(a.example_rows.tolist(), a.negatives.tolist()):
        assert 1 <= neg <= N and neg not in seqs[row]
    # The same rows draw the same, alone or in another batch; another epoch draws anew (keys: seed, epoch, row).
    alone = collate(windows[1:], users[1:], sequences[1:], prov[1:], 0, {"plays": extras["plays"][1:]})
    assert alone.negatives.tolist() == a.negatives[3:].tolist()
    draws = {tuple(collate(windows, users, sequences, prov, e, extras).negatives.tolist()) for e in range(6)}
    assert len(draws) > 1


def test_without_play_times_every_play_is_watched_through():
    seqs = [[1, 2, 2, 3]]
    windows, users, sequences, prov, _ = _rows(seqs, [[1] * 4], [[1] * 4], max_seq_len=3)
    batch = FRAMECollate(num_items=N, plays=False)(windows, users, sequences, prov, 0)
    assert batch.labels.tolist() == [[1, 1, 1, 1]] * 3 and batch.positive_weights.tolist() == [1.0] * 3
    assert batch.neg_lengths.tolist() == [0] and batch.neg_ids.numel() == 0
    # Item 2 twice: its clips weigh twice as much (duplicates add before the row is normalised).
    weights = dict(zip(batch.pos_ids.tolist(), batch.pos_weights.tolist()))
    assert weights[8] == pytest.approx(2 / 16) and weights[4] == pytest.approx(1 / 16)
    assert sum(weights.values()) == pytest.approx(1.0)


@pytest.mark.parametrize("rule", ["left_once", "released"])
def test_each_users_rows_are_the_global_graphs_rows(rule):
    rng = np.random.default_rng(5)
    seqs = [rng.integers(1, N + 1, size=rng.integers(1, 9)) for _ in range(7)]
    ratios = [rng.choice([0.0, 0.1, 0.3, 0.55, 0.8, 1.0, 1.7], size=len(s)) for s in seqs]
    (pos_ids, pos_len, pos_w), (neg_ids, neg_len, neg_w) = user_graph_rows(seqs, ratios, num_items=N, rule=rule)
    users = np.repeat(np.arange(1, 8), [len(s) for s in seqs])
    graphs = build_clip_graphs(users, np.concatenate(seqs), np.concatenate(ratios), num_users=7, num_items=N,
                               rule=rule)
    for (ids, lengths, weights), graph in (((pos_ids, pos_len, pos_w), graphs.positive),
                                           ((neg_ids, neg_len, neg_w), graphs.negative)):
        dense = np.zeros((7, (N + 1) * 4))
        np.add.at(dense, (np.repeat(np.arange(7), lengths), ids), weights)
        np.testing.assert_allclose(dense, graph.to_dense()[1:], rtol=0, atol=1e-7)


def test_the_dummy_batch_has_one_empty_row():
    d = FRAMECollate(num_items=N, plays=True).dummy()
    assert d.users.tolist() == [0] and d.num_examples == 0 and d.num_targets == 0
    assert d.pos_lengths.tolist() == [0] == d.neg_lengths.tolist()


@pytest.mark.integration
def test_an_epoch_on_two_ranks_gives_every_play_but_the_first_once_with_its_labels(ray_local, tmp_path):
    """Through the real loader over ingested synthetic plays: each rank's stream, together."""
    from mvrec_dist.config import TrainJobConfig, load_config
    from mvrec_dist.config.ingest import SyntheticConfig
    from mvrec_dist.data.clip_graphs import clip_labels, play_ratios
    from mvrec_dist.data.loader import TrainData
    from mvrec_dist.data.manifest import load_manifest
    from mvrec_dist.data.synthetic import generate
    from tests.helpers.shards import ingest_small_blocks, members_by_user

    generate(SyntheticConfig(users=12, items=40, interactions=120, seed=4, chunk_users=7, plays=True,
                             output=str(tmp_path / "raw")), use_ray=False)
    ingest_small_blocks(tmp_path / "raw", tmp_path / "ds")
    manifest = load_manifest(str(tmp_path / "ds"))
    assert manifest.plays is not None
    train = members_by_user(tmp_path / "ds", "train", {"items.npy", "play.npy", "duration.npy", "json"})
    expected = sorted((m["json"]["user"], int(i), tuple(lab)) for m in train.values()
                      for i, lab in zip(m["items.npy"][1:], clip_labels(play_ratios(m["play.npy"],
                                                                                    m["duration.npy"]))[1:]))
    seen = []
    for rank in range(2):
        cfg = load_config(TrainJobConfig, None, [f"data.dataset_dir={tmp_path / 'ds'}", "train.batch_size=4",
                                                 "data.max_seq_len=3", "data.loader_workers=0",
                                                 "parallel.num_workers=2"])
        data = TrainData(cfg, manifest, rank=rank, world_size=2,
                         collate=FRAMECollate(num_items=manifest.num_items, plays=True))
        for batch in data.train_batches(0):
            users = batch.users[batch.example_rows]
            seen += [(int(u), int(i), tuple(lab)) for u, i, lab in zip(users, batch.items, batch.labels.tolist())]
    assert sorted(seen) == expected and len(expected) >= 60  # 120 plays less 2 held out and 1 first per user
