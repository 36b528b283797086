"""The ingestion pipeline: raw MicroLens interactions -> Ray Data -> webdataset shards + manifest.

Stages (no process holds the interactions; the driver holds only id arrays and counts):

1. read: ``InteractionsDatasource``, one Ray Data task per byte range, parsed and validated
   vectorised, fused with ``exchange.spill_pieces``: each block's rows are written as one piece per
   contiguous raw-user range (boundaries from a sample of the users, ``partition.user_boundaries``)
   to the exchange directory on the dataset's filesystem, not to the object store (``exchange.py``);
2. group: one task per user range (``exchange.group_pieces``) sorts its pieces by user,
   timestamp and order key and runs ``grouping.group_users``, which also finds a user's duplicate
   rows wherever they were read (``duplicates.py``, ``ingest.duplicates``); it writes the grouped
   users back to the exchange directory, because the ids need a global pass before anything can be
   written, and returns its summary;
3. ids: the summaries, merged in a tree of tasks as they arrive (``ids.MergeTree``), are the sorted
   kept users and items, which go to the object store;
4. write: ``range_writer.write_ranges`` per grouped file (``exchange.write_grouped``): a
   partition's users are a contiguous range of dense ids, so it writes the shards inside its range
   itself and hands back the users of the one or two shards it shares with its neighbours, which
   ``range_writer.write_pieces`` writes (no second exchange). Shards are cut into blocks of
   ``ingest.users_per_block`` users
   (``shards/README.md``, schema 2); items shards (blocks of ``ingest.items_per_block``), id
   maps and stats beside them;
5. reconcile every count and publish atomically (``manifest_writer``).

With ``ingest.resume`` (the default) the dataset is built in ``<output>.partial-<key>``, which an
interrupted run leaves behind, and the write stage of the same command run again reuses the user-split
shards it finished, each checked by sha256 (``resume.py``); stages 1-3 run again.

Labelled csv input (``user,item,timestamp,label``, ``sources.detect_labels``) runs the same stages:
label-1 rows are the interactions, label-0 rows the exposures, which ride along with their user to
the ``exposures`` split (``grouping``, ``shard_writer``) and are counted in the manifest's
``labels`` section; without the column nothing differs from before.

Every dataset also gets the popularity labels' counts and the item split (``item_labels``: every item's
kept interactions, or ``ingest.item_counts``'s column, read before anything else; the labelled items split
with ``ingest.item_split_seed``), reconciled with the rest.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow.compute as pc
import ray
from ray.data import DataContext

from mvrec_dist.config.ingest import IngestConfig
from mvrec_dist.config.load import config_to_dict
from mvrec_dist.data import fs as dfs
from mvrec_dist.data.ingest.array_shards import write_npy
from mvrec_dist.data.ingest.datasource import InteractionsDatasource, ReadLedger
from mvrec_dist.data.ingest.errors import IngestError, find_ingest_error
from mvrec_dist.data.ingest.exchange import (ExchangeStats, group_pieces, remove_exchange,
                                             spill_pieces, write_grouped)
from mvrec_dist.data.ingest.item_labels import CountsFile, read_counts_file, write_item_labels
from mvrec_dist.data.ingest.items import write_item_shards
from mvrec_dist.data.ingest.manifest_writer import (build_manifest, check_output_dir, fingerprint, publish,
                                                    reconcile, remove_tree, temp_dir_for)
from mvrec_dist.data.ingest.quarantine import merge_quarantine
from mvrec_dist.data.ingest.partition import sample_users, user_boundaries
from mvrec_dist.data.ingest.range_writer import collect, write_pieces, write_ranges
from mvrec_dist.data.ingest.resume import WorkDir, claim, finish, release, resume_key
from mvrec_dist.data.ingest.shard_writer import EXPOSURE_SPLIT, PLAY_MEMBERS, USER_SPLITS
from mvrec_dist.data.ingest.sources import detect_format, detect_labels, list_inputs, plan_ranges
from mvrec_dist.data.ingest.validate import LABEL_COLUMN
from mvrec_dist.data.ingest.titles import Titles, read_titles
from mvrec_dist.data.manifest import BLOCK_SIZE_KEYS

__all__ = ["IngestResult", "DatasetIdentity", "dataset_identity", "run_ingest", "group_partitions"]

_BYTES_PER_PARTITION = 128 << 20
_SAMPLE_BYTES = 1 << 20
"""Bytes sampled at the start of every read range to place the user-range boundaries."""
TIMESTAMP_UNIT = ("the input's integers, stored unchanged (MicroLens csv and the synthetic generator: Unix "
                  "milliseconds)")
"""What the manifest's ``timestamps.unit`` says."""
PLAY_UNIT = ("the input's integers, stored unchanged (FRAME's data: milliseconds; the synthetic generator: "
             "milliseconds); play ratio = min(play / duration, 1)")
