"""The Warm-N report (paper Table 8): commands it launches and the table it writes from recorded runs."""

from __future__ import annotations

import json

import pytest

from benchmarks import warm_table


def _result(hr: float, *, best: int, epochs: int) -> dict:
    return {"test/hr@10": hr, "test/ndcg@10": hr / 2, "test/hr@20": hr, "test/ndcg@20": hr / 2,
            "valid/hr@10": hr, "valid/ndcg@10": hr / 2, "best_epoch": best, "epochs": epochs,
            "seconds_to_best": 10.0, "sequences_per_s": 100.0,
            "test/buckets": [{"bucket": "[0,1)", "lo": 0, "hi": 1, "users": 3, "hr@10": hr, "ndcg@10": hr / 2}]}


def _write_run(root, name: str, result: dict) -> None:
    run = root / name
    (run / "logs").mkdir(parents=True)
    (run / "result.json").write_text(json.dumps(result))
    (run / "logs" / "metrics.jsonl").write_text(
        "\n".join(json.dumps({"kind": "valid", "epoch": e, "ndcg@10": 0.1}) for e in range(result["epochs"])) + "\n")


def test_commands_use_the_regular_presets_with_the_warm_dataset_and_its_own_feature_store():
    argv = warm_table.command(50, "ID+Text", "runs/warm")
    assert argv[2:4] == ["--config", "jobs/configs/microlens-50k/sasrec-idtext.yaml"]
    assert "data.dataset_dir=data/shards/microlens-50k-warm50" in argv
    assert "data.content_features=data/features/microlens-50k-warm50-minilm-frozen" in argv
    assert not any(a.startswith("train.epochs=") for a in argv)
    id20 = warm_table.command(20, "ID", "runs/warm")
    assert not any(a.startswith("data.content_features=") for a in id20)


def test_table_reads_every_setting_and_flags_a_run_still_improving(tmp_path, monkeypatch):
    results = tmp_path / "results"
    results.mkdir()
    (results / "text_quality.json").write_text(json.dumps(
        {"models": {"ID": {"result": _result(0.07, best=5, epochs=8)}}}))
    monkeypatch.setattr(warm_table, "RESULTS", results)
    monkeypatch.setattr(warm_table, "dataset_counts", lambda n: {"users": 1000 // n, "items": 100 // n})
    runs = tmp_path / "runs"
    _write_run(runs, "warm20-sasrec-id", _result(0.11, best=11, epochs=12))
    _write_run(runs, "warm200-sasrec-text", _result(0.93, best=3, epochs=9))
    data = warm_table.collect_all(runs)
    assert data["settings"]["Warm-20"]["models"]["ID"]["test/hr@10"] == pytest.approx(0.11)
    assert data["settings"]["Warm-50"]["missing"] == ["ID", "Text", "ID+Text"]
    text = warm_table.render(data)
    assert "| ID | 0.0700 | 0.0350 | 0.1100 | 0.0550 | - | - | - | - |" in text
    assert "| Text | - | - | - | - | - | - | 0.9300 | 0.4650 |" in text
    assert "| Warm-20 | ID | 12 | 12 | 10 | 100 | best at the last of 12 epochs: still improving |" in text
    assert "| Warm-50 | ID | - | - | - | - | not run |" in text


def test_a_warm_run_whose_directory_is_gone_keeps_its_committed_figures(tmp_path, monkeypatch):
    results = tmp_path / "results"
    results.mkdir()
    (results / "text_quality.json").write_text(json.dumps(
        {"models": {"ID": {"result": _result(0.07, best=5, epochs=8), "carried": True},
                    "ID+Text fallback": {"result": _result(0.08, best=5, epochs=8)}}}))
    monkeypatch.setattr(warm_table, "RESULTS", results)
    monkeypatch.setattr(warm_table, "dataset_counts", lambda n: {"users": 1000 // n, "items": 100 // n})
    runs = tmp_path / "runs"
    _write_run(runs, "warm20-sasrec-id", _result(0.11, best=11, epochs=12))
    previous = {"settings": {"Warm-20": {"models": {"ID": _result(0.05, best=1, epochs=3)}},
                             "Warm-50": {"models": {"Text": _result(0.25, best=1, epochs=3)}}}}
    data = warm_table.collect_all(runs, previous=previous)
    assert data["settings"]["Warm-20"]["models"]["ID"]["test/hr@10"] == pytest.approx(0.11)  # the run wins
    assert "carried" not in data["settings"]["Warm-20"]["models"]["ID"]
    assert data["settings"]["Warm-50"]["models"]["Text"]["carried"]
    assert data["settings"]["Warm-50"]["missing"] == ["ID", "ID+Text"]
    assert list(data["settings"]["Regular"]["models"]) == ["ID"]  # the table's three models only
    text = warm_table.render(data)
    assert "| Warm-50 | Text | 2 | 3 | 10 | 100 | carried over from the committed report" in text
    assert "| Regular | ID | 6 | 8 | 10 | 100 | carried over from the committed report" in text
