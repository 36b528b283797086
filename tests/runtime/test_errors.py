"""Finding the user-facing error inside Ray's wrappers."""

from __future__ import annotations

from mvrec_dist.runtime.errors import one_line, root_cause, user_error_types
from mvrec_dist.runtime.paths import PathError


class WorkerGroupError(Exception):
    """Shaped like ray.train.WorkerGroupError: each rank's exception in ``worker_failures``."""

    def __init__(self, failures):
        super().__init__("Training failed due to worker errors:\n[rank 0] Traceback ...")
        self.worker_failures = failures


def test_a_worker_failure_is_found_inside_the_group_error():
    original = PathError("data.dataset_dir=/x does not exist; run the ingest job first")
    wrapped = WorkerGroupError({1: RuntimeError("peer gone"), 0: original})
    assert root_cause(wrapped, (PathError,)) is original


def test_chained_and_task_wrapped_errors_are_found():
    original = PathError("p")

    class RayTaskError(Exception):
        cause = original

    try:
        try:
            raise RayTaskError("task failed")
        except RayTaskError as exc:
            raise RuntimeError("driver") from exc
    except RuntimeError as exc:
        assert root_cause(exc, (PathError,)) is original
    assert root_cause(RuntimeError("x"), (PathError,)) is None


def test_user_error_types_are_the_loaded_ones():
    types = user_error_types()
    assert types[PathError] == 2


def test_one_line():
    assert one_line(RuntimeError("first\nsecond")) == "first"
    assert one_line(KeyError()) == "KeyError"
