"""``evaluate_ranking``: HR/NDCG and, with ``click_cutoff``, MTIN's click metrics of a dot-product model."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mvrec_dist.config import TrainJobConfig, load_config
from mvrec_dist.config.fields import ConfigError
from mvrec_dist.eval.runner import evaluate_ranking
from tests.eval.test_scored_ranking import _brute, _jagged


class DotModel:
    """Fixed item vectors; the user state is the mean of the history's vectors (any fixed function does)."""

    def __init__(self, items: torch.Tensor):
        self.items = items

    def item_representations(self, num_items):
        return self.items

    def user_states(self, history, lengths, item_repr):
        return item_repr[history].sum(1) / lengths[:, None]

    def sum_over_ranks(self, values):
        return values


def _eval_batches(histories, targets, cuts):
    """``EvalBatch``-shaped batches (users 1..U) of hand-made histories, split at ``cuts``, and the padded
    history matrix and lengths they were built from."""
    users = len(histories)
    values, offsets = _jagged(histories)
    history = torch.zeros(users, 8, dtype=torch.long)
    for b, h in enumerate(histories):
        history[b, :len(h)] = torch.tensor(h)
    lengths = torch.tensor([len(h) for h in histories])
    user_ids = torch.arange(1, users + 1)
    bounds = [0, *cuts, users]
    batches = [SimpleNamespace(history=history[s], lengths=lengths[s], targets=targets[s], users=user_ids[s],
                               history_values=values[offsets[s.start]:offsets[s.stop]],
                               history_offsets=offsets[s.start:s.stop + 1] - offsets[s.start])
               for s in (slice(a, b) for a, b in zip(bounds, bounds[1:]))]
    return batches, history, lengths


