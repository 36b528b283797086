"""MMRA's model: retrieval-augmented popularity prediction from frames, title and retrieved neighbours.

Written from the public code (ICDM-UESTC/MMRA, ``model/MicroLens100k/MMRA.py``), equation for equation;
unsharded and free of process groups like every model here (the task wraps it, ``parallel/`` gives it
to DeepSpeed). Shapes: B items, F frames, R retrieved neighbours, d the streams' width.

* **Cross-modal attention** of an item's frames ``V [B, F, d]`` and title ``T [B, 1, d]``:
  ``S = tanh(W_v V) tanh(W_t T)^T / d`` ``[B, F, 1]``; ``T_p = softmax(S, dim=frames) T``,
  ``V_p = softmax(S^T, dim=1) V``; the negated branch ``T_n = -alpha softmax(S) T`` (and ``V_n``);
  ``T* = tanh(L1[T_p; T_n])``, ``V* = tanh(L2[V_p; V_n])``; ``V_f = tanh(L3[V; T*])``,
  ``T_f = tanh(L4[T; V*])``. As released, ``softmax(S^T, dim=1)`` normalises over the title's single
  token, so every weight is 1 and ``V_p`` is the sum of the frames: transcribed as is.
* **Uni-modal attention pooling**: ``softmax(w^T x / d)`` over frames (and the one title token).
* **Retrieval aggregation**: ``softmax`` over the R neighbours' similarities; the aggregated label
  ``[B, 1, 1]``, title ``[B, 1, d]`` and frames ``[B, F, d]`` (frame by frame) are similarity-weighted
  sums, and the aggregated frames and title pass through the same attention stack with their own weights.
* **Label embedding** ``ReLU(Linear(1, d))`` of the aggregated label (the released forward calls
  ``self.relu``, which its ``__init__`` never defines; ReLU is plainly the intent).
* **Product fusion**: ``[T*, V*, T'*, V'*, V*⊙V'*, V*⊙T'*, T*⊙V'*, T*⊙T'*, V*⊙l, T*⊙l]`` (10 d) through
  ``Linear(10d, 800) ReLU Linear(800, 200) ReLU Linear(200, 1)``.

Two additions, both off the released path when inputs are as MMRA's: an input projection per modality
whose width is not d (MMRA's ViT frames and BERT titles are both 768 wide; ours need not be), and
``use_retrieval=False``, the ablation without the retrieval branch, whose fusion reads
``[T*, V*, T*⊙V*]`` (3 d). Neighbour slots past an item's stored neighbours are masked out of the softmax.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["MMRA", "CrossModalStack"]


class CrossModalStack(nn.Module):
    """Embeddings, cross-modal attention and uni-modal pooling of one (frames, title) pair; MMRA has two.

    Args:
        d: Stream width.
        alpha: Scale of the negated attention branch.
    """

    def __init__(self, d: int, alpha: float):
        super().__init__()
        self.d, self.alpha = d, alpha
        self.visual_embedding, self.textual_embedding = nn.Linear(d, d), nn.Linear(d, d)
        self.dual_attention_text, self.dual_attention_visual = nn.Linear(2 * d, d), nn.Linear(2 * d, d)
        self.cross_modal_visual, self.cross_modal_text = nn.Linear(2 * d, d), nn.Linear(2 * d, d)
        self.pool_visual, self.pool_text = nn.Linear(d, 1), nn.Linear(d, 1)

    def forward(self, visual: Tensor, text: Tensor) -> tuple[Tensor, Tensor]:
        """``(V_f* [B, 1, d], T_f* [B, 1, d])`` of frames ``[B, F, d]`` and title ``[B, 1, d]``."""
        v_emb, t_emb = torch.tanh(self.visual_embedding(visual)), torch.tanh(self.textual_embedding(text))
        s = v_emb @ t_emb.transpose(1, 2) / self.d  # B,F,1
        a_t, a_v = torch.softmax(s, dim=1), torch.softmax(s.transpose(1, 2), dim=1)  # B,F,1 ; B,1,F
        t_p, v_p = a_t @ text, a_v @ visual  # B,F,d ; B,1,d
        t_n, v_n = (-self.alpha * a_t) @ text, (-self.alpha * a_v) @ visual
        t_star = torch.tanh(self.dual_attention_text(torch.cat([t_p, t_n], dim=2)))  # B,F,d
        v_star = torch.tanh(self.dual_attention_visual(torch.cat([v_p, v_n], dim=2)))  # B,1,d
        v_f = torch.tanh(self.cross_modal_visual(torch.cat([visual, t_star], dim=2)))  # B,F,d
        t_f = torch.tanh(self.cross_modal_text(torch.cat([text, v_star], dim=2)))  # B,1,d
        w_v = torch.softmax(self.pool_visual(v_f) / self.d, dim=1)  # B,F,1
        w_t = torch.softmax(self.pool_text(t_f) / self.d, dim=1)  # B,1,1
        return w_v.transpose(1, 2) @ v_f, w_t.transpose(1, 2) @ t_f


class MMRA(nn.Module):
    """MMRA (see the module docstring): ``forward(...) -> [B]`` outputs (the predicted label, or a logit).

    Args:
        text_dim: Width of the title features.
        frame_dim: Width of the per-frame features.
        d: Stream width (projections map other widths to it).
        alpha: Scale of the negated attention branch (MMRA: 0.6).
        use_retrieval: False: the ablation without the retrieval branch.
    """

    def __init__(self, *, text_dim: int, frame_dim: int, d: int, alpha: float = 0.6, use_retrieval: bool = True):
        super().__init__()
        self.d, self.use_retrieval = d, use_retrieval
        self.text_projection = nn.Linear(text_dim, d) if text_dim != d else nn.Identity()
        self.frame_projection = nn.Linear(frame_dim, d) if frame_dim != d else nn.Identity()
        self.item_stack = CrossModalStack(d, alpha)
        if use_retrieval:
            self.retrieval_stack = CrossModalStack(d, alpha)
            self.label_embedding = nn.Linear(1, d)
        self.prediction = nn.Sequential(nn.Linear(d * (10 if use_retrieval else 3), 800), nn.ReLU(),
                                        nn.Linear(800, 200), nn.ReLU(), nn.Linear(200, 1))

    def forward(self, frames: Tensor, text: Tensor, similarities: Tensor | None = None,
                neighbour_frames: Tensor | None = None, neighbour_text: Tensor | None = None,
                neighbour_labels: Tensor | None = None, neighbour_mask: Tensor | None = None) -> Tensor:
        """Outputs ``[B]``.

        Args:
            frames: ``[B, F, Cv]`` the items' per-frame features.
            text: ``[B, Ct]`` their title features.
            similarities: ``[B, R]`` cosine similarities of their retrieved neighbours.
            neighbour_frames: ``[B, R, F, Cv]``.
            neighbour_text: ``[B, R, Ct]``.
            neighbour_labels: ``[B, R]``.
            neighbour_mask: ``BoolTensor[B, R]`` real neighbour slots (None: all); every row needs one.
        """
        visual = self.frame_projection(frames)  # B,F,d
        title = self.text_projection(text).unsqueeze(1)  # B,1,d
        v_star, t_star = self.item_stack(visual, title)
        if not self.use_retrieval:
            fused = torch.cat([t_star, v_star, t_star * v_star], dim=2)
            return self.prediction(fused).squeeze(2).squeeze(1)
        sims = similarities.to(visual.dtype)
        if neighbour_mask is not None:
            sims = sims.masked_fill(~neighbour_mask, float("-inf"))
        w = torch.softmax(sims, dim=1)  # B,R
        agg_label = torch.einsum("br,br->b", w, neighbour_labels.to(w.dtype)).view(-1, 1, 1)  # B,1,1
        agg_text = torch.einsum("br,brc->bc", w, self.text_projection(neighbour_text)).unsqueeze(1)  # B,1,d
        agg_frames = torch.einsum("br,brfc->bfc", w, self.frame_projection(neighbour_frames))  # B,F,d
        v_star_r, t_star_r = self.retrieval_stack(agg_frames, agg_text)
        label = torch.relu(self.label_embedding(agg_label))  # B,1,d
        fused = torch.cat([t_star, v_star, t_star_r, v_star_r, v_star * v_star_r, v_star * t_star_r,
                           t_star * v_star_r, t_star * t_star_r, v_star * label, t_star * label], dim=2)
        return self.prediction(fused).squeeze(2).squeeze(1)
