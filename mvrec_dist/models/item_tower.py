"""The dense half of the item tower: content encoding, projection and fusion with ID embeddings.

The ID half (the ``EmbeddingCollection``) lives in ``SequentialRecommender.item_ids`` so that the
parallel layer can shard it; this module receives the looked-up ID embeddings. Modes follow the
MicroLens paper's item towers: IDRec (``'id'``), VideoRec (``'content'``: content encoder ->
linear projection to D, as MicroLens' video encoders end in a linear layer to ``embedding_dim``)
and VIDRec (``'id+content'``, fused by sum or by concatenation followed by a linear layer).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

__all__ = ["ItemTower"]


class ItemTower(nn.Module):
    """Item representations ``[U, D]`` from ID embeddings and/or item content.

    Args:
        mode: ``'id'``, ``'content'`` or ``'id+content'``.
        embedding_dim: D.
        content_encoder: Module with ``out_dim: int`` and ``forward(content[U, ...]) -> [U, out_dim]``;
            required unless ``mode == 'id'``.
        fusion: ``'sum'`` (ID + projected content) or ``'concat'`` (linear over [ID, content feature]).
        init_std: Std of the normal init of the projection weights.
    """

    def __init__(self, *, mode: Literal["id", "content", "id+content"], embedding_dim: int,
                 content_encoder: nn.Module | None = None, fusion: Literal["sum", "concat"] = "sum",
                 init_std: float = 0.02) -> None:
        super().__init__()
        if mode not in ("id", "content", "id+content"):
            raise ValueError(f"ItemTower: mode must be 'id', 'content' or 'id+content', got {mode!r}")
        if fusion not in ("sum", "concat"):
            raise ValueError(f"ItemTower: fusion must be 'sum' or 'concat', got {fusion!r}")
        if (mode == "id") != (content_encoder is None):
            raise ValueError(f"ItemTower: mode {mode!r} " + ("takes no content encoder" if mode == "id"
                                                             else "needs a content encoder"))
        self.mode = mode
        self.fusion = fusion
        self.content_encoder = content_encoder
        self.projection: nn.Linear | None = None
        if content_encoder is not None:
            out_dim = getattr(content_encoder, "out_dim", None)
            if not isinstance(out_dim, int) or out_dim < 1:
                raise ValueError(f"ItemTower: content encoder {type(content_encoder).__name__} must expose a "
                                 f"positive int 'out_dim', got {out_dim!r}")
            concat = mode == "id+content" and fusion == "concat"
            self.projection = nn.Linear(out_dim + embedding_dim if concat else out_dim, embedding_dim)
            nn.init.normal_(self.projection.weight, std=init_std)
            nn.init.zeros_(self.projection.bias)

    def forward(self, id_emb: Tensor | None, content: Tensor | None) -> Tensor:
        """Represent U items.

        Args:
            id_emb: ``[U, D]`` ID embeddings (modes with IDs), else None.
            content: ``[U, ...]`` content in the encoder's input format (modes with content), else None.

        Returns:
            ``[U, D]`` item representations.
        """
        if self.mode != "content" and id_emb is None:
            raise ValueError(f"ItemTower mode {self.mode!r} needs ID embeddings, got None")
        if self.mode == "id":
            return id_emb
        if content is None:
            raise ValueError(f"ItemTower mode {self.mode!r} needs item content (batch.content), got None")
        feature = self.content_encoder(content)  # U,out_dim
        if self.mode == "content":
            return self.projection(feature)  # U,D
        if id_emb.shape[0] != feature.shape[0]:
            raise ValueError(f"ItemTower: {id_emb.shape[0]} ID embeddings but content for {feature.shape[0]} items")
        if self.fusion == "sum":
            return id_emb + self.projection(feature)  # U,D
        return self.projection(torch.cat([id_emb, feature.to(id_emb.dtype)], dim=-1))  # U,D
