"""Resuming an interrupted ingest: the user-split shards it finished are reused, each checked by sha256.

With ``ingest.resume`` (the default) a run builds its dataset in ``<output_dir>.partial-<key[:16]>``
instead of a fresh ``.tmp-<random>`` directory. The key (``resume_key``) hashes the dataset fingerprint
(content-relevant settings, input paths and sizes: ``manifest_writer.fingerprint``), the inputs'
modification times and ``RESUME_FORMAT``, so the same command over unchanged inputs finds the directory
an interrupted run left, and any other inputs or settings name another one: stale shards are never
looked at.

Every train/valid/test/exposures tar is written under a temporary name and renamed into place, then
its completion record ``_done/<split>/<name>.json`` (the key and the shard's manifest entry, with
its bytes and sha256) is written the same way: a record exists only for a file that was complete.
A rerun runs the read, group and id stages again (every dense id depends on every input row); its
write stage then takes a shard's file as it is only when the record names this key, the entry's
counts are the ones this run computes for the shard, and the file's size and sha256, recomputed from
the file, equal the record's. Anything else (no record, a partial or altered file) is rendered and
written again. The item shards, id maps, stats and quarantine file are small and always rewritten.

On a local disk the driver holds an exclusive ``flock`` on ``.lock`` in the directory for the whole
run, so a second identical run never writes into a directory another live run is writing; it falls
back to a fresh ``.tmp-`` directory (no reuse). Object stores have no such lock: do not start two
identical ingests of one output at once there.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import uuid
from dataclasses import dataclass, field
from typing import IO, Union

import pyarrow.fs as pafs

from mvrec_dist.data import fs as dfs
from mvrec_dist.data.manifest import SCHEMA_VERSION

__all__ = ["RESUME_FORMAT", "RECORDS_DIR", "resume_key", "work_dir_for", "WorkDir", "claim", "recorded_bytes",
           "verified_entries", "write_shard", "finish", "release"]

RESUME_FORMAT = 1
"""Bump when the shard bytes written for the same inputs and settings change, so no older file is reused."""
RECORDS_DIR = "_done"
"""Completion records, beside the splits in the work directory; removed before the dataset is published."""
_LOCK = ".lock"
_SPLIT_DIRS = ("train", "valid", "test", "exposures")
"""The work directory's subdirectories a rerun keeps (their files are checked before reuse)."""
_HASH_CHUNK = 8 << 20


def resume_key(fingerprint: str, files: list) -> str:
    """What a reused shard must have been written for: the dataset and the exact input files.

    Args:
        fingerprint: The dataset fingerprint (``pipeline.dataset_identity``): settings that change the
            data, input paths and sizes.
        files: The ``sources.InputFile``s; their modification times enter too, so an input rewritten
            in place with the same size is not mistaken for the old one (as do ``RESUME_FORMAT`` and the
            shard schema version).

    Returns:
        A sha256 hex digest.
    """
    infos = files[0].filesystem.get_file_info([f.path for f in files]) if files else []  # one listing call
    mtimes = [i.mtime_ns if i.mtime_ns is not None else str(i.mtime) for i in infos]
    ident = {"fingerprint": fingerprint, "mtimes": mtimes, "format": RESUME_FORMAT, "schema": SCHEMA_VERSION}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def work_dir_for(output_dir: str, key: str) -> str:
    """The work directory of the run ``key`` of ``output_dir``: ``<output_dir>.partial-<key[:16]>``."""
    return f"{output_dir.rstrip('/')}.partial-{key[:16]}"


@dataclass
class WorkDir:
    """A claimed work directory (``claim``)."""

    path: str
    key: str
    resumed: bool
    """It held completion records when claimed: an interrupted run's shards may be reused."""
    lock: IO | None = field(default=None, repr=False)
    """The open ``.lock`` holding the ``flock`` (local disks), else None."""


def claim(output_dir: str, key: str) -> WorkDir | None:
    """Take the work directory of ``key`` for this run, ready to write into.

    Files an interrupted run left half-written under temporary names and its scratch (quarantine parts,
    item shards, maps) are deleted; the user-split shards and their records stay, to be checked.

    Args:
        output_dir: ``ingest.output_dir``.
        key: ``resume_key`` of this run.

    Returns:
        The ``WorkDir``, or None when another live run holds it (local disks).
    """
    path = work_dir_for(output_dir, key)
    filesystem, inner = dfs.resolve(path)
    lock = None
    if isinstance(filesystem, pafs.LocalFileSystem):
        lock = _lock(inner)
        if lock is None:
            return None
    else:
        filesystem.create_dir(inner, recursive=True)
    for info in filesystem.get_file_info(pafs.FileSelector(inner, recursive=False)):
        name = info.base_name
        if name in (_LOCK, RECORDS_DIR):
            continue
        if name in _SPLIT_DIRS and info.type == pafs.FileType.Directory:
            for sub in filesystem.get_file_info(pafs.FileSelector(info.path, recursive=False)):
                if ".tmp-" in sub.base_name:  # a write that never reached its rename
                    filesystem.delete_file(sub.path)
        elif info.type == pafs.FileType.Directory:
            filesystem.delete_dir(info.path)
        else:
            filesystem.delete_file(info.path)
    records = _record_infos(filesystem, f"{inner}/{RECORDS_DIR}")
    return WorkDir(path=path, key=key, resumed=bool(records), lock=lock)


