"""The config loader: presets, dotted overrides, unknown keys, wrong types, variants, cross-field checks."""

from __future__ import annotations

import dataclasses
import sys

import pytest

from mvrec_dist.config import (ConfigError, GRU4RecConfig, IngestJobConfig, TrainJobConfig,
                               UserEncoderConfig, config_to_dict, config_to_yaml, describe_config, load_config)
from mvrec_dist.config.load import build_config, variant_subclasses


def _problems(overrides, cls=TrainJobConfig):
    with pytest.raises(ConfigError) as info:
        load_config(cls, None, overrides)
    return info.value.problems


def test_defaults_build():
    cfg = load_config(TrainJobConfig)
    assert cfg.model.user_encoder.name == "sasrec"
    assert cfg.batch_size_per_worker * cfg.parallel.num_workers == cfg.train.batch_size


def test_overrides_change_values_and_parse_yaml_scalars():
    cfg = load_config(TrainJobConfig, None, ["train.lr=3e-4", "eval.ks=[5,10]", "eval.select_metric=hr@5",
                                             "parallel.use_gpu=false"])
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.eval.ks == (5, 10)
    assert cfg.parallel.use_gpu is False


def test_unknown_key_is_named_with_suggestion():
    problems = _problems(["data.max_seq_lne=5"])
    assert len(problems) == 1
    assert problems[0].startswith("data.max_seq_lne: unknown key")
    assert "did you mean 'data.max_seq_len'" in problems[0]


def test_unknown_section_is_named():
    assert _problems(["datta.max_seq_len=5"])[0].startswith("datta: unknown key")


@pytest.mark.parametrize("override,key,fragment", [
    ("train.lr=fast", "train.lr", "expected float"),
    ("train.epochs=2.5", "train.epochs", "expected int"),
    ("train.quiet=1", "train.quiet", "expected bool"),
    ("parallel.sharding_type=diagonal", "parallel.sharding_type", "expected one of"),
    ("eval.ks=10", "eval.ks", "expected a list"),
    ("model=3", "model", "expected a mapping"),
])
def test_wrong_types_name_the_key(override, key, fragment):
    problems = _problems([override])
    assert any(p.startswith(key + ":") and fragment in p for p in problems), problems


def test_all_problems_reported_together():
    problems = _problems(["train.lr=-1", "parallel.zero_stage=4", "eval.every_epochs=0"])
    keys = sorted(p.split(":")[0] for p in problems)
    assert keys == ["eval.every_epochs", "parallel.zero_stage", "train.lr"]


def test_variant_selection_and_its_own_keys():
    cfg = load_config(TrainJobConfig, None, ["model.user_encoder.name=gru4rec",
                                             "model.user_encoder.num_layers=2"])
    assert isinstance(cfg.model.user_encoder, GRU4RecConfig)
    assert cfg.model.user_encoder.num_layers == 2
    # A key of another variant is unknown for the chosen one.
    assert _problems(["model.user_encoder.name=gru4rec", "model.user_encoder.num_heads=2"])[0].startswith(
        "model.user_encoder.num_heads: unknown key")
    assert "expected one of" in _problems(["model.user_encoder.name=bert4rec"])[0]


def test_cross_field_checks_name_keys():
    assert _problems(["train.batch_size=255"])[0].startswith("train.batch_size:")
    assert _problems(["model.embedding_dim=63"])[0].startswith("model.user_encoder.num_heads:")
    problems = _problems(["model.item_tower=content"])
    assert any(p.startswith("model.content_encoder:") for p in problems)
    assert any(p.startswith("model.loss.name:") for p in problems)


def test_preset_file_and_override_precedence(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("# a preset\ntrain:\n  lr: 0.01\n  epochs: 3\n")
    cfg = load_config(TrainJobConfig, preset, ["train.epochs=4"])
    assert cfg.train.lr == pytest.approx(0.01) and cfg.train.epochs == 4


def test_yaml_round_trip_is_identity():
    cfg = load_config(TrainJobConfig, None, ["model.loss.name=sampled_softmax", "model.loss.num_negatives=64"])
    again = build_config(TrainJobConfig, config_to_dict(cfg))
    assert again == cfg
    import yaml
    assert build_config(TrainJobConfig, yaml.safe_load(config_to_yaml(cfg))) == cfg


def test_every_field_is_documented():
    rows = describe_config(TrainJobConfig) + describe_config(IngestJobConfig)
    undocumented = [k for k, _, doc in rows if not doc.strip()]
    assert not undocumented, undocumented


def test_configs_are_frozen_and_keyword_only():
    cfg = load_config(TrainJobConfig)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.lr = 1.0  # type: ignore[misc]
    assert set(variant_subclasses(UserEncoderConfig)) >= {"sasrec", "gru4rec", "nextitnet"}


def test_ingest_job_needs_an_input():
    assert _problems([], IngestJobConfig)[0].startswith("ingest.input:")
    cfg = load_config(IngestJobConfig, None, ["synthetic.enabled=true"])
    assert cfg.synthetic.enabled


def test_config_package_imports_no_torch_or_ray():
    import subprocess
    code = ("import sys, mvrec_dist.config; "
            "bad=[m for m in ('torch','ray','deepspeed','torchrec') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_optional_section_reports_its_own_problems():
    from mvrec_dist.config.load import build_config

    with pytest.raises(ConfigError) as info:
        build_config(TrainJobConfig, {"model": {"item_tower": "content", "loss": {"name": "inbatch_softmax"},
                                                "content_encoder": {"name": "r3d18", "frames": 0}}})
    assert any(p.startswith("model.content_encoder.frames:") for p in info.value.problems), info.value.problems


def test_the_selection_metric_is_checked_against_the_tasks_metrics():
    cfg = load_config(TrainJobConfig, None, [])
    assert cfg.task.name == "next_item" and cfg.select_metric.name == "ndcg@10" and cfg.select_metric.higher_is_better
    assert [m.name for m in cfg.metrics] == ["hr@10", "ndcg@10", "hr@20", "ndcg@20"]
    assert load_config(TrainJobConfig, None, ["eval.ks=[5]"]).select_metric.name == "ndcg@5"
    pop = load_config(TrainJobConfig, None, ["task.name=item_popularity"])
    assert pop.select_metric.name == "mae" and not pop.select_metric.higher_is_better
    assert load_config(TrainJobConfig, None, ["task.name=item_popularity", "eval.select_metric=rmse"]
                       ).select_metric.name == "rmse"
    with pytest.raises(ConfigError, match=r"eval.select_metric: must be a metric of task 'item_popularity': "
                                          r"one of \['mae', 'rmse'\], got 'ndcg@10'"):
        load_config(TrainJobConfig, None, ["task.name=item_popularity", "eval.select_metric=ndcg@10"])
    with pytest.raises(ConfigError, match=r"eval.select_metric: must be a metric of task 'next_item'.*got 'ndcg@30'"):
        load_config(TrainJobConfig, None, ["eval.select_metric=ndcg@30"])
    with pytest.raises(ConfigError, match="model.item_tower: task item_popularity trains on the ID table only"):
        load_config(TrainJobConfig, None, ["task.name=item_popularity", "model.item_tower=content",
                                           "model.content_encoder.name=frame_cnn", "model.loss.name=inbatch_softmax"])
