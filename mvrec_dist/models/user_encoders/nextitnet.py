"""NextItNet user encoder: stacked residual blocks of causal dilated 1-D convolutions.

Reference: Yuan et al., "A Simple Convolutional Generative Network for Next Item Recommendation",
WSDM 2019, as the MicroLens benchmark builds it (westlake-repl/MicroLens
``Code/VideoRec/SASRec/model/user_encoders.py``, ``User_Encoder_NextItNet`` / ``ResidualBlock_b``):
each convolution is left-padded by ``(kernel - 1) * dilation`` so it never sees later positions, and
is followed by LayerNorm (eps 1e-8) and ReLU; each block adds its input back (residual block "b");
kernel width 3; the block output is the user state (MicroLens' ``final_layer`` is unused in its
training path and omitted).

Deviations:

* Block layout follows this project's config: each of the ``num_blocks`` blocks applies one
  convolution per entry of ``dilations`` (paper setting: 2 blocks with dilations [1, 4], receptive
  field 21 >= L = 10). MicroLens builds ``2 * block_num`` blocks of two convolutions with dilations
  ``d, 2d`` for ``d`` in ``[1, 4]``; both see the whole window at L = 10.
* Input dropout (config ``dropout``; MicroLens has none for NextItNet).
* Convolution weights are N(0, init_std), biases zero (MicroLens: PyTorch's default init).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from mvrec_dist.config.model import NextItNetConfig
from mvrec_dist.models.registry import USER_ENCODERS

__all__ = ["NextItNet", "nextitnet"]

_LN_EPS = 1e-8


class _CausalConv(nn.Module):
    """Dilated 1-D convolution over [B, L, D] that only looks at the current and earlier positions."""

    def __init__(self, dim: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        self.left_pad = (kernel_size - 1) * dilation
        self.conv = nn.Conv1d(dim, dim, kernel_size, dilation=dilation)
        self.norm = nn.LayerNorm(dim, eps=_LN_EPS)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(F.pad(x.transpose(1, 2), (self.left_pad, 0)))  # B,D,L
        return F.relu(self.norm(y.transpose(1, 2)))  # B,L,D


class _ResidualBlock(nn.Module):
    def __init__(self, dim: int, kernel_size: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.convs = nn.Sequential(*(_CausalConv(dim, kernel_size, d) for d in dilations))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.convs(x)  # B,L,D


class NextItNet(nn.Module):
    """Causal dilated-convolution user encoder.

    Args:
        embedding_dim: D (channels).
        num_blocks: Residual blocks.
        dilations: Dilation of each convolution inside a block.
        kernel_size: Convolution width.
        dropout: Dropout on the input representations.
        init_std: Std of the normal init of the convolution weights.
    """

    def __init__(self, *, embedding_dim: int, num_blocks: int = 2, dilations: tuple[int, ...] = (1, 4),
                 kernel_size: int = 3, dropout: float = 0.1, init_std: float = 0.02) -> None:
        super().__init__()
        self.input_dropout = nn.Dropout(dropout)
        self.blocks = nn.Sequential(*(_ResidualBlock(embedding_dim, kernel_size, tuple(dilations))
                                      for _ in range(num_blocks)))
        for m in self.modules():
            if isinstance(m, nn.Conv1d):
                nn.init.normal_(m.weight, std=init_std)
                nn.init.zeros_(m.bias)

    def forward(self, seq: Tensor, lengths: Tensor) -> Tensor:
        """Encode right-padded sequences causally.

        Args:
            seq: ``[B, L, D]`` item representations, right-padded.
            lengths: ``LongTensor[B]`` valid positions per row (unused: convolutions are left-padded,
                so padding, which comes after the valid positions, never reaches them).

        Returns:
            ``[B, L, D]``; position ``j`` depends on ``seq[:, :j+1]`` only.
        """
        return self.blocks(self.input_dropout(seq))  # B,L,D


@USER_ENCODERS.register(NextItNetConfig)
def nextitnet(cfg: NextItNetConfig, *, embedding_dim: int, max_seq_len: int, init_std: float) -> NextItNet:
    """Build NextItNet from its config.

    Args:
        cfg: The NextItNet settings.
        embedding_dim: D.
        max_seq_len: L (unused: convolutions have no length limit).
        init_std: Std of the normal init of the convolution weights.

    Returns:
        The encoder.
    """
    return NextItNet(embedding_dim=embedding_dim, num_blocks=cfg.num_blocks, dilations=cfg.dilations,
                     kernel_size=cfg.kernel_size, dropout=cfg.dropout, init_std=init_std)
