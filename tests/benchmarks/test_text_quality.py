"""The ID vs Text vs ID+Text report: which figures it takes from runs, and what it carries over."""

from __future__ import annotations

import json

from benchmarks import text_quality
from tests.benchmarks.test_warm_table import _result, _write_run


def test_a_present_run_replaces_its_carried_figures_and_the_others_are_carried_over(tmp_path):
    runs = tmp_path / "runs"
    _write_run(runs, "microlens-50k-sasrec-text", _result(0.05, best=3, epochs=6))
    previous = text_quality.collect(tmp_path / "none", previous=None)
    assert previous["models"] == {} and previous["missing"] == ["ID", "Text", "ID+Text"]  # the fallback is optional
    old = {"run": "microlens-50k-sasrec-idtext", "result": _result(0.07, best=1, epochs=2),
           "valid_curve": [{"epoch": 0, "ndcg@10": 0.01}, {"epoch": 1, "ndcg@10": 0.02}], "buckets": []}
    stale_text = {**old, "run": "microlens-50k-sasrec-text", "result": _result(0.01, best=0, epochs=1)}
    data = text_quality.collect(runs, previous={"models": {"ID+Text": old, "Text": stale_text}})
    assert data["missing"] == ["ID"]
    assert data["models"]["Text"]["result"]["test/hr@10"] == 0.05 and "carried" not in data["models"]["Text"]
    assert data["models"]["ID+Text"]["carried"] and data["models"]["ID+Text"]["result"]["test/hr@10"] == 0.07
    assert "ID+Text fallback" not in data["models"]
    md = text_quality.render(data, "")
    assert "| ID+Text (carried over, see notes) | 0.0700 |" in md and "| Text | 0.0700 |" not in md
    curves = text_quality._carried_curves(old)
    assert curves.valid["ndcg@10"] == {0: 0.01, 1: 0.02} and curves.best_epoch == 1 and curves.epochs == 2
    _write_run(runs, "microlens-50k-sasrec-idtext-fallback", _result(0.08, best=2, epochs=4))
    data = text_quality.collect(runs, previous={"models": {"ID+Text": old}})
    assert data["models"]["ID+Text fallback"]["result"]["test/hr@10"] == 0.08
    json.dumps(data)  # what main writes