"""What the manifest's ``plays.unit`` says (``plays_csv`` input)."""


@dataclass
class IngestResult:
    """What an ingestion produced."""

    output_dir: str
    manifest: dict
    seconds: float
    """Wall time of ``run_ingest``."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per stage (``read``, ``group`` and their sum ``read_group``, ``ids``, ``write``, ``items``,
    ``finish``, ``publish``)."""
    exchange: dict = field(default_factory=dict)
    """What crossed the exchange (``exchange.ExchangeStats``: rows, pieces, compressed bytes)."""
    resume: dict | None = None
    """With ``ingest.resume``: ``work_dir``, ``resumed`` (it held an interrupted run's shards), ``reused``
    and ``written`` user-split shard files (``resume.py``); None without."""


def group_partitions(cfg: IngestConfig, input_bytes: int, cluster_cpus: int) -> int:
    """Partitions of the group-by-user exchange: ``ingest.group_partitions``, or enough for the cores
    and for about 128 MiB of input per partition."""
    if cfg.group_partitions:
        return cfg.group_partitions
    return max(2 * cluster_cpus, math.ceil(input_bytes / _BYTES_PER_PARTITION), 1)


@dataclass
class DatasetIdentity:
    """What identifies the dataset an ingest config produces (before anything is read)."""

    files: list
    """The input files (``sources.list_inputs``)."""
    format: str
    """The detected input format."""
    inputs: list[dict]
    """The manifest's ``inputs`` section."""
    titles: dict | None
    """The titles file's path and size."""
    config: dict
    """The ingest config as recorded (format resolved)."""
    fingerprint: str
    """``manifest_writer.fingerprint`` of the above: equal fingerprints mean the same dataset."""
    labels: bool = False
    """The inputs carry the per-interaction click label (``sources.detect_labels``)."""
    item_counts: dict | None = None
    """The per-item counts file's path, size and column (``ingest.item_counts``), or None."""


def dataset_identity(cfg: IngestConfig) -> DatasetIdentity:
    """List the inputs of ``cfg`` and fingerprint the dataset they make (no data is read).

    Args:
        cfg: The ingest settings.

    Returns:
        The ``DatasetIdentity``; an existing dataset with the same fingerprint is this dataset.
    """
    files = list_inputs(cfg.input)
    fmt = detect_format(files, cfg.format)
    labels = detect_labels(files, fmt)
    inputs = [{"path": f.display, "bytes": f.size, "format": fmt} for f in files]
    titles_info = None
    if cfg.titles:
        tfs, tpath = dfs.resolve(cfg.titles)
        size = tfs.get_file_info(tpath).size
        titles_info = {"path": cfg.titles, "bytes": int(size) if size is not None else None}
    counts_info = None
    if cfg.item_counts:
        cfs, cpath = dfs.resolve(cfg.item_counts)
        size = cfs.get_file_info(cpath).size
        counts_info = {"path": cfg.item_counts, "bytes": int(size) if size is not None else None,
                       "column": cfg.item_count_column}
    ingest_dict = dict(config_to_dict(cfg), format=fmt)
    return DatasetIdentity(files=files, format=fmt, inputs=inputs, titles=titles_info, config=ingest_dict,
                           fingerprint=fingerprint(ingest_dict, inputs, titles_info, labels, counts_info),
                           labels=labels, item_counts=counts_info)


