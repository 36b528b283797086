"""The dense half of the item tower: content encoding, projection and fusion with ID embeddings.

The ID half (the ``item`` table of ``EmbeddingTables``) lives in ``SequentialRecommender.tables`` so that the
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

Two settings let ``'id+content'`` fall back to content where an item's ID row carries nothing (the
cold items of the MicroLens paper's Figure 6): ``content_only_items`` marks items represented by
their content alone in training and evaluation alike (items never seen in the train split: their ID
rows only ever received negative gradients), and ``id_dropout`` drops a random share of the step's
ID embeddings in training so the fused tower learns to stand on content. A dropped ID embedding is
zeroed and not rescaled: the content-only representation must look the same in training as for the
cold items at evaluation. Items without content always keep their ID embedding.

Content arrives as the content store holds it and goes through the ``ContentEncoder`` protocol
(``mvrec_dist.models.item_encoders.base``): ``prepare`` turns it into the encoder's input here
(video: uint8 ``[U, F, S, S, 3]`` frames normalised, so the data path moves uint8), then
``forward``. With cached features (``cached_features=True``) the content is the stored output of
the encoder's frozen part (video: float trunk features) and only the head of ``cache_split()`` runs.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from mvrec_dist.models.item_encoders.base import ContentEncoder

__all__ = ["ItemTower"]


class ItemTower(nn.Module):
    """Item representations ``[U, D]`` from ID embeddings and/or item content.

    Args:
        mode: ``'id'``, ``'content'`` or ``'id+content'``.
        embedding_dim: D.
        content_encoder: A ``ContentEncoder`` (``prepare``, ``forward(...) -> [U, out_dim]``, ``out_dim``);
            required unless ``mode == 'id'``.
        fusion: ``'sum'`` (ID + projected content) or ``'concat'`` (linear over [ID, content feature]).
        init_std: Std of the normal init of the projection weights.
        cached_features: Content is the stored output of the encoder's frozen part, and only the head
            of ``content_encoder.cache_split()`` runs on it; the frozen modules stay in the tower
            (they never train) so checkpoints and identities match the live mode.
        id_dropout: ``'id+content'``: probability that an item with content loses its ID embedding
            in a training forward (0 = never).
        content_only_items: ``'id+content'``: ``bool [N+1]``, items always represented by their content
            alone (with content; ``forward`` then needs the items' ids).
    """

    def __init__(self, *, mode: Literal["id", "content", "id+content"], embedding_dim: int,
                 content_encoder: nn.Module | None = None, fusion: Literal["sum", "concat"] = "sum",
                 init_std: float = 0.02, cached_features: bool = False, id_dropout: float = 0.0,
                 content_only_items: Tensor | None = None) -> None:
        super().__init__()
        if (id_dropout > 0 or content_only_items is not None) and mode != "id+content":
            raise ValueError(f"ItemTower: id_dropout and content_only_items fall back from IDs to content, so "
                             f"they need mode 'id+content', got {mode!r}")
        if not 0.0 <= id_dropout < 1.0:
            raise ValueError(f"ItemTower: id_dropout must be in [0, 1), got {id_dropout}")
        if content_only_items is not None and (content_only_items.dtype != torch.bool or content_only_items.dim() != 1):
            raise ValueError(f"ItemTower: content_only_items must be a bool [N+1] tensor, got "
                             f"{content_only_items.dtype} {tuple(content_only_items.shape)}")
        if mode not in ("id", "content", "id+content"):
            raise ValueError(f"ItemTower: mode must be 'id', 'content' or 'id+content', got {mode!r}")
        if fusion not in ("sum", "concat"):
            raise ValueError(f"ItemTower: fusion must be 'sum' or 'concat', got {fusion!r}")
        if (mode == "id") != (content_encoder is None):
            raise ValueError(f"ItemTower: mode {mode!r} " + ("takes no content encoder" if mode == "id"
                                                             else "needs a content encoder"))
        if content_encoder is not None:
            if not isinstance(content_encoder, ContentEncoder):
                raise ValueError(f"ItemTower: content encoder {type(content_encoder).__name__} must be a "
                                 "ContentEncoder (prepare, forward, out_dim; mvrec_dist.models.item_encoders.base)")
            if not isinstance(content_encoder.out_dim, int) or content_encoder.out_dim < 1:
                raise ValueError(f"ItemTower: content encoder {type(content_encoder).__name__} must expose a "
                                 f"positive int 'out_dim', got {content_encoder.out_dim!r}")
        if cached_features:
            if content_encoder is None:
                raise ValueError("ItemTower: cached_features needs a content encoder")
            content_encoder.cache_split()  # raises, naming the encoder, when it has no frozen part
        self.mode = mode
        self.fusion = fusion
        self.content_encoder = content_encoder
        self.cached_features = cached_features
        self.id_dropout = float(id_dropout)
        # Derived from the train split at build time, not state: kept out of checkpoints.
        self.content_only_items: Tensor | None
        self.register_buffer("content_only_items", content_only_items, persistent=False)
        self.projection: nn.Linear | None = None
        self.no_content: nn.Parameter | None = None
        if content_encoder is not None:
            out_dim = content_encoder.out_dim
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
            content: ``[U_c, ...]`` as the content store serves it (``uint8 [U_c, F, S, S, 3]`` frames,
                token ids, features), or the frozen part's float output with ``cached_features``.

        Returns:
            ``[U_c, out_dim]`` in the projection's dtype.
        """
        dtype = self.projection.weight.dtype
        enc = self.content_encoder
        if self.cached_features:
            if not content.is_floating_point():
                raise ValueError(f"ItemTower: cached mode takes float trunk features (the stored output of the "
                                 f"encoder's frozen part), got {content.dtype}")
            return enc.cache_split()[1](content.to(dtype))  # U_c,out_dim
        x = enc.prepare(content)  # U_c,... (video: U_c,F,3,S,S float32)
        if x.is_floating_point():
            x = x.to(dtype)
        return enc(x)  # U_c,out_dim

    def forward(self, id_emb: Tensor | None, content: Tensor | None, content_mask: Tensor | None = None,
                item_ids: Tensor | None = None) -> Tensor:
        """Represent U items.

        Args:
            id_emb: ``[U, D]`` ID embeddings (modes with IDs), else None.
            content: Content of the items that have it, in item order: ``[U_c, ...]`` (modes with
                content), else None. Without ``content_mask`` every item has content (U_c = U).
            content_mask: ``bool [U]``, which items have content (``U_c = content_mask.sum()``).
            item_ids: ``LongTensor [U]`` the items' ids; needed with ``content_only_items``.

        Returns:
            ``[U, D]`` item representations.
        """
        if self.mode != "content" and id_emb is None:
            raise ValueError(f"ItemTower mode {self.mode!r} needs ID embeddings, got None")
        if self.mode == "id":
            return id_emb
        if content is None:
            raise ValueError(f"ItemTower mode {self.mode!r} needs item content (batch.content), got None")
        id_emb = self._fall_back_to_content(id_emb, content_mask, item_ids)
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

    def _fall_back_to_content(self, id_emb: Tensor | None, content_mask: Tensor | None,
                              item_ids: Tensor | None) -> Tensor | None:
        """``id_emb`` with the rows of the items to represent by content alone zeroed (module docstring)."""
        drop_random = self.training and self.id_dropout > 0
        if id_emb is None or (self.content_only_items is None and not drop_random):
            return id_emb
        drop = torch.zeros(id_emb.shape[0], dtype=torch.bool, device=id_emb.device)  # U
        if self.content_only_items is not None:
            if item_ids is None or item_ids.shape != drop.shape:
                raise ValueError(f"ItemTower: content_only_items needs the ids of the {drop.shape[0]} items, got "
                                 f"{None if item_ids is None else tuple(item_ids.shape)}")
            drop |= self.content_only_items[item_ids.to(self.content_only_items.device)].to(drop.device)
        if drop_random:
            drop |= torch.rand(drop.shape[0], device=drop.device) < self.id_dropout
        if content_mask is not None:
            drop &= content_mask.to(drop.device)  # an item without content has nothing else
        return id_emb.masked_fill(drop[:, None], 0.0)  # U,D

    def _fuse(self, id_emb: Tensor | None, feature: Tensor) -> Tensor:
        if self.mode == "content":
            return self.projection(feature)  # U,D
        if id_emb.shape[0] != feature.shape[0]:
            raise ValueError(f"ItemTower: {id_emb.shape[0]} ID embeddings but content for {feature.shape[0]} items")
        if self.fusion == "sum":
            return id_emb + self.projection(feature)  # U,D
        return self.projection(torch.cat([id_emb, feature.to(id_emb.dtype)], dim=-1))  # U,D