@pytest.mark.parametrize("seed", range(4))
def test_click_metrics_of_a_dot_product_model_match_their_definitions(seed):
    rng = np.random.default_rng(seed)
    n, users, k = 30, 12, 5
    items = torch.from_numpy(rng.normal(size=(n + 1, 4))).float()
    histories = [list(rng.integers(1, n + 1, size=rng.integers(1, 8))) for _ in range(users)]
    targets = torch.tensor([int(rng.integers(1, n + 1)) for _ in range(users)])
    batches, history, lengths = _eval_batches(histories, targets, [users // 2])  # the sums add up over batches
    model = DotModel(items)
    got = evaluate_ranking(model, batches, num_items=n, ks=(10,), click_cutoff=k)
    scores = model.user_states(history, lengths, items) @ items.T
    brute = _brute(scores, targets, histories, n, k)
    tol = dict(rel=1e-12, abs=1e-12)
    assert got["hr@10"] == pytest.approx(np.mean([r < 10 for r, *_ in brute]), **tol)
    assert got["auc"] == pytest.approx(np.mean([row[1] for row in brute]), **tol)
    assert got[f"precision@{k}"] == pytest.approx(np.mean([row[2] for row in brute]), **tol)
    assert got[f"recall@{k}"] == pytest.approx(np.mean([row[3] for row in brute]), **tol)
    assert got[f"f1@{k}"] == pytest.approx(np.mean([row[4] for row in brute]), **tol)
    plain = evaluate_ranking(model, batches, num_items=n, ks=(10,))
    assert "auc" not in plain and plain["ndcg@10"] == got["ndcg@10"]
    # The popularity buckets (the test split's) ride along: they keep HR/NDCG only.
    counts = torch.from_numpy(rng.integers(0, 9, size=n + 1))
    both = evaluate_ranking(model, batches, num_items=n, ks=(10,), click_cutoff=k, item_train_counts=counts,
                            bucket_edges=(0, 1, 5))
    assert {key: both[key] for key in got if key != "seconds"} == {key: got[key] for key in got if key != "seconds"}
    assert sum(b["users"] for b in both["buckets"]) == users and "auc" not in both["buckets"][0]


def test_each_task_reports_click_metrics_at_its_own_or_the_configured_cutoff():
    def names(*overrides):
        return [m.name for m in load_config(TrainJobConfig, None, list(overrides)).metrics]

    assert names() == ["hr@10", "ndcg@10", "hr@20", "ndcg@20"]
    assert names("eval.click_cutoff=50")[4:] == ["auc", "precision@50", "recall@50", "f1@50"]
    assert names("task.name=mtin")[4:] == ["auc", "precision@50", "recall@50", "f1@50"]
    assert names("task.name=mtin", "eval.click_cutoff=20")[4:] == ["auc", "precision@20", "recall@20", "f1@20"]
    with pytest.raises(ConfigError, match="click_cutoff"):
        load_config(TrainJobConfig, None, ["task.name=item_popularity", "eval.click_cutoff=50"])
    with pytest.raises(ConfigError, match="click_cutoff"):
        load_config(TrainJobConfig, None, ["eval.click_cutoff=0"])


@pytest.mark.parametrize("seed", range(3))
def test_candidate_metrics_of_a_dot_product_model_match_frames_definitions_on_the_drawn_candidates(seed):
    from mvrec_dist.eval.candidate_metrics import candidate_metrics, draw_candidates

    rng = np.random.default_rng(seed)
    n, users, negatives = 40, 10, 6
    items = torch.from_numpy(rng.normal(size=(n + 1, 4))).float()
    histories = [list(rng.choice(np.arange(1, n + 1), size=rng.integers(1, 8), replace=False)) for _ in range(users)]
    targets = torch.tensor([int(rng.integers(1, n + 1)) for _ in range(users)])
    batches, history, lengths = _eval_batches(histories, targets, [4])
    user_ids = torch.arange(1, users + 1)

    def draw(batch):
        return draw_candidates(seed=7, split="test", users=batch.users.numpy(), targets=batch.targets.numpy(),
                               history_values=batch.history_values.numpy(),
                               history_offsets=batch.history_offsets.numpy(), negatives=negatives, num_items=n)

    model = DotModel(items)
    model.gather_rows = lambda rows: rows
    got = evaluate_ranking(model, batches, num_items=n, ks=(10,), candidates=draw, candidate_ks=(3, 5))
    chosen = torch.cat([draw(b) for b in batches])  # U,1+K
    assert chosen.shape == (users, 1 + negatives)
    for u in range(users):  # the target first, then unplayed videos only (independent draws)
        assert chosen[u, 0] == targets[u] and not set(chosen[u, 1:].tolist()) & (set(histories[u]) | {int(targets[u])})
    states = model.user_states(history, lengths, items)
    scores = (states[:, None, :] * items[chosen]).sum(-1)  # U,1+K
    labels = np.zeros(chosen.shape)
    labels[:, 0] = 1
    want = candidate_metrics(np.repeat(user_ids.numpy(), 1 + negatives), scores.double().numpy().ravel(),
                             labels.ravel().astype(np.int64), (3, 5))
    tol = dict(rel=1e-9, abs=1e-12)
    for key in ("auc", "user_auc", "logloss", "recall@3", "ndcg@3", "dcg@5", "recall@5", "ndcg@5"):
        assert got[f"frame/{key}"] == pytest.approx(want[key], **tol), key
    # The same draws on a rerun (keyed by seed, split and user), and the ranking metrics are unchanged.
    assert torch.equal(torch.cat([draw(b) for b in batches]), chosen)
    assert got["ndcg@10"] == evaluate_ranking(model, batches, num_items=n, ks=(10,))["ndcg@10"]


def test_candidate_metrics_are_listed_for_next_item_only():
    def names(*overrides):
        return [m.name for m in load_config(TrainJobConfig, None, list(overrides)).metrics]

    assert names("eval.candidate_negatives=20")[4:] == [
        "frame/auc", "frame/user_auc", "frame/logloss", "frame/recall@3", "frame/ndcg@3", "frame/dcg@3",
        "frame/recall@5", "frame/ndcg@5", "frame/dcg@5"]
    assert names("task.name=frame")[4:] == names("eval.candidate_negatives=20")[4:]
    with pytest.raises(ConfigError, match="candidate_negatives"):
        load_config(TrainJobConfig, None, ["task.name=mtin", "eval.candidate_negatives=20"])