def run_ingest(cfg: IngestConfig, *, extra_config: dict | None = None) -> IngestResult:
    """Ingest ``cfg.input`` into a dataset at ``cfg.output_dir`` (Ray must be initialised).

    Args:
        cfg: The ingest settings.
        extra_config: Further config sections to record in the manifest beside ``ingest`` (e.g. the
            synthetic generator's settings).

    Returns:
        The ``IngestResult``.

    Raises:
        IngestError: on bad input (naming file, line and reason), a conflicting output directory
            or counts that do not reconcile; no manifest is written then.
    """
    t0 = time.perf_counter()
    ident = dataset_identity(cfg)
    files, fmt, inputs, titles_info, ingest_dict, fp = (ident.files, ident.format, ident.inputs, ident.titles,
                                                        ident.config, ident.fingerprint)
    check_output_dir(cfg.output_dir, fp, cfg.overwrite)
    work = _claim(cfg, fp, files)
    tmp = work.path if work else temp_dir_for(cfg.output_dir)
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = cfg.progress
    # An IngestError raised in a map task (grouping finds a user on two lines, say) reaches the job as
    # itself, not as Ray Data's UserCodeException, so the error names file and line. Without this it only
    # did so when an earlier stage of the same process (video content, the trunk cache) had set it.
    ctx.raise_original_map_exception = True
    try:
        parts, timings, reuse, exchange = _build(cfg, files, fmt, tmp, inputs, titles_info, ident.labels,
                                       work.key if work else None)
        if work is not None and work.resumed:
            print(f"ingest: resumed in {tmp}: reused {reuse['reused']} of {reuse['reused'] + reuse['written']} "
                  "user-split shard files an interrupted run finished (size and sha256 checked against their "
                  f"completion records), wrote {reuse['written']}", flush=True)
        manifest = build_manifest(fp=fp, config={"ingest": ingest_dict, **(extra_config or {})}, inputs=inputs,
                                  titles=titles_info, **parts)
        t = time.perf_counter()
        if work is not None:
            finish(work)
        publish(tmp, cfg.output_dir, manifest, overwrite=cfg.overwrite)
        timings["publish"] = time.perf_counter() - t
    except BaseException as exc:
        original = find_ingest_error(exc)
        # An interruption (Ctrl-C, a lost node, a full disk) leaves shards a rerun can reuse; bad data does
        # not: the rerun must change the inputs or settings, which names another work directory.
        if work is not None and original is None:
            print(f"ingest stopped ({type(exc).__name__}): kept {tmp} for a rerun of the same command to reuse "
                  "its finished shards (ingest.resume); delete it to start over", file=sys.stderr, flush=True)
        else:
            remove_tree(tmp)
        if work is not None:
            release(work)
        if original is not None and original is not exc:
            raise IngestError(str(original)) from None
        raise
    if work is not None:
        release(work, published=cfg.output_dir)
        reuse = {"work_dir": work.path, "resumed": work.resumed, **reuse}
    return IngestResult(output_dir=cfg.output_dir, manifest=manifest, seconds=time.perf_counter() - t0,
                        timings=timings, resume=reuse if work is not None else None, exchange=exchange)


def _claim(cfg: IngestConfig, fp: str, files: list) -> WorkDir | None:
    """The resumable work directory of this run (``resume.claim``), or None without ``ingest.resume`` or
    when another live run of the same inputs and settings holds it (this run then starts from zero)."""
    if not cfg.resume:
        return None
    key = resume_key(fp, files)
    work = claim(cfg.output_dir, key)
    if work is None:
        print(f"ingest: another run of the same inputs and settings is writing {cfg.output_dir}.partial-{key[:16]}; "
              "this one starts from zero in a temporary directory", file=sys.stderr, flush=True)
    return work


