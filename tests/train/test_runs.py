"""Reading run directories: which checkpoint ``best`` / ``latest`` / a name resolve to, and status files."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from mvrec_dist.runtime.paths import PathError
from mvrec_dist.train.runs import (checkpoint_position, read_json, resolve_checkpoint, summarize_run,
                                   write_status)


def _checkpoint(run: Path, step: int, *, best_step: int, committed: bool = True, epoch_step: int = 0) -> Path:
    ckpt = run / f"checkpoint-step{step:09d}"
    ckpt.mkdir(parents=True)
    (ckpt / "state.json").write_text(json.dumps({"step": step, "epoch": step // 10, "epoch_step": epoch_step,
                                                 "best_step": best_step, "history": []}))
    if committed:
        (ckpt / "COMMIT.json").write_text("{}")
    return ckpt


@pytest.fixture
def run(tmp_path) -> Path:
    run = tmp_path / "run"
    _checkpoint(run, 10, best_step=10)
    _checkpoint(run, 30, best_step=10)
    _checkpoint(run, 40, best_step=10, committed=False)  # interrupted while written: never chosen
    return run


@pytest.mark.parametrize("which,name", [("best", "checkpoint-step000000010"), ("latest", "checkpoint-step000000030"),
                                        ("checkpoint-step000000030", "checkpoint-step000000030")])
def test_which_checkpoint(run, which, name):
    assert resolve_checkpoint(str(run), which) == (str(run), f"{run}/{name}")


def test_a_checkpoint_directory_is_taken_as_is(run):
    assert resolve_checkpoint(f"{run}/checkpoint-step000000010/") == (str(run), f"{run}/checkpoint-step000000010")


@pytest.mark.parametrize("which,fragment", [
    ("checkpoint-step000000040", "has no finished checkpoint checkpoint-step000000040; pass best, latest or one of"),
    ("checkpoint-step000000099", "has no finished checkpoint checkpoint-step000000099"),
])
def test_unfinished_or_unknown_names_are_refused(run, which, fragment):
    with pytest.raises(PathError, match=fragment):
        resolve_checkpoint(str(run), which)


def test_a_pruned_best_checkpoint_is_named(tmp_path):
    run = tmp_path / "run"
    _checkpoint(run, 30, best_step=20)
    with pytest.raises(PathError, match="the best checkpoint checkpoint-step000000020 is missing or unfinished; "
                                        "pass --checkpoint latest"):
        resolve_checkpoint(str(run))


def test_a_run_that_never_validated_has_no_best(tmp_path):
    run = tmp_path / "run"
    _checkpoint(run, 5, best_step=-1, epoch_step=5)
    with pytest.raises(PathError, match="has not validated yet"):
        resolve_checkpoint(str(run))


@pytest.mark.parametrize("checkpoint,text", [
    ({"epoch": 3, "epoch_step": 0}, "end of epoch 2"),
    ({"epoch": 2, "epoch_step": 7}, "epoch 2, step 7 of it"),
    ({"epoch": None, "epoch_step": None}, "unfinished"),
])
def test_checkpoint_position(checkpoint, text):
    assert checkpoint_position(checkpoint) == text


def test_status_round_trip_and_heartbeat_age(tmp_path):
    run = tmp_path / "run"
    write_status(str(run), "failed", error="boom")
    assert read_json(f"{run}/status.json")["error"] == "boom"
    assert summarize_run(str(run)).status == "failed"
    write_status(str(run), "running")
    assert summarize_run(str(run)).status == "in progress"
    assert summarize_run(str(run), now=time.time() + 3600, stale_after=600).status == "failed"
