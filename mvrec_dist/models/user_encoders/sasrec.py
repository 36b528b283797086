"""SASRec user encoder: causal multi-head self-attention over the item sequence.

Reference: Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018, in the form the
MicroLens benchmark trains it (Ni et al., "A Content-Driven Micro-Video Recommendation Dataset at
Scale", 2023; westlake-repl/MicroLens ``Code/VideoRec/SASRec/model/modules.py`` and
``user_encoders.py``): learned absolute position embeddings added to the item representations, a
LayerNorm and dropout, then blocks of post-LayerNorm multi-head attention (bias-free projections,
residual) and a ReLU feed-forward (residual), paper setting 2 blocks x 2 heads.

Deviations:

* Sequences are right-padded here (MicroLens left-pads). Position ``j`` is the j-th item from the
  start of the window, and attention is causal only: under right padding a valid position never
  sees padding, so no key mask is needed and every query row has at least one key (no NaNs).
* The feed-forward width is ``ffn_mult * D`` (config; MicroLens uses 4D, original SASRec 1D).
* Weights are initialised N(0, init_std) with zero biases (MicroLens: Xavier normal), the
  convention of RecBole / the original SASRec code; LayerNorm eps 1e-6 as MicroLens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mvrec_dist.config.model import SASRecConfig
from mvrec_dist.models.registry import USER_ENCODERS

__all__ = ["SASRec", "sasrec"]

_LN_EPS = 1e-6


class _Block(nn.Module):
    """Post-LN transformer block: x = LN(x + MHA(x)); x = LN(x + FFN(x))."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float, attention_dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.attention_dropout = attention_dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.attn_norm = nn.LayerNorm(dim, eps=_LN_EPS)
        self.ffn_in = nn.Linear(dim, ffn_dim)
        self.ffn_out = nn.Linear(ffn_dim, dim)
        self.ffn_norm = nn.LayerNorm(dim, eps=_LN_EPS)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        b, length, dim = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.attention_dropout if self.training else 0.0)  # B,H,L,D/H
        x = self.attn_norm(x + self.dropout(self.out(a.transpose(1, 2).reshape(b, length, dim))))  # B,L,D
        return self.ffn_norm(x + self.dropout(self.ffn_out(F.relu(self.ffn_in(x)))))  # B,L,D


class SASRec(nn.Module):
    """Causal self-attention user encoder.

    Args:
        embedding_dim: D.
        max_seq_len: Longest input L (size of the position table).
        num_blocks: Transformer blocks.
        num_heads: Attention heads (divides D).
        ffn_mult: Feed-forward width in multiples of D.
        dropout: Dropout on the embedded input, attention output and feed-forward output.
        attention_dropout: Dropout on attention probabilities.
        init_std: Std of the normal init of linear and position weights.
    """

    def __init__(self, *, embedding_dim: int, max_seq_len: int, num_blocks: int = 2, num_heads: int = 2,
                 ffn_mult: int = 1, dropout: float = 0.1, attention_dropout: float = 0.1,
                 init_std: float = 0.02) -> None:
        super().__init__()
        if embedding_dim % num_heads:
            raise ValueError(f"SASRec: {num_heads} heads do not divide embedding_dim {embedding_dim}")
        self.max_seq_len = max_seq_len
        self.position = nn.Embedding(max_seq_len, embedding_dim)
        self.input_norm = nn.LayerNorm(embedding_dim, eps=_LN_EPS)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            _Block(embedding_dim, num_heads, ffn_mult * embedding_dim, dropout, attention_dropout)
            for _ in range(num_blocks))
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=init_std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, seq: Tensor, lengths: Tensor) -> Tensor:
        """Encode right-padded sequences causally.

        Args:
            seq: ``[B, L, D]`` item representations, right-padded (``L <= max_seq_len``).
            lengths: ``LongTensor[B]`` valid positions per row (unused: causality already keeps
                padding, which always comes after the valid positions, out of them).

        Returns:
            ``[B, L, D]``; position ``j`` depends on ``seq[:, :j+1]`` only.
        """
        length = seq.shape[1]
        if length > self.max_seq_len:
            raise ValueError(f"SASRec: sequence length {length} exceeds max_seq_len {self.max_seq_len}")
        # Through the module, not .weight: ZeRO-3 gathers a parameter only when its module runs.
        positions = self.position(torch.arange(length, device=seq.device))  # L,D
        x = self.dropout(self.input_norm(seq + positions))  # B,L,D
        for block in self.blocks:
            x = block(x)
        return x


@USER_ENCODERS.register(SASRecConfig)
def sasrec(cfg: SASRecConfig, *, embedding_dim: int, max_seq_len: int, init_std: float) -> SASRec:
    """Build SASRec from its config.

    Args:
        cfg: The SASRec settings.
        embedding_dim: D.
        max_seq_len: L.
        init_std: Std of the normal weight init.

    Returns:
        The encoder.
    """
    return SASRec(embedding_dim=embedding_dim, max_seq_len=max_seq_len, num_blocks=cfg.num_blocks,
                  num_heads=cfg.num_heads, ffn_mult=cfg.ffn_mult, dropout=cfg.dropout,
                  attention_dropout=cfg.attention_dropout, init_std=init_std)
