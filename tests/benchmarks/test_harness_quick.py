"""The benchmark harness end to end in its quick (CI-sized) mode, so that it cannot rot.

``benchmarks/run.py --quick`` runs every part the harness measures on tiny data (one repeat, a few
steps, gloo ranks instead of Ray Train for the training runs) into a temporary results directory;
every result must match the schema, the report must embed every figure with its caption, and the
harness's self-check must hold: the phase-timed step equals ``ParallelModel.train_step``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.harness.schema import validate_report, validate_result

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_quick_suite_writes_valid_results_and_report(tmp_path):
    from benchmarks.run import QUICK_DEFAULT

    results, report = tmp_path / "results", tmp_path / "REPORT.md"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "benchmarks/run.py", "--quick", "--results-dir", str(results),
                           "--report", str(report), "--work-dir", str(tmp_path / "work")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]

    loaded = {}
    for part in QUICK_DEFAULT:
        r = json.loads((results / f"{part}.json").read_text())
        assert r["quick"] is True and r["part"] == part
        assert validate_result(r, results_dir=str(results)) == [], part
        loaded[part] = r
    text = report.read_text()
    assert validate_report(text, list(loaded.values()), report_dir=str(tmp_path), results_dir=str(results)) == []
    assert "Quick (CI-sized) run" in text

    scaling = loaded["scaling"]
    eq = [t for t in scaling["targets"] if "phase-timed step" in t["name"]]
    assert eq and eq[0]["met"], eq
    assert set(scaling["data"]["study"]["weak"]) == {"1", "2"}
    assert scaling["data"]["phases"]["2"]["per_rank"][0]["a2a_bytes_per_step"]  # the counter saw all-to-alls

    ckpt = loaded["checkpoint"]["data"]
    assert [x["rows"] for x in ckpt["io"]] == [1_001, 5_001, 20_001]
    assert ckpt["io"][0]["total_bytes"] < ckpt["io"][-1]["total_bytes"]

    plan = loaded["plan"]["data"]
    assert plan["plans"] and plan["plans"][0]["world_size"] == 8
    assert plan["check"]["cpu"] is not None and set(plan["check"]["cpu"]["check"]) == {"1", "2"}
    assert plan["projection"]["series"]
    mtin = plan["mtin"]  # MTIN at full scale (issue 15): its tables planned on 1x8, the step projected
    assert set(mtin["plans"][0]["tables"]) == {"item", "mtin_memory"} and mtin["projection"]["8"]["step"]["total"] > 0
    assert "MTIN at full scale" in text
    assert not list((tmp_path / "work").glob("*/")), "the harness leaves no scratch data behind"
