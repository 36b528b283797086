"""``mvrec train``'s own output: the summary table a run ends with, and ``--verbose``.

The whole console of a run (line count, no library output) is tests/jobs/test_console_output.py.
"""

from __future__ import annotations

import pytest

from mvrec_dist.cli.train import summary_table
from mvrec_dist.config import IngestJobConfig, TrainJobConfig, load_config
from mvrec_dist.config.cli import parse_job_args

RESULT = {"final": True, "epochs": 3, "steps": 129, "best_epoch": 1, "elapsed_seconds": 17.34,
          "sequences_per_s": 4142.29, "targets_per_s": 17206.19, "peak_rss_mib_max": 747.0,
          "valid/hr@10": 0.0127, "valid/ndcg@10": 0.0061, "valid/hr@20": 0.025, "valid/ndcg@20": 0.0092,
          "test/hr@10": 0.0136, "test/ndcg@10": 0.0063, "test/hr@20": 0.0228, "test/ndcg@20": 0.0087}


def _table(metrics: dict, overrides: tuple[str, ...] = ()) -> list[str]:
    cfg = load_config(TrainJobConfig, None, ["train.run_name=demo", *overrides])
    return summary_table(cfg, metrics, "/runs/demo")


def test_the_summary_has_valid_and_test_metrics_best_epoch_throughput_memory_and_the_run_directory():
    lines = _table(RESULT)
    assert lines[0] == "run demo: 3 epochs (129 steps) in 17.3 s; best epoch 1 by valid ndcg@10"
    assert lines[1].split() == ["hr@10", "ndcg@10", "hr@20", "ndcg@20"]
    assert lines[2].split() == ["valid,", "best", "epoch", "0.0127", "0.0061", "0.0250", "0.0092"]
    assert lines[3].split() == ["test", "0.0136", "0.0063", "0.0228", "0.0087"]
    assert lines[4].split()[1:3] == ["4,142", "sequences/s,"] and "17,206 targets/s" in lines[4]
    assert lines[5].split()[:4] == ["peak", "memory", "747", "MiB"]
    assert lines[6].startswith("run directory") and "/runs/demo (logs/" in lines[6]
    # Columns line up under their headers.
    assert [line.index("0.0061") for line in lines[2:3]] == [lines[1].index("ndcg@10") + 1]


def test_a_popularity_baseline_in_the_result_is_a_row_beside_the_models_test_metrics():
    lines = _table({**RESULT, "baseline/popularity/test/hr@10": 0.0217, "baseline/popularity/test/ndcg@10": 0.0102,
                    "baseline/popularity/valid/hr@10": 0.5})
    assert lines[3].startswith("test ") and lines[4].split() == ["popularity", "baseline", "0.0217", "0.0102", "-", "-"]


def test_a_run_without_test_and_another_tasks_metrics():
    no_test = {k: v for k, v in RESULT.items() if not k.startswith("test/")}
    assert not any(line.startswith("test") for line in _table(no_test))
    lines = _table({"epochs": 2, "best_epoch": 0, "valid/mae": 0.5, "valid/rmse": 0.7, "test/mae": 0.6,
                    "test/rmse": 0.8}, ("task.name=item_popularity",))
    assert lines[0].endswith("best epoch 0 by valid mae") and lines[1].split() == ["mae", "rmse"]
    assert lines[3].split() == ["test", "0.6000", "0.8000"]


@pytest.mark.parametrize("cls, args", [(TrainJobConfig, []), (IngestJobConfig, ["synthetic.enabled=true"])])
def test_verbose_is_ray_verbose_for_every_job(cls, args, capsys):
    assert parse_job_args(cls, ["--verbose", *args], prog="job", description="").config.ray.verbose
    assert not parse_job_args(cls, args, prog="job", description="").config.ray.verbose
    with pytest.raises(SystemExit):
        parse_job_args(cls, ["--help"], prog="job", description="")
    assert "--verbose" in capsys.readouterr().out
