"""The driver's side of a job: what ``preflight`` checks, what is prepared before training, and in what order.

No Ray and no workers: the dataset is ``manifest_dataset`` (tests/conftest.py, without video content),
and the steps that need a cluster are replaced by recorders.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mvrec_dist.config import TrainJobConfig, load_config
from mvrec_dist.train import launch
from mvrec_dist.train.launch import PreflightError, preflight, prepare_features

REPO = Path(__file__).resolve().parents[2]
CACHED = REPO / "jobs" / "configs" / "microlens-50k" / "sasrec-video-frozen-cached.yaml"


def _cached(dataset: Path, tmp_path: Path, *overrides: str) -> TrainJobConfig:
    return load_config(TrainJobConfig, CACHED, [f"data.dataset_dir={dataset}", "data.prepare_with=null",
                                                f"data.content_features={tmp_path / 'features'}",
                                                f"train.storage_path={tmp_path / 'runs'}", *overrides])


def test_a_video_tower_on_a_dataset_without_content_fails_preflight(manifest_dataset, tmp_path):
    with pytest.raises(PreflightError) as exc:
        preflight(_cached(manifest_dataset, tmp_path))
    assert exc.value.problems == [f"model.item_tower='id+content' needs video content but {manifest_dataset} has "
                                  "none; run jobs/ingest_microlens.py with video.enabled=true video.videos=<dir> on it"]


def test_mtin_with_exposures_on_a_dataset_without_labels_fails_preflight(manifest_dataset, tmp_path):
    cfg = load_config(TrainJobConfig, REPO / "jobs" / "configs" / "microlens-50k" / "mtin.yaml",
                      [f"data.dataset_dir={manifest_dataset}", f"train.storage_path={tmp_path / 'runs'}",
                       "task.negatives=exposures"])
    with pytest.raises(PreflightError) as exc:
        preflight(cfg)
    assert [p.split(": ", 1)[1][:44] for p in exc.value.problems] == ["task.negatives=exposures needs shown-but-not"]


def test_evaluation_needs_the_features_training_would_build(manifest_dataset, tmp_path, monkeypatch):
    """Training may build a missing trunk-feature store (trunk_cache.build_if_missing); evaluation
    never does, so its content check treats the store as required."""
    import mvrec_dist.train.content as content

    seen = []
    monkeypatch.setattr(content, "content_problems", lambda cfg: seen.append(cfg.trunk_cache.build_if_missing) or [])
    cfg = _cached(manifest_dataset, tmp_path)
    assert cfg.trunk_cache.build_if_missing
    preflight(cfg)
    preflight(cfg, evaluating=str(tmp_path / "checkpoint-step000000001"))
    assert seen == [True, False]


@pytest.fixture
def computed(monkeypatch) -> list[TrainJobConfig]:
    """The configs ``run_trunk_cache`` was called with (it is not run)."""
    import mvrec_dist.features.trunk_cache as trunk_cache

    calls: list[TrainJobConfig] = []
    monkeypatch.setattr(trunk_cache, "run_trunk_cache", calls.append)
    return calls


def test_missing_trunk_features_are_computed_first(manifest_dataset, tmp_path, monkeypatch, computed, capsys):
    monkeypatch.chdir(tmp_path)
    prepare_features(_cached(manifest_dataset, tmp_path, "data.content_features=features"))  # relative: made absolute
    assert [c.data.content_features for c in computed] == [str(tmp_path / "features")]
    assert "features holds no trunk features yet: computing them" in capsys.readouterr().out


@pytest.mark.parametrize("overrides", [["trunk_cache.build_if_missing=false"],
                                       ["model.content_encoder.cached_trunk=false"]])
def test_features_are_computed_only_when_asked(manifest_dataset, tmp_path, computed, overrides):
    prepare_features(_cached(manifest_dataset, tmp_path, *overrides))
    prepare_features(load_config(TrainJobConfig, None, []))  # an ID-only run
    assert computed == []


def test_an_existing_feature_store_is_left_alone(manifest_dataset, tmp_path, monkeypatch, computed):
    import mvrec_dist.data.content_store as content_store

    monkeypatch.setattr(content_store, "load_features_manifest", lambda uri: {})
    prepare_features(_cached(manifest_dataset, tmp_path))
    assert computed == []


def test_train_prepares_the_dataset_and_the_features_before_training(monkeypatch):
    """``mvrec train`` (and jobs/train_videorec.py): checks, then inside the Ray session ingestion,
    trunk features and training (which claims the run directory), in that order."""
    import contextlib

    import mvrec_dist.runtime.ray_cluster as ray_cluster
    from mvrec_dist.cli.train import train

    calls = []
    for name in ("preflight", "check_run_free", "prepare_dataset", "prepare_features"):
        monkeypatch.setattr(launch, name, lambda cfg, _name=name: calls.append(_name))
    monkeypatch.setattr(launch, "run_training", lambda cfg: calls.append("run_training") or {"ok": 1})

    @contextlib.contextmanager
    def session(cfg, **kwargs):
        calls.append("ray up")
        yield "local"
        calls.append("ray down")

    monkeypatch.setattr(ray_cluster, "ray_session", session)
    assert train(load_config(TrainJobConfig, None, [])) == {"ok": 1}
    assert calls == ["preflight", "check_run_free", "ray up", "prepare_dataset", "prepare_features", "run_training",
                     "ray down"]


def test_training_claims_the_run_after_the_cluster_checks_and_records_the_outcome(monkeypatch, tmp_path):
    import json

    calls = []
    monkeypatch.setattr(launch, "cluster_view", lambda: ({"CPU": 2}, 1))
    monkeypatch.setattr(launch, "preflight", lambda cfg, **kw: calls.append("preflight"))
    real_claim = launch.claim_run
    monkeypatch.setattr(launch, "claim_run", lambda cfg, say: calls.append("claim") or real_claim(cfg, say))
    monkeypatch.setattr(launch, "_fit_with_retries",
                        lambda cfg, say: calls.append(f"fit {cfg.train.resume}") or {"ok": 1})
    assert launch.run_training(_run_dir(tmp_path)) == {"ok": 1}
    assert calls == ["preflight", "claim", "fit auto"]
    assert json.loads((tmp_path / "r" / "status.json").read_text())["status"] == "finished"
    # resume=never: the claim empties the run first, then the workers (and their retries) resume only
    # what this run writes.
    _leave_an_earlier_run(tmp_path / "r")
    calls.clear()
    assert launch.run_training(_run_dir(tmp_path, "train.resume=never"), say=lambda line: None) == {"ok": 1}
    assert calls == ["preflight", "claim", "fit auto"]
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["status.json"]
    # Another driver finished the run while this one was starting its cluster: shown, not trained again.
    (tmp_path / "r" / "result.json").write_text('{"epochs": 2, "best_epoch": 1}')
    calls.clear()
    said = []
    assert launch.run_training(_run_dir(tmp_path), say=said.append) == {"epochs": 2, "best_epoch": 1}
    assert calls == ["preflight", "claim"] and said[0].startswith("run r already finished (2 epochs, best epoch 1)")


def _run_dir(tmp_path: Path, *overrides: str) -> TrainJobConfig:
    return load_config(TrainJobConfig, None, [f"train.storage_path={tmp_path}", "train.run_name=r", *overrides])


def _leave_an_earlier_run(run: Path) -> None:
    for step in (4, 8):
        (run / f"checkpoint-step{step:09d}").mkdir(parents=True)
        (run / f"checkpoint-step{step:09d}" / "COMMIT.json").write_text("{}")
    (run / "logs").mkdir()
    (run / "logs" / "metrics.jsonl").write_text("{}\n")
    (run / "result.json").write_text('{"epochs": 2, "best_epoch": 1, "test/ndcg@10": 0.5}')


def test_a_finished_run_is_shown_not_trained_again_unless_resume_is_never(tmp_path):
    _leave_an_earlier_run(tmp_path / "r")
    cfg = _run_dir(tmp_path)
    assert launch.finished_result(cfg) == {"epochs": 2, "best_epoch": 1, "test/ndcg@10": 0.5}
    message = launch.finished_message(cfg, launch.finished_result(cfg))
    assert message == (f"run r already finished (2 epochs, best epoch 1); its result is below. To train it again from "
                       f"scratch: train.resume=never. To train on from its weights as a new run: train.run_name=<new "
                       f"name> train.resume={tmp_path}/r/checkpoint-step000000008 train.epochs=<more>")
    assert launch.finished_result(_run_dir(tmp_path, "train.resume=never")) is None


def test_resume_never_empties_the_run_directory_it_claims(tmp_path):
    _leave_an_earlier_run(tmp_path / "r")
    said = []
    with launch.claim_run(_run_dir(tmp_path, "train.resume=never"), say=said.append):
        assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["status.json"]
    assert said == [f"train.resume=never: run r starts afresh; removed what an earlier run left in {tmp_path}/r "
                    "(2 checkpoints, 2 other entries)"]


def test_resume_auto_keeps_the_run_and_drops_only_a_legacy_ray_snapshot(tmp_path):
    """Runs of older versions reported checkpoints to Ray Train, whose snapshot then named pruned ones
    and made the next TorchTrainer on the run fail; such a snapshot is removed, a current one kept."""
    run = tmp_path / "r"
    _leave_an_earlier_run(run)
    (run / "result.json").unlink()
    snapshot = run / "checkpoint_manager_snapshot.json"
    snapshot.write_text('{"checkpoint_results": [{"checkpoint_dir_name": "checkpoint-step000000002"}]}')
    said = []
    with launch.claim_run(_run_dir(tmp_path), say=said.append):
        pass
    assert not snapshot.exists() and len(said) == 1 and "older version" in said[0]
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-step000000004", "checkpoint-step000000008", "logs",
                                                     "status.json"]
    snapshot.write_text('{"checkpoint_results": []}')
    with launch.claim_run(_run_dir(tmp_path), say=said.append):
        pass
    assert snapshot.exists() and len(said) == 1
