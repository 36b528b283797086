"""Checks of the paths a job is given, each failing with one line that says what to do.

* ``check_storage_path``: a run directory (or a dataset every worker reads) must be reachable from
  every node of the cluster.
* ``check_dataset_dir``: the dataset directory must hold a finished ingestion (its manifest).
* ``check_manifest_path``: a relative path read from a manifest must stay inside its dataset.
* ``check_input_path``: an input a job reads (raw interactions, titles, videos) must exist.
* ``relative_in_working_dir_copy``: relative paths of a job that ``ray job submit --working-dir``
  started in Ray's temporary copy of the working tree (where outputs would be lost).

How a shared mount is told from a local disk: a path with a URI scheme names an object store or a
distributed filesystem (``s3://``, ``gs://``, ``hdfs://``, ...), reached over the network and so shared
by construction, except the schemes of storage inside one process or on one node's disk
(``NODE_LOCAL_SCHEMES``: ``memory://``, ``mock://``, ``local://``; ``file://`` is a local path). An
``s3://`` URI is shared only as long as its endpoint is: with the endpoint overridden
(``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, the AWS SDKs' variables, which pyarrow and so the jobs
and Ray Train honour) to a loopback address, every node would talk to a store of its own. Storage
URIs carry no query string (pyarrow's ``?endpoint_override=...``): the jobs append run and shard
paths to them, which would land inside the query; the endpoint goes in the environment. A local path is resolved (symlinks included) and looked up in the mount
table of the node running the check (``/proc/self/mounts``, the longest mount point containing
it); it counts as shared when that mount's filesystem type is a network or cluster filesystem
(``SHARED_FS_TYPES``: NFS, SMB, Lustre, CephFS, GPFS, GCS/S3 FUSE, ...). A Kubernetes
ReadWriteMany volume shows up as one of these (EFS and Filestore as ``nfs4``). Local disks
(``ext4``, ``xfs``, ``overlay``, ``tmpfs``, ...) are not shared. The check sees only the driver's
node: it cannot prove the same mount exists on every other node, and it rejects a local disk that
happens to be kept identical on every node by other means.
"""

from __future__ import annotations

import os
import posixpath
import re
from typing import Iterable, Mapping
from urllib.parse import urlsplit

from mvrec_dist.data.manifest import MANIFEST_NAME

__all__ = ["PathError", "SHARED_FS_TYPES", "NODE_LOCAL_SCHEMES", "check_storage_path", "check_dataset_dir",
           "check_manifest_path", "check_input_path", "ray_working_dir_copy", "relative_in_working_dir_copy"]

# Filesystem types (as /proc/self/mounts names them) whose contents every client node sees.
SHARED_FS_TYPES = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "ceph", "glusterfs", "gpfs", "beegfs",
    "wekafs", "panfs", "fuse.gcsfuse", "fuse.s3fs", "fuse.mountpoint-s3", "fuse.juicefs",
    "fuse.ceph-fuse", "fuse.glusterfs", "fuse.blobfuse2", "fuse.goofys", "fuse.geesefs",
})

# URI schemes (pyarrow's and fsspec's) of storage inside one process or on one node's own disk.
NODE_LOCAL_SCHEMES = frozenset({"memory", "mock", "local"})

# Where an S3 client sends its requests when an endpoint is configured, in the AWS SDKs' order.
_S3_ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
_S3_SCHEMES = frozenset({"s3", "s3a"})

_MOUNTS_FILE = "/proc/self/mounts"
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class PathError(ValueError):
    """A path given to a job cannot be used; the message is one actionable line."""


# Ray unpacks a job's --working-dir into <session>/runtime_resources/working_dir_files/<package>/ on the
# node that runs the entrypoint (ray/_private/runtime_env/working_dir.py) and starts the entrypoint there.
_WORKING_DIR_COPY = re.compile(r"/runtime_resources/working_dir_files/[^/]+")


