"""The write side of ``manifest.json``: reconciliation, the output-directory contract, atomic publish.

Everything is written into ``<output>.tmp-<random>/`` first (``<output>.partial-<key>/`` with
``ingest.resume``: ``resume.py``). Only when every count reconciles is ``manifest.json`` written and
the directory moved into place (one ``rename`` on a local disk; on object stores the files are copied
first and the manifest is written last), so a dataset directory with a manifest is always complete,
and an interrupted job leaves none (only, with ``ingest.resume``, its work directory for a rerun).

An output directory that already holds a dataset is replaced only when it is the *same* dataset
(same fingerprint: content-relevant config and input files) or ``ingest.overwrite`` is set.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import uuid
from typing import Callable

import pyarrow.fs as pafs

from mvrec_dist.data import fs as dfs
from mvrec_dist.data.ingest.errors import IngestError
from mvrec_dist.data.manifest import BLOCK_SIZE_KEYS, MANIFEST_NAME, SCHEMA_VERSION

__all__ = ["fingerprint", "check_output_dir", "reconcile", "build_manifest", "temp_dir_for", "publish",
           "remove_tree", "replace_manifest", "CONTENT_KEYS", "ITEM_SPLIT_KEYS"]

CONTENT_KEYS = ("format", "min_seq_len", "shard_max_samples", "users_per_block", "items_per_block", "on_bad_rows")
"""Ingest settings that change the written data (read range sizes, partitions and paths do not)."""
ITEM_SPLIT_KEYS = ("item_split_seed", "item_valid_fraction", "item_test_fraction")
"""Settings of the saved item split: in the fingerprint only when not at their defaults (see ``fingerprint``)."""


def fingerprint(ingest_config: dict, inputs: list[dict], titles: dict | None, labels: bool = False,
                item_counts: dict | None = None) -> str:
    """Identity of a dataset: the content-relevant config, the input files (path, size), whether they
    carry the label column and the per-item counts file (path, size; ``ingest.item_counts``)."""
    from mvrec_dist.config.ingest import IngestConfig

    config = {k: ingest_config[k] for k in CONTENT_KEYS}
    # The item split's settings and the counts file enter only when not at their defaults, so every
    # dataset ingested with defaults keeps the fingerprint it had before they existed (cached feature
    # stores are keyed by it).
    defaults = IngestConfig.__dataclass_fields__
    for key in ITEM_SPLIT_KEYS:
        if key in ingest_config and ingest_config[key] != defaults[key].default:
            config[key] = ingest_config[key]
    # Of ingest.duplicates only 'drop' changes the data: 'keep' and 'error' write the same bytes
    # whenever 'error' lets the job finish, as did every ingestion before the setting existed, so
    # those datasets keep their fingerprint.
    if ingest_config.get("duplicates") == "drop":
        config["duplicates"] = "drop"
    ident = {"config": config,
             "inputs": [{"path": i["path"], "bytes": i["bytes"]} for i in inputs],
             "titles": titles and {"path": titles["path"], "bytes": titles["bytes"]}}
    if labels:  # only then, so every unlabelled dataset keeps its fingerprint
        ident["labels"] = True
    if item_counts is not None:
        ident["item_counts"] = {"path": item_counts["path"], "bytes": item_counts["bytes"],
                                "column": item_counts["column"]}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def _existing_manifest(output_dir: str) -> tuple[str, dict | None]:
    """``("absent" | "empty" | "dataset" | "other", manifest or None)`` for ``output_dir``."""
    filesystem, path = dfs.resolve(output_dir)
    info = filesystem.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return "absent", None
    if info.type != pafs.FileType.Directory:
        return "other", None
    if not filesystem.get_file_info(pafs.FileSelector(path, recursive=False)):
        return "empty", None
    try:
        with filesystem.open_input_file(f"{path}/{MANIFEST_NAME}") as f:
            return "dataset", json.loads(f.read().decode("utf-8"))
    except (FileNotFoundError, OSError, ValueError):
        return "other", None


def check_output_dir(output_dir: str, fp: str, overwrite: bool) -> None:
    """Refuse to replace an output directory holding something other than this dataset.

    Args:
        output_dir: ``ingest.output_dir``.
        fp: This run's ``fingerprint``.
        overwrite: ``ingest.overwrite``.

    Raises:
        IngestError: when the directory holds a different dataset or unrelated files and
            ``overwrite`` is not set.
    """
    state, manifest = _existing_manifest(output_dir)
    if overwrite or state in ("absent", "empty"):
        return
    if state == "dataset" and manifest.get("fingerprint") == fp:
        return
    what = ("a different dataset (its manifest has another config or other inputs)" if state == "dataset"
            else "files but no dataset manifest")
    raise IngestError(f"{output_dir}: output directory already holds {what}; choose another "
                      "ingest.output_dir or set ingest.overwrite=true to replace it")


def reconcile(counts: dict, splits: dict, summary_train: int, shard_size: int, duplicates: str = "keep",
              labels: dict | None = None, extra_checks: dict[str, bool] | None = None) -> dict:
    """Check every count identity of ``shards/README.md``.

    Args:
        counts: The manifest ``counts`` section (plus ``valid_rows`` from the read ledger).
        splits: The manifest ``splits`` section.
        summary_train: Train interactions counted by the id pass (independent of the writers).
        shard_size: ``ingest.shard_max_samples``.
        duplicates: ``ingest.duplicates`` (only ``drop`` may drop rows).
        labels: The manifest ``labels`` section of labelled input (plus ``written``: the exposures
            the writers stored), else None.
        extra_checks: Further identities computed elsewhere (name -> held), e.g. the ``item_labels``
            ones (``item_labels.write_item_labels``).

    Returns:
        The manifest ``reconciliation`` section (``ok`` true).

    Raises:
        IngestError: listing every identity that fails.
    """
    c, inter = counts, counts["interactions"]
    users, items = c["users"], c["items"]
    dropped = c["dropped_rows"]
    checks = {
        "input_rows = kept_rows + filtered_rows + quarantined_rows + dropped_rows":
            c["input_rows"] == c["kept_rows"] + c["filtered_rows"] + c["quarantined_rows"] + dropped,
        "valid rows read = kept_rows + filtered_rows + dropped_rows":
            c["valid_rows"] == c["kept_rows"] + c["filtered_rows"] + dropped,
        "input_interactions = kept_interactions + filtered_interactions + dropped_interactions":
            c["input_interactions"] == c["kept_interactions"] + c["filtered_interactions"]
            + c["dropped_interactions"],
        "dropped_rows = duplicate_rows with ingest.duplicates=drop, else 0":
            dropped == (c["duplicate_rows"] if duplicates == "drop" else 0),
        "train + valid + test interactions = kept_interactions":
            inter["train"] + inter["valid"] + inter["test"] == c["kept_interactions"],
        "valid = test = users": inter["valid"] == inter["test"] == users,
        "train interactions written = counted": inter["train"] == summary_train,
    }
    user_splits = ["train", "valid", "test"]
    if labels is not None:
        e = labels["exposures"]
        checks.update({
            "clicked_rows + exposure_rows = valid rows read":
                labels["clicked_rows"] + labels["exposure_rows"] == c["valid_rows"],
            "clicked_rows = input_interactions": labels["clicked_rows"] == c["input_interactions"],
            "exposure_rows = kept + filtered + dropped exposures":
                labels["exposure_rows"] == e["kept"] + e["filtered"] + e["dropped"],
            "exposures written = kept exposures": labels.get("written") == e["kept"],
        })
        user_splits.append("exposures")
    for split, expected in [(s, users) for s in user_splits] + [("items", items)]:
        shards = splits[split]["shards"]
        checks[f"{split}: samples = {expected}"] = splits[split]["samples"] == expected == sum(
            s["samples"] for s in shards)
        per_block = splits[split].get(BLOCK_SIZE_KEYS[split])
        checks[f"{split}: blocks = ceil(samples / {BLOCK_SIZE_KEYS[split]}) per shard"] = \
            isinstance(per_block, int) and per_block >= 1 and \
            all(s.get("blocks") == -(-s["samples"] // per_block) for s in shards)
        checks[f"{split}: shards 0..{-(-expected // shard_size) - 1} all written"] = \
            [s["path"] for s in shards] == [f"{split}/{split}-{j:05d}.tar" for j in range(-(-expected // shard_size))]
    checks.update(extra_checks or {})
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        raise IngestError("counts do not reconcile, no manifest written: " + "; ".join(failed) +
                          f" (counts: {json.dumps(c, sort_keys=True)})")
    return {"input_rows": c["input_rows"], "kept_rows": c["kept_rows"], "filtered_rows": c["filtered_rows"],
            "quarantined_rows": c["quarantined_rows"], "dropped_rows": dropped, "ok": True,
            "checks": sorted(checks)}


def build_manifest(*, fp: str, config: dict, inputs: list[dict], titles: dict | None, counts: dict,
                   reconciliation: dict, splits: dict, files: dict, quarantine: dict, timestamps: dict | None = None,
                   labels: dict | None = None, stats: dict | None = None, item_labels: dict | None = None,
                   plays: dict | None = None) -> dict:
    """Assemble ``manifest.json`` (schema ``SCHEMA_VERSION``); ``timestamps``, ``labels``, ``item_labels`` and
    ``plays`` are written only when given (timestamped, labelled input; the item labels section; FRAME's
    playing times); ``stats``: further entries of the ``stats`` section beside ``item_train_counts``."""
    optional = {k: v for k, v in (("timestamps", timestamps), ("labels", labels), ("item_labels", item_labels),
                                  ("plays", plays)) if v is not None}
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "mvrec_dist.dataset",
        "created_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "fingerprint": fp,
        "config": config,
        "inputs": inputs,
        "titles": titles,
        "counts": counts,
        "reconciliation": reconciliation,
        "splits": splits,
        "maps": {"items": "maps/items.npy", "users": "maps/users.npy"},
        "stats": {"item_train_counts": "stats/item_train_counts.npy", **(stats or {})},
        "files": files,
        "quarantine": quarantine,
        **optional,
    }


def temp_dir_for(output_dir: str) -> str:
    """A fresh sibling ``<output>.tmp-<random>`` to build the dataset in."""
    return f"{output_dir.rstrip('/')}.tmp-{uuid.uuid4().hex[:12]}"


def remove_tree(path: str) -> None:
    """Delete a directory tree if it exists (best effort cleanup of a temporary directory)."""
    filesystem, inner = dfs.resolve(path)
    try:
        if filesystem.get_file_info(inner).type == pafs.FileType.Directory:
            filesystem.delete_dir(inner)
    except OSError:
        pass


def publish(tmp_dir: str, output_dir: str, manifest: dict, *, overwrite: bool) -> None:
    """Write the manifest and move the finished dataset into place.

    Args:
        tmp_dir: The complete dataset without its manifest.
        output_dir: Where it goes.
        manifest: The manifest to write last.
        overwrite: ``ingest.overwrite`` (re-checked here: the directory may have changed meanwhile).
    """
    check_output_dir(output_dir, manifest["fingerprint"], overwrite)
    data = (json.dumps(manifest, indent=2, sort_keys=False) + "\n").encode("utf-8")
    filesystem, out = dfs.resolve(output_dir)
    _, tmp = dfs.resolve(tmp_dir)
    exists = filesystem.get_file_info(out).type != pafs.FileType.NotFound
    if isinstance(filesystem, pafs.LocalFileSystem):
        with open(os.path.join(tmp, MANIFEST_NAME), "wb") as f:
            f.write(data)
        old = f"{out}.old-{uuid.uuid4().hex[:12]}"
        if exists:
            os.rename(out, old)
        os.rename(tmp, out)
        if exists:
            remove_tree(old)
        return
    # Object stores have no atomic directory rename: remove the old dataset's manifest first (so
    # it never describes a mix), copy the files, and write the new manifest last.
    if exists:
        filesystem.delete_dir(out)
    pafs.copy_files(tmp, out, source_filesystem=filesystem, destination_filesystem=filesystem)
    filesystem.delete_dir(tmp)
    with filesystem.open_output_stream(f"{out}/{MANIFEST_NAME}") as f:
        f.write(data)


def replace_manifest(output_dir: str, manifest: dict, *, expect: Callable[[dict], bool], what: str) -> None:
    """Replace the manifest of a published dataset in one atomic step (adding a split to it).

    Local disks: the new manifest is written beside the old one and ``os.replace``d over it.
    Object stores: one object PUT, which replaces the object atomically (readers see the old or
    the new manifest, never a mix). Every file the new manifest names must already be written.

    Args:
        output_dir: The dataset directory.
        manifest: The complete new manifest.
        expect: Called with the manifest currently on disk; False means another run changed the
            dataset since this one read it, and nothing is replaced.
        what: What ``expect`` checks, for the error message.

    Raises:
        IngestError: when the dataset has no manifest any more or ``expect`` fails.
    """
    state, current = _existing_manifest(output_dir)
    if state != "dataset":
        raise IngestError(f"{output_dir}: the dataset manifest disappeared while its content was written")
    if not expect(current):
        raise IngestError(f"{output_dir}: another run changed the dataset's {what} meanwhile; run again")
    data = (json.dumps(manifest, indent=2, sort_keys=False) + "\n").encode("utf-8")
    filesystem, out = dfs.resolve(output_dir)
    if isinstance(filesystem, pafs.LocalFileSystem):
        tmp = os.path.join(out, f".{MANIFEST_NAME}.tmp-{uuid.uuid4().hex[:12]}")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(out, MANIFEST_NAME))
        return
    with filesystem.open_output_stream(f"{out}/{MANIFEST_NAME}") as f:
        f.write(data)
