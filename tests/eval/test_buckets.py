"""Tests of mvrec_dist.eval.buckets against brute force, and of the per-bucket figures of an evaluation
(evaluate_ranking) on one process and reduced over two gloo ranks."""

from __future__ import annotations

import contextlib
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mvrec_dist.config import ConfigError
from mvrec_dist.config.eval import EvalConfig
from mvrec_dist.eval.buckets import (DEFAULT_EDGES, bucket_labels, bucket_metrics, bucket_of, bucket_results,
                                     bucket_sums, check_edges)
from mvrec_dist.eval.runner import evaluate_ranking

EDGES = (0, 1, 5, 10)
KS = (1, 3)


def brute_bucket(count: int, edges) -> int:
    return max(b for b, lo in enumerate(edges) if count >= lo)


def brute_metrics(ranks, counts, edges, ks) -> list[dict]:
    """One Python loop per bucket and user."""
    out = []
    for b, lo in enumerate(edges):
        hi = edges[b + 1] if b + 1 < len(edges) else math.inf
        mine = [r for r, c in zip(ranks, counts) if lo <= c < hi]
        row = {"bucket": f"[{lo},{'inf' if hi == math.inf else hi})", "lo": lo,
               "hi": None if hi == math.inf else hi, "users": len(mine)}
        for k in ks:
            row[f"hr@{k}"] = sum(1 for r in mine if r < k) / len(mine) if mine else None
            row[f"ndcg@{k}"] = sum(1 / math.log2(r + 2) for r in mine if r < k) / len(mine) if mine else None
        out.append(row)
    return out


def assert_rows_close(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        for key, value in w.items():
            if isinstance(value, float):
                assert g[key] == pytest.approx(value, abs=1e-12), key
            else:
                assert g[key] == value, key


def test_hand_case_with_a_never_seen_target_and_empty_buckets():
    # counts: 0 (never seen in training) -> [0,1); 1 and 4 -> [1,5); nothing in [5,10); 10 and 99 -> [10,inf).
    ranks = torch.tensor([0, 2, 7, 0, 5])
    counts = torch.tensor([0, 1, 4, 10, 99])
    rows = bucket_metrics(ranks, counts, EDGES, KS)
    assert [r["bucket"] for r in rows] == ["[0,1)", "[1,5)", "[5,10)", "[10,inf)"]
    assert [r["users"] for r in rows] == [1, 2, 0, 2]
    assert rows[0]["hr@1"] == 1.0 and rows[0]["ndcg@3"] == 1.0  # the cold target ranked first
    assert rows[1]["hr@3"] == 0.5 and rows[1]["hr@1"] == 0.0
    assert rows[1]["ndcg@3"] == pytest.approx(0.5 / math.log2(4), abs=1e-12)
    assert rows[2] == {"bucket": "[5,10)", "lo": 5, "hi": 10, "users": 0, "hr@1": None, "ndcg@1": None,
                       "hr@3": None, "ndcg@3": None}
    assert rows[3]["hi"] is None and rows[3]["hr@1"] == 0.5 and rows[3]["hr@3"] == 0.5
    assert_rows_close(rows, brute_metrics(ranks.tolist(), counts.tolist(), EDGES, KS))
    # Users of all buckets add up to the users, and their weighted means to the overall metric.
    assert sum(r["users"] for r in rows) == 5
    overall = sum(r["users"] * r["hr@3"] for r in rows if r["users"]) / 5
    assert overall == pytest.approx(float((ranks < 3).double().mean()), abs=1e-12)


def test_no_users_gives_empty_buckets():
    rows = bucket_metrics(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), EDGES, KS)
    assert [r["users"] for r in rows] == [0, 0, 0, 0] and all(r["hr@1"] is None for r in rows)


@settings(max_examples=100, deadline=None)
@given(counts=st.lists(st.integers(0, 300), max_size=50),
       gaps=st.lists(st.integers(1, 80), min_size=0, max_size=6))
def test_bucket_of_matches_brute_force(counts, gaps):
    edges = tuple(int(e) for e in np.cumsum([0, *gaps]))
    got = bucket_of(torch.tensor(counts, dtype=torch.long), edges).tolist()
    assert got == [brute_bucket(c, edges) for c in counts]
    assert bucket_of(np.asarray(counts, dtype=np.int64), edges).tolist() == got


