"""Training-time data settings: which ingested dataset, how sequences are cut and read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mvrec_dist.config.fields import Problems, setting

__all__ = ["DataConfig"]


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Reading shards into training and evaluation batches."""

    dataset_dir: str = setting("data/shards/demo", doc="Ingested dataset directory (holds manifest.json); local path or URI.")
    max_seq_len: int = setting(10, doc="History items the user encoder sees (paper: 10).")
    train_windows: Literal["all", "last"] = setting(
        "all", doc="'all' cuts each training sequence into windows so every item is a target once; 'last' keeps the newest window only (MicroLens VideoRec).")
    shuffle: bool = setting(True, doc="Shuffle training samples each epoch (deterministic from train.seed and the epoch).")
    shuffle_block: int = setting(4096, doc="Samples permuted together; larger mixes more, smaller reads less at once.")
    loader_workers: int = setting(1, doc="DataLoader worker processes per rank (0 reads in the training process).")
    prefetch_batches: int = setting(4, doc="Batches each loader worker prepares ahead.")
    content_features: str | None = setting(None, doc="Cached trunk-feature dataset directory for content towers in cached-trunk mode.")
    audit_dir: str | None = setting(
        None, doc="Write each rank's consumed (epoch, step, sample, window) rows here as JSON lines (exactly-once "
        "audits); a file hold-after-step-N there holds every rank after step N while it exists (fault tests).")
    prepare_with: str | None = setting(
        None, doc="Ingest preset run first when dataset_dir has no manifest yet (the demo makes its synthetic data so).")

    def __post_init__(self) -> None:
        p = Problems()
        p.check(bool(self.dataset_dir), "dataset_dir", "must be set")
        p.check(self.max_seq_len >= 1, "max_seq_len", f"must be >= 1, got {self.max_seq_len}")
        p.check(self.shuffle_block >= 1, "shuffle_block", f"must be >= 1, got {self.shuffle_block}")
        p.check(self.loader_workers >= 0, "loader_workers", f"must be >= 0, got {self.loader_workers}")
        p.check(self.prefetch_batches >= 1, "prefetch_batches", f"must be >= 1, got {self.prefetch_batches}")
        p.raise_if_any()