def _build(cfg: IngestConfig, files: list, fmt: str, tmp: str, inputs: list[dict],
           titles_info: dict | None, labels: bool = False, key: str | None = None) -> tuple[dict, dict, dict, dict]:
    """Run every stage into ``tmp``; return the manifest sections, the stage timings, the reuse counts
    (``reused``/``written`` user-split shard files; ``key``: the ``resume_key`` or None) and the exchange's
    figures. ``inputs`` and ``titles_info`` get what reading found: stripped BOMs, titles rows."""
    timings: dict[str, float] = {}
    t = time.perf_counter()
    titles: Titles | None = read_titles(cfg.titles, cfg.on_bad_rows) if cfg.titles else None
    # Read (and checked) before the interactions: a bad counts file fails before the shuffle.
    counts_file: CountsFile | None = read_counts_file(cfg.item_counts, cfg.item_count_column) \
        if cfg.item_counts else None
    if titles_info is not None:
        titles_info.update(rows=titles.rows, header_rows=titles.header_rows, quarantined_rows=len(titles.bad),
                           bom_stripped=titles.bom_stripped)
    with_ts = fmt in ("pairs_csv", "plays_csv")
    plays = fmt == "plays_csv"
    cpus = max(int(ray.cluster_resources().get("CPU", 1)), 1)
    partitions = group_partitions(cfg, sum(f.size for f in files), cpus)
    parts_dir = f"{tmp}/_quarantine_parts"
    exchange_dir = f"{tmp}/_exchange"
    remove_exchange(exchange_dir)  # an interrupted run's pieces: the read stage writes them again
    partitions, exchange, reports = _read(cfg, files, fmt, partitions, parts_dir, exchange_dir, labels)
    for entry, f in zip(inputs, files):
        entry["bom_stripped"] = sum(r.bom for r in reports if r.file_index == f.index)
    timings["read"] = time.perf_counter() - t

    t = time.perf_counter()
    summary = group_pieces(exchange_dir, partitions, exchange, in_flight=2 * cpus, min_seq_len=cfg.min_seq_len,
                           with_ts=fmt != "pairs_tsv", duplicates=cfg.duplicates, files=files, labels=labels,
                           plays=plays)
    timings["group"] = time.perf_counter() - t
    timings["read_group"] = timings["read"] + timings["group"]

    t = time.perf_counter()
    if len(summary.users) == 0:
        raise IngestError(f"no user has at least ingest.min_seq_len={cfg.min_seq_len} interactions; "
                          "nothing to write")
    maps = [ray.put(summary.users), ray.put(summary.items)]
    timings["ids"] = time.perf_counter() - t

    t = time.perf_counter()
    S = cfg.shard_max_samples
    layout = {"root": tmp, "shard_size": S, "block_size": cfg.users_per_block, "num_users": len(summary.users),
              "with_ts": with_ts, "labels": labels, "plays": plays, "resume_key": key}
    results = write_grouped(exchange_dir, partitions, write_ranges, in_flight=2 * cpus, maps=maps, **layout)
    user_entries, pieces = collect(results)
    user_entries += write_pieces(pieces, **layout)
    remove_exchange(exchange_dir)
    del results
    timings["write"] = time.perf_counter() - t
    reused = sum(1 for e in user_entries if e.get("reused"))
    reuse = {"reused": reused, "written": len(user_entries) - reused}

    t = time.perf_counter()
    item_entries, without_title = write_item_shards(tmp, summary.items, summary.train_counts, titles, S,
                                                    cfg.items_per_block, tasks=cpus,
                                                    interactions=summary.interaction_counts)
    files_section = {
        "maps/items.npy": write_npy(f"{tmp}/maps/items.npy", np.concatenate([[-1], summary.items])),
        "maps/users.npy": write_npy(f"{tmp}/maps/users.npy", np.concatenate([[-1], summary.users])),
        "stats/item_train_counts.npy": write_npy(f"{tmp}/stats/item_train_counts.npy",
                                                 np.concatenate([[0], summary.train_counts])),
    }
    label_files, stats, item_labels, label_checks = write_item_labels(
        tmp, cfg, summary.items, summary.interaction_counts, summary.counts["kept_interactions"], counts_file)
    files_section.update(label_files)
    timings["items"] = time.perf_counter() - t

    t = time.perf_counter()
    quarantine = _quarantine(cfg, titles, reports, files, parts_dir, tmp, files_section)
    splits = _splits(user_entries, item_entries, cfg, labels)
    counts = _counts(reports, summary, user_entries, without_title)
    label_section = _labels(reports, summary) if labels else None
    written = sum(e["interactions"] for e in user_entries if e["split"] == EXPOSURE_SPLIT)
    reconciliation = reconcile(counts, splits, summary.counts["train_interactions"], S, cfg.duplicates,
                               labels={**label_section, "written": written} if labels else None,
                               extra_checks=label_checks)
    timings["finish"] = time.perf_counter() - t
    time_splits = list(USER_SPLITS) + ([EXPOSURE_SPLIT] if labels else [])
    parts = {"counts": counts, "reconciliation": reconciliation, "splits": splits, "files": files_section,
             "quarantine": quarantine, "labels": label_section, "stats": stats, "item_labels": item_labels,
             "timestamps": {"splits": time_splits, "unit": TIMESTAMP_UNIT} if with_ts else None,
             "plays": {"splits": list(USER_SPLITS), "members": list(PLAY_MEMBERS), "unit": PLAY_UNIT} if plays else None}
    return parts, timings, reuse, dataclasses.asdict(exchange)


