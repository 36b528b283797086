"""Tests of mvrec_dist.models.user_encoders.sasrec."""

from __future__ import annotations

import math

import pytest
import torch

from mvrec_dist.config.model import SASRecConfig
from mvrec_dist.models.registry import USER_ENCODERS
from mvrec_dist.models.user_encoders import SASRec
from tests.models.user_encoders import contract

DIM = 8


def _encoder(**kw) -> SASRec:
    torch.manual_seed(0)
    kw = {"embedding_dim": DIM, "max_seq_len": 8, "dropout": 0.0, "attention_dropout": 0.0, "init_std": 0.2} | kw
    return SASRec(**kw)


def _reference(enc: SASRec, seq: torch.Tensor) -> torch.Tensor:
    """Post-LN SASRec written position by position (MicroLens modules.py math), for one row."""
    length, dim = seq.shape
    x = torch.nn.functional.layer_norm(seq + enc.position.weight[:length], (dim,), enc.input_norm.weight,
                                       enc.input_norm.bias, 1e-6)
    for blk in enc.blocks:
        h = blk.num_heads
        d = dim // h
        wq, wk, wv = blk.qkv.weight.split(dim, dim=0)
        attn = torch.zeros(length, dim)
        for j in range(length):
            for head in range(h):
                sl = slice(head * d, (head + 1) * d)
                q = wq[sl] @ x[j]
                scores = torch.stack([q @ (wk[sl] @ x[i]) / math.sqrt(d) for i in range(j + 1)])
                p = torch.softmax(scores, 0)
                attn[j, sl] = sum(p[i] * (wv[sl] @ x[i]) for i in range(j + 1))
        x = torch.nn.functional.layer_norm(x + attn @ blk.out.weight.T, (dim,), blk.attn_norm.weight,
                                           blk.attn_norm.bias, 1e-6)
        ffn = torch.relu(x @ blk.ffn_in.weight.T + blk.ffn_in.bias) @ blk.ffn_out.weight.T + blk.ffn_out.bias
        x = torch.nn.functional.layer_norm(x + ffn, (dim,), blk.ffn_norm.weight, blk.ffn_norm.bias, 1e-6)
    return x


def test_matches_position_by_position_reference():
    enc = _encoder(num_blocks=2, num_heads=2, ffn_mult=2).eval()
    seq = torch.randn(2, 5, DIM, generator=torch.Generator().manual_seed(3))
    out = enc(seq, torch.tensor([5, 3]))
    for b in range(2):
        torch.testing.assert_close(out[b], _reference(enc, seq[b]), atol=1e-5, rtol=1e-5)


def test_first_position_attends_only_to_itself():
    enc = _encoder(num_blocks=1, num_heads=1).eval()
    seq = torch.randn(1, 4, DIM)
    torch.testing.assert_close(enc(seq, torch.tensor([4]))[:, 0], enc(seq[:, :1], torch.tensor([1]))[:, 0])


def test_contract():
    contract.check_shapes(_encoder(), DIM)
    contract.check_causal(_encoder(), DIM)
    contract.check_padding_invariance(_encoder(), DIM)


def test_gradient_step_reduces_loss():
    contract.check_gradient_step_reduces_loss(SASRecConfig(dropout=0.0, attention_dropout=0.0))


def test_builder_uses_paper_settings_and_rejects_long_input():
    enc = USER_ENCODERS.build(SASRecConfig(), embedding_dim=DIM, max_seq_len=10, init_std=0.02)
    assert isinstance(enc, SASRec) and len(enc.blocks) == 2 and enc.blocks[0].num_heads == 2
    assert enc.blocks[0].ffn_in.out_features == DIM  # ffn_mult 1
    with pytest.raises(ValueError, match="exceeds max_seq_len 10"):
        enc(torch.zeros(1, 11, DIM), torch.tensor([11]))
    with pytest.raises(ValueError, match="do not divide"):
        SASRec(embedding_dim=6, max_seq_len=4, num_heads=4)


def test_dropout_only_in_training_mode():
    enc = _encoder(dropout=0.5, attention_dropout=0.5)
    seq, lengths = torch.randn(2, 6, DIM), torch.tensor([6, 6])
    enc.train()
    assert not torch.allclose(enc(seq, lengths), enc(seq, lengths))
    enc.eval()
    torch.testing.assert_close(enc(seq, lengths), enc(seq, lengths), atol=0, rtol=0)
