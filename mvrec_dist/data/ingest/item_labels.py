"""Ingestion of the popularity labels and the item split (MMRA): ``stats/item_*.npy`` and ``item_labels``.

The label count of an item is its kept interactions over every kept user's full sequence (``ids.Summary
.interaction_counts``; MicroLens interactions are comments, MMRA's label is ``log2`` of the comments),
or, with ``ingest.item_counts``, one column of a per-item counts CSV. The counts file is read and checked
on the driver before any interaction is (a bad file fails in a second, not after the shuffle), then
mapped onto the dense ids once they are known. Items with a count of 0 have no label; the labelled
ones are split with ``data.item_split.item_split`` and saved as split codes.

What this writes (``shards/README.md``): ``stats/item_interactions.npy`` (always), the label counts
``stats/item_label_counts.npy`` (counts-file datasets only; otherwise the label counts are the
interaction counts), ``stats/item_split.npy``, and the manifest's ``item_labels`` section, whose
identities are checked with the other reconciliation checks before publishing.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from dataclasses import dataclass

import numpy as np

from mvrec_dist.config.ingest import IngestConfig
from mvrec_dist.data import fs as dfs
from mvrec_dist.data.ingest.errors import IngestError
from mvrec_dist.data.ingest.array_shards import write_npy
from mvrec_dist.data.item_split import SECTION, item_split, split_codes, split_sha256

__all__ = ["CountsFile", "read_counts_file", "write_item_labels", "INTERACTIONS_FILE", "LABEL_COUNTS_FILE",
           "SPLIT_FILE", "RULE_INTERACTIONS", "RULE_FILE", "LISTED"]

INTERACTIONS_FILE = "stats/item_interactions.npy"
LABEL_COUNTS_FILE = "stats/item_label_counts.npy"
SPLIT_FILE = "stats/item_split.npy"
RULE_INTERACTIONS = ("label = log2(count); count = kept interactions of the item over all kept users' sequences "
                     "(train + valid + test targets; exposures excluded); items with count 0 have no label")
RULE_FILE = "label = log2(count); count = the item's value in column '{column}' of the counts file; items with " \
            "count 0 have no label"
LISTED = 10
"""Raw ids listed in the manifest (ids of the counts file not in the dataset) and in error messages."""
_UINT = re.compile(r"[0-9]+")
_BOM = "\ufeff"


@dataclass
class CountsFile:
    """A parsed per-item counts file (``ingest.item_counts``)."""

    path: str
    column: str
    bytes: int
    sha256: str
    rows: int
    """Data rows (lines after the header, blank lines not counted)."""
    bom_stripped: int
    raw_items: np.ndarray
    """Raw item ids in file order, int64 [rows]."""
    counts: np.ndarray
    """The column's counts in file order, int64 [rows]."""


def _uint(text: str) -> int | None:
    """``text`` as a non-negative decimal integer (surrounding blanks allowed), else None."""
    text = text.strip()
    return int(text) if _UINT.fullmatch(text) and len(text) <= 18 else None


def read_counts_file(path: str, column: str) -> CountsFile:
    """Read and check a per-item counts CSV (header ``item,<col1>,...``, one row per raw item id).

    Args:
        path: Local path or pyarrow/fsspec URI.
        column: The count column (``ingest.item_count_column``).

    Returns:
        The ``CountsFile``.

    Raises:
        IngestError: naming the file and line: a missing file, no ``item`` first column or no ``column``
            in the header, a row with another number of fields, an item id or a count that is not a
            non-negative integer, an item id on two lines (naming both).
    """
    try:
        with dfs.open_input_file(path) as f:
            data = f.read()
    except FileNotFoundError:
        raise IngestError(f"{path}: ingest.item_counts file not found") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise IngestError(f"{path}:{line}: not UTF-8 text ({exc.reason})") from None
    bom = int(text.startswith(_BOM))
    reader = csv.reader(io.StringIO(text[bom:], newline=""))
    header = next(reader, None)
    if header is None or not header or header[0].strip() != "item":
        raise IngestError(f"{path}:1: the header must be 'item,<count columns>' (e.g. item,likes,views,comments), "
                          f"got {','.join(header or [])!r}")
    names = [h.strip() for h in header]
    if column not in names[1:]:
        raise IngestError(f"{path}:1: no column '{column}' in the header (columns: {', '.join(names)}); set "
                          "ingest.item_count_column to one of them")
    col = names.index(column)
    raw, counts, lines = [], [], []
    for fields in reader:
        line = reader.line_num
        if not fields or (len(fields) == 1 and not fields[0].strip()):
            continue  # a blank line (typically the last) is no row
        if len(fields) != len(names):
            raise IngestError(f"{path}:{line}: {len(fields)} fields, the header has {len(names)}")
        item, count = _uint(fields[0]), _uint(fields[col])
        if item is None:
            raise IngestError(f"{path}:{line}: item '{fields[0]}' is not a raw item id (a non-negative integer)")
        if count is None:
            raise IngestError(f"{path}:{line}: {column} '{fields[col]}' is not a non-negative integer")
        raw.append(item)
        counts.append(count)
        lines.append(line)
    raw_items, line_of = np.asarray(raw, dtype=np.int64), np.asarray(lines, dtype=np.int64)
    order = np.argsort(raw_items, kind="stable")
    again = np.flatnonzero(raw_items[order][1:] == raw_items[order][:-1])
    if len(again):
        # Report the repeat that comes first in the file, with the line the id was first on.
        later = order[again + 1]
        k = int(np.argmin(line_of[later]))
        first = int(line_of[raw_items == raw_items[later[k]]].min())
        raise IngestError(f"{path}:{int(line_of[later[k]])}: item {int(raw_items[later[k]])} again (first on line "
                          f"{first}); every item needs exactly one count")
    return CountsFile(path=path, column=column, bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
                      rows=len(raw), bom_stripped=bom, raw_items=raw_items,
                      counts=np.asarray(counts, dtype=np.int64))


