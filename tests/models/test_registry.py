"""Tests of mvrec_dist.models.registry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

import mvrec_dist.models  # noqa: F401  (registers the built-ins)
from mvrec_dist.config.content import R3D18Config, VideoMAEConfig
from mvrec_dist.config.fields import setting
from mvrec_dist.config.model import (FullSoftmaxConfig, GRU4RecConfig, InBatchSoftmaxConfig, NextItNetConfig,
                                     SampledSoftmaxConfig, SASRecConfig, UserEncoderConfig)
from mvrec_dist.models.registry import CONTENT_ENCODERS, LOSSES, USER_ENCODERS, Registry, RegistryError


def test_builtins_are_registered():
    assert set(USER_ENCODERS.variants()) == {SASRecConfig, GRU4RecConfig, NextItNetConfig}
    assert set(LOSSES.variants()) == {FullSoftmaxConfig, InBatchSoftmaxConfig, SampledSoftmaxConfig}
    assert R3D18Config in CONTENT_ENCODERS and VideoMAEConfig in CONTENT_ENCODERS  # via models.builders


def test_build_passes_config_and_kwargs():
    reg = Registry("THINGS")

    @reg.register(SASRecConfig)
    def build(cfg, *, width):
        return (cfg.num_blocks, width)

    assert reg.build(SASRecConfig(num_blocks=3), width=7) == (3, 7)
    assert SASRecConfig in reg and GRU4RecConfig not in reg


def test_missing_variant_names_it():
    @dataclass(frozen=True, kw_only=True)
    class MambaConfig(UserEncoderConfig):
        name: Literal["mamba"] = setting("mamba", doc="test")

    with pytest.raises(RegistryError, match=r"USER_ENCODERS has no builder for MambaConfig \(name='mamba'\)"):
        USER_ENCODERS.build(MambaConfig(), embedding_dim=4, max_seq_len=2, init_std=0.1)


def test_double_registration_fails():
    reg = Registry("THINGS")
    reg.register(SASRecConfig)(lambda cfg: None)
    with pytest.raises(RegistryError, match="already registered"):
        reg.register(SASRecConfig)(lambda cfg: None)
