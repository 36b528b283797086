"""MMRA end to end on 2 ranks: a tiny synthetic dataset ingested with its item labels and split, synthetic
title and per-frame feature stores, ``jobs/build_neighbours.py`` (a Ray Data job), then
``jobs/train_popularity.py`` on 2 Ray Train workers with early stopping on MAE + nMSE (lower is better);
and an exact resume from a mid-epoch checkpoint (``run_worker`` on 2 gloo ranks, no Ray)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.helpers.dist import run_ranks
from tests.helpers.shards import TINY_INGEST

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PRESET = REPO / "jobs" / "configs" / "synthetic" / "mmra-small.yaml"


def _job(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "jobs" / script), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, PYTHONUNBUFFERED="1"))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Dataset (ingest job), feature stores, neighbours (build_neighbours job), then one training run."""
    from mvrec_dist.retrieval.synthetic import main as synthetic

    tmp = tmp_path_factory.mktemp("mmra")
    (tmp / "ingest.yaml").write_text(TINY_INGEST.format(out=tmp / "ds", raw=tmp / "raw"))
    ingest = _job("ingest_microlens.py", "--config", str(tmp / "ingest.yaml"))
    assert ingest.returncode == 0, ingest.stdout[-3000:] + ingest.stderr[-3000:]
    assert synthetic([str(tmp / "ds"), str(tmp / "text"), "--dims", "16"]) == 0
    assert synthetic([str(tmp / "ds"), str(tmp / "frames"), "--dims", "8", "--frames", "4", "--seed", "1"]) == 0
    paths = [f"data.dataset_dir={tmp / 'ds'}", f"retrieval.text_features={tmp / 'text'}",
             f"retrieval.frame_features={tmp / 'frames'}", f"retrieval.output_dir={tmp / 'neighbours'}",
             "task.frames=4", "task.feature_dim=8", "ray.num_cpus=2", "ray.dashboard=false"]
    built = _job("build_neighbours.py", "--config", str(PRESET), *paths)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    proc = _job("train_popularity.py", "--config", str(PRESET), *paths, f"train.storage_path={tmp / 'runs'}",
                "train.run_name=mmra", "train.epochs=8", "train.patience=1", "train.batch_size=32", "train.lr=0.003",
                "train.log_every_steps=2")
    return SimpleNamespace(proc=proc, tmp=tmp, paths=paths, run=tmp / "runs" / "mmra")


def test_mmra_trains_through_its_job_with_lower_is_better_early_stopping(prepared):
    from mvrec_dist.data.item_split import load_item_split
    from mvrec_dist.data.manifest import load_manifest

    proc, run = prepared.proc, prepared.run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    split = load_item_split(load_manifest(str(prepared.tmp / "ds")))
    result = json.loads((run / "result.json").read_text())
    assert result["test/items"] == len(split["test"]) and result["valid/items"] == len(split["valid"])
    newest = sorted(run.glob("checkpoint-step*"))[-1]
    state = json.loads((newest / "state.json").read_text())
    crit = [h["metrics"]["mae_nmse"] for h in state["history"]]
    # The best epoch minimises MAE + nMSE; patience 1 ends the run one validation after it (or at the last epoch).
    assert state["best_epoch"] == crit.index(min(crit)) == result["best_epoch"]
    assert len(crit) == min(8, state["best_epoch"] + 2)
    for key in ("nmse", "src", "mae", "mae_nmse", "nmse_b", "src_b", "mae_b"):
        assert np.isfinite(result[f"test/{key}"]), key
    assert result["test/mae_nmse"] == pytest.approx(result["test/mae"] + result["test/nmse"])
    for name in ("train_mean", "retrieval"):
        assert np.isfinite(result[f"baseline/{name}/test/nmse"]) and np.isfinite(result[f"baseline/{name}/test/mae"])
    # The train mean's nMSE is about 1 by construction (the test labels' variance around the train mean).
    assert 0.8 < result["baseline/train_mean/test/nmse"] < 1.5
    rows = [json.loads(line) for line in (run / "logs" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["kind"] == "train"]
    assert len(losses) >= 4 and np.mean(losses[-2:]) < np.mean(losses[:2])  # MSE falls from its start
    assert "valid epoch 0: mae_nmse " in proc.stdout


def test_job_refuses_a_ranking_task():
    proc = _job("train_popularity.py", "--config", str(REPO / "jobs" / "configs" / "synthetic" / "sasrec-id-small.yaml"))
    assert proc.returncode == 2 and "this job trains mmra or item_popularity, got 'next_item'" in proc.stderr


def _train(ctx, overrides):
    from mvrec_dist.config import TrainJobConfig, load_config
    from mvrec_dist.train.worker import run_worker

    cfg = load_config(TrainJobConfig, PRESET, overrides + [f"parallel.num_workers={ctx.world_size}"])
    return {"step": run_worker(cfg, ctx).state.step}


def test_a_resume_mid_epoch_continues_identically(prepared, tmp_path):
    from mvrec_dist.parallel.checkpoint import load_full_state

    assert prepared.proc.returncode == 0
    base = prepared.paths + [f"train.storage_path={tmp_path}", "train.batch_size=32", "train.epochs=3",
                             "train.checkpoint_every_steps=3", "train.test_after_training=false", "train.quiet=true"]
    # 240 labelled train items at most / 32 a step: 7-8 steps an epoch; step 3 is mid-epoch, 10 in the next.
    run_ranks(_train, 2, base + ["train.run_name=straight", "train.max_steps=10"])
    assert run_ranks(_train, 2, base + ["train.run_name=resumed", "train.max_steps=3"])[0]["step"] == 3
    assert run_ranks(_train, 2, base + ["train.run_name=resumed", "train.max_steps=10"])[0]["step"] == 10
    a = load_full_state(str(sorted((tmp_path / "straight").glob("checkpoint-step*"))[-1]))
    b = load_full_state(str(sorted((tmp_path / "resumed").glob("checkpoint-step*"))[-1]))
    assert set(a) == set(b) and any(k.startswith("dense/") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
