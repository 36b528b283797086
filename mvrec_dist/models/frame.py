"""FRAME (Learning Fine-grained User Interests for Micro-video Recommendation, SIGIR'23): the dense part.

The released model (tsinghua-fib-lab/FRAME, ``modeling_gcn.py``), with C = 4 clips per video and ``E`` the
clip embeddings (trainable, here the sharded table ``frame_clip``, started from the clips' visual features as
released with ``task.clip_init=features``, ``data/clip_features.py``):

* user interests ``u_pos = ReLU(A_pos E T W1)`` and ``u_neg = ReLU(A_neg E T W1)`` (``T`` the projection of
  the clip embeddings, ``W1`` the first graph layer);
* clip representations ``w = (ReLU(A_pos^T u_pos W2) + ReLU(A_neg^T u_neg W2)) / 2`` (``W2`` the second);
* a clip's logit for a user ``MLP([w_clip; u_pos])`` (the released score reads the positive MLP only:
  its negative MLP is computed and never used, so it is left out here), a video's score the sum of its
  C clip logits (the released evaluation's ``agg_w = 1``).

**Sharded and distributed** (``tasks/frame.py``): ``A E`` of the step's users is a weighted pooled lookup of
the sharded clip table (``Bags`` of each user's graph row), with gradient. ``A^T U`` gathers every user
of a clip, wherever the user is; it is kept in the buffers ``pos_aggregate`` / ``neg_aggregate``
(``[(N+1) C, D]``, the sums ``sum_u A[u, c] u_u`` before ``W2``), recomputed by ``FRAMETask.refresh`` from
all users (each rank its share, then an all-reduce) every ``task.refresh_every_steps`` steps, and read
without gradient: the clip side learns through ``W2`` and the MLP, the user side through the lookup. The
released code recomputes both products over the full graph every step and back-propagates through
``A^T U`` too; ``refresh_every_steps=1`` gives its forward values exactly (tested), not that gradient path.
The buffers are part of the checkpoint and equal on every rank, so they are not averaged per step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FRAME", "CLIP_POS_FEATURE", "CLIP_NEG_FEATURE", "CLIP_TABLE"]

CLIP_TABLE = "frame_clip"
CLIP_POS_FEATURE = "clip_pos"
"""Each user's ``A_pos`` row as a bag of clip ids with weights: ``(A_pos E)[u]``."""
CLIP_NEG_FEATURE = "clip_neg"
"""Each user's ``A_neg`` row: ``(A_neg E)[u]``."""


class FRAME(nn.Module):
    """FRAME's dense parameters and the clip aggregates (see the module docstring).

    Args:
        num_clips: Rows of the clip table, ``(N + 1) C``.
        dim: Width D of the interests and clip representations (the released 128).
        clip_dim: Width of the clip table's rows, projected to D by ``T`` (the visual features' width when the
            table starts from them; None: D).
        hidden: Hidden width of the clip scorer MLP (the released 256).
        clips: Clips per video C.
    """

    identical_on_ranks = ("pos_aggregate", "neg_aggregate")
    """Buffers every rank computes identically (``parallel.facade`` does not average them per step)."""

    def __init__(self, *, num_clips: int, dim: int, hidden: int, clips: int = 4, clip_dim: int | None = None):
        super().__init__()
        self.clips = clips
        self.project = nn.Linear(clip_dim or dim, dim, bias=False)  # T (released trans_w)
        self.user_layer = nn.Linear(dim, dim, bias=False)  # W1 (gcn_w1)
        self.clip_layer = nn.Linear(dim, dim, bias=False)  # W2 (gcn_w2)
        self.score_hidden = nn.Linear(2 * dim, hidden)  # w1, b1 over [clip; user]
        self.score_out = nn.Linear(hidden, 1)  # w2, b2
        for layer in (self.project, self.user_layer, self.clip_layer, self.score_hidden, self.score_out):
            nn.init.xavier_normal_(layer.weight)  # as released
        nn.init.zeros_(self.score_hidden.bias)
        nn.init.zeros_(self.score_out.bias)
        self.register_buffer("pos_aggregate", torch.zeros(num_clips, dim))
        self.register_buffer("neg_aggregate", torch.zeros(num_clips, dim))

    def interest(self, pooled: Tensor) -> Tensor:
        """``ReLU(A E T W1)`` of users from their pooled rows ``A E`` ``[B, D]`` (T is linear: applied after pooling)."""
        return F.relu(self.user_layer(self.project(pooled.to(self.project.weight.dtype))))

    def clip_representations(self, clip_ids: Tensor) -> Tensor:
        """``w`` of the given clips (any shape ``S``) from the aggregates: ``[*S, D]``."""
        pos = self.pos_aggregate[clip_ids].to(self.clip_layer.weight.dtype)
        neg = self.neg_aggregate[clip_ids].to(self.clip_layer.weight.dtype)
        return (F.relu(self.clip_layer(pos)) + F.relu(self.clip_layer(neg))) / 2

    def clip_logits(self, items: Tensor, users: Tensor) -> Tensor:
        """Logits ``[E, C]`` of every clip of ``items`` ``[E]`` for the interests ``users`` ``[E, D]``."""
        clip_ids = items[:, None] * self.clips + torch.arange(self.clips, device=items.device)  # E,C
        w = self.clip_representations(clip_ids)  # E,C,D
        u = users[:, None, :].expand(-1, self.clips, -1)
        return self.score_out(F.relu(self.score_hidden(torch.cat([w, u.to(w.dtype)], -1)))).squeeze(-1).float()

    def video_scores(self, items: Tensor, users: Tensor) -> Tensor:
        """A video's score for a user: the sum of its clip logits, ``[E]``."""
        return self.clip_logits(items, users).sum(-1)

    def score_all(self, users: Tensor, num_items: int, *, item_chunk: int) -> Tensor:
        """Scores ``[B, N+1]`` of every video for each interest row of ``users`` ``[B, D]`` (item 0 included).

        The scorer's first layer splits into a clip half (once per clip) and a user half (once per user),
        so a block costs one add and the rest of the MLP: ``item_chunk`` videos at a time.
        """
        d = users.shape[1]
        w_in, b_in = self.score_hidden.weight, self.score_hidden.bias  # H,2D
        user_part = users.to(w_in.dtype) @ w_in[:, d:].T + b_in  # B,H
        out = torch.empty(users.shape[0], num_items + 1, dtype=torch.float32, device=users.device)
        for lo in range(0, num_items + 1, item_chunk):
            hi = min(lo + item_chunk, num_items + 1)
            items = torch.arange(lo, hi, device=users.device)
            clip_ids = items[:, None] * self.clips + torch.arange(self.clips, device=users.device)
            clip_part = self.clip_representations(clip_ids) @ w_in[:, :d].T  # I,C,H
            h = F.relu(clip_part[None] + user_part[:, None, None, :])  # B,I,C,H
            out[:, lo:hi] = (self.score_out(h).squeeze(-1).sum(-1)).float()
        return out

    def loss_sum(self, logits: Tensor, labels: Tensor, positive_weights: Tensor) -> Tensor:
        """FRAME's pointwise loss summed over the labelled clips: ``-k/C log p`` for a clip watched through,
        ``-log(1 - p)`` for the clip the user left in (released ``point_wise_loss``, exact in the logits), fp32."""
        valid = labels >= 0
        positive = (labels == 1).float() * positive_weights[:, None].float() * F.softplus(-logits)
        negative = (labels == 0).float() * F.softplus(logits)
        return ((positive + negative) * valid).sum()
