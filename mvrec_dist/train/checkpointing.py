"""Where checkpoints live, how they are written, committed, kept, found again and loaded.

A run's checkpoints are directories ``<storage_path>/<run_name>/checkpoint-step<step>`` (local
disk, a shared filesystem, or an object store through pyarrow/fsspec). Each rank writes its part
into a local temporary directory and uploads it; once every rank has, rank 0 uploads ``COMMIT.json``
(sizes and sha256 of every file of every rank) last. On load ``COMMIT.json`` decides whether a
checkpoint is complete; a bad one is skipped for the previous good one with a warning that names it.

This class is the only owner of the checkpoints: Ray Train is given metrics, never checkpoints, so
no second record of them (Ray's run snapshot) can disagree with what retention deleted. Retention
keeps the newest ``train.keep_checkpoints`` committed checkpoints plus the best, and deletes any
uncommitted directory left by a failed attempt.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from typing import Any

import pyarrow.fs as pafs
import torch.distributed as dist

from mvrec_dist.config.jobs import TrainJobConfig
from mvrec_dist.config.load import config_to_dict
from mvrec_dist.data.fs import resolve
from mvrec_dist.parallel.checkpoint import (COMMIT_NAME, CheckpointError, read_checkpoint, verify_checkpoint,
                                            write_checkpoint)
from mvrec_dist.parallel.process_groups import DistContext, barrier
from mvrec_dist.train.runs import checkpoint_name, list_checkpoints
from mvrec_dist.train.state import TrainState

__all__ = ["Checkpointer", "check_checkpoint"]

log = logging.getLogger(__name__)


class Checkpointer:
    """Saves and restores a ``ParallelModel`` and its ``TrainState`` for one run.

    Args:
        cfg: The job config (run name, storage path, resume mode, retention, ZeRO stage).
        ctx: Process group.
    """

    def __init__(self, cfg: TrainJobConfig, ctx: DistContext):
        self.cfg = cfg
        self.ctx = ctx
        self.run_uri = f"{cfg.train.storage_path.rstrip('/')}/{cfg.train.run_name}"
        self.skipped: list[str] = []
        """Checkpoints ``restore`` passed over because they did not verify (newest first)."""
        self.restored_from: str | None = None
        """The checkpoint ``restore`` loaded, if any."""
        self._scratch = tempfile.mkdtemp(prefix=f"mvrec-ckpt-r{ctx.rank}-")

    # ------------------------------------------------------------------ save
    def save(self, model: Any, state: TrainState) -> str:
        """Write, upload, commit and prune; returns the checkpoint's name (collective).

        Raises:
            OSError: a file could not be written to storage (errno and the file's path in it); the
                checkpoint stays uncommitted and the previous committed ones are untouched.
        """
        name = checkpoint_name(state.step)
        local = os.path.join(self._scratch, name)
        shutil.rmtree(local, ignore_errors=True)
        write_checkpoint(model, self.ctx, local, state_json=state.to_json(),
                         config_json=json.dumps(config_to_dict(self.cfg), indent=1, sort_keys=True),
                         zero_stage=self.cfg.parallel.zero_stage)
        fs, root = resolve(f"{self.run_uri}/{name}")
        if self.ctx.rank == 0:  # a failed attempt at this step may have left files (another world size's)
            if fs.get_file_info(root).type != pafs.FileType.NotFound:
                fs.delete_dir(root)
            fs.create_dir(root, recursive=True)
        barrier(self.ctx)
        _upload(local, fs, root, skip=COMMIT_NAME)
        barrier(self.ctx)  # every rank's files are in storage: only now may the checkpoint count
        if self.ctx.rank == 0:
            _commit(local, fs, root)
            self._prune(best_step=state.best_step)
        barrier(self.ctx)
        shutil.rmtree(local, ignore_errors=True)
        return name

    def _prune(self, *, best_step: int) -> None:
        keep = self.cfg.train.keep_checkpoints
        fs, root = resolve(self.run_uri)
        committed = 0
        for step, name in list_checkpoints(self.run_uri):
            if fs.get_file_info(f"{root}/{name}/{COMMIT_NAME}").type != pafs.FileType.File:
                # Rank 0 prunes after every rank uploaded this save: an uncommitted directory is what a
                # failed attempt left, and nothing will ever complete it.
                if _delete_dir(fs, f"{root}/{name}"):
                    log.info("deleted unfinished checkpoint %s", name)
                continue
            committed += 1
            if committed > keep and step != best_step:
                _delete_dir(fs, f"{root}/{name}")
                log.info("deleted old checkpoint %s", name)

    # ------------------------------------------------------------------ load
    def restore(self, model: Any) -> TrainState | None:
        """Load the checkpoint ``train.resume`` asks for; None means start fresh (collective).

        ``auto`` takes the newest checkpoint of the run that verifies, skipping (with a warning naming
        it) any that is partial or corrupt; ``never`` starts fresh; a checkpoint path is where the run
        starts while it has no good checkpoint of its own (once it has, a restarted worker group or a
        resubmitted job resumes those instead of going back to the path).
        """
        mode = self.cfg.train.resume
        if mode == "never":
            return None
        candidates = [f"{self.run_uri}/{name}" for _, name in list_checkpoints(self.run_uri)]
        if mode != "auto":
            candidates.append(mode)
        for uri in candidates:
            local = self._fetch(uri)
            ok = self._agree(self._verified(uri, local))
            if not ok:
                if uri == mode:
                    raise CheckpointError(f"train.resume={mode}: the checkpoint does not verify (see the log)")
                self.skipped.append(uri)
                continue
            state_json = read_checkpoint(model, self.ctx, local, zero_stage=self.cfg.parallel.zero_stage)
            self.restored_from = uri
            return TrainState.from_json(state_json)
        return None

    def load_best(self, model: Any, state: TrainState) -> None:
        """Load the weights of the best validation (``state.best_step``) for the final test."""
        self.load_weights(model, f"{self.run_uri}/{checkpoint_name(state.best_step)}")

    def load_weights(self, model: Any, uri: str) -> str:
        """Load a checkpoint's weights (not its RNG states) for evaluation (collective).

        Args:
            model: The ``ParallelModel`` to fill.
            uri: The checkpoint directory.

        Returns:
            The checkpoint's ``state.json`` text.

        Raises:
            CheckpointError: when the checkpoint does not verify on any rank.
        """
        local = self._fetch(uri)
        if not self._agree(self._verified(uri, local)):
            raise CheckpointError(f"{uri}: the checkpoint does not verify; cannot load its weights")
        return read_checkpoint(model, self.ctx, local, zero_stage=self.cfg.parallel.zero_stage, restore_rng=False)

    def _verified(self, uri: str, local: str) -> bool:
        # Rank 0 checks sizes and checksums; the others only sizes (they read the same files).
        try:
            verify_checkpoint(local, checksums=self.ctx.rank == 0)
            return True
        except CheckpointError as exc:
            if self.ctx.rank == 0:
                log.warning("skipping checkpoint %s: %s", uri, exc)
            return False

    def _agree(self, ok: bool) -> bool:
        if self.ctx.world_size == 1:
            return ok
        import torch

        flag = torch.tensor([0 if ok else 1], device=self.ctx.device)
        dist.all_reduce(flag, group=self.ctx.group)
        return int(flag.item()) == 0

    def _fetch(self, uri: str) -> str:
        """A local directory holding the checkpoint at ``uri`` (copied when it is not local)."""
        fs, path = resolve(uri)
        if isinstance(fs, pafs.LocalFileSystem):
            return path
        local = os.path.join(self._scratch, "fetched", os.path.basename(path.rstrip("/")))
        shutil.rmtree(local, ignore_errors=True)
        os.makedirs(local, exist_ok=True)
        pafs.copy_files(path, local, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        return local

    def close(self) -> None:
        """Remove this rank's scratch space."""
        shutil.rmtree(self._scratch, ignore_errors=True)


def _delete_dir(fs: pafs.FileSystem, path: str) -> bool:
    """Delete the directory ``path``; False when it was already gone.

    An object store can still list a checkpoint "directory" that an earlier prune emptied (SeaweedFS keeps
    the empty directory entry; other stores list eventually): it has no ``COMMIT.json``, so it looks
    unfinished, and deleting it raises ``FileNotFoundError``. That must not fail the save it follows (it
    did: every save after a resume on the S3 store failed the run, once per retry).
    """
    try:
        fs.delete_dir(path)
    except FileNotFoundError:
        return False
    return True


def _copy_file(src: str, fs: pafs.FileSystem, dst: str) -> None:
    """Copy the local file ``src`` to ``dst`` on ``fs``; an ``OSError`` names its errno and ``dst`` (pyarrow's do not)."""
    try:
        fs.create_dir(dst.rsplit("/", 1)[0], recursive=True)
        with open(src, "rb") as fin, fs.open_output_stream(dst) as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
    except OSError as exc:
        code = exc.errno or 0
        raise OSError(code, f"{os.strerror(code) if code else exc} (writing a checkpoint)", dst) from exc


def _upload(local: str, fs: pafs.FileSystem, root: str, *, skip: str) -> None:
    """Copy every file of the local directory ``local`` but ``skip`` to ``root`` on ``fs``."""
    for dirpath, _, files in os.walk(local):
        for f in files:
            src = os.path.join(dirpath, f)
            rel = os.path.relpath(src, local).replace(os.sep, "/")
            if rel != skip:
                _copy_file(src, fs, f"{root}/{rel}")


def _commit(local: str, fs: pafs.FileSystem, root: str) -> None:
    """Put ``COMMIT.json`` in place in one step: written beside it, then renamed (a failed write leaves none)."""
    tmp = f"{root}/{COMMIT_NAME}.tmp"
    _copy_file(os.path.join(local, COMMIT_NAME), fs, tmp)
    fs.move(tmp, f"{root}/{COMMIT_NAME}")


def check_checkpoint(uri: str, *, key: str = "checkpoint") -> str:
    """Check on the driver, before any worker starts, that ``uri`` is a complete, safe checkpoint.

    A local checkpoint is verified in full (every file's size and sha256 against ``COMMIT.json``),
    its DCP ``.metadata`` is read with the allow-list unpickler and every ``.pt`` file is opened
    with ``torch.load(weights_only=True, mmap=True)``, so a checkpoint that would unpickle anything
    but tensors is refused here. A remote one is only checked for its ``COMMIT.json``; the workers
    verify it in full after fetching it.

    Args:
        uri: Checkpoint directory (local path or URI).
        key: The setting or argument the path came from, named in errors.

    Returns:
        ``uri`` (local paths made absolute).

    Raises:
        PathError: one line saying what is wrong and what to do.
    """
    import torch

    from mvrec_dist.data.fs import is_local
    from mvrec_dist.parallel.checkpoint import SafeDCPReader
    from mvrec_dist.runtime.paths import PathError

    hint = "pick a committed checkpoint that `mvrec runs show <run dir>` lists"
    bad = "it is incomplete, corrupt or was tampered with; use another checkpoint (`mvrec runs show <run dir>`)"
    fs, path = resolve(uri)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.NotFound:
        raise PathError(f"{key}={uri} does not exist; {hint}")
    if kind != pafs.FileType.Directory:
        raise PathError(f"{key}={uri} is a file, not a checkpoint directory (checkpoint-step<N>/); {hint}")
    if fs.get_file_info(f"{path}/{COMMIT_NAME}").type != pafs.FileType.File:
        raise PathError(f"{key}={uri} has no {COMMIT_NAME}: it is not a checkpoint or was never finished; {hint}")
    if not is_local(uri):
        return uri
    try:
        verify_checkpoint(path, checksums=True)
        if os.path.isdir(os.path.join(path, "sparse")):
            SafeDCPReader(os.path.join(path, "sparse")).read_metadata()
    except (CheckpointError, OSError) as exc:
        raise PathError(f"{key}={uri} does not verify ({_first_line(exc)}); {bad}") from None
    for dirpath, _, files in os.walk(path):
        for name in files:
            if name.endswith(".pt"):
                try:
                    torch.load(os.path.join(dirpath, name), map_location="cpu", weights_only=True, mmap=True)
                except Exception as exc:  # torch raises UnpicklingError, RuntimeError or ValueError here
                    rel = os.path.relpath(os.path.join(dirpath, name), path)
                    raise PathError(f"{key}={uri}: refused to load {rel} ({type(exc).__name__}: it holds more than "
                                    f"tensors); {bad}") from None
    return path


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
