"""The task seam: what the one training loop needs to know about what a run learns.

A ``Task`` is built from the job config (``mvrec_dist.tasks.build_task``) and answers, for the
loop, the parallel layer, the checkpoint and the CLIs:

* its **batch type** and how a rank's batch **counts its targets** (the loss is a sum over targets;
  the parallel layer all-reduces the counts to normalise it the same on 1 or W ranks);
* its **tables** (``TableSpec``s) and **sparse features**: which ids of a batch are looked up in
  which embedding feature;
* its **model** (an unsharded module with ``tables``, its ``EmbeddingTables`` for
  ``mvrec_dist.parallel`` to shard, and a ``dense`` tower whose ``forward(embeddings, batch)``
  returns a ``TaskOutput``);
* its **data** (a ``TaskData``: a resumable training stream and the evaluation data);
* how it is **evaluated** and its **metrics** with a direction (``MetricSpec``); one of them,
  ``eval.select_metric`` or the task's default, selects the best epoch and drives early stopping.

The next-item task (``tasks/next_item.py``) is the MicroLens protocol; ``tasks/item_popularity.py``
is a regression over items (the shape MMRA has). Adding a task: ``docs/DESIGN.md`` ("Add a task").
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, Iterator, Protocol

import torch
from torch import nn

from mvrec_dist.config.jobs import TrainJobConfig
from mvrec_dist.config.task import MetricSpec

__all__ = ["Task", "TaskData", "MetricSpec"]


class TaskData(Protocol):
    """One rank's data of a task: the training stream (resumable) and what evaluation reads.

    The stream's position is the data's own business: the loop calls ``record`` after each step,
    ``end_epoch`` after each epoch, and stores ``state_dict()`` in checkpoints as one opaque entry.
    """

    rank: int
    world_size: int
    num_items: int
    content_store: Any

    def train_batches(self, epoch: int) -> Iterator[Any]:
        """This rank's batches of (the rest of) ``epoch``; resumes from a loaded state of that epoch."""

    def record(self, batch: Any | None) -> None:
        """``batch`` (of ``train_batches``; None for a dummy) was trained on."""

    def end_epoch(self) -> None:
        """The epoch in progress is done."""

    def state_dict(self) -> dict[str, Any]:
        """The stream's position as JSON-able data (may be collective: every rank calls it)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from ``state_dict()`` output; an empty dict means a fresh start."""

    def describe_state(self) -> str:
        """One phrase about the loaded state (resume message)."""

    def dummy_batch(self) -> Any:
        """A batch with no targets, for a rank whose share of the epoch is used up."""

    def estimated_steps_per_epoch(self) -> int:
        """Steps of one epoch (schedules, ETAs)."""


class Task(ABC):
    """What a run learns; see the module docstring.

    Args:
        cfg: The job config (``cfg.task`` is this task's variant).
    """

    def __init__(self, cfg: TrainJobConfig):
        self.cfg = cfg

    @property
    def name(self) -> str:
        """The task's ``task.name``."""
        return self.cfg.task.name

    @property
    def metrics(self) -> tuple[MetricSpec, ...]:
        """Every metric ``evaluate`` reports, in display order."""
        return self.cfg.metrics

    @property
    def select_metric(self) -> MetricSpec:
        """The metric that selects the best epoch (with its direction)."""
        return self.cfg.select_metric

    def metric_values(self, metrics: dict[str, Any]) -> dict[str, float]:
        """The task's metrics among ``metrics`` (an ``evaluate`` result), in display order."""
        return {m.name: metrics[m.name] for m in self.metrics if m.name in metrics}

    @abstractmethod
    def build_model(self, manifest: Any, *, device: str | torch.device) -> nn.Module:
        """The unsharded model: ``tables`` (``EmbeddingTables`` of ``table_specs`` or None) and ``dense``."""

    @abstractmethod
    def build_data(self, manifest: Any, *, rank: int, world_size: int, pin_memory: bool, content_store: Any,
                   gather: Callable[[torch.Tensor], torch.Tensor] | None) -> TaskData:
        """This rank's ``TaskData``."""

    @abstractmethod
    def count(self, batch: Any) -> tuple[int, int]:
        """``(targets, examples)`` of one rank's batch: the loss-sum's terms, and real rows (throughput)."""

    def sparse_features(self, batch: Any) -> dict[str, Any]:
        """What ``batch`` looks up, by feature name: ids (sequence features) or ``tables.Bags`` (pooled)."""
        from mvrec_dist.models.recommender import item_features

        return item_features(batch)

    def table_specs(self, manifest: Any) -> tuple:
        """The model's embedding tables (``TableSpec``s): the ID table ``item`` unless the item tower is
        content-only. The driver checks their sharding before any worker starts."""
        from mvrec_dist.models.builders import item_table_spec

        m = self.cfg.model
        if not m.uses_id_table:
            return ()
        return (item_table_spec(num_items=manifest.num_items, embedding_dim=m.embedding_dim, init_std=m.init_std,
                                seed=self.cfg.train.seed),)

    def dataset_problems(self, manifest: Any) -> list[str]:
        """Why the dataset cannot feed this task (what it lacks), one message each; the driver refuses the
        run with them before any worker starts. None by default."""
        return []

    @abstractmethod
    def evaluate(self, model: Any, data: TaskData, split: str, log: Any | None = None) -> dict[str, float]:
        """Metrics of ``split`` (``valid`` or ``test``), identical on every rank (collective).

        Returns every metric of ``metrics`` plus ``users`` (examples scored; named for the first
        task's users, kept for the logs' schema) and ``seconds``.
        """

    def refresh(self, model: Any, data: TaskData, step: int) -> None:
        """Bring state that depends on every example up to date (collective; every rank calls it with the same
        ``step``): once when training starts or resumes, at ``state.step``, and after every step, before
        that step's checkpoint. FRAME recomputes its clip aggregates here. Nothing by default."""

    def baselines(self, model: Any, data: TaskData, split: str) -> dict[str, dict[str, float]]:
        """Metrics of reference rankers on ``split`` by baseline name, with the keys of ``evaluate``
        (collective); the final test reports them as ``baseline/<name>/<split>/<metric>``. None by default."""
        return {}
