"""Tests of mvrec_dist.models.item_encoders.base: the content-encoder protocol and the generic feature cache."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mvrec_dist.models.item_encoders.base import ContentEncoder, cached_feature_shape, cached_features
from tests.models.tiny_content import TinyTokenEncoder


class _Plain(ContentEncoder):
    def __init__(self) -> None:
        super().__init__(out_dim=2)
        self.linear = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def test_the_defaults_prepare_nothing_and_have_no_frozen_part():
    enc = _Plain()
    x = torch.randn(3, 4)
    assert enc.prepare(x) is x and enc.out_dim == 2
    for call in (enc.cache_split, enc.cache_identity):
        with pytest.raises(ValueError, match="_Plain has no frozen part"):
            call()


class _Dropout(TinyTokenEncoder):
    """Dropout in the frozen part: caching must run it in eval mode (as frozen BatchNorm)."""

    def __init__(self) -> None:
        super().__init__()
        self.dropout = nn.Dropout(0.9)  # a submodule, as a real frozen part's layers are

    def cache_split(self) -> tuple[nn.Module, nn.Module]:
        frozen, head = super().cache_split()
        return nn.Sequential(frozen, self.dropout), head


def test_cached_features_run_the_frozen_part_in_eval_mode_and_restore_the_mode():
    enc = _Dropout().train()
    ids = torch.tensor([[1, 2, 0], [3, 0, 0]], dtype=torch.int16)
    out = cached_features(enc, ids)
    assert enc.training and enc.dropout.training  # the mode is restored
    assert enc.prepared == 1 and out.dtype == torch.float32 and not out.requires_grad
    frozen, head = enc.cache_split()
    torch.testing.assert_close(out, frozen.eval()(ids.long()))  # no dropout applied
    torch.testing.assert_close(head(out), enc(ids.long()))
    assert cached_feature_shape(enc, (3,), torch.int64) == (3,)
