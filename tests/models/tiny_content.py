"""A tiny test-only content encoder registered in CONTENT_ENCODERS (imported by the model tests).

Content is ``float [U, F, 3]`` (F "frames" of 3 values); the encoder mean-pools the frames and
applies one linear layer, so its output can be recomputed by hand in tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from mvrec_dist.config.fields import setting
from mvrec_dist.config.model import ContentEncoderConfig
from mvrec_dist.models.registry import CONTENT_ENCODERS


@dataclass(frozen=True, kw_only=True)
class TinyContentConfig(ContentEncoderConfig):
    """Test-only content encoder."""

    name: Literal["tiny_test"] = setting("tiny_test", doc="Selects the test encoder.")
    out_dim: int = setting(5, doc="Output width.")


class TinyContentEncoder(nn.Module):
    def __init__(self, out_dim: int) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.linear = nn.Linear(3, out_dim)

    def forward(self, content: Tensor) -> Tensor:
        return self.linear(content.float().mean(dim=1).to(self.linear.weight.dtype))  # U,out_dim


@CONTENT_ENCODERS.register(TinyContentConfig)
def tiny_content(cfg: TinyContentConfig) -> TinyContentEncoder:
    torch.manual_seed(123)
    return TinyContentEncoder(cfg.out_dim)
