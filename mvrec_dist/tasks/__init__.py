"""Tasks: what a run learns (``base.Task``), one module per task; ``build_task`` picks the configured one."""

from __future__ import annotations

from mvrec_dist.config.jobs import TrainJobConfig
from mvrec_dist.tasks.base import MetricSpec, Task, TaskData

__all__ = ["Task", "TaskData", "MetricSpec", "build_task"]


def _registry() -> dict[str, type[Task]]:
    from mvrec_dist.tasks.frame import FRAMETask
    from mvrec_dist.tasks.item_popularity import ItemPopularityTask
    from mvrec_dist.tasks.mmra import MMRATask
    from mvrec_dist.tasks.mtin import MTINTask
    from mvrec_dist.tasks.next_item import NextItemTask

    return {"next_item": NextItemTask, "item_popularity": ItemPopularityTask, "mtin": MTINTask, "mmra": MMRATask,
            "frame": FRAMETask}


def build_task(cfg: TrainJobConfig) -> Task:
    """The ``Task`` of ``cfg.task``."""
    return _registry()[cfg.task.name](cfg)
