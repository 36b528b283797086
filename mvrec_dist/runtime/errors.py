"""What a failure comes down to: the exception a user can act on, found inside Ray's wrappers.

A check that fails on the driver raises its own error directly. One that fails inside a Ray task
or a Ray Train worker reaches the driver wrapped (``RayTaskError``, ``WorkerGroupError`` holding
each rank's exception, ``ControllerError``, exception chains); ``root_cause`` digs the original out
so the command can print its one line instead of pages of tracebacks. ``failure_cause`` does the
same for any failure (an ``OSError`` on a worker, a killed worker): the exception that explains it,
and ``is_deterministic`` whether retrying the run could change the outcome.
"""

from __future__ import annotations

import errno

__all__ = ["USER_ERRORS", "user_error_types", "root_cause", "one_line", "failure_cause", "is_deterministic",
           "describe_failure"]

# (module, class) of every exception whose message is one actionable line meant for users, and the
# exit status a command returns for it: 2 = the command cannot start as given (fix the config, a
# path, the cluster), 1 = it started and the data or a run failed.
USER_ERRORS = {
    ("mvrec_dist.config.fields", "ConfigError"): 2,
    ("mvrec_dist.runtime.paths", "PathError"): 2,
    ("mvrec_dist.train.launch", "PreflightError"): 2,
    ("mvrec_dist.train.run_lease", "RunBusyError"): 2,
    ("mvrec_dist.train.launch", "RunFailedError"): 1,
    ("mvrec_dist.train.content", "ContentSetupError"): 2,
    ("mvrec_dist.features.identity", "FeatureIdentityError"): 2,
    ("mvrec_dist.data.manifest", "ManifestError"): 1,
    ("mvrec_dist.data.ingest.errors", "IngestError"): 1,
    ("mvrec_dist.parallel.checkpoint", "CheckpointError"): 1,
    ("mvrec_dist.data.content_store", "ContentStoreError"): 1,
}


def user_error_types() -> dict[type[BaseException], int]:
    """The ``USER_ERRORS`` classes whose modules are loaded, with their exit status.

    A module that was never imported cannot have raised its error, so nothing is imported here
    (the checkpoint module alone would pull in torch).
    """
    import sys

    found = {}
    for (module, name), status in USER_ERRORS.items():
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None:
            found[cls] = status
    return found


def _children(exc: BaseException) -> list[BaseException]:
    found: list[BaseException] = []
    failures = getattr(exc, "worker_failures", None)  # ray.train.WorkerGroupError: rank -> exception
    if isinstance(failures, dict):
        found.extend(failures[rank] for rank in sorted(failures))
    # ray.train.ControllerError, ray.exceptions.RayTaskError, Ray Train's UserExceptionWithTraceback
    for attr in ("controller_failure", "cause", "_base_exc"):
        inner = getattr(exc, attr, None)
        if isinstance(inner, BaseException):
            found.append(inner)
    if exc.__cause__ is not None:
        found.append(exc.__cause__)
    elif exc.__context__ is not None and not exc.__suppress_context__:
        found.append(exc.__context__)
    return found


def root_cause(exc: BaseException, wanted: tuple[type[BaseException], ...]) -> BaseException | None:
    """The first exception of a ``wanted`` type in ``exc`` or anything it wraps (breadth first).

    Args:
        exc: What the driver caught.
        wanted: Exception types whose message is meant for users.

    Returns:
        That exception, or None when ``exc`` wraps none.
    """
    # Ray re-raises a task's exception as a class deriving from both RayTaskError and the
    # original, so isinstance finds it before its wrapper is unpacked.
    return next((e for e in _wrapped(exc) if isinstance(e, wanted)), None)


def _wrapped(exc: BaseException) -> list[BaseException]:
    """``exc`` and everything it wraps, breadth first, each once."""
    found: list[BaseException] = []
    queue, seen = [exc], set()
    while queue:
        e = queue.pop(0)
        if id(e) not in seen:
            seen.add(id(e))
            found.append(e)
            queue.extend(_children(e))
    return found


def one_line(exc: BaseException) -> str:
    """``exc`` as one line: its message's first line, or its type name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# OS errors that a retry on the same storage and cluster meets again: a full or read-only disk, a
# quota, missing permissions, a name the filesystem refuses.
DETERMINISTIC_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EFBIG,
                                  errno.ENAMETOOLONG})
# Exceptions that are bugs or bad input in the code path itself: the same step raises them again.
# AssertionError: libraries assert on their configuration (DeepSpeed's bucket alignment), which a retry repeats.
_PROGRAMMING_ERRORS = (TypeError, AttributeError, NameError, ImportError, SyntaxError, NotImplementedError,
                       AssertionError)
# Ray's wrappers: never the explanation themselves when they hold something more specific.
_WRAPPER_NAMES = {"WorkerGroupError", "ControllerError", "TrainingFailedError", "UserExceptionWithTraceback",
                  "RayTaskError", "TaskError"}


def _is_wrapper(exc: BaseException) -> bool:
    return any(cls.__name__ in _WRAPPER_NAMES or cls.__name__.startswith("RayTaskError(") for cls in type(exc).__mro__)


def is_deterministic(exc: BaseException) -> bool:
    """Whether ``exc`` (a ``failure_cause``) would fail the same way on a retry.

    Users' errors (config, paths, data, checkpoints), OS errors of ``DETERMINISTIC_ERRNOS`` and
    programming errors are; lost workers, nodes and connections, timeouts and anything unknown are not.
    """
    if isinstance(exc, tuple(user_error_types())):
        return True
    if isinstance(exc, OSError) and exc.errno in DETERMINISTIC_ERRNOS:
        return True
    return isinstance(exc, _PROGRAMMING_ERRORS)


def failure_cause(exc: BaseException) -> BaseException:
    """The exception that explains a failure, dug out of Ray's wrappers.

    Among everything ``exc`` wraps (each rank's failure, causes, chains): a users' error first
    (``USER_ERRORS``), then one that ``is_deterministic`` (a full disk on rank 0 explains the
    connection error of rank 1 that followed it), then the first that is not a Ray wrapper, else
    ``exc`` itself.
    """
    found = _wrapped(exc)
    users = tuple(user_error_types())
    for accept in (lambda e: isinstance(e, users), is_deterministic, lambda e: not _is_wrapper(e)):
        hits = [e for e in found if accept(e)]
        if hits:  # Ray's hybrid RayTaskError(OSError) passes too: the original it wraps reads better
            return next((e for e in hits if not _is_wrapper(e)), hits[0])
    return exc


def describe_failure(exc: BaseException) -> str:
    """One line naming the exception that explains ``exc``: its type and message (errno and path of OS errors).

    A users' error is its own message; anything else is prefixed with its type name.
    """
    cause = failure_cause(exc)
    if isinstance(cause, tuple(user_error_types())):
        return one_line(cause)
    return f"{type(cause).__name__}: {one_line(cause)}"
