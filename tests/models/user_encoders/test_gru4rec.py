"""Tests of mvrec_dist.models.user_encoders.gru4rec."""

from __future__ import annotations

import torch

from mvrec_dist.config.model import GRU4RecConfig
from mvrec_dist.models.registry import USER_ENCODERS
from mvrec_dist.models.user_encoders import GRU4Rec
from tests.models.user_encoders import contract

DIM = 8


def _encoder(**kw) -> GRU4Rec:
    torch.manual_seed(0)
    return GRU4Rec(**({"embedding_dim": DIM, "dropout": 0.0} | kw))


def test_matches_hand_written_bias_free_gru():
    enc = _encoder().eval()
    seq = torch.randn(2, 5, DIM, generator=torch.Generator().manual_seed(3))
    out = enc(seq, torch.tensor([5, 2]))
    w_ir, w_iz, w_in = enc.gru.weight_ih_l0.split(DIM)
    w_hr, w_hz, w_hn = enc.gru.weight_hh_l0.split(DIM)
    h = torch.zeros(2, DIM)
    for j in range(5):
        x = seq[:, j]
        r = torch.sigmoid(x @ w_ir.T + h @ w_hr.T)
        z = torch.sigmoid(x @ w_iz.T + h @ w_hz.T)
        n = torch.tanh(x @ w_in.T + r * (h @ w_hn.T))
        h = (1 - z) * n + z * h
        torch.testing.assert_close(out[:, j], h, atol=1e-6, rtol=1e-5)


def test_contract():
    contract.check_shapes(_encoder(), DIM)
    contract.check_causal(_encoder(), DIM)
    contract.check_padding_invariance(_encoder(), DIM)
    contract.check_causal(_encoder(num_layers=2), DIM)


def test_gradient_step_reduces_loss():
    contract.check_gradient_step_reduces_loss(GRU4RecConfig(dropout=0.0))


def test_builder_uses_paper_settings():
    enc = USER_ENCODERS.build(GRU4RecConfig(), embedding_dim=DIM, max_seq_len=10, init_std=0.02)
    assert isinstance(enc, GRU4Rec) and enc.gru.num_layers == 1 and not enc.gru.bias
    assert enc.gru.hidden_size == DIM
