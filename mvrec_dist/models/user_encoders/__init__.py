"""User encoders: ``forward(seq[B, L, D], lengths[B]) -> [B, L, D]``, causal, right-padded input.

Importing this package registers each encoder's builder in ``USER_ENCODERS``.
"""

from mvrec_dist.models.user_encoders.gru4rec import GRU4Rec, gru4rec
from mvrec_dist.models.user_encoders.nextitnet import NextItNet, nextitnet
from mvrec_dist.models.user_encoders.sasrec import SASRec, sasrec

__all__ = ["SASRec", "GRU4Rec", "NextItNet", "sasrec", "gru4rec", "nextitnet"]
