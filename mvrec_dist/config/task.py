"""What a run learns: the task variants (next-item ranking, item popularity regression, ...).

A task config names its metrics and which way each is better; the job config checks
``eval.select_metric`` against them, and ``mvrec_dist.tasks`` builds the task's data, model and
evaluation from the variant. ``next_item`` (the MicroLens protocol) is the default, so a config
without a ``task`` section means what it always meant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mvrec_dist.config.fields import Problems, setting

__all__ = ["MetricSpec", "TaskConfig", "NextItemTaskConfig", "ItemPopularityTaskConfig"]


@dataclass(frozen=True)
class MetricSpec:
    """One validation/test metric of a task."""

    name: str
    """Key in the metrics dicts, logs, TensorBoard and ``result.json`` (e.g. ``ndcg@10``, ``mae``)."""
    higher_is_better: bool
    """Direction: early stopping and the best checkpoint maximise it when True, minimise it otherwise."""

    def better(self, value: float, best: float) -> bool:
        """Whether ``value`` improves on ``best`` (strictly; NaN never does)."""
        if value != value:  # NaN
            return False
        return value > best if self.higher_is_better else value < best


@dataclass(frozen=True, kw_only=True)
class TaskConfig:
    """Base of the task variants; ``name`` selects one."""

    @staticmethod
    def default_variant() -> type:
        return NextItemTaskConfig

    def metrics(self, ks: tuple[int, ...]) -> tuple[MetricSpec, ...]:
        """Every metric the task reports, in display order (``ks``: the ``eval.ks`` cut-offs)."""
        raise NotImplementedError

    def default_select_metric(self, ks: tuple[int, ...]) -> str:
        """The metric that selects the best epoch when ``eval.select_metric`` is not set."""
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class NextItemTaskConfig(TaskConfig):
    """Next-item recommendation (MicroLens protocol: leave-one-out, full ranking, history excluded)."""

    name: Literal["next_item"] = setting("next_item", doc="Selects next-item sequential recommendation.")

    def metrics(self, ks: tuple[int, ...]) -> tuple[MetricSpec, ...]:
        """HR@K and NDCG@K for every K, higher is better."""
        return tuple(MetricSpec(f"{m}@{k}", True) for k in ks for m in ("hr", "ndcg"))

    def default_select_metric(self, ks: tuple[int, ...]) -> str:
        """NDCG@10 (the paper's headline metric), or NDCG at the first cut-off when 10 is not one."""
        return "ndcg@10" if 10 in ks else f"ndcg@{ks[0]}"


@dataclass(frozen=True, kw_only=True)
class ItemPopularityTaskConfig(TaskConfig):
    """Item popularity regression: predict ``log2(1 + train interactions)`` of an item from its embedding.

    The smallest task of the shape MMRA has (a regression over items, a lower-is-better metric):
    items 1..N are split at random into train/valid/test with ``split_seed``; the label is read from
    the dataset's ``stats/item_train_counts.npy``.
    """

    name: Literal["item_popularity"] = setting("item_popularity", doc="Selects item popularity regression.")
    valid_fraction: float = setting(0.1, doc="Share of items held out for validation (MMRA: 0.1).")
    test_fraction: float = setting(0.1, doc="Share of items held out for test (MMRA: 0.1).")
    split_seed: int = setting(0, doc="Seed of the random item split (fixed, so every run sees the same split).")
    hidden_dim: int = setting(64, doc="Width of the regression head's hidden layer.")

    def __post_init__(self) -> None:
        p = Problems()
        p.check(0 < self.valid_fraction < 1, "valid_fraction", f"must be in (0, 1), got {self.valid_fraction}")
        p.check(0 < self.test_fraction < 1, "test_fraction", f"must be in (0, 1), got {self.test_fraction}")
        p.check(self.valid_fraction + self.test_fraction < 1, "test_fraction",
                f"valid_fraction + test_fraction must leave items to train on, got "
                f"{self.valid_fraction} + {self.test_fraction}")
        p.check(self.hidden_dim >= 1, "hidden_dim", f"must be >= 1, got {self.hidden_dim}")
        p.raise_if_any()

    def metrics(self, ks: tuple[int, ...]) -> tuple[MetricSpec, ...]:
        """Mean absolute and root mean squared error of the label, lower is better."""
        return (MetricSpec("mae", False), MetricSpec("rmse", False))

    def default_select_metric(self, ks: tuple[int, ...]) -> str:
        """MAE (MMRA's selection metric is MSE-family; MAE is less swayed by a few viral items)."""
        return "mae"
