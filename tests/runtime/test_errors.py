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


def _user_exception_with_traceback(exc):
    """Shaped like Ray Train's UserExceptionWithTraceback: the worker's exception in ``_base_exc``."""

    class UserExceptionWithTraceback(Exception):
        def __init__(self):
            super().__init__("Traceback (most recent call last):\n  ...")
            self._base_exc = exc

    return UserExceptionWithTraceback()


def test_a_full_disk_on_one_rank_explains_the_group_failure_and_is_not_retried():
    from mvrec_dist.runtime.errors import describe_failure, failure_cause, is_deterministic

    full = OSError(28, "No space left on device (writing a checkpoint)", "/runs/r/checkpoint-step000000005/dense.pt")
    wrapped = WorkerGroupError({1: RuntimeError("[gloo] Connection closed by peer"),
                                0: _user_exception_with_traceback(full)})
    assert failure_cause(wrapped) is full and is_deterministic(full)
    assert describe_failure(wrapped) == ("OSError: [Errno 28] No space left on device (writing a checkpoint): "
                                         "'/runs/r/checkpoint-step000000005/dense.pt'")


def test_a_lost_worker_is_the_cause_and_may_pass_on_a_retry():
    from mvrec_dist.runtime.errors import describe_failure, failure_cause, is_deterministic

    class ActorDiedError(Exception):
        pass

    died = ActorDiedError("The actor died unexpectedly before finishing this task.")
    wrapped = WorkerGroupError({0: died})
    assert failure_cause(wrapped) is died and not is_deterministic(died)
    assert describe_failure(wrapped) == "ActorDiedError: The actor died unexpectedly before finishing this task."
    assert not is_deterministic(OSError(104, "Connection reset by peer"))
    assert not is_deterministic(TimeoutError("collective timed out"))


def test_users_errors_and_programming_errors_are_deterministic():
    from mvrec_dist.runtime.errors import describe_failure, is_deterministic

    assert is_deterministic(PathError("p")) and is_deterministic(TypeError("bad")) and is_deterministic(
        OSError(13, "Permission denied", "/x"))
    # A library's assertion on its configuration fails the same way every time (DeepSpeed's bucket alignment).
    assert is_deterministic(AssertionError("allgather_bucket_size must be a multiple of nccl_start_alignment_factor, 2"))
    assert describe_failure(WorkerGroupError({0: PathError("data.dataset_dir=/x does not exist")})) == (
        "data.dataset_dir=/x does not exist")
