"""The dense half of the item tower: content encoding, projection and fusion with ID embeddings.

The ID half (the ``EmbeddingCollection``) lives in ``SequentialRecommender.item_ids`` so that the
parallel layer can shard it; this module receives the looked-up ID embeddings. Modes follow the
MicroLens paper's item towers: IDRec (``'id'``), VideoRec (``'content'``: content encoder ->
linear projection to D, as MicroLens' video encoders end in a linear layer to ``embedding_dim``)
and VIDRec (``'id+content'``, fused by sum or by concatenation followed by a linear layer).

Items without content (their video was missing or unreadable at ingestion, and the padding id 0)
are never given placeholder frames. The batch carries a mask; only items with content go through
the encoder, and the others are represented without it:

* ``'id+content'``, sum fusion: the ID embedding alone (nothing is added);
* ``'id+content'``, concat fusion: the projection of ``[ID embedding, no_content]``, where
  ``no_content`` is a learned ``[out_dim]`` vector standing for "no video";
* ``'content'``: a learned ``[D]`` vector ``no_content`` shared by every item without video (with
  no ID, nothing else can tell such items apart; the vector starts at zero and is trained).

Content arrives as the content store holds it: ``uint8 [U, F, S, S, 3]`` frames, normalised here
with the encoder's ``preprocess`` (so the data path moves uint8), or float trunk features when the
encoder's trunk is cached (``cached_top_blocks``): then only the encoder's top blocks run.
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
            required unless ``mode == 'id'``. A video encoder also has ``preprocess`` and ``split``.
        fusion: ``'sum'`` (ID + projected content) or ``'concat'`` (linear over [ID, content feature]).
        init_std: Std of the normal init of the projection weights.
        cached_top_blocks: When set, content is the encoder's cached trunk output and only
            ``content_encoder.split(cached_top_blocks)[1]`` (the top) runs on it; the trunk's
            modules stay in the tower (frozen) so checkpoints and trunk digests match the live mode.
    """

    def __init__(self, *, mode: Literal["id", "content", "id+content"], embedding_dim: int,
                 content_encoder: nn.Module | None = None, fusion: Literal["sum", "concat"] = "sum",
                 init_std: float = 0.02, cached_top_blocks: int | None = None) -> None:
        super().__init__()
        if mode not in ("id", "content", "id+content"):
            raise ValueError(f"ItemTower: mode must be 'id', 'content' or 'id+content', got {mode!r}")
        if fusion not in ("sum", "concat"):
            raise ValueError(f"ItemTower: fusion must be 'sum' or 'concat', got {fusion!r}")
        if (mode == "id") != (content_encoder is None):
            raise ValueError(f"ItemTower: mode {mode!r} " + ("takes no content encoder" if mode == "id"
                                                             else "needs a content encoder"))
        if cached_top_blocks is not None and not hasattr(content_encoder, "split"):
            raise ValueError("ItemTower: cached_top_blocks needs an encoder with split(top_blocks) (a video encoder)")
        self.mode = mode
        self.fusion = fusion
        self.content_encoder = content_encoder
        self.cached_top_blocks = cached_top_blocks
        self.projection: nn.Linear | None = None
        self.no_content: nn.Parameter | None = None
        if content_encoder is not None:
            out_dim = getattr(content_encoder, "out_dim", None)
            if not isinstance(out_dim, int) or out_dim < 1:
                raise ValueError(f"ItemTower: content encoder {type(content_encoder).__name__} must expose a "
                                 f"positive int 'out_dim', got {out_dim!r}")
            concat = mode == "id+content" and fusion == "concat"
            self.projection = nn.Linear(out_dim + embedding_dim if concat else out_dim, embedding_dim)
            nn.init.normal_(self.projection.weight, std=init_std)
            nn.init.zeros_(self.projection.bias)
            if mode == "content" or concat:
                # Zero start, drawn from no RNG, so adding it changed no other module's init.
                self.no_content = nn.Parameter(torch.zeros(embedding_dim if mode == "content" else out_dim))

    def encode(self, content: Tensor) -> Tensor:
        """Content features ``[U_c, out_dim]`` of the items that have content (any U_c >= 0).

        Args:
            content: ``uint8 [U_c, F, S, S, 3]`` frames, float trunk features (cached mode), or
                whatever a non-video encoder takes.

        Returns:
            ``[U_c, out_dim]`` in the projection's dtype.
        """
        dtype = self.projection.weight.dtype
        enc = self.content_encoder
        if self.cached_top_blocks is not None:
            if not content.is_floating_point():
                raise ValueError(f"ItemTower: cached trunk mode takes float trunk features, got {content.dtype}")
            return enc.split(self.cached_top_blocks)[1](content.to(dtype))  # U_c,out_dim
        if content.dtype == torch.uint8 and hasattr(enc, "preprocess"):
            content = enc.preprocess(content)  # U_c,F,3,S,S float32
        if content.is_floating_point():
            content = content.to(dtype)
        return enc(content)  # U_c,out_dim

    def forward(self, id_emb: Tensor | None, content: Tensor | None, content_mask: Tensor | None = None) -> Tensor:
        """Represent U items.

        Args:
            id_emb: ``[U, D]`` ID embeddings (modes with IDs), else None.
            content: Content of the items that have it, in item order: ``[U_c, ...]`` (modes with
                content), else None. Without ``content_mask`` every item has content (U_c = U).
            content_mask: ``bool [U]``, which items have content (``U_c = content_mask.sum()``).

        Returns:
            ``[U, D]`` item representations.
        """
        if self.mode != "content" and id_emb is None:
            raise ValueError(f"ItemTower mode {self.mode!r} needs ID embeddings, got None")
        if self.mode == "id":
            return id_emb
        if content is None:
            raise ValueError(f"ItemTower mode {self.mode!r} needs item content (batch.content), got None")
        feature = self.encode(content)  # U_c,out_dim
        if content_mask is None:
            return self._fuse(id_emb, feature)
        u = int(content_mask.shape[0])
        if int(content_mask.sum()) != feature.shape[0]:
            raise ValueError(f"ItemTower: content for {feature.shape[0]} items but the mask marks "
                             f"{int(content_mask.sum())} of {u} as having content")
        if id_emb is not None and id_emb.shape[0] != u:
            raise ValueError(f"ItemTower: {id_emb.shape[0]} ID embeddings but a content mask of {u} items")
        rows = content_mask.nonzero().squeeze(1)  # U_c
        if self.mode == "content":
            base = self.no_content.to(feature.dtype).expand(u, -1)  # U,D
            return base.index_put((rows,), self.projection(feature))  # U,D
        if self.fusion == "sum":
            return id_emb.index_add(0, rows, self.projection(feature).to(id_emb.dtype))  # U,D
        full = self.no_content.to(feature.dtype).expand(u, -1).index_put((rows,), feature)  # U,out_dim
        return self.projection(torch.cat([id_emb, full.to(id_emb.dtype)], dim=-1))  # U,D

    def _fuse(self, id_emb: Tensor | None, feature: Tensor) -> Tensor:
        if self.mode == "content":
            return self.projection(feature)  # U,D
        if id_emb.shape[0] != feature.shape[0]:
            raise ValueError(f"ItemTower: {id_emb.shape[0]} ID embeddings but content for {feature.shape[0]} items")
        if self.fusion == "sum":
            return id_emb + self.projection(feature)  # U,D
        return self.projection(torch.cat([id_emb, feature.to(id_emb.dtype)], dim=-1))  # U,D
