"""Settings of the cached-trunk-feature pass (``jobs/cache_trunk_features.py``, a Ray Data job).

The pass reads the training preset: the video encoder (``model.content_encoder``, its
``finetune``/``top_blocks`` fix the cut), the dataset (``data.dataset_dir``), where the features go
(``data.content_features``) and the seed of a randomly initialised trunk (``train.seed``); this
section holds only what the pass itself needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mvrec_dist.config.fields import Problems, setting

__all__ = ["TrunkCacheConfig"]


@dataclass(frozen=True, kw_only=True)
class TrunkCacheConfig:
    """Computing the frozen trunk's output once per item."""

    batch_size: int = setting(16, doc="Items per trunk forward pass on a worker.")
    dtype: Literal["float16", "float32"] = setting(
        "float16", doc="Stored feature dtype; float16 halves the store (tolerance in docs/VIDEOREC.md), float32 is exact.")
    concurrency: int = setting(1, doc="Ray Data workers running the trunk (each loads the encoder once).")
    use_gpu: bool = setting(False, doc="One GPU per worker; false runs the trunk on CPU.")
    cpus_per_worker: int = setting(1, doc="CPUs Ray reserves per worker (also its torch threads on CPU).")
    build_if_missing: bool = setting(
        False, doc="train_videorec.py computes data.content_features first when it holds no feature store yet.")
    overwrite: bool = setting(False, doc="Replace a feature store computed by a different trunk or from other content.")
    progress: bool = setting(True, doc="Ray Data progress bars and one line per finished shard.")

    def __post_init__(self) -> None:
        p = Problems()
        p.check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        p.check(self.concurrency >= 1, "concurrency", f"must be >= 1, got {self.concurrency}")
        p.check(self.cpus_per_worker >= 1, "cpus_per_worker", f"must be >= 1, got {self.cpus_per_worker}")
        p.raise_if_any()
