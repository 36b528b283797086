"""One-line errors a user can act on: stderr holds exactly one line that names the setting or path and
says what to do.

Covered here: a missing dataset or input path, a config error, a checkpoint that does not exist or
does not verify, checkpoints that would unpickle data (refused before anything loads them), a
checkpoint whose model an override would change, a cluster without the requested GPUs and a
storage path the cluster's nodes do not share (through ``preflight``, whose problems the commands
print one per line), and ``--debug`` bringing back the traceback. Three run as a user runs them (a
subprocess: nothing else may reach stderr); the others call ``mvrec``'s ``main`` in this process,
which takes a fraction of the time.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from mvrec_dist.cli import main

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "jobs" / "configs" / "synthetic" / "sasrec-id-small.yaml"
INGEST_DEMO = REPO / "jobs" / "configs" / "synthetic" / "ingest-small.yaml"


def mvrec(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "mvrec_dist.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def one_line(proc: subprocess.CompletedProcess, status: int) -> str:
    assert proc.returncode == status, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def one_line_here(capsys, *args: str, status: int = 2) -> str:
    """``mvrec ARGS`` in this process: its one stderr line (usage errors exit through SystemExit)."""
    try:
        code = main(list(args))
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == status, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


class Payload:
    """Unpickling it creates a directory: the proof that a file was unpickled."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def fake_checkpoint(path: Path, marker: Path, *, poisoned: str | None) -> Path:
    """A checkpoint whose ``COMMIT.json`` matches its files, one of which (``poisoned``) is a pickle bomb."""
    import torch

    path.mkdir(parents=True)
    (path / "state.json").write_text(json.dumps({"step": 1, "epoch": 1, "epoch_step": 0, "best_step": 1,
                                                 "history": []}))
    (path / "config.json").write_text("{}")
    torch.save({"params": {}, "exp_avg": {}, "exp_avg_sq": {}}, path / "dense.pt")
    if poisoned == "sparse/.metadata":  # an ID-table checkpoint: its DCP metadata is a pickle
        (path / "sparse").mkdir()
        (path / "sparse" / ".metadata").write_bytes(pickle.dumps(Payload(str(marker))))
    elif poisoned is not None:
        torch.save({"params": {"w": Payload(str(marker))}}, path / poisoned)
    files = {str(p.relative_to(path)): {"bytes": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
             for p in path.rglob("*") if p.is_file()}
    (path / "COMMIT.json").write_text(json.dumps({"format": 1, "step": 1, "epoch": 1, "world_size": 1,
                                                  "files": files}))
    return path


def test_a_missing_dataset_path(tmp_path):
    line = one_line(mvrec("train", "--config", str(DEMO), "data.prepare_with=null",
                          f"data.dataset_dir={tmp_path / 'nope'}", f"train.storage_path={tmp_path}"), 2)
    assert line.startswith(f"mvrec train: error: data.dataset_dir={tmp_path / 'nope'} does not exist; run the "
                           "ingest job first")


def test_a_missing_ingest_input(tmp_path):
    line = one_line(mvrec("ingest", f"ingest.input={tmp_path / 'pairs.tsv'}", f"ingest.output_dir={tmp_path}"), 2)
    assert line == (f"mvrec ingest: error: ingest.input={tmp_path / 'pairs.tsv'} does not exist; point it at the "
                    "MicroLens interactions (a .tsv/.csv file, a directory or a glob) or set synthetic.enabled=true")


@pytest.mark.parametrize("args,line", [
    (["train", "train.lr=-1"], "mvrec train: error: train.lr: must be > 0, got -1.0"),
    (["train", "train.nope=1"], "mvrec train: error: train.nope: unknown key"),
    (["ingest", "--config", str(INGEST_DEMO), "ingest.nope=1"], "mvrec ingest: error: ingest.nope: unknown key"),
    (["eval", "x", "--split", "train"], "mvrec eval: error: argument --split: invalid choice: 'train'"),
])
def test_a_config_error(capsys, args, line):
    assert one_line_here(capsys, *args).startswith(line)


def test_a_checkpoint_that_does_not_exist(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoint-step000000010").mkdir(parents=True)  # never committed
    line = one_line_here(capsys, "eval", str(run))
    assert line == (f"mvrec eval: error: {run} has no finished checkpoint (no checkpoint-step*/ with COMMIT.json); "
                    "train longer or pass a checkpoint directory")
    line = one_line_here(capsys, "eval", str(tmp_path / "gone"))
    assert line.startswith(f"mvrec eval: error: {tmp_path / 'gone'} does not exist; pass a run directory")


def test_a_checkpoint_that_does_not_verify(tmp_path, capsys):
    ckpt = fake_checkpoint(tmp_path / "run" / "checkpoint-step000000001", tmp_path / "marker", poisoned=None)
    (ckpt / "state.json").write_text("{}")  # no longer what COMMIT.json recorded
    line = one_line_here(capsys, "eval", str(ckpt))
    assert line.startswith(f"mvrec eval: error: checkpoint={ckpt} does not verify (")
    assert line.endswith("it is incomplete, corrupt or was tampered with; use another checkpoint "
                         "(`mvrec runs show <run dir>`)")


@pytest.mark.parametrize("poisoned", ["sparse/.metadata", "dense.pt", "rng-rank0.pt"])
def test_eval_refuses_a_checkpoint_that_would_unpickle_data(tmp_path, capsys, poisoned):
    marker = tmp_path / "unpickled"
    ckpt = fake_checkpoint(tmp_path / "run" / "checkpoint-step000000001", marker, poisoned=poisoned)
    line = one_line_here(capsys, "eval", str(ckpt))
    assert line.startswith(f"mvrec eval: error: checkpoint={ckpt}")
    assert ("refused to load checkpoint metadata" in line) if poisoned == "sparse/.metadata" else (
        f"refused to load {poisoned}" in line)
    assert not marker.exists()


def test_train_refuses_to_resume_from_a_checkpoint_that_would_unpickle_data(tmp_path, capsys):
    marker = tmp_path / "unpickled"
    ckpt = fake_checkpoint(tmp_path / "old" / "checkpoint-step000000001", marker, poisoned="dense.pt")
    # prepare_with names a preset, so the dataset is not checked: the checkpoint is the only problem.
    line = one_line_here(capsys, "train", "--config", str(DEMO), f"train.resume={ckpt}",
                         f"data.prepare_with={INGEST_DEMO}", f"data.dataset_dir={tmp_path / 'ds'}",
                         f"train.storage_path={tmp_path / 'runs'}")
    assert line.startswith(f"mvrec train: error: train.resume={ckpt}: refused to load dense.pt (UnpicklingError")
    assert not marker.exists() and not (tmp_path / "runs").exists()


def test_eval_refuses_to_change_the_model_of_a_checkpoint(tmp_path, capsys):
    ckpt = fake_checkpoint(tmp_path / "run" / "checkpoint-step000000001", tmp_path / "marker", poisoned=None)
    line = one_line_here(capsys, "eval", str(ckpt), "model.embedding_dim=8", "eval.batch_size=64")
    assert line == ("mvrec eval: error: model.embedding_dim: the model is fixed by the checkpoint's weights; "
                    "evaluate another checkpoint instead")


def test_debug_shows_the_traceback(tmp_path):
    proc = mvrec("--debug", "eval", str(tmp_path / "gone"))
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr and "PathError" in proc.stderr


# -------------------------------------------------------------- cluster checks, through preflight
def _preflight_lines(capsys, dataset: Path, storage: Path, overrides: list[str], resources: dict,
                     num_nodes: int) -> tuple[int, list[str]]:
    from mvrec_dist.cli.errors import report_error
    from mvrec_dist.config import TrainJobConfig, load_config
    from mvrec_dist.train.launch import preflight

    cfg = load_config(TrainJobConfig, DEMO, [f"data.dataset_dir={dataset}", "data.prepare_with=null",
                                             f"train.storage_path={storage}", *overrides])
    with pytest.raises(Exception) as exc:
        preflight(cfg, resources=resources, num_nodes=num_nodes)
    status = report_error("mvrec train", exc.value)
    return status, capsys.readouterr().err.strip().splitlines()


def test_a_cluster_without_the_gpus(capsys, manifest_dataset, tmp_path):
    status, lines = _preflight_lines(capsys, manifest_dataset, tmp_path,
                                     ["parallel.use_gpu=true", "parallel.num_workers=2"], {"CPU": 16.0, "GPU": 1.0}, 1)
    assert status == 2
    assert lines == ["mvrec train: error: parallel.num_workers=2 with parallel.use_gpu=true needs 2 GPUs but the Ray "
                     "cluster has 1; lower num_workers or add GPU nodes (an autoscaling cluster: start its GPU "
                     "workers first)"]


def test_a_storage_path_the_nodes_do_not_share(capsys, manifest_dataset, tmp_path):
    from mvrec_dist.runtime.paths import SHARED_FS_TYPES, _mount_of

    fs_type = _mount_of(os.path.realpath(tmp_path), Path("/proc/self/mounts").read_text())[1]
    if fs_type in SHARED_FS_TYPES:
        pytest.skip(f"{tmp_path} is on a shared filesystem ({fs_type}) here")
    status, lines = _preflight_lines(capsys, manifest_dataset, tmp_path, [], {"CPU": 16.0}, 2)
    assert status == 2
    assert lines[0].startswith(f"mvrec train: error: data.dataset_dir={manifest_dataset} is a local path")
    assert lines[1].startswith(f"mvrec train: error: train.storage_path={tmp_path} is a local path")
    assert lines[1].endswith("but the cluster has 2 nodes; use a shared filesystem mount (NFS, Lustre, a "
                             "ReadWriteMany volume) or an s3:// / gs:// URI")