def ray_working_dir_copy(cwd: str) -> str | None:
    """The root of Ray's temporary working-dir copy that ``cwd`` is inside, or None."""
    match = _WORKING_DIR_COPY.search(cwd.replace(os.sep, "/"))
    return cwd[:match.end()] if match else None


def relative_in_working_dir_copy(paths: dict[str, str | None], cwd: str | None = None) -> str | None:
    """A one-paragraph warning when a submitted job's outputs would land in Ray's working-dir copy.

    ``ray job submit --working-dir .`` runs the entrypoint inside a temporary copy of the tree that Ray
    deletes when it evicts the package: a relative ``train.storage_path`` or ``data.dataset_dir`` there
    writes runs and shards nobody will find (and only on the node that ran the entrypoint).

    Args:
        paths: Config key -> path as given (before it is made absolute).
        cwd: The working directory (default: the process's).

    Returns:
        The warning, naming every relative key, or None when nothing is relative or the job does not
        run in a working-dir copy.
    """
    root = ray_working_dir_copy(cwd or os.getcwd())
    relative = [f"{key}={path}" for key, path in paths.items()
                if path and not _URI.match(path) and not os.path.isabs(path)]
    if root is None or not relative:
        return None
    return (f"warning: {', '.join(relative)} {'is' if len(relative) == 1 else 'are'} relative, and this job runs "
            f"in Ray's temporary copy of its --working-dir ({root}): what it writes there is lost when Ray "
            "evicts the copy and is on one node only. Give shared-storage paths (s3://..., gs://... or a "
            "shared mount) for data.dataset_dir and train.storage_path; see cluster/README.md.")


def check_storage_path(path: str, *, num_nodes: int, key: str = "train.storage_path",
                       mounts: str | None = None,
                       shared_fs_types: Iterable[str] = SHARED_FS_TYPES,
                       environ: Mapping[str, str] | None = None) -> str:
    """Check that ``path`` is reachable from every node of a cluster of ``num_nodes`` nodes.

    Args:
        path: Local path, ``file://`` URI, or a URI of an object store / distributed filesystem.
        num_nodes: Nodes the run may span. Pass more than one whenever workers can land on
            another node than the driver (an autoscaling cluster that has not scaled up yet
            counts as multi-node).
        key: The config key the path came from, named in the error.
        mounts: Text of a mount table in ``/proc/self/mounts`` format; ``None`` reads this
            node's table.
        shared_fs_types: Filesystem types that count as shared.
        environ: The environment holding an S3 endpoint override; ``None`` reads this process's.

    Returns:
        The path to use: URIs unchanged, local paths made absolute.

    Raises:
        PathError: when a multi-node run is given a path on a node-local filesystem, a node-local
            URI scheme or an ``s3://`` URI whose endpoint is a loopback address, when the mount
            table cannot be read to tell, or (any run) when a URI carries a query string.
    """
    if not path:
        raise PathError(f"{key} is empty; set it to a shared filesystem mount or an s3:// / gs:// URI")
    if _URI.match(path) and not path.startswith("file://"):
        _check_shared_uri(path, num_nodes=num_nodes, key=key, environ=os.environ if environ is None else environ)
        return path
    local = os.path.abspath(path[len("file://"):] if path.startswith("file://") else path)
    if num_nodes <= 1:
        return local
    if mounts is None:
        try:
            with open(_MOUNTS_FILE, encoding="utf-8") as f:
                mounts = f.read()
        except OSError:
            raise PathError(f"{key}={path}: cannot read {_MOUNTS_FILE} to tell whether it is shared "
                            f"by the cluster's {num_nodes} nodes; use an s3:// / gs:// URI") from None
    mount_point, fs_type = _mount_of(os.path.realpath(local), mounts)
    if fs_type in frozenset(shared_fs_types):
        return local
    raise PathError(f"{key}={path} is a local path ({fs_type} filesystem mounted at {mount_point}) "
                    f"but the cluster has {num_nodes} nodes; use a shared filesystem mount "
                    f"(NFS, Lustre, a ReadWriteMany volume) or an s3:// / gs:// URI")


