"""``quarantine.tsv``: bad rows with their file, global line number, reason and raw text.

Read tasks write their bad lines with block-local line indices (a task does not know how many
lines precede its block); once every block has reported its line count to the ledger, the global
line number of a block's first line is the sum over the earlier blocks of its file, and the part
files are merged into one sorted ``quarantine.tsv``.
"""

from __future__ import annotations

import pyarrow.fs as pafs

from mvrec_dist.data import fs as dfs
from mvrec_dist.data.ingest.datasource import BlockReport
from mvrec_dist.data.ingest.sources import InputFile
from mvrec_dist.data.ingest.tar_writer import write_bytes

__all__ = ["QUARANTINE_HEADER", "first_lines", "merge_quarantine"]

QUARANTINE_HEADER = "file\tline\treason\traw\n"


def first_lines(reports: list[BlockReport]) -> dict[tuple[int, int], int]:
    """Global (1-based) line number of the first line of each block, keyed by (file, range start)."""
    out, running = {}, {}
    for r in sorted(reports, key=lambda r: (r.file_index, r.start)):
        line = running.get(r.file_index, 0)
        out[(r.file_index, r.start)] = line + 1
        running[r.file_index] = line + r.lines
    return out


def merge_quarantine(parts_dir: str, reports: list[BlockReport], files: list[InputFile],
                     extra: list[tuple[str, int, str, str]], out_path: str) -> tuple[int, dict]:
    """Merge read tasks' part files (and ``extra`` rows) into ``out_path``.

    Args:
        parts_dir: Directory of the part files (``datasource.quarantine_part_path``).
        reports: Every block's ``BlockReport``.
        files: The inputs (for their names).
        extra: Further rows ``(file, line, reason, raw)``, e.g. bad titles records.
        out_path: Where ``quarantine.tsv`` goes.

    Returns:
        ``(rows from the part files, {"bytes", "sha256"})``; ``extra`` rows come on top.
    """
    starts = first_lines(reports)
    filesystem, inner = dfs.resolve(parts_dir)
    rows: list[tuple[int, int, str, str, str]] = []
    if filesystem.get_file_info(inner).type == pafs.FileType.Directory:
        for info in filesystem.get_file_info(pafs.FileSelector(inner)):
            name = info.path.rsplit("/", 1)[-1].removesuffix(".tsv")
            file_index, start = (int(x) for x in name.split("-"))
            first = starts[(file_index, start)]
            with filesystem.open_input_file(info.path) as f:
                text = f.read().decode("utf-8")
            for record in text.splitlines():
                index, reason, raw = record.split("\t", 2)
                rows.append((file_index, first + int(index), files[file_index].display, reason, raw))
        filesystem.delete_dir(inner)
    rows.sort()
    body = [QUARANTINE_HEADER] + [f"{d}\t{line}\t{reason}\t{raw}\n" for _, line, d, reason, raw in rows]
    body += [f"{d}\t{line}\t{reason}\t{raw}\n" for d, line, reason, raw in extra]
    return len(rows), write_bytes(out_path, "".join(body).encode("utf-8"))