@settings(max_examples=60, deadline=None)
@given(data=st.data(), ks=st.lists(st.integers(1, 40), min_size=1, max_size=3, unique=True))
def test_bucket_metrics_and_a_split_reduction_match_brute_force(data, ks):
    ranks = data.draw(st.lists(st.integers(0, 50), max_size=40))
    counts = data.draw(st.lists(st.integers(0, 250), min_size=len(ranks), max_size=len(ranks)))
    cut = data.draw(st.integers(0, len(ranks)))
    r, c = torch.tensor(ranks, dtype=torch.long), torch.tensor(counts, dtype=torch.long)
    want = brute_metrics(ranks, counts, DEFAULT_EDGES, ks)
    assert_rows_close(bucket_metrics(r, c, DEFAULT_EDGES, ks), want)
    # Two 'ranks', each with a slice of the users: their sums added give the whole split's figures.
    summed = bucket_sums(r[:cut], c[:cut], DEFAULT_EDGES, ks) + bucket_sums(r[cut:], c[cut:], DEFAULT_EDGES, ks)
    assert_rows_close(bucket_results(summed, DEFAULT_EDGES, ks), want)


@pytest.mark.parametrize("edges, match", [((), "non-empty"), ((1, 5), "start at 0"), ((0, 5, 5), "strictly"),
                                          ((0, 2.5), "integers"), ((0, True), "integers")])
def test_bad_edges_fail_clearly(edges, match):
    with pytest.raises(ValueError, match=match):
        check_edges(edges)


def test_bad_inputs_fail_clearly():
    with pytest.raises(ValueError, match="same shape"):
        bucket_sums(torch.tensor([1, 2]), torch.tensor([1]), EDGES, KS)
    with pytest.raises(ValueError, match=">= 0"):
        bucket_of(torch.tensor([-1]), EDGES)
    with pytest.raises(ValueError, match="integer"):
        bucket_of(torch.tensor([1.0]), EDGES)
    with pytest.raises(ValueError, match=r"sums must be \[4, 5\]"):
        bucket_results(torch.zeros(3, 5), EDGES, KS)


def test_config_default_and_checks():
    assert EvalConfig().popularity_buckets == DEFAULT_EDGES == (0, 1, 5, 10, 20, 50, 100, 200)
    assert bucket_labels(DEFAULT_EDGES)[0] == "[0,1)" and bucket_labels(DEFAULT_EDGES)[-1] == "[200,inf)"
    assert EvalConfig(popularity_buckets=()).popularity_buckets == ()
    for bad in ((1, 5), (0, 10, 5)):
        with pytest.raises(ConfigError, match="popularity_buckets"):
            EvalConfig(popularity_buckets=bad)


# ---------------------------------------------------------------- wired into evaluate_ranking

N, D = 30, 4


class TinyModel:
    """User state = representation of the last history item; ``sum_over_ranks`` = all-reduce (or identity)."""

    def __init__(self, ctx=None):
        self.ctx = ctx
        self.items = torch.randn(N + 1, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64).float()

    @contextlib.contextmanager
    def evaluating(self):
        yield

    def item_representations(self, num_items):
        return self.items

    def user_states(self, history, lengths, item_repr):
        return item_repr[history[torch.arange(len(lengths)), lengths - 1]]

    def sum_over_ranks(self, values):
        if self.ctx is None:
            return values
        from mvrec_dist.parallel.process_groups import all_reduce_sum

        return all_reduce_sum(values, self.ctx)


def users(seed: int = 0, count: int = 23) -> list[tuple[list[int], int]]:
    g = np.random.default_rng(seed)
    return [(g.integers(1, N + 1, size=int(g.integers(1, 5))).tolist(), int(g.integers(1, N + 1)))
            for _ in range(count)]


def batches(rows, size: int = 5) -> list:
    out = []
    for lo in range(0, len(rows), size):
        part = rows[lo:lo + size]
        width = max(len(h) for h, _ in part)
        history = torch.zeros(len(part), width, dtype=torch.long)
        for i, (h, _) in enumerate(part):
            history[i, :len(h)] = torch.tensor(h)
        values = torch.tensor([x for h, _ in part for x in h])
        offsets = torch.tensor(np.concatenate([[0], np.cumsum([len(h) for h, _ in part])]))
        out.append(SimpleNamespace(history=history, lengths=torch.tensor([len(h) for h, _ in part]),
                                   targets=torch.tensor([t for _, t in part]), history_values=values,
                                   history_offsets=offsets))
    return out


def train_counts() -> torch.Tensor:
    counts = torch.tensor(np.random.default_rng(7).integers(0, 60, size=N + 1))
    counts[0] = 0
    counts[3] = 0  # a never-seen item
    return counts


def expected(rows, counts, edges=(0, 1, 10, 30), ks=(1, 5)) -> tuple[dict, list[dict]]:
    from mvrec_dist.eval.full_ranking import target_ranks

    model = TinyModel()
    ranks, targets = [], []
    for b in batches(rows, size=len(rows)):
        states = model.user_states(b.history, b.lengths, model.items)
        ranks += target_ranks(states, model.items, b.targets, b.history_values, b.history_offsets).tolist()
        targets += b.targets.tolist()
    return ranks, brute_metrics(ranks, [int(counts[t]) for t in targets], edges, ks)