def _file_counts(items: np.ndarray, cf: CountsFile) -> tuple[np.ndarray, dict]:
    """The file's counts of the dataset's items (sorted raw ids, int64 [N]) and the manifest's ``file`` entry.

    Raises:
        IngestError: when items of the dataset are missing from the file.
    """
    order = np.argsort(cf.raw_items, kind="stable")
    sorted_raw = cf.raw_items[order]
    pos = np.minimum(np.searchsorted(sorted_raw, items), max(len(sorted_raw) - 1, 0))
    found = (sorted_raw[pos] == items) if len(sorted_raw) else np.zeros(len(items), dtype=bool)
    if not found.all():
        missing = items[~found]
        raise IngestError(f"{cf.path}: {len(missing)} of the dataset's {len(items)} items are missing from the "
                          f"counts file (raw item ids {', '.join(map(str, missing[:LISTED].tolist()))}"
                          f"{', ...' if len(missing) > LISTED else ''}); every item needs a count in column "
                          f"'{cf.column}'")
    in_dataset = np.zeros(len(cf.raw_items), dtype=bool)
    in_dataset[order[pos]] = True
    extra = cf.raw_items[~in_dataset]  # in file order
    entry = {"path": cf.path, "column": cf.column, "bytes": cf.bytes, "sha256": cf.sha256, "rows": cf.rows,
             "bom_stripped": cf.bom_stripped, "not_in_dataset": int(len(extra)),
             "not_in_dataset_ids": extra[:LISTED].tolist(), "missing_items": 0}
    return cf.counts[order[pos]], entry


def write_item_labels(root: str, cfg: IngestConfig, items: np.ndarray, interaction_counts: np.ndarray,
                      kept_interactions: int, counts_file: CountsFile | None) -> tuple[dict, dict, dict, dict]:
    """Write the label counts and the item split into ``root``; return what the manifest says about them.

    Args:
        root: The dataset directory being written.
        cfg: The ingest settings (``item_split_seed``, ``item_valid_fraction``, ``item_test_fraction``).
        items: Sorted raw item ids of the dataset (dense id - 1 -> raw), int64 [N].
        interaction_counts: Kept interactions of each item over the full sequences, int64 [N].
        kept_interactions: ``counts.kept_interactions`` of the dataset (reconciled against the counts).
        counts_file: The parsed ``ingest.item_counts``, or None (the labels count interactions).

    Returns:
        ``(files, stats, section, checks)``: the ``files`` entries written (path -> bytes, sha256), the
        ``stats`` entries, the ``item_labels`` section and the reconciliation identities (name -> held).

    Raises:
        IngestError: when items of the dataset are missing from the counts file.
    """
    n = len(items)
    interactions = np.concatenate([[0], interaction_counts]).astype(np.int64)
    files = {INTERACTIONS_FILE: write_npy(f"{root}/{INTERACTIONS_FILE}", interactions)}
    stats = {"item_interactions": INTERACTIONS_FILE, "item_split": SPLIT_FILE}
    if counts_file is None:
        label_counts, counts_rel = interactions, INTERACTIONS_FILE
        section = {"source": "interactions", "rule": RULE_INTERACTIONS, "counts": counts_rel}
    else:
        from_file, entry = _file_counts(items, counts_file)
        label_counts, counts_rel = np.concatenate([[0], from_file]).astype(np.int64), LABEL_COUNTS_FILE
        files[counts_rel] = write_npy(f"{root}/{counts_rel}", label_counts)
        stats["item_label_counts"] = counts_rel
        section = {"source": "file", "rule": RULE_FILE.format(column=counts_file.column), "counts": counts_rel,
                   "file": entry}
    labelled = np.flatnonzero(label_counts[1:] > 0) + 1
    split = item_split(n, valid_fraction=cfg.item_valid_fraction, test_fraction=cfg.item_test_fraction,
                       seed=cfg.item_split_seed, items=labelled)
    codes = split_codes(n, split)
    files[SPLIT_FILE] = write_npy(f"{root}/{SPLIT_FILE}", codes)
    section.update({
        "interactions": INTERACTIONS_FILE, "labelled_items": int(len(labelled)),
        "unlabelled_items": int(n - len(labelled)),
        "split": {"file": SPLIT_FILE, "function": "mvrec_dist.data.item_split.item_split",
                  "seed": cfg.item_split_seed, "valid_fraction": cfg.item_valid_fraction,
                  "test_fraction": cfg.item_test_fraction,
                  **{name: int(len(split[name])) for name in ("train", "valid", "test")},
                  "sha256": split_sha256(split)},
    })
    s = section["split"]
    checks = {
        f"{SECTION}: labelled_items + unlabelled_items = items":
            section["labelled_items"] + section["unlabelled_items"] == n,
        f"{SECTION}: sum of item interactions = kept_interactions": int(interactions.sum()) == kept_interactions,
        f"{SECTION}: split train + valid + test = labelled_items":
            s["train"] + s["valid"] + s["test"] == section["labelled_items"],
        f"{SECTION}: split holds exactly the labelled items": bool(np.array_equal(codes >= 0, label_counts > 0)),
    }
    if counts_file is not None:
        e = section["file"]
        checks[f"{SECTION}: counts file rows = items + ids not in the dataset"] = \
            e["rows"] == n - e["missing_items"] + e["not_in_dataset"]
    return files, stats, section, checks