def _lock(inner: str) -> IO | None:
    """Create ``inner`` and hold an exclusive lock on its ``.lock``; None when another process holds it."""
    for _ in range(3):
        os.makedirs(inner, exist_ok=True)
        lock_path = os.path.join(inner, _LOCK)
        try:
            f = open(lock_path, "a+b")
        except FileNotFoundError:  # the directory was published (renamed) meanwhile: make a new one
            continue
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            return None
        try:
            same = os.path.samestat(os.fstat(f.fileno()), os.stat(lock_path))
        except FileNotFoundError:
            same = False
        if same:
            return f
        f.close()  # the lock file was moved away with a published dataset between open and flock
    return None


def _record_infos(filesystem: pafs.FileSystem, records: str) -> list[pafs.FileInfo]:
    if filesystem.get_file_info(records).type != pafs.FileType.Directory:
        return []
    return [i for i in filesystem.get_file_info(pafs.FileSelector(records, recursive=True))
            if i.type == pafs.FileType.File and i.base_name.endswith(".json")]


def _record_path(root: str, path: str) -> str:
    return f"{root.rstrip('/')}/{RECORDS_DIR}/{path}.json"


def _read_record(root: str, path: str) -> dict | None:
    try:
        with dfs.open_input_file(_record_path(root, path)) as f:
            return json.loads(f.read().decode("utf-8"))
    except (FileNotFoundError, OSError, ValueError):
        return None


def recorded_bytes(output_dir: str, key: str) -> int:
    """Bytes of the shards recorded as finished in ``key``'s work directory (not checked; 0 when none).

    The free-space check counts them as already written.
    """
    filesystem, inner = dfs.resolve(work_dir_for(output_dir, key))
    total = 0
    for info in _record_infos(filesystem, f"{inner}/{RECORDS_DIR}"):
        try:
            with filesystem.open_input_file(info.path) as f:
                record = json.loads(f.read().decode("utf-8"))
            if record.get("key") == key:
                total += int(record["entry"]["bytes"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return total


def _file_digest(path: str) -> tuple[int, str] | None:
    """``(bytes, sha256)`` of the file at ``path``, or None when it cannot be read."""
    digest, size = hashlib.sha256(), 0
    try:
        with dfs.open_input_file(path) as f:
            while chunk := f.read(_HASH_CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except (FileNotFoundError, OSError):
        return None
    return size, digest.hexdigest()


def verified_entries(root: str, expected: dict[str, dict], key: str) -> dict[str, dict]:
    """The shards of ``expected`` that a finished earlier run wrote exactly as this run would.

    Args:
        root: The work directory.
        expected: Split -> the shard's manifest entry without ``bytes``/``sha256`` (``split``, ``index``,
            ``path``, ``samples``, ``blocks``, ``interactions``), as this run computes it.
        key: This run's ``resume_key``.

    Returns:
        Split -> the full manifest entry, for each shard whose record names ``key`` and ``expected``'s
        counts and whose file's size and sha256 (read back now) are the record's; the others are absent.
    """
    out = {}
    for split, want in expected.items():
        record = _read_record(root, want["path"])
        if not record or record.get("key") != key:
            continue
        entry = record.get("entry") or {}
        if any(entry.get(k) != v for k, v in want.items()):
            continue
        if _file_digest(f"{root.rstrip('/')}/{want['path']}") == (entry.get("bytes"), entry.get("sha256")):
            out[split] = entry
    return out


def _write_whole(path: str, data: Union[bytes, bytearray]) -> None:
    """Write ``path`` so that a file under its name is always complete: a temporary name, then a rename
    (local disks); an object store's single PUT appears only when complete."""
    filesystem, inner = dfs.resolve(path)
    if not isinstance(filesystem, pafs.LocalFileSystem):
        with dfs.open_output_stream(path) as f:
            f.write(data)
        return
    tmp = f"{inner}.tmp-{uuid.uuid4().hex[:12]}"
    with dfs.open_output_stream(tmp) as f:
        f.write(data)
    os.replace(tmp, inner)


def write_shard(root: str, entry: dict, data: Union[bytes, bytearray], key: str) -> dict:
    """Write one shard whole, then its completion record.

    Args:
        root: The work directory.
        entry: The shard's manifest entry without ``bytes``/``sha256`` (``verified_entries``).
        data: The tar.
        key: This run's ``resume_key``.

    Returns:
        ``{"bytes", "sha256"}`` of the file (as ``tar_writer.write_bytes``).
    """
    _write_whole(f"{root.rstrip('/')}/{entry['path']}", data)
    info = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    record = {"key": key, "entry": {**entry, **info}}
    _write_whole(_record_path(root, entry["path"]), json.dumps(record, sort_keys=True).encode("utf-8"))
    return info


def release(work: WorkDir, *, published: str | None = None) -> None:
    """Give up the work directory's lock; after a publish, also remove ``.lock`` from the dataset.

    Args:
        work: The claimed directory.
        published: The dataset directory the work directory became (``publish``), else None (the
            work directory stays, for a rerun, or was deleted).
    """
    if published is not None:
        filesystem, inner = dfs.resolve(published)
        if isinstance(filesystem, pafs.LocalFileSystem):
            try:
                os.unlink(os.path.join(inner, _LOCK))
            except FileNotFoundError:
                pass
    if work.lock is not None:
        work.lock.close()
        work.lock = None


def finish(work: WorkDir) -> None:
    """Remove the completion records before the work directory is published as the dataset."""
    filesystem, inner = dfs.resolve(work.path)
    records = f"{inner}/{RECORDS_DIR}"
    if filesystem.get_file_info(records).type == pafs.FileType.Directory:
        filesystem.delete_dir(records)
