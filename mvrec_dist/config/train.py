"""Optimisation, cadence, checkpointing and run identity."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mvrec_dist.config.fields import Problems, setting

__all__ = ["TrainConfig"]


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """The training loop's settings."""

    epochs: int = setting(20, doc="Most epochs; early stopping may end the run sooner.")
    batch_size: int = setting(256, doc="Global batch in training sequences per step, split evenly over workers.")
    lr: float = setting(1e-3, doc="Peak AdamW learning rate of the dense parameters.")
    weight_decay: float = setting(0.0, doc="AdamW weight decay of the dense parameters.")
    betas: tuple[float, ...] = setting((0.9, 0.999), doc="AdamW betas.")
    grad_clip: float = setting(1.0, doc="Clip the dense gradient norm to this value; 0 disables.")
    warmup_steps: int = setting(0, doc="Linear learning-rate warm-up steps.")
    lr_schedule: Literal["constant", "cosine"] = setting("constant", doc="Learning-rate schedule after warm-up.")
    seed: int = setting(42, doc="Seed of model init, data order and dropout.")
    patience: int = setting(5, doc="Stop after this many validations without a better valid ndcg@10; 0 never stops early.")
    max_steps: int = setting(0, doc="Stop after this many steps in total (0: no limit); for smoke tests and benchmarks.")
    log_every_steps: int = setting(50, doc="Steps between training records in logs/metrics.jsonl and TensorBoard.")
    run_name: str = setting("demo", doc="Run identity; the same name and storage_path resumes the run.")
    storage_path: str = setting("runs", doc="Where runs, checkpoints and metrics go: local dir, shared FS or s3:// / gs:// URI.")
    checkpoint_every_steps: int = setting(0, doc="Save a checkpoint every N steps (0: only at epoch ends).")
    checkpoint_at_epoch_end: bool = setting(True, doc="Save a checkpoint after every epoch's validation.")
    keep_checkpoints: int = setting(2, doc="Committed checkpoints kept besides the best one (older ones are deleted).")
    resume: str = setting("auto", doc="'auto' resumes the run's newest good checkpoint (a finished run shows its result); "
                                      "'never' empties the run directory and starts afresh; else a checkpoint path "
                                      "to start from while the run has no checkpoint of its own.")
    max_failures: int = setting(3, doc="Restarts from the newest checkpoint after a failure a retry may fix (lost "
                                       "workers, nodes, connections); a full disk or a bad config is never retried.")
    owner_timeout_s: float = setting(300.0, doc="A run whose driver's heartbeat (every 60 s) is older than this, on "
                                                "another host, is taken over by a new driver of the same run; on the "
                                                "same host a driver that is not running is taken over at once.")
    quiet: bool = setting(False, doc="No progress bars: only the lines of epoch summaries, validations and results (CI).")
    test_after_training: bool = setting(True, doc="Evaluate the best-validation weights on the test split once, at the end.")

    def __post_init__(self) -> None:
        p = Problems()
        p.check(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        p.check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        p.check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        p.check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        p.check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas",
                f"must be two numbers in [0, 1), got {list(self.betas)}")
        p.check(self.grad_clip >= 0, "grad_clip", f"must be >= 0, got {self.grad_clip}")
        p.check(self.warmup_steps >= 0, "warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        p.check(self.patience >= 0, "patience", f"must be >= 0, got {self.patience}")
        p.check(self.max_steps >= 0, "max_steps", f"must be >= 0, got {self.max_steps}")
        p.check(self.log_every_steps >= 1, "log_every_steps", f"must be >= 1, got {self.log_every_steps}")
        p.check(self.checkpoint_every_steps >= 0, "checkpoint_every_steps",
                f"must be >= 0, got {self.checkpoint_every_steps}")
        p.check(self.keep_checkpoints >= 1, "keep_checkpoints", f"must be >= 1, got {self.keep_checkpoints}")
        p.check(self.max_failures >= 0, "max_failures", f"must be >= 0, got {self.max_failures}")
        p.check(self.owner_timeout_s > 60, "owner_timeout_s",
                f"must exceed the 60 s heartbeat interval, got {self.owner_timeout_s}")
        p.check(bool(self.run_name) and "/" not in self.run_name and ".." not in self.run_name,
                "run_name", f"must be a plain name without '/' or '..', got {self.run_name!r}")
        p.raise_if_any()
