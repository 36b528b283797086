"""The MTIN-vs-SASRec report: both metric sets and the time columns from recorded runs."""

from __future__ import annotations

import json

from benchmarks import mtin_report
from benchmarks.text_quality import collect


def _write_run(root, name: str, hr: float, *, click: bool) -> None:
    run = root / name
    (run / "logs").mkdir(parents=True)
    result = {f"test/{k}": hr for k in mtin_report.RANKING} | {"valid/ndcg@10": hr / 2, "valid/seconds": 66.0,
                                                              "best_epoch": 3, "epochs": 9, "seconds_to_best": 600.0,
                                                              "sequences_per_s": 1500.0, "peak_rss_mib_max": 900.0}
    if click:
        result |= {"test/auc": 0.9, "test/precision@50": 0.004, "test/recall@50": 0.2, "test/f1@50": 0.0078}
    (run / "result.json").write_text(json.dumps(result))
    (run / "logs" / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"kind": "valid", "epoch": 0, "ndcg@10": 0.1}, {"kind": "epoch", "epoch": 0, "seconds": 10.0, "sequences_per_s": 1000.0},
        {"kind": "epoch", "epoch": 1, "seconds": 30.0, "sequences_per_s": 2000.0}]) + "\n")


def test_both_metric_sets_time_to_best_and_the_runs_not_there(tmp_path):
    _write_run(tmp_path, "mtin-2w", 0.05, click=True)
    _write_run(tmp_path, "sasrec-2w", 0.07, click=False)
    data = collect(tmp_path, mtin_report.RUNS, with_buckets=False)
    assert list(data["models"]) == ["MTIN, 2 workers", "SASRec, 2 workers"]
    assert data["missing"] == ["MTIN, 1 worker", "SASRec, 1 worker"]
    for m in data["models"].values():
        m["examples_per_s"] = mtin_report.epoch_throughput(tmp_path / m["run"])
    assert data["models"]["MTIN, 2 workers"]["examples_per_s"] == 1750.0  # (10 000 + 60 000) / 40 s
    md = mtin_report.render(data, "a note")
    assert "| MTIN, 2 workers | 0.0250 | 0.0500 | 0.0500 | 0.0500 | 0.0500 |" in md
    assert "| MTIN, 2 workers | 0.9000 | 0.0040 | 0.2000 | 0.0078 |" in md
    assert "| SASRec, 2 workers | - | - | - | - |" in md  # a run without click metrics says so, no zeros
    assert "| MTIN, 2 workers | 4 | 9 | 10.0 | 1750 | 66.0 | 900 |" in md
    assert "Not run or not finished when this was written: MTIN, 1 worker, SASRec, 1 worker" in md
    assert md.rstrip().endswith("a note")
