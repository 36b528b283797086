"""Checkpoint and resume without Ray: exact continuation, other world sizes, corrupt checkpoints.

Every run here is ``run_worker`` on real gloo ranks (tests/helpers/dist.py) over a tiny ingested
synthetic dataset. Ray-level failures (a killed worker, a killed driver) are in
test_fault_injection.py; both rest on what is shown here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from tests.helpers.dist import run_ranks

pytestmark = pytest.mark.integration

BASE = ["model.embedding_dim=16", "train.batch_size=32", "train.epochs=2", "train.log_every_steps=1000",
        "train.checkpoint_every_steps=4", "train.keep_checkpoints=10", "train.test_after_training=false",
        "train.quiet=true", "data.loader_workers=0", "data.shuffle_block=64", "train.lr=0.003"]


@pytest.fixture(scope="module")
def dataset(ray_local, tmp_path_factory) -> Path:
    """A tiny synthetic dataset (300 users), ingested once for the module."""
    from tests.helpers.shards import ingest_synthetic

    return ingest_synthetic(tmp_path_factory.mktemp("resume"), "ingest.shard_max_samples=64", "synthetic.users=300",
                            "synthetic.items=150", "synthetic.interactions=2400", "synthetic.chunk_users=150")


def _train(ctx, overrides):
    from mvrec_dist.config import TrainJobConfig, load_config
    from mvrec_dist.train.worker import run_worker

    cfg = load_config(TrainJobConfig, None, overrides + [f"parallel.num_workers={ctx.world_size}"])
    result = run_worker(cfg, ctx)
    return {"step": result.state.step, "epoch": result.state.epoch}


def _restore_only(ctx, overrides):
    from mvrec_dist.config import TrainJobConfig, load_config
    from mvrec_dist.data.loader import load_item_train_counts
    from mvrec_dist.data.manifest import load_manifest
    from mvrec_dist.models.builders import build_recommender
    from mvrec_dist.parallel.facade import ParallelModel
    from mvrec_dist.train.checkpointing import Checkpointer

    cfg = load_config(TrainJobConfig, None, overrides + [f"parallel.num_workers={ctx.world_size}"])
    manifest = load_manifest(cfg.data.dataset_dir)
    torch.manual_seed(0)
    model = build_recommender(cfg.model, num_items=manifest.num_items, item_train_counts=load_item_train_counts(manifest),
                              max_seq_len=cfg.data.max_seq_len, seed=cfg.train.seed, device="meta")
    checkpointer = Checkpointer(cfg, ctx)
    state = checkpointer.restore(ParallelModel(model, cfg, ctx, total_steps=10))
    return {"skipped": checkpointer.skipped, "restored": checkpointer.restored_from,
            "step": None if state is None else state.step}


def _overrides(dataset: Path, runs: Path, name: str, *extra: str) -> list[str]:
    return BASE + [f"data.dataset_dir={dataset}", f"train.storage_path={runs}", f"train.run_name={name}", *extra]


def _full(path: Path) -> dict[str, torch.Tensor]:
    from mvrec_dist.parallel.checkpoint import load_full_state

    return load_full_state(str(path))


def _windows_of_split(dataset: Path) -> list[tuple[int, int]]:
    """Every (global sample index, window index) of the train split: what one epoch must deliver."""
    from mvrec_dist.data.batch import training_windows
    from mvrec_dist.data.plan import Chunk
    from mvrec_dist.data.reader import ShardReader

    reader = ShardReader(str(dataset), "train", members={"items.npy"})
    total = reader.num_samples
    out = []
    for g, sample in reader.iter_chunks([Chunk(a, min(a + 64, total), None, 0, min(a + 64, total) - a)
                                         for a in range(0, total, 64)]):
        out += [(g, w) for w in range(len(training_windows(sample.members["items.npy"], 10, "all")))]
    return sorted(out)


def _audit_rows(audit_dir: Path, epoch: int, *, upto_step: int | None = None) -> list[tuple[int, int]]:
    rows = []
    for f in sorted(audit_dir.glob("consumed-rank*.jsonl")):
        for line in f.read_text().splitlines():
            rec = json.loads(line)
            if rec["epoch"] == epoch and (upto_step is None or rec["step"] <= upto_step):
                rows += [tuple(r) for r in rec["rows"]]
    return rows


@pytest.mark.parametrize("engine", [["parallel.zero_stage=1"], ["parallel.zero_stage=3"],
                                    ["parallel.zero_stage=2", "parallel.precision=bf16"]],
                         ids=["zero1-fp32", "zero3-fp32", "zero2-bf16"])
def test_resume_on_the_same_world_size_continues_exactly(dataset, tmp_path, engine):
    runs = tmp_path / "runs"
    # Uninterrupted: 2 ranks, 12 steps (an epoch is ~7 steps, so both an epoch end and mid-epoch
    # checkpoints are crossed).
    run_ranks(_train, 2, _overrides(dataset, runs, "straight", "train.max_steps=12", *engine))
    # Interrupted after the checkpoint at step 4, then resumed (train.resume=auto) to step 12.
    first = run_ranks(_train, 2, _overrides(dataset, runs, "resumed", "train.max_steps=4", *engine))
    assert first[0]["step"] == 4
    second = run_ranks(_train, 2, _overrides(dataset, runs, "resumed", "train.max_steps=12", *engine))
    assert second[0]["step"] == 12
    a = _full(runs / "straight" / "checkpoint-step000000012")
    b = _full(runs / "resumed" / "checkpoint-step000000012")
    assert set(a) == set(b) and any(k.startswith("sparse/model.") for k in a)
    for key in a:
        # Same data order, RNG, optimizer states and schedule: bitwise equal continuation.
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)
    state_a = json.loads((runs / "straight" / "checkpoint-step000000012" / "state.json").read_text())
    state_b = json.loads((runs / "resumed" / "checkpoint-step000000012" / "state.json").read_text())
    assert state_a["history"][0]["metrics"]["ndcg@10"] == state_b["history"][0]["metrics"]["ndcg@10"]
    # The epoch's mean training loss, recorded at its end, covers the steps before the resume too.

    def epoch_losses(run: str) -> dict[int, float]:
        rows = [json.loads(line) for line in (runs / run / "logs" / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss"] for r in rows if r["kind"] == "epoch"}

    assert epoch_losses("straight") and epoch_losses("resumed") == epoch_losses("straight")


@pytest.mark.parametrize("before,after", [(2, 1), (1, 2)])
def test_resume_on_another_world_size_sees_each_sample_of_the_epoch_once(dataset, tmp_path, before, after):
    runs, audit = tmp_path / "runs", tmp_path / "audit"
    extra = [f"data.audit_dir={audit}", "train.epochs=1"]
    run_ranks(_train, before, _overrides(dataset, runs, "resize", "train.max_steps=4", *extra))
    cut = json.loads((runs / "resize" / "checkpoint-step000000004" / "state.json").read_text())
    assert cut["data"]["world_size"] == before and cut["data"]["cursors"]  # a mid-epoch checkpoint
    run_ranks(_train, after, _overrides(dataset, runs, "resize", *extra))
    seen = _audit_rows(audit, 0)
    expected = _windows_of_split(dataset)
    assert sorted(seen) == expected  # nothing skipped, nothing repeated
    final = json.loads((runs / "resize" / sorted(p.name for p in (runs / "resize").glob("checkpoint-*"))[-1]
                        / "state.json").read_text())
    assert final["data"]["world_size"] == after and final["epoch"] == 1 == final["data"]["epoch"]


def test_a_hold_file_stops_every_rank_after_its_step_until_removed(dataset, tmp_path):
    """The fault tests' hold (``data.audit_dir``/hold-after-step-N): both ranks stop after step N, with that
    step's checkpoint committed and nothing of step N+1 trained, and go on to the end once it is removed."""
    import threading
    import time

    runs, audit = tmp_path / "runs", tmp_path / "audit"
    audit.mkdir()
    hold = audit / "hold-after-step-4"
    hold.write_text("")
    done: dict = {}
    t = threading.Thread(target=lambda: done.update(r=run_ranks(_train, 2, _overrides(
        dataset, runs, "held", f"data.audit_dir={audit}", "train.epochs=1"))), daemon=True)
    t.start()
    deadline = time.monotonic() + 240
    while len(list(audit.glob("hold-after-step-4.rank*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sorted(p.name for p in audit.glob("hold-after-step-4.rank*")) == [
        "hold-after-step-4.rank0", "hold-after-step-4.rank1"], "the ranks did not both stop after step 4"
    time.sleep(1.5)  # held, not merely slow: still nothing past step 4
    steps = [json.loads(line)["step"] for f in audit.glob("consumed-rank*.jsonl") for line in f.read_text().splitlines()]
    assert max(steps) == 4 and t.is_alive()
    assert (runs / "held" / "checkpoint-step000000004" / "COMMIT.json").exists()
    hold.unlink()
    t.join(240)
    assert not t.is_alive() and done["r"][0]["epoch"] == 1


def test_a_truncated_checkpoint_is_skipped_for_the_previous_one(dataset, tmp_path):
    runs = tmp_path / "runs"
    run_ranks(_train, 2, _overrides(dataset, runs, "trunc", "train.max_steps=8"))
    latest = runs / "trunc" / "checkpoint-step000000008"
    target = latest / "dense.pt"
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    out = run_ranks(_restore_only, 2, _overrides(dataset, runs, "trunc"))[0]
    assert out["skipped"] == [str(latest)]
    assert out["restored"].endswith("checkpoint-step000000004") and out["step"] == 4


def test_a_checkpoint_without_commit_marker_is_skipped(dataset, tmp_path):
    runs = tmp_path / "runs"
    run_ranks(_train, 1, _overrides(dataset, runs, "nocommit", "train.max_steps=8"))
    (runs / "nocommit" / "checkpoint-step000000008" / "COMMIT.json").unlink()
    out = run_ranks(_restore_only, 1, _overrides(dataset, runs, "nocommit"))[0]
    assert out["restored"].endswith("checkpoint-step000000004")


def test_metadata_that_would_unpickle_code_is_refused(dataset, tmp_path):
    import pickle

    from mvrec_dist.parallel.checkpoint import CheckpointError, SafeDCPReader

    runs = tmp_path / "runs"
    run_ranks(_train, 1, _overrides(dataset, runs, "evil", "train.max_steps=4"))
    meta = runs / "evil" / "checkpoint-step000000004" / "sparse" / ".metadata"
    meta.write_bytes(pickle.dumps(os.system))
    with pytest.raises(CheckpointError, match="not allowed"):
        SafeDCPReader(str(meta.parent)).read_metadata()
