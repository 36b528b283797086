"""The titles CSV (``item,title``): parsed with a real CSV reader, bad rows named by line.

Titles may be quoted and hold commas and newlines, so lines and records differ; error messages
give the line where the record starts. A UTF-8 byte-order mark at the start of the file (spreadsheet
exports write one) is stripped before parsing and counted. The file is read whole on the driver (the full MicroLens
release has about 1.1M titles, a few hundred MB at most).
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field

import numpy as np

from mvrec_dist.data import fs as dfs
from mvrec_dist.data.ingest.errors import IngestError
from mvrec_dist.data.ingest.validate import BOM, TITLES_HEADER, escape_raw

__all__ = ["Titles", "read_titles", "parse_titles"]

_ID = re.compile(r"[ \t]*[0-9]+[ \t]*")
_SURROGATE = re.compile(r"[\udc80-\udcff]")


@dataclass
class Titles:
    """Titles by raw item id."""

    items: np.ndarray
    """Sorted raw item ids, int64 [T]."""
    titles: list[str]
    """Title of each id in ``items``."""
    rows: int = 0
    """Records read (header excluded), bad ones included."""
    header_rows: int = 0
    bom_stripped: int = 0
    """1 when the file started with a UTF-8 byte-order mark (stripped before parsing)."""
    bad: list[tuple[int, str, str]] = field(default_factory=list)
    """``(line, reason, escaped raw record)`` of each bad record."""

    def lookup(self, raw_items: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """Titles of ``raw_items``: ``(has_title bool [N], titles ('' where none))``."""
        pos = np.searchsorted(self.items, raw_items)
        has = pos < len(self.items)
        has[has] = self.items[pos[has]] == raw_items[has]
        titles = [self.titles[p] if h else "" for p, h in zip(pos.tolist(), has.tolist())]
        return has, titles


def parse_titles(data: bytes, display: str, on_bad_rows: str) -> Titles:
    """Parse the bytes of a titles CSV.

    Args:
        data: File content.
        display: File name for messages.
        on_bad_rows: ``error`` raises at the first bad record; ``quarantine`` collects them.

    Returns:
        The ``Titles``.

    Raises:
        IngestError: on a bad record in ``error`` mode, or an empty file.
    """
    out = Titles(items=np.zeros(0, np.int64), titles=[], bom_stripped=int(data.startswith(BOM)))
    # Stripped before the CSV reader sees it: a BOM before a quote would make the quote literal.
    text = data[len(BOM) * out.bom_stripped:].decode("utf-8", errors="surrogateescape")
    reader = csv.reader(io.StringIO(text, newline=""))
    ids: list[int] = []
    titles: list[str] = []
    first_line: dict[int, int] = {}
    line = 1
    for record in reader:
        start, line = line, reader.line_num + 1
        reason = None
        # Compared as text: a first record with invalid UTF-8 (surrogates) must reach its reason below.
        if start == 1 and ",".join(record).strip() == TITLES_HEADER.decode():
            out.header_rows = 1
            continue
        out.rows += 1
        if len(record) != 2:
            reason = f"expected 2 fields (item,title), got {len(record)}"
        elif any(_SURROGATE.search(f) for f in record):
            reason = "invalid UTF-8"
        elif not _ID.fullmatch(record[0]):
            reason = f"item id {record[0][:40]!r} is not a non-negative decimal integer"
        elif int(record[0]) in first_line:
            reason = f"duplicate item id {int(record[0])} (first on line {first_line[int(record[0])]})"
        if reason is None:
            first_line[int(record[0])] = start
            ids.append(int(record[0]))
            titles.append(record[1])
            continue
        if on_bad_rows == "error":
            raise IngestError(f"{display}:{start}: {reason}; fix the titles file or rerun with "
                              "--on-bad-rows=quarantine")
        raw = ",".join(record).encode("utf-8", errors="surrogateescape")
        out.bad.append((start, reason, escape_raw(raw)))
    if out.rows == 0:
        raise IngestError(f"{display}: empty titles file (no records after the header)")
    order = np.argsort(np.asarray(ids, dtype=np.int64), kind="stable")
    out.items = np.asarray(ids, dtype=np.int64)[order]
    out.titles = [titles[i] for i in order.tolist()]
    return out


def read_titles(path: str, on_bad_rows: str) -> Titles:
    """Read and parse the titles CSV at ``path`` (local or URI).

    Args:
        path: ``ingest.titles``.
        on_bad_rows: ``error`` or ``quarantine``.

    Returns:
        The ``Titles``.

    Raises:
        IngestError: when the file is missing or empty, or on a bad record in ``error`` mode.
    """
    try:
        with dfs.open_input_file(path) as f:
            data = f.read()
    except FileNotFoundError:
        raise IngestError(f"missing titles file: {path}") from None
    if not data:
        raise IngestError(f"{path}: empty titles file (0 bytes)")
    return parse_titles(data, path, on_bad_rows)
