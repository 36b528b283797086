"""Build a ``SequentialRecommender`` from a ``ModelConfig``.

Builders are plain functions with no side effects besides creating modules; seeding is the
caller's job (``torch.manual_seed`` before building). This module imports every built-in component
module, so that their builders are registered whenever ``mvrec_dist.models`` is imported.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

# Registration of the built-in components: imported for their @register side effect, in one place.
import mvrec_dist.models.item_encoders  # noqa: F401
import mvrec_dist.models.losses  # noqa: F401
import mvrec_dist.models.user_encoders  # noqa: F401
from mvrec_dist.config.model import FullSoftmaxConfig, ModelConfig, SampledSoftmaxConfig
from mvrec_dist.data.batch import negative_sampling_probs
from mvrec_dist.models.tables import EmbeddingTables, TableSpec
from mvrec_dist.models.item_tower import ItemTower
from mvrec_dist.models.recommender import ITEM_FEATURE, ITEM_TABLE, DenseTower, SequentialRecommender
from mvrec_dist.models.registry import CONTENT_ENCODERS, LOSSES, USER_ENCODERS

__all__ = ["build_recommender", "item_table_spec", "collate_options"]


def item_table_spec(*, num_items: int, embedding_dim: int, init_std: float, seed: int = 0) -> TableSpec:
    """The ID table: one sequence table ``item`` with N+1 rows of width D, read by feature ``item_id``.

    Args:
        num_items: N.
        embedding_dim: D.
        init_std: Std of the row init (``tables.init_rows_``).
        seed: Table seed (the same seed gives the same table sharded or not).

    Returns:
        The ``TableSpec``.
    """
    return TableSpec(name=ITEM_TABLE, num_embeddings=num_items + 1, embedding_dim=embedding_dim,
                     features=(ITEM_FEATURE,), keyed_by="item", init_std=init_std, seed=seed)


def _counts(item_train_counts: np.ndarray | Tensor, num_items: int) -> np.ndarray:
    counts = np.asarray(item_train_counts)
    if counts.shape != (num_items + 1,) or not np.issubdtype(counts.dtype, np.integer):
        raise ValueError(f"item_train_counts must be an integer array of shape [N+1] = [{num_items + 1}], "
                         f"got {counts.dtype} {counts.shape}")
    if (counts < 0).any():
        raise ValueError("item_train_counts has negative entries")
    return counts


def _never_trained(counts: np.ndarray) -> Tensor:
    """``bool [N+1]``: the items without an interaction in the train split (never the padding id 0)."""
    unseen = torch.from_numpy(counts == 0)
    unseen[0] = False
    return unseen


def build_recommender(cfg: ModelConfig, *, num_items: int, item_train_counts: np.ndarray | Tensor,
                      max_seq_len: int, seed: int = 0, device: str = "cpu") -> SequentialRecommender:
    """Build the model a config describes.

    Dense parts draw from the global torch RNG (seed it before calling); the ID table is built last
    and from ``seed`` alone, so the dense initialisation is the same whether the table is
    materialised here (``device='cpu'``) or left on ``meta`` for sharding.

    Args:
        cfg: The model settings.
        num_items: N (ids 1..N; 0 is padding).
        item_train_counts: ``[N+1]`` interactions per item in the train split (logQ corrections,
            popularity sampling).
        max_seq_len: L.
        seed: Seed of the ID table's initialisation.
        device: Device of the ID table (``'meta'`` for sharding); dense parts are always built on cpu.

    Returns:
        The ``SequentialRecommender``.
    """
    if num_items < 1:
        raise ValueError(f"num_items must be >= 1, got {num_items}")
    if max_seq_len < 1:
        raise ValueError(f"max_seq_len must be >= 1, got {max_seq_len}")
    counts = _counts(item_train_counts, num_items)
    dim = cfg.embedding_dim
    content_encoder = CONTENT_ENCODERS.build(cfg.content_encoder) if cfg.uses_content else None
    item_tower = ItemTower(mode=cfg.item_tower, embedding_dim=dim, content_encoder=content_encoder,
                           fusion=cfg.fusion, init_std=cfg.init_std, cached_features=cfg.uses_cached_features,
                           id_dropout=cfg.id_dropout,
                           content_only_items=_never_trained(counts) if cfg.cold_items == "content" else None)
    user_encoder = USER_ENCODERS.build(cfg.user_encoder, embedding_dim=dim, max_seq_len=max_seq_len,
                                       init_std=cfg.init_std)
    loss = LOSSES.build(cfg.loss, num_items=num_items, item_train_counts=counts)
    tables = None
    if cfg.uses_id_table:
        tables = EmbeddingTables([item_table_spec(num_items=num_items, embedding_dim=dim, init_std=cfg.init_std,
                                                  seed=seed)], device=device)
    return SequentialRecommender(tables=tables,
                                 dense=DenseTower(item_tower=item_tower, user_encoder=user_encoder, loss=loss))


def collate_options(cfg: ModelConfig, item_train_counts: np.ndarray | Tensor) -> dict[str, Any]:
    """The ``collate_train`` keyword arguments the configured loss needs.

    Args:
        cfg: The model settings.
        item_train_counts: ``[N+1]`` interactions per item in the train split.

    Returns:
        ``{'all_items': bool, 'negatives': int, 'sampler_probs': np.ndarray | None}``: every item for
        the full softmax, K negatives from the loss's distribution for the sampled softmax.
    """
    counts = _counts(item_train_counts, len(np.asarray(item_train_counts)) - 1)
    loss = cfg.loss
    if isinstance(loss, SampledSoftmaxConfig):
        return {"all_items": False, "negatives": loss.num_negatives,
                "sampler_probs": negative_sampling_probs(loss.sampler, counts)}
    return {"all_items": isinstance(loss, FullSoftmaxConfig), "negatives": 0, "sampler_probs": None}
