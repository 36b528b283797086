"""A run's log files on remote storage: kept across attempts and hosts, written only by the current attempt.

On local storage the ranks write ``<run>/logs/`` in place and nothing here applies. On remote storage
(``s3://``, ...) each rank writes a local directory (``runtime.console.run_log_dir``: ``runs-local/<run>/logs``
in the worker's working directory) that is copied into ``<run>/logs/``:

* **When.** Rank 0 copies ``metrics.jsonl`` and ``tensorboard/`` after every checkpoint it commits, so the
  store's copy is never behind the newest checkpoint (what a later attempt replays from); at the end of an
  attempt, failed or not, rank 0 copies all of its directory and every other rank its own ``<job>-rank<r>.log``.
* **Kept across attempts.** A new attempt's rank 0 may run where the last one did not (a replacement host, or a
  resubmitted job whose working directory is new): when its local directory has no ``metrics.jsonl`` it first
  fetches the run's ``metrics.jsonl`` and ``tensorboard/`` (``RunLogs.seed``) and appends to them. Without this
  the first upload of the new attempt replaced the records of every earlier one.
* **Fenced.** Before it starts a group of workers the driver writes a fresh attempt id to
  ``<run>/logs/ATTEMPT`` (``start_attempt``) and hands it to the workers; a rank uploads only while that file
  still names its own attempt. A rank of a replaced attempt still alive (a host cut off by a partition and
  healed after the driver restarted the workers elsewhere) so leaves the run's logs alone. The check is read
  then write, not an atomic conditional write (the stores reached through pyarrow offer none): a rank that
  passes it and then stalls for a whole attempt could still write; the next upload of the current attempt
  (its next checkpoint, its end) writes over it.
"""

from __future__ import annotations

import os
import socket
import sys
import uuid

import pyarrow.fs as pafs

from mvrec_dist.config.jobs import TrainJobConfig
from mvrec_dist.data.fs import is_local, resolve
from mvrec_dist.runtime.console import run_log_dir

__all__ = ["ATTEMPT_NAME", "RunLogs", "start_attempt", "current_attempt"]

ATTEMPT_NAME = "ATTEMPT"
"""``<run>/logs/ATTEMPT``: the id of the attempt whose ranks may write the run's logs."""

_CARRIED = ("metrics.jsonl", "tensorboard")
"""What rank 0 keeps across attempts (the ranks' ``.log`` files are per attempt: appended locally, replaced)."""


def _logs_uri(cfg: TrainJobConfig) -> str:
    return f"{cfg.train.storage_path.rstrip('/')}/{cfg.train.run_name}/logs"


def start_attempt(cfg: TrainJobConfig) -> str | None:
    """Make a new attempt of the run the one whose ranks write its logs (the driver, before each worker group).

    Returns:
        The attempt id to hand the workers; None on local storage (nothing is copied there).
    """
    if is_local(cfg.train.storage_path):
        return None
    attempt = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    fs, root = resolve(_logs_uri(cfg))
    fs.create_dir(root, recursive=True)
    with fs.open_output_stream(f"{root}/{ATTEMPT_NAME}") as f:
        f.write(attempt.encode("utf-8"))
    return attempt


def current_attempt(cfg: TrainJobConfig) -> str | None:
    """The attempt id in ``<run>/logs/ATTEMPT`` (None when there is none)."""
    fs, root = resolve(f"{_logs_uri(cfg)}/{ATTEMPT_NAME}")
    try:
        with fs.open_input_stream(root) as f:
            return f.read().decode("utf-8").strip() or None
    except FileNotFoundError:
        return None


class RunLogs:
    """One rank's copying of its local log directory into the run's ``logs/`` (see the module docstring).

    Args:
        cfg: The job config (``train.storage_path``, ``train.run_name``).
        rank: This rank.
        attempt: The attempt id the driver handed the workers (``start_attempt``); None where no driver made
            one (tests and benchmarks driving ``run_worker`` directly): the uploads are then not fenced.
    """

    def __init__(self, cfg: TrainJobConfig, rank: int, attempt: str | None):
        self.cfg, self.rank, self.attempt = cfg, rank, attempt
        self.remote = not is_local(cfg.train.storage_path)
        self.local = run_log_dir(cfg.train.storage_path, cfg.train.run_name)
        self.skipped: list[str] = []
        """What was not uploaded because the attempt was replaced (its reason, one line each)."""

    def seed(self) -> bool:
        """Rank 0, before it writes a record: fetch the run's ``metrics.jsonl`` and ``tensorboard/`` when the
        local directory has no ``metrics.jsonl`` (this host did not run the last attempt's rank 0).

        Returns:
            Whether anything was fetched.
        """
        if not self.remote or self.rank != 0 or os.path.exists(os.path.join(self.local, "metrics.jsonl")):
            return False
        fs, root = resolve(_logs_uri(self.cfg))
        fetched = False
        for name in _CARRIED:
            info = fs.get_file_info(f"{root}/{name}")
            if info.type == pafs.FileType.Directory:
                files = [e.path for e in fs.get_file_info(pafs.FileSelector(info.path, recursive=True))
                         if e.type == pafs.FileType.File]
            else:
                files = [info.path] if info.type == pafs.FileType.File else []
            for path in files:
                dst = (os.path.join(self.local, name) if info.type == pafs.FileType.File
                       else os.path.join(self.local, name, os.path.relpath(path, info.path)))
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                with fs.open_input_stream(path) as src, open(dst, "wb") as out:
                    out.write(src.read())
                fetched = True
        return fetched

    def _may_write(self, what: str) -> bool:
        if self.attempt is None:
            return True
        current = current_attempt(self.cfg)
        if current == self.attempt:
            return True
        self.skipped.append(f"{what}: attempt {self.attempt} was replaced by {current}")
        print(f"not uploading {what} to {_logs_uri(self.cfg)}: this rank's attempt {self.attempt} is no longer "
              f"the run's (now {current})", file=sys.stderr, flush=True)
        return False

    def upload_metrics(self) -> None:
        """Rank 0, after a checkpoint is committed: copy ``metrics.jsonl`` and ``tensorboard/``."""
        if not self.remote or self.rank != 0 or not os.path.isdir(self.local) or not self._may_write("metrics"):
            return
        fs, root = resolve(_logs_uri(self.cfg))
        for name in _CARRIED:
            path = os.path.join(self.local, name)
            if os.path.exists(path):
                pafs.copy_files(path, f"{root}/{name}", source_filesystem=pafs.LocalFileSystem(),
                                destination_filesystem=fs)

    def upload_all(self) -> None:
        """At the end of the attempt: rank 0 all of the local directory (metrics, TensorBoard, the log files of
        the ranks on its node), another rank its own log file; over older copies."""
        if not self.remote or not os.path.isdir(self.local) or not self._may_write("logs"):
            return
        fs, root = resolve(_logs_uri(self.cfg))
        fs.create_dir(root, recursive=True)
        local_fs = pafs.LocalFileSystem()
        if self.rank == 0:
            pafs.copy_files(self.local, root, source_filesystem=local_fs, destination_filesystem=fs)
            return
        sys.stdout.flush()
        sys.stderr.flush()
        for name in os.listdir(self.local):
            if name.endswith(f"-rank{self.rank}.log"):
                pafs.copy_files(os.path.join(self.local, name), f"{root}/{name}", source_filesystem=local_fs,
                                destination_filesystem=fs)
