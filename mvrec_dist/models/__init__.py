"""Unsharded models: item tower, user encoders, losses, registries and the recommender builder.

Importing this package registers every built-in component (through ``models.builders``). Nothing
here imports ``torchrec.distributed``, deepspeed, ray or ``torch.distributed``.
"""

from mvrec_dist.models.builders import build_recommender, collate_options, item_table_spec
from mvrec_dist.models.item_tower import ItemTower
from mvrec_dist.models.losses import (FullSoftmaxLoss, InBatchSoftmaxLoss, LossOutput,
                                      SampledSoftmaxLoss)
from mvrec_dist.models.recommender import (ITEM_FEATURE, ITEM_TABLE, DenseTower,
                                           SequentialRecommender, TaskOutput)
from mvrec_dist.models.registry import (CONTENT_ENCODERS, LOSSES, USER_ENCODERS, Registry,
                                        RegistryError)
from mvrec_dist.models.user_encoders import GRU4Rec, NextItNet, SASRec

__all__ = [
    "build_recommender", "collate_options", "item_table_spec",
    "SequentialRecommender", "DenseTower", "TaskOutput", "ITEM_TABLE", "ITEM_FEATURE", "ItemTower",
    "LossOutput", "FullSoftmaxLoss", "InBatchSoftmaxLoss", "SampledSoftmaxLoss",
    "Registry", "RegistryError", "USER_ENCODERS", "LOSSES", "CONTENT_ENCODERS",
    "SASRec", "GRU4Rec", "NextItNet",
]