def _read(cfg: IngestConfig, files: list, fmt: str, partitions: int, parts_dir: str, exchange_dir: str,
          labels: bool = False) -> tuple[int, ExchangeStats, list]:
    """Stage 1: parse every read range and write its pieces (``exchange.spill_pieces``); return the number
    of user-range partitions, what the pieces hold, and every read range's report."""
    ranges = plan_ranges(files, cfg.read_block_bytes)
    boundaries = user_boundaries(sample_users(ranges, fmt, _SAMPLE_BYTES, labels), partitions)
    ledger = ReadLedger.remote()
    source = InteractionsDatasource(ranges, fmt, on_bad_rows=cfg.on_bad_rows, ledger=ledger,
                                    quarantine_dir=parts_dir, labels=labels)
    # Fused into the read tasks by Ray Data: a parsed block goes to its pieces without leaving its task.
    # One block per read range: Ray Data would otherwise split small inputs' read output into more
    # blocks than tasks, and a split read is not fused with the map after it.
    spilled = (ray.data.read_datasource(source, override_num_blocks=len(ranges))
               .map_batches(spill_pieces, batch_size=None, batch_format="pyarrow", zero_copy_batch=True,
                            fn_kwargs={"boundaries": boundaries, "exchange_dir": exchange_dir})
               .to_arrow_refs())
    pieces = [t for t in ray.get(spilled) if t.num_rows]
    stats = ExchangeStats(piece_rows=sum(int(pc.sum(t.column("rows")).as_py()) for t in pieces),
                          piece_bytes=sum(int(pc.sum(t.column("bytes")).as_py()) for t in pieces),
                          pieces=sum(t.num_rows for t in pieces))
    reports = ray.get(ledger.reports.remote())
    if len(reports) != len(ranges):
        raise IngestError(f"{len(ranges) - len(reports)} of {len(ranges)} read ranges did not report; "
                          "refusing to write an incomplete dataset")
    for f in files:
        mine = [r for r in reports if r.file_index == f.index]
        if sum(r.rows + r.bad_rows for r in mine) == 0:
            after = " after the header" if any(r.header_rows for r in mine) else ""
            raise IngestError(f"{f.display}: empty input (no rows{after})")
    parsed = sum(r.interactions + r.exposures for r in reports)
    if stats.piece_rows != parsed:
        raise IngestError(f"the exchange's pieces hold {stats.piece_rows} rows but the read tasks parsed {parsed}; "
                          "refusing to write an incomplete dataset")
    return len(boundaries) + 1, stats, reports


