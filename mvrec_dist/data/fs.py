"""Filesystem access for local paths and URIs (s3://, gs://, hdfs://, any fsspec protocol).

One place resolves a path to a ``pyarrow.fs.FileSystem``: pyarrow's native filesystems where they
exist, fsspec (wrapped with ``PyFileSystem(FSSpecHandler)``) otherwise.
"""

from __future__ import annotations

import glob as _glob
import os
from typing import IO

import pyarrow as pa
import pyarrow.fs as pafs

__all__ = ["resolve", "open_input_file", "open_output_stream", "expand_inputs", "is_local"]


def is_local(path: str) -> bool:
    """Whether ``path`` is a local filesystem path (no URI scheme, or ``file://``)."""
    return "://" not in path or path.startswith("file://")


def resolve(path: str) -> tuple[pafs.FileSystem, str]:
    """Return ``(filesystem, path inside it)`` for a local path or URI.

    Args:
        path: Local path, ``file://`` URI, or any URI pyarrow or fsspec understands.

    Returns:
        The filesystem and the normalised path to pass to it.
    """
    if is_local(path):
        local = path[len("file://"):] if path.startswith("file://") else path
        return pafs.LocalFileSystem(), os.path.abspath(local)
    try:
        return pafs.FileSystem.from_uri(path)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError, TypeError):
        import fsspec

        fs, inner = fsspec.core.url_to_fs(path)
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), inner


def open_input_file(path: str) -> IO[bytes]:
    """Open ``path`` for random-access reading (raises ``FileNotFoundError`` when absent)."""
    fs, inner = resolve(path)
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(path)
    return fs.open_input_file(inner)


def open_output_stream(path: str) -> IO[bytes]:
    """Open ``path`` for writing, creating parent directories."""
    fs, inner = resolve(path)
    parent = inner.rsplit("/", 1)[0]
    if parent:
        fs.create_dir(parent, recursive=True)
    return fs.open_output_stream(inner)


def expand_inputs(spec: str, suffixes: tuple[str, ...] = ()) -> list[tuple[pafs.FileSystem, str, int]]:
    """Expand a file, directory or glob into a sorted list of ``(filesystem, path, size)``.

    Args:
        spec: A file, a directory (its files, recursively), or a glob (``*``, ``?``, ``[``).
        suffixes: When expanding a directory, keep only files ending with one of these.

    Returns:
        Files in sorted path order, so file indices (and tie-breaks on them) are deterministic.

    Raises:
        FileNotFoundError: when nothing matches.
    """
    fs, inner = resolve(spec)
    if any(ch in inner for ch in "*?["):
        if isinstance(fs, pafs.LocalFileSystem):
            paths = sorted(p for p in _glob.glob(inner, recursive=True) if os.path.isfile(p))
        else:
            base = inner.split("*")[0].rsplit("/", 1)[0]
            import fnmatch

            infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
            paths = sorted(i.path for i in infos if i.type == pafs.FileType.File and fnmatch.fnmatch(i.path, inner))
        files = [(p, fs.get_file_info(p).size) for p in paths]
    else:
        info = fs.get_file_info(inner)
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"{spec}: no such file or directory")
        if info.type == pafs.FileType.Directory:
            infos = fs.get_file_info(pafs.FileSelector(inner, recursive=True))
            files = sorted((i.path, i.size) for i in infos if i.type == pafs.FileType.File
                           and (not suffixes or i.path.endswith(suffixes)))
        else:
            files = [(inner, info.size)]
    if not files:
        raise FileNotFoundError(f"{spec}: matched no input files")
    return [(fs, p, int(size)) for p, size in files]
