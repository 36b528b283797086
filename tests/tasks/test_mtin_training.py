"""MTIN through the one trainer: ``jobs/train_videorec.py`` with its preset on 2 Ray Train workers, and
an exact resume of the memory table from a checkpoint (``run_worker`` on 2 gloo ranks, no Ray).

The job ingests a tiny synthetic dataset itself (``data.prepare_with``); the resume test trains on
that dataset too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.helpers.dist import run_ranks
from tests.helpers.shards import TINY_INGEST

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PRESET = REPO / "jobs" / "configs" / "synthetic" / "mtin-small.yaml"
MEMORY = "sparse/model.sequence.embeddings.mtin_memory.weight"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One run of the job with the MTIN preset (2 epochs, 2 workers) on a dataset it ingests first."""
    tmp = tmp_path_factory.mktemp("mtin")
    (tmp / "ingest.yaml").write_text(TINY_INGEST.format(out=tmp / "ds", raw=tmp / "raw"))
    started = time.time()
    proc = subprocess.run([sys.executable, str(REPO / "jobs" / "train_videorec.py"), "--config", str(PRESET),
                           f"data.dataset_dir={tmp / 'ds'}", f"data.prepare_with={tmp / 'ingest.yaml'}",
                           f"train.storage_path={tmp / 'runs'}", "train.run_name=mtin", "train.epochs=2",
                           "train.batch_size=64", "train.log_every_steps=2", "ray.num_cpus=2", "ray.dashboard=false"],
                          cwd=REPO, env=dict(os.environ, PYTHONUNBUFFERED="1"), capture_output=True, text=True,
                          timeout=600)
    return SimpleNamespace(proc=proc, dataset=tmp / "ds", run=tmp / "runs" / "mtin", seconds=time.time() - started)


def test_mtin_trains_through_the_job_with_its_preset(trained):
    proc, run = trained.proc, trained.run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "sequence.mtin_memory: row_wise" in proc.stdout
    result = json.loads((run / "result.json").read_text())
    assert result["test/negatives"] == result["valid/negatives"] == "sampled"
    assert result["test/users"] == result["valid/users"] == 600
    for key in ("hr@10", "ndcg@10", "hr@20", "ndcg@20", "auc", "precision@50", "recall@50", "f1@50"):
        assert 0.0 <= result[f"test/{key}"] <= 1.0
    assert result["test/auc"] > 0.55  # better than chance after 2 epochs (random scores: 0.5)
    rows = [json.loads(line) for line in (run / "logs" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["kind"] == "train"]
    assert len(losses) >= 8 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 < 0.7  # BCE starts at log 2
    assert trained.seconds < 150, trained.seconds  # ingestion, Ray start-up, 2 epochs, validation, test


def _train(ctx, overrides):
    from mvrec_dist.config import TrainJobConfig, load_config
    from mvrec_dist.train.worker import run_worker

    cfg = load_config(TrainJobConfig, PRESET, overrides + [f"parallel.num_workers={ctx.world_size}"])
    return {"step": run_worker(cfg, ctx).state.step}


def test_a_resume_restores_the_memory_exactly_and_continues_identically(trained, tmp_path):
    from mvrec_dist.parallel.checkpoint import load_full_state

    assert trained.proc.returncode == 0
    base = [f"data.dataset_dir={trained.dataset}", "data.prepare_with=null", f"train.storage_path={tmp_path}",
            "train.batch_size=64", "train.epochs=2", "train.checkpoint_every_steps=5", "train.keep_checkpoints=10",
            "train.test_after_training=false", "train.quiet=true"]
    # 12 steps an epoch: the checkpoint at step 5 is mid-epoch, step 15 crosses the epoch end.
    run_ranks(_train, 2, base + ["train.run_name=straight", "train.max_steps=15"])
    assert run_ranks(_train, 2, base + ["train.run_name=resumed", "train.max_steps=5"])[0]["step"] == 5
    assert run_ranks(_train, 2, base + ["train.run_name=resumed", "train.max_steps=15"])[0]["step"] == 15
    a = load_full_state(str(tmp_path / "straight" / "checkpoint-step000000015"))
    b = load_full_state(str(tmp_path / "resumed" / "checkpoint-step000000015"))
    assert set(a) == set(b) and MEMORY in a
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    # The memory moved between the checkpoints (so equality says the restored rows were exact).
    mid = load_full_state(str(tmp_path / "resumed" / "checkpoint-step000000005"))
    assert not torch.equal(mid[MEMORY], b[MEMORY])
    assert torch.equal(mid[MEMORY], load_full_state(str(tmp_path / "straight" / "checkpoint-step000000005"))[MEMORY])
