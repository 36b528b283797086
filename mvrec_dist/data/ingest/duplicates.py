"""Duplicate rows of a user, found where all of a user's rows meet: the grouping stage.

One kind per input format; ``ingest.duplicates`` says what happens to them (every kind is counted
in the manifest whatever the setting):

* ``pairs_tsv``: a user on several lines. Each line is a row; the user's first line in file order
  (file index, then byte position) is the original and every later line a duplicate row. ``keep``
  merges the lines in file order, ``drop`` keeps the first line's sequence only.
* ``pairs_csv``: an exact duplicate row, the same (user, item, timestamp) as an earlier row. The
  first in file order is the original; ``keep`` keeps both interactions, ``drop`` the first only.

A read task cannot see either: a user's rows may lie in different byte ranges or files. After the
range exchange every row of a user is in one block, sorted by (user, timestamp, order key), so the
check is a few vectorised comparisons per block (``grouping.group_users``):

* tsv: a running count of the ``first``-flagged interactions (first token of a line) numbers the
  lines; an interaction whose line differs from its user's first interaction's is on a later line.
* csv: duplicates share (user, timestamp), so only rows sharing them with a neighbour can be one.
  MicroLens and the synthetic data have none (timestamps are strictly increasing per user), so
  the cost there is two comparisons per interaction; the few candidates otherwise are sorted by
  item to make duplicates adjacent, the earliest first.

``error`` names the earliest duplicate in file order with its file and line and the line it
repeats; the line numbers cost a newline count of the file prefix, on this error path only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mvrec_dist.data.ingest.errors import IngestError
from mvrec_dist.data.ingest.sources import InputFile, count_newlines

__all__ = ["POLICIES", "Duplicates", "tsv_duplicates", "csv_duplicates", "duplicate_error"]

POLICIES = ("keep", "drop", "error")
"""Values of ``ingest.duplicates``."""
_POSITION_BITS = 40
"""Order keys are ``file_index << 40 | byte position`` (``parse.py``)."""


@dataclass
class Duplicates:
    """The duplicate rows of one grouped block (arrays over its users and its interactions)."""

    rows: np.ndarray
    """Duplicate rows of each user, int64 [G]."""
    later: np.ndarray | None = None
    """Interactions of duplicate rows, bool [M]; None when the block has none."""
    dup: np.ndarray | None = None
    """First interaction of each duplicate row, int64 [D]."""
    orig: np.ndarray | None = None
    """First interaction of the row each of ``dup`` repeats, int64 [D]."""


def tsv_duplicates(first: np.ndarray, starts: np.ndarray, n: np.ndarray, lines: np.ndarray) -> Duplicates:
    """Later lines of users on several lines.

    Args:
        first: Whether each interaction is the first token of its line, bool [M] (sorted block).
        starts: First interaction of each user, int64 [G].
        n: Interactions of each user, int64 [G].
        lines: Lines of each user, int64 [G].

    Returns:
        The ``Duplicates``: every line of a user after its first in file order.
    """
    rows = np.maximum(lines - 1, 0)
    if not rows.any():
        return Duplicates(rows=rows)
    line = np.cumsum(first)
    later = line != np.repeat(line[starts], n)
    dup = np.flatnonzero(later & first)
    orig = starts[np.searchsorted(starts, dup, side="right") - 1]
    return Duplicates(rows=rows, later=later, dup=dup, orig=orig)


def csv_duplicates(user: np.ndarray, item: np.ndarray, ts: np.ndarray, starts: np.ndarray) -> Duplicates:
    """Exact repeats of an earlier (user, item, timestamp) row.

    Args:
        user, item, ts: The block's interactions sorted by (user, timestamp, order key).
        starts: First interaction of each user, int64 [G].

    Returns:
        The ``Duplicates``: every row equal to a row earlier in file order.
    """
    none = Duplicates(rows=np.zeros(len(starts), dtype=np.int64))
    same = (user[1:] == user[:-1]) & (ts[1:] == ts[:-1])
    if not same.any():
        return none
    candidate = np.zeros(len(user), dtype=bool)
    candidate[1:] |= same
    candidate[:-1] |= same
    cand = np.flatnonzero(candidate)
    # Candidates come in (user, timestamp, order key) order: number their (user, timestamp) runs and
    # sort stably by (run, item), so equal rows become adjacent with the earliest first. One int64
    # key sorts about 10x faster than a lexsort of the four columns (all rows tie with coarse
    # timestamps); the lexsort is the fallback when the key could overflow.
    u, t, it = user[cand], ts[cand], item[cand]
    run = np.cumsum(np.concatenate([[True], (u[1:] != u[:-1]) | (t[1:] != t[:-1])]))
    lo, span = int(it.min()), int(it.max()) - int(it.min()) + 1
    if (int(run[-1]) + 1) * span < 1 << 62:
        perm = np.argsort(run * span + (it - lo), kind="stable")
    else:
        perm = np.lexsort((it, run))
    sub, run, it = cand[perm], run[perm], it[perm]
    eq = (run[1:] == run[:-1]) & (it[1:] == it[:-1])
    if not eq.any():
        return none
    # Each run of equal rows starts with its earliest row (smallest order key): the original.
    is_head = np.concatenate([[True], ~eq])
    head = np.maximum.accumulate(np.where(is_head, np.arange(len(sub)), 0))
    at = np.flatnonzero(~is_head)
    dup, orig = sub[at], sub[head[at]]
    later = np.zeros(len(user), dtype=bool)
    later[dup] = True
    rows = np.bincount(np.searchsorted(starts, dup, side="right") - 1, minlength=len(starts)).astype(np.int64)
    return Duplicates(rows=rows, later=later, dup=dup, orig=orig)


def _describe(files: list[InputFile] | None, key: int, relative_to: int | None = None) -> str:
    """Where the row with order key ``key`` starts: ``file:line`` (``line N`` in ``relative_to``'s file)."""
    index, pos = key >> _POSITION_BITS, key & ((1 << _POSITION_BITS) - 1)
    if files is None:  # callers without the input list (tests, tools)
        return f"input file {index}, byte {pos}"
    line = count_newlines(files[index], pos) + 1
    if relative_to is not None and relative_to >> _POSITION_BITS == index:
        return f"line {line}"
    return f"{files[index].display}:{line}"


def duplicate_error(found: Duplicates, user: np.ndarray, item: np.ndarray, ts: np.ndarray, order: np.ndarray,
                    *, tsv: bool, files: list[InputFile] | None) -> IngestError:
    """The ``ingest.duplicates=error`` message for the earliest duplicate row of a block.

    Args:
        found: The block's ``Duplicates`` (some found).
        user, item, ts, order: The block's interactions, in the order ``found`` indexes.
        tsv: ``pairs_tsv`` (a user on several lines) or ``pairs_csv`` (an exact duplicate row).
        files: The input files by index, for file names and line numbers.

    Returns:
        The ``IngestError`` to raise: ``<file>:<line>: <reason>; <what to do>``.
    """
    k = int(np.argmin(order[found.dup]))
    d, o = int(found.dup[k]), int(found.orig[k])
    where = _describe(files, int(order[d]))
    earlier = _describe(files, int(order[o]), relative_to=int(order[d]))
    extra = len(found.dup) - 1
    more = f" (and {extra} more duplicate row{'s' if extra > 1 else ''} in this user range)" if extra else ""
    if tsv:
        return IngestError(f"{where}: user {int(user[d])} again (first on {earlier}){more}; join the user's lines "
                           "or set ingest.duplicates=keep (merge them in file order) or drop (keep the first line)")
    return IngestError(f"{where}: exact duplicate of {earlier} (user {int(user[d])}, item {int(item[d])}, "
                       f"timestamp {int(ts[d])}){more}; remove the repeats or set ingest.duplicates=drop "
                       "(keep the first row) or keep")
