"""Checks every user encoder must pass: shapes, strict causality, padding invariance, learning.

Shared by the per-encoder test modules (not a test module itself).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mvrec_dist.config.model import InBatchSoftmaxConfig, ModelConfig, UserEncoderConfig
from mvrec_dist.data.batch import collate_train, training_windows
from mvrec_dist.models import build_recommender

ATOL = 1e-6


def check_shapes(encoder: nn.Module, dim: int) -> None:
    encoder.eval()
    out = encoder(torch.randn(3, 7, dim), torch.tensor([7, 3, 1]))
    assert out.shape == (3, 7, dim) and out.dtype == torch.float32 and torch.isfinite(out).all()


def check_causal(encoder: nn.Module, dim: int, length: int = 8, seed: int = 0) -> None:
    """Output at j must not move when any input after j changes."""
    encoder.eval()
    g = torch.Generator().manual_seed(seed)
    seq = torch.randn(4, length, dim, generator=g)
    lengths = torch.full((4,), length)
    base = encoder(seq, lengths)
    for j in range(length - 1):
        perturbed = seq.clone()
        perturbed[:, j + 1:] = torch.randn(4, length - j - 1, dim, generator=g) * 5
        out = encoder(perturbed, lengths)
        torch.testing.assert_close(out[:, :j + 1], base[:, :j + 1], atol=ATOL, rtol=0)
        assert not torch.allclose(out[:, j + 1:], base[:, j + 1:], atol=1e-3)  # the perturbation is seen later


def check_padding_invariance(encoder: nn.Module, dim: int, length: int = 6, seed: int = 1) -> None:
    """Whatever the padding holds, valid positions get the same output."""
    encoder.eval()
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([6, 4, 2, 1])
    valid = torch.arange(length)[None, :] < lengths[:, None]  # B,L
    seq = torch.randn(4, length, dim, generator=g)
    zero_pad = encoder(seq * valid[..., None], lengths)
    noisy_pad = encoder(torch.where(valid[..., None], seq, torch.randn(4, length, dim, generator=g) * 3), lengths)
    torch.testing.assert_close(noisy_pad[valid], zero_pad[valid], atol=ATOL, rtol=0)


def check_gradient_step_reduces_loss(encoder_cfg: UserEncoderConfig, steps: int = 3) -> None:
    """A few Adam steps on one fixed batch lower its loss (dropout off, fixed seed)."""
    torch.manual_seed(0)
    num_items, max_len = 40, 6
    cfg = ModelConfig(embedding_dim=16, user_encoder=encoder_cfg, loss=InBatchSoftmaxConfig())
    counts = np.r_[0, np.arange(1, num_items + 1)]
    model = build_recommender(cfg, num_items=num_items, item_train_counts=counts, max_seq_len=max_len)
    rng = np.random.default_rng(0)
    windows = [w for _ in range(8) for w in training_windows(rng.integers(1, num_items + 1, size=9), max_len, "all")]
    batch = collate_train(windows, np.arange(len(windows)), max_seq_len=max_len, num_items=num_items)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps + 1):
        out = model(batch)
        losses.append(out.loss_sum.item() / out.num_targets.item())
        opt.zero_grad()
        (out.loss_sum / out.num_targets).backward()
        opt.step()
    assert all(b < a - 1e-4 for a, b in zip(losses, losses[1:])), losses