def _quarantine(cfg: IngestConfig, titles: Titles | None, reports: list, files: list, parts_dir: str,
                tmp: str, files_section: dict) -> dict:
    """Write ``quarantine.tsv`` (quarantine mode) and return the manifest's ``quarantine`` section."""
    if cfg.on_bad_rows != "quarantine":
        return {"path": None, "rows": 0}
    quarantined = sum(r.bad_rows for r in reports)
    extra = [(cfg.titles, line, reason, raw) for line, reason, raw in titles.bad] if titles else []
    written, info = merge_quarantine(parts_dir, reports, files, extra, f"{tmp}/quarantine.tsv")
    if written != quarantined:
        raise IngestError(f"read tasks reported {quarantined} bad rows but quarantined {written}")
    files_section["quarantine.tsv"] = info
    return {"path": "quarantine.tsv", "rows": written + len(extra), "interaction_rows": written,
            "title_rows": len(extra)}


def _counts(reports: list, summary, user_entries: list[dict], without_title: int) -> dict:
    """The manifest ``counts``: read-side totals from the ledger, the rest from the id pass and writers."""
    c = summary.counts
    return {
        "input_rows": sum(r.lines - r.header_rows for r in reports),
        "header_rows": sum(r.header_rows for r in reports),
        "bom_stripped": sum(r.bom for r in reports),
        "kept_rows": c["kept_rows"], "filtered_rows": c["filtered_rows"],
        "quarantined_rows": sum(r.bad_rows for r in reports),
        "duplicate_users": c["duplicate_users"], "duplicate_rows": c["duplicate_rows"],
        "dropped_rows": c["dropped_rows"],
        "input_interactions": sum(r.interactions for r in reports),
        "kept_interactions": c["kept_interactions"], "filtered_interactions": c["filtered_interactions"],
        "dropped_interactions": c["dropped_interactions"],
        "users": len(summary.users), "items": len(summary.items), "filtered_users": c["filtered_users"],
        "items_without_title": without_title,
        "interactions": {s: sum(e["interactions"] for e in user_entries if e["split"] == s) for s in USER_SPLITS},
        "valid_rows": sum(r.rows for r in reports),
    }


def _labels(reports: list, summary) -> dict:
    """The manifest ``labels`` section: what the label column held and where the exposures went."""
    c = summary.counts
    return {"column": LABEL_COLUMN, "values": {"1": "clicked: an interaction", "0": "shown, not clicked: an exposure"},
            "clicked_rows": sum(r.interactions for r in reports), "exposure_rows": sum(r.exposures for r in reports),
            "exposures": {"kept": c["kept_exposures"], "filtered": c["filtered_exposures"],
                          "dropped": c["dropped_exposures"], "users": c["exposure_users"]}}


def _splits(user_entries: list[dict], item_entries: list[dict], cfg: IngestConfig, labels: bool = False) -> dict:
    """The manifest ``splits`` section: per split its rows, block size and shards in index order."""
    out = {}
    for split in USER_SPLITS + ((EXPOSURE_SPLIT,) if labels else ()) + ("items",):
        entries = sorted((e for e in user_entries + item_entries if e["split"] == split), key=lambda e: e["index"])
        shards = [{k: e[k] for k in ("path", "samples", "blocks", "bytes", "sha256")} for e in entries]
        block_key = BLOCK_SIZE_KEYS[split]
        out[split] = {"samples": sum(s["samples"] for s in shards), block_key: getattr(cfg, block_key),
                      "shards": shards}
    return out
