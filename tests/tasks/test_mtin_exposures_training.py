"""MTIN with ``task.negatives=exposures`` and ``mtin.time_distance=timestamp`` on ingested data: the
loader's batches and the evaluation inputs against the raw csv (every H_neg item is an exposure of its
user before the positive, every time is the input's), and a few training steps through ``run_worker`` on
2 gloo ranks (the path of ``test_mtin_training.py``) whose result says how the negatives were formed.

The dataset is the synthetic generator's with exposures (``synthetic.exposures``), ingested once.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.dist import run_ranks

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PRESET = REPO / "jobs" / "configs" / "synthetic" / "mtin-small.yaml"
MODE = ["task.negatives=exposures", "task.mtin.time_distance=timestamp"]


@pytest.fixture(scope="module")
def dataset(ray_local, tmp_path_factory):
    """A small labelled dataset (300 users, 150 items, about one exposure per interaction)."""
    from mvrec_dist.config import load_config
    from mvrec_dist.config.jobs import IngestJobConfig
    from mvrec_dist.data.ingest.job import run_ingest_job

    tmp = tmp_path_factory.mktemp("mtin-exposures")
    cfg = load_config(IngestJobConfig, None, [
        f"ingest.output_dir={tmp / 'ds'}", "ingest.shard_max_samples=100", "ingest.progress=false",
        "synthetic.enabled=true", f"synthetic.output={tmp / 'raw'}", "synthetic.users=300", "synthetic.items=150",
        "synthetic.interactions=3000", "synthetic.seed=2", "synthetic.chunk_users=300", "synthetic.structure=0.6",
        "synthetic.cluster_size=15", "synthetic.exposures=1.0"])
    manifest = run_ingest_job(cfg).manifest
    assert manifest["labels"]["exposure_rows"] > 2000
    raw = np.concatenate([np.loadtxt(io.StringIO(p.read_text()), delimiter=",", skiprows=1, dtype=np.int64)
                          for p in sorted((tmp / "raw").glob("part-*.csv"))])
    return tmp / "ds", raw


def _config(dataset_dir, *extra):
    from mvrec_dist.config import TrainJobConfig, load_config

    return load_config(TrainJobConfig, PRESET, [f"data.dataset_dir={dataset_dir}", "data.prepare_with=null",
                                                "train.batch_size=32", "parallel.num_workers=1", *MODE, *extra])


def test_batches_and_evaluation_inputs_follow_the_raw_exposures(dataset):
    from mvrec_dist.data.manifest import load_manifest
    from mvrec_dist.tasks.mtin import MTINData

    root, raw = dataset
    manifest = load_manifest(str(root))
    items, users = np.load(root / "maps" / "items.npy"), np.load(root / "maps" / "users.npy")
    data = MTINData(_config(root), manifest, rank=0, world_size=1)
    shown = {u: raw[(raw[:, 0] == u) & (raw[:, 3] == 0)] for u in np.unique(raw[:, 0]).tolist()}
    clicked = {(u, i): t for u, i, t, label in raw.tolist() if label == 1}  # no item twice in a user's clicks

    def was_shown(user, item, at):
        return bool(((shown[user][:, 1] == items[item]) & (shown[user][:, 2] == at)).any())

    rows = 0
    for batch in data.train_batches(0):
        data.record(batch)
        for r, user in enumerate(users[batch.users.numpy()].tolist()):
            t = clicked[user, int(items[batch.candidates[r, 0]])]  # the positive's time in the csv
            for item, at in zip(batch.positive[r].tolist(), batch.positive_times[r].tolist()):
                assert not item or clicked[user, int(items[item])] == at
            for item, at in zip(batch.negative[r].tolist(), batch.negative_times[r].tolist()):
                assert not item or (at < t and was_shown(user, item, at))  # an exposure before the positive
            rows += 1
    counts = data.state_dict()["exposure_draws"]
    assert counts["exposure_candidates"] == 4 * rows and 0 < counts["exposure_fallback"] < counts["exposure_candidates"]
    # Evaluation: H_neg from exposures before the valid target's time, histories with the csv's times.
    batch = data.eval_batches("valid")[0]
    negative, positive_times, negative_times = data.eval_inputs("valid", batch)
    for r, user in enumerate(users[batch.users.numpy()].tolist()):
        target_time = clicked[user, int(items[batch.targets[r]])]
        for item, at in zip(negative[r].tolist(), negative_times[r].tolist()):
            assert not item or (at < target_time and was_shown(user, item, at))
        for item, at in zip(batch.history[r].tolist()[:int(batch.lengths[r])], positive_times[r].tolist()):
            assert clicked[user, int(items[item])] == at
    # Every evaluation of a split reports its own users without an exposure before their target.
    reports = []
    for _ in range(2):
        for b in data.eval_batches("valid")[1:]:
            data.eval_inputs("valid", b)
        reports.append(data.negatives_report("valid", lambda t: t))
        data.eval_inputs("valid", batch)
    assert reports[0] == reports[1] and reports[0]["negatives"] == "exposures"
    valid_time = {u: np.sort(raw[(raw[:, 0] == u) & (raw[:, 3] == 1), 2])[-2] for u in shown}  # every user is kept
    assert reports[0]["exposure_empty_users"] == sum(not (shown[u][:, 2] < t).any() for u, t in valid_time.items())


def _train(ctx, overrides):
    from mvrec_dist.config import TrainJobConfig, load_config
    from mvrec_dist.train.worker import run_worker

    cfg = load_config(TrainJobConfig, PRESET, overrides + [f"parallel.num_workers={ctx.world_size}"])
    result = run_worker(cfg, ctx)
    return {"step": result.state.step, "test": result.test}


def test_mtin_trains_on_two_ranks_from_exposures_with_time_gaps(dataset, tmp_path):
    root, _ = dataset
    out = run_ranks(_train, 2, [f"data.dataset_dir={root}", "data.prepare_with=null", f"train.storage_path={tmp_path}",
                                "train.run_name=exposures", "train.batch_size=64", "train.epochs=1",
                                "train.max_steps=4", "train.quiet=true", *MODE])
    test = out[0]["test"]
    assert out[0]["step"] == out[1]["step"] == 4
    assert {k: v for k, v in test.items() if k != "seconds"} == \
        {k: v for k, v in out[1]["test"].items() if k != "seconds"}
    assert test["negatives"] == "exposures" and test["users"] == 300
    # 4 steps of 64 examples with 4 label-0 candidates each; some users had too few exposures.
    assert 0 < test["exposure_fallback"] < test["exposure_candidates"] == 4 * 64 * 4
    for key in ("hr@10", "ndcg@10", "auc", "precision@50"):
        assert 0.0 <= test[key] <= 1.0
