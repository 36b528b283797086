"""How a command turns a failure into one line a user can act on (the traceback only with ``--debug``)."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, NoReturn

from mvrec_dist.runtime.errors import describe_failure, one_line, root_cause, user_error_types

__all__ = ["guarded", "report_error", "CommandParser"]


def report_error(prog: str, exc: BaseException) -> int:
    """Print ``exc`` as one ``<prog>: error: ...`` line per problem on stderr; return the exit status.

    Args:
        prog: The command's name as the user typed it (``mvrec train``, ``train_videorec.py``).
        exc: What the command raised.

    Returns:
        2 when the command could not start as given (config, paths, cluster, checkpoint), 1 when
        it started and failed.
    """
    types = user_error_types()
    cause = root_cause(exc, tuple(types))
    if cause is None:
        print(f"{prog}: error: {describe_failure(exc)} (run again with --debug for the traceback)", file=sys.stderr)
        return 1
    # Errors that collect several problems (config, preflight) keep them as a list: one line each.
    for problem in getattr(cause, "problems", None) or [one_line(cause)]:
        print(f"{prog}: error: {problem}", file=sys.stderr)
    return next(status for cls, status in types.items() if isinstance(cause, cls))


def guarded(prog: str, debug: bool, command: Callable[[], int]) -> int:
    """Run ``command`` and return its exit status, reporting a failure as ``report_error`` does.

    Args:
        prog: The command's name, prefixed to error lines.
        debug: Let exceptions propagate with their traceback.
        command: The work; returns the exit status.

    Returns:
        The exit status (130 after Ctrl-C).
    """
    if debug:
        return command()
    try:
        return command()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # every failure becomes one line; --debug shows the traceback instead
        return report_error(prog, exc)


class CommandParser(argparse.ArgumentParser):
    """``argparse`` for the subcommands: help keeps its line breaks, every command takes ``--debug``,
    and a usage error is one line (status 2)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true", help="on failure show the full traceback instead of one line")

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message}; see {self.prog} --help", file=sys.stderr)
        raise SystemExit(2)
