"""Retention and the commit marker of ``Checkpointer``, on plain directories (no model, no ranks)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from mvrec_dist.config import TrainJobConfig, load_config
from mvrec_dist.data.fs import resolve
from mvrec_dist.train import checkpointing
from mvrec_dist.train.checkpointing import Checkpointer


def _checkpointer(tmp_path: Path, keep: int = 2) -> Checkpointer:
    cfg = load_config(TrainJobConfig, None, [f"train.storage_path={tmp_path}", "train.run_name=r",
                                             f"train.keep_checkpoints={keep}"])
    return Checkpointer(cfg, SimpleNamespace(rank=0, world_size=1))


def _checkpoint(run: Path, step: int, committed: bool = True) -> None:
    d = run / f"checkpoint-step{step:09d}"
    d.mkdir(parents=True)
    (d / "dense.pt").write_bytes(b"x")
    if committed:
        (d / "COMMIT.json").write_text("{}")


def test_retention_keeps_the_newest_committed_and_the_best_and_drops_unfinished_ones(tmp_path):
    run = tmp_path / "r"
    for step in (5, 10, 15, 20):
        _checkpoint(run, step)
    _checkpoint(run, 25, committed=False)  # a failed attempt's upload: newest, but never to be completed
    _checkpoint(run, 3, committed=False)
    ckpt = _checkpointer(tmp_path)
    ckpt._prune(best_step=5)
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-step000000005", "checkpoint-step000000015",
                                                     "checkpoint-step000000020"]
    ckpt.close()


def test_retention_skips_a_listed_checkpoint_that_is_already_gone(tmp_path, monkeypatch):
    """An object store listing a directory an earlier prune emptied (SeaweedFS's S3) must not fail the save."""
    run = tmp_path / "r"
    for step in (3, 6, 9):
        _checkpoint(run, step)
    real = checkpointing.list_checkpoints
    monkeypatch.setattr(checkpointing, "list_checkpoints",
                        lambda uri: sorted(real(uri) + [(1, "checkpoint-step000000001")], reverse=True))
    ckpt = _checkpointer(tmp_path)
    ckpt._prune(best_step=9)  # raised FileNotFoundError for the ghost checkpoint-step000000001
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-step000000006", "checkpoint-step000000009"]
    ckpt.close()


def test_a_commit_marker_that_cannot_be_written_leaves_no_marker(tmp_path, monkeypatch):
    """A full disk while COMMIT.json is written once left an empty marker; now it lands by rename only."""
    local, run = tmp_path / "local", tmp_path / "r" / "checkpoint-step000000005"
    local.mkdir()
    (local / "COMMIT.json").write_text(json.dumps({"files": {}}))
    fs, root = resolve(str(run))
    fs.create_dir(root, recursive=True)
    real_copy = checkpointing.shutil.copyfileobj

    def full_disk(fin, fout, length):
        fout.write(b"{")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpointing.shutil, "copyfileobj", full_disk)
    with pytest.raises(OSError) as exc:
        checkpointing._commit(str(local), fs, root)
    assert exc.value.errno == 28 and exc.value.filename == f"{root}/COMMIT.json.tmp"
    assert str(exc.value) == f"[Errno 28] No space left on device (writing a checkpoint): '{root}/COMMIT.json.tmp'"
    assert not (run / "COMMIT.json").exists()
    monkeypatch.setattr(checkpointing.shutil, "copyfileobj", real_copy)
    checkpointing._commit(str(local), fs, root)
    assert json.loads((run / "COMMIT.json").read_text()) == {"files": {}} and not (run / "COMMIT.json.tmp").exists()
