"""FRAME in the one trainer (``tasks/frame.py``, ``models/frame.py``): the loss, the distributed transposed
aggregation against the dense single-process ``A^T U``, training steps on 2 gloo ranks, an exact resume, and
the job with its preset through Ray Train."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers.dist import run_ranks

REPO = Path(__file__).resolve().parents[2]
PRESET = REPO / "jobs" / "configs" / "synthetic" / "frame-small.yaml"


def test_the_clip_loss_is_frames_pointwise_loss_in_the_logits():
    from mvrec_dist.models.frame import FRAME

    f = FRAME(num_clips=8, dim=4, hidden=3)
    logits = torch.tensor([[0.3, -1.2, 2.0, 0.1], [-0.4, 0.0, 0.0, 0.0]])
    labels = torch.tensor([[1, 0, -1, -1], [0, -1, -1, -1]], dtype=torch.int8)
    weights = torch.tensor([0.25, 0.0])
    p = torch.sigmoid(logits)
    expected = -(0.25 * torch.log(p[0, 0]) + torch.log(1 - p[0, 1]) + torch.log(1 - p[1, 0]))
    torch.testing.assert_close(f.loss_sum(logits, labels, weights), expected, rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def dataset(ray_local, tmp_path_factory) -> Path:
    """A tiny synthetic dataset with play times (60 users, 40 videos)."""
    from tests.helpers.shards import ingest_synthetic

    return ingest_synthetic(tmp_path_factory.mktemp("frame"), "ingest.shard_max_samples=16", "synthetic.users=60",
                            "synthetic.items=40", "synthetic.interactions=700", "synthetic.chunk_users=30",
                            "synthetic.plays=true")


def _overrides(dataset: Path, runs: Path, name: str, *extra: str) -> list[str]:
    return [f"data.dataset_dir={dataset}", "data.prepare_with=null", f"train.storage_path={runs}",
            f"train.run_name={name}", "train.batch_size=16", "train.quiet=true", "data.loader_workers=0",
            "train.test_after_training=false", "task.refresh_chunk=7", *extra]


def _aggregates(ctx, overrides):
    """After the first refresh: the aggregates, and (one rank) the dense A^T ReLU(W1 T A E) from the full table."""
    from mvrec_dist.config import TrainJobConfig, load_config
    from mvrec_dist.data.clip_graphs import build_clip_graphs, play_ratios
    from mvrec_dist.data.plan import eval_plan
    from mvrec_dist.data.reader import ShardReader
    from mvrec_dist.models.tables import Bags
    from mvrec_dist.train.worker import build_rank

    cfg = load_config(TrainJobConfig, PRESET, overrides + [f"parallel.num_workers={ctx.world_size}"])
    setup = build_rank(cfg, ctx)
    pm, frame = setup.parallel, setup.parallel.dense.frame
    setup.task.refresh(pm, setup.data, 0)
    out = {"pos": frame.pos_aggregate.clone(), "neg": frame.neg_aggregate.clone()}
    rows = frame.pos_aggregate.shape[0]
    # Every row of the table, one bag each (collective: both ranks ask for all rows).
    unit = Bags(torch.arange(rows), torch.ones(rows, dtype=torch.long), torch.ones(rows))
    with pm.evaluating():
        # Wait for the lookup on every rank: a rank that returned without waiting would close its end of the
        # collective while the other still reads (seen under load as gloo "Connection reset by peer").
        table = torch.mul(pm.lookup_bags({"clip_pos": unit, "clip_neg": unit})["clip_pos"], 1.0)
        if ctx.rank == 0:
            users, items, ratios = [], [], []
            reader = ShardReader(str(cfg.data.dataset_dir), "train",
                                 members={"items.npy", "play.npy", "duration.npy", "json"})
            for _, s in reader.iter_chunks(eval_plan(reader.shard_counts, num_consumers=1)[0]):
                m = s.members
                users += [m["json"]["user"]] * len(m["items.npy"])
                items += m["items.npy"].tolist()
                ratios += play_ratios(m["play.npy"], m["duration.npy"]).tolist()
            g = build_clip_graphs(np.array(users), np.array(items), np.array(ratios), num_users=max(users),
                                  num_items=setup.data.num_items)
            for name, a in (("pos", g.positive.to_dense()), ("neg", g.negative.to_dense())):
                a = torch.from_numpy(a).float()
                out[f"dense_{name}"] = a.T @ frame.interest(a @ table)
    return out


@pytest.mark.integration
def test_the_distributed_aggregation_equals_the_dense_one(dataset, tmp_path):
    two = run_ranks(_aggregates, 2, _overrides(dataset, tmp_path, "agg2"))
    one = run_ranks(_aggregates, 1, _overrides(dataset, tmp_path, "agg1"))[0]
    for name in ("pos", "neg"):
        assert one[f"dense_{name}"].abs().sum() > 0
        # Users split over 2 ranks and chunks of 7, summed in another order: float32 rounding only.
        for got in (one[name], two[0][name], two[1][name]):
            torch.testing.assert_close(got, one[f"dense_{name}"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(two[0][name], two[1][name], rtol=0, atol=0)  # the same on every rank


def _train(ctx, overrides):
    from mvrec_dist.config import TrainJobConfig, load_config
    from mvrec_dist.train.worker import run_worker

    cfg = load_config(TrainJobConfig, PRESET, overrides + [f"parallel.num_workers={ctx.world_size}"])
    result = run_worker(cfg, ctx)
    return {"step": result.state.step, "valid": result.valid}


@pytest.mark.integration
@pytest.mark.parametrize("clip_init", ["random", "features"])
def test_training_resumes_exactly_with_the_aggregates(clip_init, request, tmp_path):
    from mvrec_dist.parallel.checkpoint import load_full_state

    extra = ("train.epochs=2", "train.checkpoint_every_steps=3", "train.keep_checkpoints=10",
             "task.refresh_every_steps=2")
    if clip_init == "features":
        base = _clip_overrides(request.getfixturevalue("clip_dataset"), tmp_path, "straight", *extra)
    else:
        base = _overrides(request.getfixturevalue("dataset"), tmp_path, "straight", *extra)
    straight = run_ranks(_train, 2, base + ["train.max_steps=9"])
    resumed = [o.replace("run_name=straight", "run_name=resumed") for o in base]
    assert run_ranks(_train, 2, resumed + ["train.max_steps=3"])[0]["step"] == 3  # a step that is no refresh step
    assert run_ranks(_train, 2, resumed + ["train.max_steps=9"])[0]["step"] == 9 == straight[0]["step"]
    a = load_full_state(str(tmp_path / "straight" / "checkpoint-step000000009"))
    b = load_full_state(str(tmp_path / "resumed" / "checkpoint-step000000009"))
    assert set(a) == set(b) and any("frame_clip" in k for k in a) and any("pos_aggregate" in k for k in a)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)
    rows = [json.loads(line) for line in (tmp_path / "straight" / "logs" / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in rows if r["kind"] == "valid"]
    assert valid and all(0.0 <= valid[-1][k] <= 1.0 for k in ("hr@10", "ndcg@10", "frame/auc", "frame/ndcg@3"))
    if clip_init == "features":  # the 8-wide table trained from the clip features (as released)
        from mvrec_dist.data.clip_features import ClipFeatureRows

        table = next(k for k in a if "frame_clip" in k and k.endswith("weight"))
        initial = ClipFeatureRows(str(request.getfixturevalue("clip_dataset")[1]), 4)(0, 41 * 4)
        assert tuple(a[table].shape) == (41 * 4, 8) and not torch.equal(a[table].float(), initial)


@pytest.mark.integration
def test_frame_trains_through_the_job_with_its_preset(dataset, tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "jobs" / "train_videorec.py"), "--config", str(PRESET),
                           *_overrides(dataset, tmp_path / "runs", "job", "train.epochs=2", "train.log_every_steps=2",
                                       "train.test_after_training=true", "train.quiet=false"),
                           "ray.num_cpus=2", "ray.dashboard=false"],
                          cwd=REPO, env=dict(os.environ, PYTHONUNBUFFERED="1"), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "runs" / "job" / "result.json").read_text())
    for key in ("hr@10", "ndcg@10", "frame/auc", "frame/user_auc", "frame/recall@3", "frame/ndcg@5", "frame/dcg@5"):
        assert 0.0 <= result[f"test/{key}"] <= (1.0 if "dcg@" not in key or "ndcg" in key else 5.0), key
    assert result["test/frame/logloss"] > 0 and result["test/users"] == result["valid/users"] == 60
    rows = [json.loads(line) for line in (tmp_path / "runs" / "job" / "logs" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["kind"] == "train"]
    assert len(losses) >= 4 and sum(losses[-2:]) / 2 < sum(losses[:2]) / 2, losses


CLIP_CNN = ["model.item_tower=content", "model.content_encoder.name=frame_cnn", "model.content_encoder.widths=[4,8]",
            "model.content_encoder.layers=[1,1]", "model.content_encoder.stem_width=4",
            "model.content_encoder.frames=8", "model.content_encoder.size=16", "model.content_encoder.finetune=frozen",
            "model.content_encoder.frame_pool=none", "model.content_encoder.cached_trunk=true"]


@pytest.fixture(scope="module")
def clip_dataset(ray_local, tmp_path_factory) -> tuple[Path, Path]:
    """The tiny play-time dataset with every video as 4 clips of 2 (seeded noise) frames, and their per-frame
    features from a tiny frozen frame CNN ([8, 8] per video)."""
    from mvrec_dist.config import TrainJobConfig, load_config
    from mvrec_dist.features.trunk_cache import run_trunk_cache
    from tests.helpers.shards import ingest_synthetic

    root = tmp_path_factory.mktemp("frame-clips")
    (root / "videos").mkdir()
    ds = ingest_synthetic(root, "ingest.shard_max_samples=16", "synthetic.users=60", "synthetic.items=40",
                          "synthetic.interactions=700", "synthetic.chunk_users=30", "synthetic.plays=true",
                          "video.enabled=true", f"video.videos={root / 'videos'}", "video.mode=clips", "video.clips=4",
                          "video.frames_per_clip=2", "video.size=16", "video.synthetic_missing=true",
                          "video.shard_max_samples=16")
    features = root / "features"
    run_trunk_cache(load_config(TrainJobConfig, PRESET, [
        f"data.dataset_dir={ds}", f"data.content_features={features}", "data.prepare_with=null", *CLIP_CNN,
        "parallel.num_workers=1", "trunk_cache.progress=false", "trunk_cache.batch_size=7"]))
    return ds, features


def _clip_overrides(clip_dataset, runs: Path, name: str, *extra: str) -> list[str]:
    ds, features = clip_dataset
    return _overrides(ds, runs, name, f"data.content_features={features}", "task.clip_init=features", *CLIP_CNN,
                      *extra)


def test_clip_rows_are_the_means_of_each_clips_frame_features(clip_dataset):
    from mvrec_dist.data.clip_features import ClipFeatureRows, clip_feature_problems
    from mvrec_dist.data.content_store import ContentStore
    from mvrec_dist.data.manifest import load_manifest

    ds, features = clip_dataset
    store = ContentStore.from_features(str(features))
    assert store.shape == (8, 8) and store.items_with_content == 40
    frames = store.gather(np.arange(1, 41)).astype(np.float32)  # 40 videos x 8 frames x 8
    want = np.zeros((41 * 4, 8), dtype=np.float32)
    for v in range(1, 41):
        for j in range(4):
            want[v * 4 + j] = frames[v - 1, 2 * j:2 * j + 2].mean(0)  # clip j = frames 2j, 2j+1
    rows = ClipFeatureRows(str(features), 4)
    np.testing.assert_allclose(rows(0, 164).numpy(), want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(rows(7, 33, block_items=3).numpy(), want[7:33], rtol=1e-6, atol=1e-7)  # any block
    assert not want[:4].any() and (np.abs(want[4] - want[5]).max() > 0)  # padding video zero; clips differ
    assert clip_feature_problems(str(features), load_manifest(str(ds)), 4) == []
    assert "5 clips" in clip_feature_problems(str(features), load_manifest(str(ds)), 5)[0]


def test_clip_features_are_refused_without_clips_or_from_another_dataset(dataset, clip_dataset, tmp_path):
    from mvrec_dist.config import TrainJobConfig, load_config
    from mvrec_dist.config.fields import ConfigError
    from mvrec_dist.data.clip_features import clip_feature_problems
    from mvrec_dist.data.manifest import load_manifest

    ds, features = clip_dataset
    assert "no video content" in clip_feature_problems(str(features), load_manifest(str(dataset)), 4)[0]
    assert "not found" in clip_feature_problems(str(tmp_path / "none"), load_manifest(str(ds)), 4)[0]
    with pytest.raises(ConfigError, match="content_features"):
        load_config(TrainJobConfig, PRESET, ["task.clip_init=features"])
    from mvrec_dist.train.launch import PreflightError, preflight

    # The driver refuses it with the reason, before any table is sized from the (absent) store.
    with pytest.raises(PreflightError, match="no video content"):
        preflight(load_config(TrainJobConfig, PRESET, [*_overrides(dataset, tmp_path, "refused"), *CLIP_CNN,
                                                       "task.clip_init=features",
                                                       f"data.content_features={tmp_path / 'none'}"]))
    with pytest.raises(ConfigError, match="build_if_missing"):
        load_config(TrainJobConfig, PRESET, ["task.clip_init=features", f"data.content_features={features}",
                                             "trunk_cache.build_if_missing=true"])


def _initial_table(ctx, overrides):
    from mvrec_dist.config import TrainJobConfig, load_config
    from mvrec_dist.models.tables import Bags
    from mvrec_dist.train.worker import build_rank

    cfg = load_config(TrainJobConfig, PRESET, overrides + [f"parallel.num_workers={ctx.world_size}"])
    setup = build_rank(cfg, ctx)
    pm = setup.parallel
    rows = pm.dense.frame.pos_aggregate.shape[0]
    unit = Bags(torch.arange(rows), torch.ones(rows, dtype=torch.long), torch.ones(rows))
    with pm.evaluating():
        # Wait for the lookup on every rank: a rank that returned without waiting would close its end of the
        # collective while the other still reads (seen under load as gloo "Connection reset by peer").
        table = torch.mul(pm.lookup_bags({"clip_pos": unit, "clip_neg": unit})["clip_pos"], 1.0)
    return {"table": table.detach().clone(), "project_in": pm.dense.frame.project.in_features}


@pytest.mark.integration
def test_the_sharded_clip_table_starts_from_the_clip_features_on_any_world_size(clip_dataset, tmp_path):
    from mvrec_dist.data.clip_features import ClipFeatureRows

    want = ClipFeatureRows(str(clip_dataset[1]), 4)(0, 41 * 4)
    two = run_ranks(_initial_table, 2, _clip_overrides(clip_dataset, tmp_path, "init2"))
    one = run_ranks(_initial_table, 1, _clip_overrides(clip_dataset, tmp_path, "init1"))[0]
    for got in (one, *two):
        assert got["project_in"] == 8  # T projects the 8-wide features to D = 16
        torch.testing.assert_close(got["table"], want, rtol=0, atol=0)
