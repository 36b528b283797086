"""A tiny test-only content encoder registered in CONTENT_ENCODERS (imported by the model tests).

Content is ``float [U, F, 3]`` precomputed features (F "frames" of 3 values); the encoder
mean-pools the frames and applies one linear layer, so its output can be recomputed by hand in tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from mvrec_dist.config.fields import setting
from mvrec_dist.config.model import ContentEncoderConfig, ContentKind
from mvrec_dist.models.item_encoders.base import ContentEncoder
from mvrec_dist.models.registry import CONTENT_ENCODERS


@dataclass(frozen=True, kw_only=True)
class TinyContentConfig(ContentEncoderConfig):
    """Test-only content encoder."""

    name: Literal["tiny_test"] = setting("tiny_test", doc="Selects the test encoder.")
    out_dim: int = setting(5, doc="Output width.")

    @property
    def content_kind(self) -> ContentKind:
        return "features"


class TinyContentEncoder(ContentEncoder):
    def __init__(self, out_dim: int) -> None:
        super().__init__(out_dim=out_dim)
        self.linear = nn.Linear(3, out_dim)

    def forward(self, content: Tensor) -> Tensor:
        return self.linear(content.float().mean(dim=1).to(self.linear.weight.dtype))  # U,out_dim


@CONTENT_ENCODERS.register(TinyContentConfig)
def tiny_content(cfg: TinyContentConfig) -> TinyContentEncoder:
    torch.manual_seed(123)
    return TinyContentEncoder(cfg.out_dim)


class TinyTokenEncoder(ContentEncoder):
    """Token ids ``int [U, T]`` (0 = padding) -> mean of frozen embeddings -> a trainable linear head.

    Its frozen part (the embedding mean) can be cached, like a video encoder's trunk; ``prepared``
    counts ``prepare`` calls so tests see the protocol being used.
    """

    def __init__(self, out_dim: int = 5, vocab: int = 20) -> None:
        super().__init__(out_dim=out_dim)
        torch.manual_seed(7)
        self.embed = nn.Embedding(vocab, 3, padding_idx=0)
        self.embed.requires_grad_(False)
        self.head = nn.Linear(3, out_dim)
        self.prepared = 0

    def prepare(self, content: Tensor) -> Tensor:
        self.prepared += 1
        return content.long()  # U,T

    def forward(self, ids: Tensor) -> Tensor:
        return self.head(_MeanEmbedding(self.embed)(ids))  # U,out_dim

    def cache_split(self) -> tuple[nn.Module, nn.Module]:
        return _MeanEmbedding(self.embed), self.head

    def cache_identity(self) -> dict:
        return {"embedding_sum": float(self.embed.weight.sum())}


class _MeanEmbedding(nn.Module):
    def __init__(self, embed: nn.Embedding) -> None:
        super().__init__()
        self.embed = embed

    def forward(self, ids: Tensor) -> Tensor:
        count = (ids > 0).sum(1, keepdim=True).clamp(min=1)  # U,1
        return self.embed(ids).sum(1) / count  # U,3
