"""What a failure comes down to: the exception a user can act on, found inside Ray's wrappers.

A check that fails on the driver raises its own error directly. One that fails inside a Ray task
or a Ray Train worker reaches the driver wrapped (``RayTaskError``, ``WorkerGroupError`` holding
each rank's exception, ``ControllerError``, exception chains); ``root_cause`` digs the original out
so the command can print its one line instead of pages of tracebacks.
"""

from __future__ import annotations

__all__ = ["USER_ERRORS", "user_error_types", "root_cause", "one_line"]

# (module, class) of every exception whose message is one actionable line meant for users, and the
# exit status a command returns for it: 2 = the command cannot start as given (fix the config, a
# path, the cluster), 1 = it started and the data or a run failed.
USER_ERRORS = {
    ("mvrec_dist.config.fields", "ConfigError"): 2,
    ("mvrec_dist.runtime.paths", "PathError"): 2,
    ("mvrec_dist.train.launch", "PreflightError"): 2,
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
    for attr in ("controller_failure", "cause"):  # ray.train.ControllerError, ray.exceptions.RayTaskError
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
    queue, seen = [exc], set()
    while queue:
        e = queue.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        # Ray re-raises a task's exception as a class deriving from both RayTaskError and the
        # original, so isinstance finds it before its wrapper is unpacked.
        if isinstance(e, wanted):
            return e
        queue.extend(_children(e))
    return None


def one_line(exc: BaseException) -> str:
    """``exc`` as one line: its message's first line, or its type name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