def test_evaluate_ranking_records_the_buckets_of_its_users():
    rows, counts = users(), train_counts()
    rows.append(([1, 2], 3))  # a target never seen in training
    edges, ks = (0, 1, 10, 30), (1, 5)
    out = evaluate_ranking(TinyModel(), batches(rows), num_items=N, ks=ks, item_train_counts=counts,
                           bucket_edges=edges)
    ranks, want = expected(rows, counts, edges, ks)
    assert_rows_close(out["buckets"], want)
    assert out["buckets"][0]["users"] >= 1 and out["users"] == len(rows)
    assert out["hr@5"] == pytest.approx(sum(r < 5 for r in ranks) / len(rows), abs=1e-12)
    # Off: no edges, or no counts.
    assert "buckets" not in evaluate_ranking(TinyModel(), batches(rows), num_items=N, ks=ks)
    assert "buckets" not in evaluate_ranking(TinyModel(), batches(rows), num_items=N, ks=ks,
                                             item_train_counts=counts, bucket_edges=())


def _rank_eval(ctx, rows, counts, edges, ks):
    mine = rows[ctx.rank::ctx.world_size]  # each rank a slice of the users: 24 users -> 12 and 12 ...
    mine = mine[:len(mine) - ctx.rank]  # ... made uneven: 12 and 11
    out = evaluate_ranking(TinyModel(ctx), batches(mine, size=4), num_items=N, ks=ks, item_train_counts=counts,
                           bucket_edges=edges)
    return {"buckets": out["buckets"], "users": out["users"], "hr@5": out["hr@5"], "mine": len(mine)}


@pytest.mark.integration
def test_two_ranks_reduce_the_bucket_figures_of_the_whole_split():
    from tests.helpers.dist import run_ranks

    rows, counts = users(count=23), train_counts()
    rows.insert(0, ([4], 3))  # a never-seen target, on rank 0
    edges, ks = (0, 1, 10, 30), (1, 5)
    results = run_ranks(_rank_eval, 2, rows, counts, edges, ks)
    scored = rows[0::2] + rows[1::2][:-1]  # what the two ranks scored together
    ranks, want = expected(scored, counts, edges, ks)
    assert [r["mine"] for r in results] == [12, 11]
    for r in results:  # identical on every rank, equal to one process scoring every user
        assert r["users"] == len(scored) == sum(b["users"] for b in r["buckets"])
        assert_rows_close(r["buckets"], want)
        assert r["hr@5"] == pytest.approx(sum(x < 5 for x in ranks) / len(scored), abs=1e-12)


# ---------------------------------------------------------------- benchmarks/warm_cold.py (Figure 6)

def test_warm_cold_plot_from_two_runs(tmp_path, capsys):
    import json

    from benchmarks.warm_cold import bucket_ratios, load_buckets, main

    rows = bucket_metrics(torch.tensor([0, 2, 7, 0, 5, 30]), torch.tensor([0, 1, 4, 10, 99, 3]), EDGES, (10,))
    ids = bucket_metrics(torch.tensor([3, 20, 7, 1, 50, 1]), torch.tensor([0, 1, 4, 10, 99, 3]), EDGES, (10,))
    content_run, id_run = tmp_path / "content", tmp_path / "id"
    content_run.mkdir()
    (content_run / "result.json").write_text(json.dumps({"test/hr@10": 0.5, "test/buckets": rows}))
    (id_run / "logs").mkdir(parents=True)  # unfinished: only the metrics log holds the test record
    (id_run / "logs" / "metrics.jsonl").write_text(
        json.dumps({"kind": "valid", "hr@10": 0.1}) + "\n" + json.dumps({"kind": "test", "buckets": ids}) + "\n")
    assert load_buckets(str(content_run)) == rows and load_buckets(str(id_run)) == ids
    ratios = bucket_ratios(rows, ids, "hr@10")
    # [0,1): 1 / 1; [1,5): 3 users, content 2 hits of 3 vs ID 2 of 3; [5,10) empty; [10,inf): 2/2 vs 1/2.
    assert [r["ratio"] for r in ratios] == [1.0, 1.0, None, 2.0]
    out = tmp_path / "fig6.png"
    assert main([str(content_run), str(id_run), "--out", str(out)]) == 0
    assert out.stat().st_size > 1000 and "| [10,inf) | 2 |" in capsys.readouterr().out
    (tmp_path / "old").mkdir()
    assert main([str(content_run), str(tmp_path / "old")]) == 2
    assert "no per-bucket test figures" in capsys.readouterr().err
