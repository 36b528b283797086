"""Tests of mvrec_dist.models.user_encoders.nextitnet."""

from __future__ import annotations

import torch

from mvrec_dist.config.model import NextItNetConfig
from mvrec_dist.models.registry import USER_ENCODERS
from mvrec_dist.models.user_encoders import NextItNet
from tests.models.user_encoders import contract

DIM = 8


def _encoder(**kw) -> NextItNet:
    torch.manual_seed(0)
    return NextItNet(**({"embedding_dim": DIM, "dropout": 0.0, "init_std": 0.2} | kw))


def _causal_conv_reference(layer, x: torch.Tensor, dilation: int) -> torch.Tensor:
    """y[j] = b + sum_k W[:, :, k] x[j - (K-1-k) d], zero before the start; then LayerNorm, ReLU."""
    w, bias = layer.conv.weight, layer.conv.bias  # D,D,K
    kernel = w.shape[2]
    y = torch.zeros_like(x)
    for j in range(x.shape[0]):
        y[j] = bias.clone()
        for k in range(kernel):
            i = j - (kernel - 1 - k) * dilation
            if i >= 0:
                y[j] += w[:, :, k] @ x[i]
    return torch.relu(torch.nn.functional.layer_norm(y, (x.shape[1],), layer.norm.weight, layer.norm.bias, 1e-8))


def test_matches_hand_written_dilated_convolutions():
    enc = _encoder(num_blocks=2, dilations=(1, 4)).eval()
    seq = torch.randn(7, DIM, generator=torch.Generator().manual_seed(3))
    x = seq
    for block in enc.blocks:
        h = x
        for layer, d in zip(block.convs, (1, 4)):
            h = _causal_conv_reference(layer, h, d)
        x = x + h
    torch.testing.assert_close(enc(seq[None], torch.tensor([7]))[0], x, atol=1e-5, rtol=1e-5)


def test_receptive_field_covers_the_window():
    # 2 blocks x dilations [1, 4] with kernel 3 reach 2 * (2 + 8) = 20 positions back.
    enc = _encoder().eval()
    seq = torch.randn(1, 21, DIM)
    base = enc(seq, torch.tensor([21]))
    moved = seq.clone()
    moved[0, 0] += 1.0
    assert not torch.allclose(enc(moved, torch.tensor([21]))[0, 20], base[0, 20], atol=1e-6)


def test_contract():
    contract.check_shapes(_encoder(), DIM)
    contract.check_causal(_encoder(), DIM, length=10)
    contract.check_padding_invariance(_encoder(), DIM)


def test_gradient_step_reduces_loss():
    contract.check_gradient_step_reduces_loss(NextItNetConfig(dropout=0.0))


def test_builder_uses_paper_settings():
    enc = USER_ENCODERS.build(NextItNetConfig(), embedding_dim=DIM, max_seq_len=10, init_std=0.02)
    assert isinstance(enc, NextItNet) and len(enc.blocks) == 2
    assert [c.conv.dilation[0] for c in enc.blocks[0].convs] == [1, 4]
    assert enc.blocks[0].convs[0].conv.kernel_size == (3,)
