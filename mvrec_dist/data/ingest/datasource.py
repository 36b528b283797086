"""The Ray Data source of raw interactions: one read task per byte range, parsed and validated.

Read tasks return interaction tables (``parse.interaction_schema``) to the pipeline and report
what they saw (lines, header lines, valid rows, interactions, bad lines, a stripped BOM) to a ``ReadLedger``
actor, keyed by range, so a retried task overwrites rather than double counts. The driver sums
the ledger afterwards: those counts are measured independently of the grouping stage, which is
what makes the end-of-job reconciliation a real check.

Bad lines: with ``on_bad_rows=error`` the task raises ``IngestError("<file>:<line>: <reason>")``
(the line number costs one newline count of the file before the block, on this error path only).
With ``quarantine`` the task writes its bad lines, with block-local line indices, to a part file
next to the output; ``quarantine.merge_quarantine`` resolves global line numbers from the
ledger's per-block line counts once all blocks are read.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterable

import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from mvrec_dist.data import fs as dfs
from mvrec_dist.data.ingest.errors import IngestError
from mvrec_dist.data.ingest.parse import interaction_schema, parse_block
from mvrec_dist.data.ingest.sources import ByteRange, count_newlines, read_range
from mvrec_dist.data.ingest.validate import escape_raw

__all__ = ["BlockReport", "ReadLedger", "InteractionsDatasource", "quarantine_part_path"]

# In-memory bytes per input byte, for Ray Data's planning only.
_EXPANSION = {"pairs_csv": 1.3, "plays_csv": 1.6, "pairs_tsv": 7.5}


@dataclass(frozen=True)
class BlockReport:
    """What one read task saw in its range."""

    file_index: int
    start: int
    """Byte offset of the range (the ledger key, with ``file_index``)."""
    offset: int
    """Byte offset of the first line the range owns."""
    lines: int
    header_rows: int
    rows: int
    """Valid rows."""
    interactions: int
    """Interactions among them (every valid row's items; with labels, the label-1 rows)."""
    bad_rows: int
    bom: int = 0
    """1 when the range starts its file with a UTF-8 byte-order mark (stripped)."""
    exposures: int = 0
    """Valid label-0 rows (shown, not clicked); 0 without the label column."""


@ray.remote(num_cpus=0)
class ReadLedger:
    """Collects one ``BlockReport`` per read range (idempotent under task retries)."""

    def __init__(self) -> None:
        self._reports: dict[tuple[int, int], BlockReport] = {}

    def record(self, report: BlockReport) -> None:
        """Store ``report``, replacing an earlier attempt of the same range."""
        self._reports[(report.file_index, report.start)] = report

    def reports(self) -> list[BlockReport]:
        """All reports in (file, offset) order."""
        return [self._reports[k] for k in sorted(self._reports)]


def quarantine_part_path(parts_dir: str, file_index: int, start: int) -> str:
    """Where a read task writes the bad lines of its range."""
    return f"{parts_dir.rstrip('/')}/{file_index:07d}-{start:013d}.tsv"


def _read(r: ByteRange, fmt: str, policy: str, ledger: "ray.actor.ActorHandle",
          parts_dir: str | None, labels: bool = False) -> Iterable[pa.Table]:
    offset, data = read_range(r)
    at_eof = offset + len(data) >= r.file.size
    parsed = parse_block(data, fmt, file_index=r.file.index, offset=offset, at_eof=at_eof, labels=labels)
    if parsed.bad and policy == "error":
        bad = parsed.bad[0]
        line = count_newlines(r.file, offset) + bad.index + 1
        more = f" (and {len(parsed.bad) - 1} more bad lines in this block)" if len(parsed.bad) > 1 else ""
        raise IngestError(f"{r.file.display}:{line}: {bad.reason}{more}; "
                          "fix the input or rerun with --on-bad-rows=quarantine")
    if parsed.bad:
        text = "".join(f"{b.index}\t{b.reason}\t{escape_raw(b.raw)}\n" for b in parsed.bad)
        with dfs.open_output_stream(quarantine_part_path(parts_dir, r.file.index, r.start)) as out:
            out.write(text.encode("utf-8"))
    exposures = 0
    if labels and parsed.table.num_rows:
        exposures = int(parsed.table.num_rows - pc.sum(parsed.table.column("label")).as_py())
    ray.get(ledger.record.remote(BlockReport(
        file_index=r.file.index, start=r.start, offset=offset, lines=parsed.lines,
        header_rows=parsed.header_rows, rows=parsed.rows, interactions=parsed.table.num_rows - exposures,
        bad_rows=len(parsed.bad), bom=parsed.bom, exposures=exposures)))
    yield parsed.table


class InteractionsDatasource(Datasource):
    """Raw MicroLens interactions (``pairs_csv`` or ``pairs_tsv``) as a Ray Data source."""

    def __init__(self, ranges: list[ByteRange], fmt: str, *, on_bad_rows: str,
                 ledger: "ray.actor.ActorHandle", quarantine_dir: str | None, labels: bool = False) -> None:
        """Create the source.

        Args:
            ranges: The byte ranges, one read task each (``sources.plan_ranges``).
            fmt: ``pairs_csv`` or ``pairs_tsv``.
            on_bad_rows: ``error`` or ``quarantine``.
            ledger: A ``ReadLedger`` actor receiving each range's report.
            quarantine_dir: Directory (local or URI) for quarantine part files; required with
                ``quarantine``.
            labels: ``pairs_csv`` rows carry the label column (``sources.detect_labels``).
        """
        super().__init__()
        if on_bad_rows == "quarantine" and not quarantine_dir:
            raise ValueError("quarantine mode needs a quarantine_dir")
        self._ranges = ranges
        self._fmt = fmt
        self._policy = on_bad_rows
        self._ledger = ledger
        self._parts_dir = quarantine_dir
        self._labels = labels

    def estimate_inmemory_data_size(self) -> int:
        """Approximate bytes of the parsed tables."""
        return int(sum(r.end - r.start for r in self._ranges) * _EXPANSION[self._fmt])

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: object | None = None) -> list[ReadTask]:
        """One task per byte range; ``parallelism`` is ignored (ranges come from the config)."""
        schema = interaction_schema(self._fmt, self._labels)
        tasks = []
        for r in self._ranges:
            meta = BlockMetadata(num_rows=None, size_bytes=int((r.end - r.start) * _EXPANSION[self._fmt]),
                                 exec_stats=None, input_files=(r.file.display,))
            read_fn = functools.partial(_read, r, self._fmt, self._policy, self._ledger, self._parts_dir,
                                        self._labels)
            tasks.append(ReadTask(read_fn, meta, schema=schema))
        return tasks

    def get_name(self) -> str:
        """Name shown in progress bars."""
        return f"ReadMicroLens[{self._fmt}]"
