"""Tests of mvrec_dist.config.mtin: paper defaults, YAML round trip, validation."""

from __future__ import annotations

import pytest

from mvrec_dist.config.fields import ConfigError
from mvrec_dist.config.load import build_config, config_to_dict, describe_config
from mvrec_dist.config.mtin import MTINConfig


def test_defaults_are_the_papers():
    cfg = MTINConfig()
    assert (cfg.num_groups, cfg.num_temporal_masks, cfg.l2) == (6, 8, 1e-4)
    assert cfg.interest_tau == pytest.approx(1 / 6) and cfg.memory_width(128) == 2 * 6 * 128
    assert cfg.time_distance == "position" and cfg.routing_threshold is None


def test_round_trip_through_a_mapping():
    raw = {"num_groups": 4, "routing_threshold": 0.1, "decay_init": [2, 0.5], "time_distance": "timestamp",
           "interest_threshold": None}
    cfg = build_config(MTINConfig, raw)
    assert cfg.decay_init == (2.0, 0.5) and cfg.routing_threshold == 0.1 and cfg.interest_tau == 0.25
    assert build_config(MTINConfig, config_to_dict(cfg)) == cfg


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as exc:
        build_config(MTINConfig, {"num_groups": 0, "routing_base": 1.0, "decay_init": [1.0], "l2": -1,
                                  "interest_threshold": 1.0})
    keys = sorted(p.split(":")[0] for p in exc.value.problems)
    assert keys == ["decay_init", "interest_threshold", "l2", "num_groups", "routing_base"]


def test_every_field_is_documented():
    assert all(doc.strip() for _, _, doc in describe_config(MTINConfig))