def _check_shared_uri(uri: str, *, num_nodes: int, key: str, environ: Mapping[str, str]) -> None:
    """Refuse a storage URI that cannot work as one (query string) or is not shared (see the module doc)."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if parts.query or parts.fragment:
        hint = (" (for an S3-compatible store, set AWS_ENDPOINT_URL=http://host:port on every node and the "
                "client instead)" if scheme in _S3_SCHEMES else "")
        raise PathError(f"{key}={uri} has a query string or fragment, which run and shard paths would be appended "
                        f"to; give the bare {scheme}://bucket/prefix URI and configure the store in the "
                        f"environment{hint}")
    if num_nodes <= 1:
        return
    if scheme in NODE_LOCAL_SCHEMES:
        raise PathError(f"{key}={uri} is {scheme}:// storage, inside one process or node, but the cluster has "
                        f"{num_nodes} nodes; use a shared filesystem mount or an s3:// / gs:// URI")
    if scheme in _S3_SCHEMES:
        var = next((v for v in _S3_ENDPOINT_VARS if environ.get(v)), None)
        host = (urlsplit(environ[var]).hostname or "") if var else ""
        if host == "localhost" or host.startswith("127.") or host in ("::1", "0.0.0.0"):
            raise PathError(f"{key}={uri}: {var}={environ[var]} is a loopback address, a store that each of the "
                            f"cluster's {num_nodes} nodes would have to itself; point {var} at an address every "
                            "node reaches")


def check_dataset_dir(path: str, *, key: str = "data.dataset_dir") -> str:
    """Check that ``path`` is a finished ingested dataset (it holds ``manifest.json``).

    Args:
        path: Local directory or URI of the dataset.
        key: The config key the path came from, named in the error.

    Returns:
        The path to use: URIs unchanged, local paths made absolute.

    Raises:
        PathError: when the directory or its manifest is missing.
    """
    ingest = ("run the ingest job first: python jobs/ingest_microlens.py --config "
              f"jobs/configs/<dataset>/ingest.yaml ingest.output_dir={path}")
    if not path:
        raise PathError(f"{key} is empty; set it to the ingest job's ingest.output_dir")
    if _URI.match(path) and not path.startswith("file://"):
        import pyarrow.fs as pafs

        from mvrec_dist.data.fs import resolve

        fs, inner = resolve(path)
        root = fs.get_file_info(inner).type
        has_manifest = fs.get_file_info(f"{inner.rstrip('/')}/{MANIFEST_NAME}").type == pafs.FileType.File
        exists, is_dir = root != pafs.FileType.NotFound, root == pafs.FileType.Directory
        # Object stores have no real directories: a prefix "exists" once any key is under it.
        if not exists and has_manifest:
            exists = is_dir = True
        resolved = path
    else:
        resolved = os.path.abspath(path[len("file://"):] if path.startswith("file://") else path)
        exists, is_dir = os.path.exists(resolved), os.path.isdir(resolved)
        has_manifest = os.path.isfile(os.path.join(resolved, MANIFEST_NAME))
    if not exists:
        raise PathError(f"{key}={path} does not exist; {ingest}")
    if not is_dir:
        raise PathError(f"{key}={path} is a file, not a dataset directory; point it at the ingest "
                        f"job's ingest.output_dir")
    if not has_manifest:
        raise PathError(f"{key}={path} has no {MANIFEST_NAME} (ingestion unfinished, or not a dataset "
                        f"directory; the manifest is written last); {ingest}")
    return resolved


def check_input_path(path: str, *, key: str, hint: str) -> str:
    """Check that an input a job reads exists: a file, a directory, or a glob matching something.

    Args:
        path: Local path, glob (``*``, ``?``, ``[``) or URI.
        key: The config key the path came from, named in the error.
        hint: What to do instead, appended to the error.

    Returns:
        The path to use: URIs unchanged, local paths made absolute.

    Raises:
        PathError: when nothing is there.
    """
    import glob

    if not path:
        raise PathError(f"{key} is empty; {hint}")
    if _URI.match(path) and not path.startswith("file://"):
        import pyarrow.fs as pafs

        from mvrec_dist.data.fs import resolve

        try:
            fs, inner = resolve(path)
            # A glob in a URI is expanded by the job itself (listing a bucket here could be slow).
            if any(ch in inner for ch in "*?[") or fs.get_file_info(inner).type != pafs.FileType.NotFound:
                return path
        except OSError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise PathError(f"{key}={path}: cannot reach it ({reason}); check the URI, the credentials "
                            "and the network") from None
        raise PathError(f"{key}={path} does not exist; {hint}")
    local = os.path.abspath(path[len("file://"):] if path.startswith("file://") else path)
    found = glob.glob(local) if any(ch in local for ch in "*?[") else os.path.exists(local)
    if not found:
        raise PathError(f"{key}={path} does not exist{' (the glob matches nothing)' if found == [] else ''}; {hint}")
    return local


def check_manifest_path(dataset_dir: str, relative: str, *, where: str = "a path") -> str:
    """Join a path read from a dataset's manifest onto the dataset directory, refusing escapes.

    Args:
        dataset_dir: The dataset directory (local path or URI) the manifest belongs to.
        relative: The path as written in the manifest (e.g. ``train/train-00000.tar``).
        where: Where in the manifest the path was read (e.g. ``splits.train.shards[3].path``).

    Returns:
        ``dataset_dir/relative`` with ``relative`` normalised.

    Raises:
        PathError: when ``relative`` is empty, absolute, a URI, holds a backslash or NUL, climbs
            out of the dataset with ``..``, or (local datasets) resolves through a symlink to a
            place outside it.
    """
    def refuse(problem: str) -> PathError:
        return PathError(f"{dataset_dir}/{MANIFEST_NAME}: {where} {relative!r} {problem}; manifest "
                         f"paths must be relative and stay inside the dataset, so the manifest is "
                         f"corrupt or was edited; re-run the ingest job")

    if not relative:
        raise refuse("is empty")
    if "\x00" in relative or "\\" in relative:
        raise refuse("holds a NUL or backslash")
    if _URI.match(relative) or relative.startswith("/") or re.match(r"^[A-Za-z]:", relative):
        raise refuse("is absolute")
    normal = posixpath.normpath(relative)
    if normal in (".", "..") or normal.startswith("../"):
        raise refuse("does not name a file inside the dataset directory")
    local_root = None
    if not _URI.match(dataset_dir):
        local_root = dataset_dir
    elif dataset_dir.startswith("file://"):
        local_root = dataset_dir[len("file://"):]
    if local_root is not None:
        real_root = os.path.realpath(local_root)
        real = os.path.realpath(os.path.join(local_root, normal))
        if os.path.commonpath([real_root, real]) != real_root:
            raise refuse(f"resolves through a symlink to {real}, outside the dataset directory")
    return f"{dataset_dir.rstrip('/')}/{normal}"


def _mount_of(real_path: str, mounts: str) -> tuple[str, str]:
    """The ``(mount point, filesystem type)`` of the longest mount point containing ``real_path``."""
    best, best_type = "", "unknown"
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = _unescape(fields[1])
        inside = real_path == point or real_path.startswith(point.rstrip("/") + "/")
        # Later entries for the same mount point shadow earlier ones, as in the kernel's view.
        if inside and len(point) >= len(best):
            best, best_type = point, fields[2]
    return best or "/", best_type


def _unescape(field: str) -> str:
    # The kernel writes space, tab, newline and backslash in mount points as octal escapes.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)
