"""GRU4Rec user encoder: a GRU over the item sequence.

Reference: Hidasi et al., "Session-based Recommendations with Recurrent Neural Networks", ICLR
2016, in the form the MicroLens benchmark trains it (westlake-repl/MicroLens
``Code/VideoRec/GRU4Rec/model/user_encoders.py``, ``User_Encoder_GRU4Rec``): dropout on the input
representations, a bias-free GRU whose hidden size equals D, and the hidden state at each position
used directly as the user state (no output layer); paper setting 1 layer. Weights are Xavier-uniform
as in MicroLens (a N(0, 0.02) init would leave the recurrence nearly memoryless at the start).

Deviations: none in the computation. Sequences are right-padded, so a position's state never sees
padding; the GRU runs over all L positions rather than packing, which is faster at L = 10 and gives
the same states at valid positions.
"""

from __future__ import annotations

from torch import Tensor, nn

from mvrec_dist.config.model import GRU4RecConfig
from mvrec_dist.models.registry import USER_ENCODERS

__all__ = ["GRU4Rec", "gru4rec"]


class GRU4Rec(nn.Module):
    """Recurrent user encoder.

    Args:
        embedding_dim: D (input and hidden size).
        num_layers: Stacked GRU layers.
        dropout: Dropout on the input and, with several layers, between layers.
    """

    def __init__(self, *, embedding_dim: int, num_layers: int = 1, dropout: float = 0.1) -> None:
        super().__init__()
        self.input_dropout = nn.Dropout(dropout)
        self.gru = nn.GRU(embedding_dim, embedding_dim, num_layers=num_layers, bias=False, batch_first=True,
                          dropout=dropout if num_layers > 1 else 0.0)
        for name, weight in self.gru.named_parameters():
            if name.startswith("weight"):
                nn.init.xavier_uniform_(weight)

    def forward(self, seq: Tensor, lengths: Tensor) -> Tensor:
        """Encode right-padded sequences.

        Args:
            seq: ``[B, L, D]`` item representations, right-padded.
            lengths: ``LongTensor[B]`` valid positions per row (unused: the recurrence is causal).

        Returns:
            ``[B, L, D]`` hidden states; position ``j`` depends on ``seq[:, :j+1]`` only.
        """
        out, _ = self.gru(self.input_dropout(seq))  # B,L,D
        return out


@USER_ENCODERS.register(GRU4RecConfig)
def gru4rec(cfg: GRU4RecConfig, *, embedding_dim: int, max_seq_len: int, init_std: float) -> GRU4Rec:
    """Build GRU4Rec from its config.

    Args:
        cfg: The GRU4Rec settings.
        embedding_dim: D.
        max_seq_len: L (unused: the recurrence has no length limit).
        init_std: Unused (recurrent weights are Xavier-uniform, see the module docstring).

    Returns:
        The encoder.
    """
    return GRU4Rec(embedding_dim=embedding_dim, num_layers=cfg.num_layers, dropout=cfg.dropout)
