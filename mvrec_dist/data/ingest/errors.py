"""The one error type of ingestion: bad input, a conflicting output, or a failed consistency check."""

from __future__ import annotations

__all__ = ["IngestError", "find_ingest_error"]


class IngestError(RuntimeError):
    """Ingestion cannot produce a correct dataset; the message names the file, line and reason."""


def find_ingest_error(exc: BaseException) -> IngestError | None:
    """Find an ``IngestError`` raised inside a Ray task, however Ray wrapped it.

    Ray Data re-raises task failures as ``RayTaskError``/``UserCodeException`` chains; the message
    the user needs (``file:line: reason``) is the original error's.

    Args:
        exc: The exception caught on the driver.

    Returns:
        The original ``IngestError`` or ``None`` when the failure has another cause.
    """
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        cause = getattr(e, "cause", None)
        # Ray re-raises a task's IngestError as a RayTaskError subclass of it whose text is the
        # remote traceback; the original, with the plain message, is its ``cause``.
        if isinstance(e, IngestError) and not isinstance(cause, IngestError):
            return e
        if isinstance(cause, BaseException):
            stack.append(cause)
        stack.extend([e.__cause__, e.__context__])
    return None
