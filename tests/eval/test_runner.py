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


@pytest.mark.parametrize("seed", range(4))
def test_click_metrics_of_a_dot_product_model_match_their_definitions(seed):
    rng = np.random.default_rng(seed)
    n, users, k = 30, 12, 5
    items = torch.from_numpy(rng.normal(size=(n + 1, 4))).float()
    histories = [list(rng.integers(1, n + 1, size=rng.integers(1, 8))) for _ in range(users)]
    targets = torch.tensor([int(rng.integers(1, n + 1)) for _ in range(users)])
    values, offsets = _jagged(histories)
    history = torch.zeros(users, 8, dtype=torch.long)
    for b, h in enumerate(histories):
        history[b, :len(h)] = torch.tensor(h)
    lengths = torch.tensor([len(h) for h in histories])
    half = users // 2  # two batches: the sums add up over batches
    batches = [SimpleNamespace(history=history[s], lengths=lengths[s], targets=targets[s],
                               history_values=values[offsets[s.start]:offsets[s.stop]],
                               history_offsets=offsets[s.start:s.stop + 1] - offsets[s.start])
               for s in (slice(0, half), slice(half, users))]
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
