"""``mvrec runs list`` / ``show`` / ``compare`` on fabricated run directories (finished, in progress, failed, stale)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mvrec_dist.cli import main
from mvrec_dist.train import curves
from tests.helpers.run_dirs import write_run

METRICS = {"hr@10": 0.1, "ndcg@10": 0.05, "hr@20": 0.2, "ndcg@20": 0.07, "users": 100, "seconds": 0.5}


def _checkpoint(run: Path, step: int, *, epoch: int, best_step: int, history: list, committed: bool = True) -> None:
    ckpt = run / f"checkpoint-step{step:09d}"
    ckpt.mkdir(parents=True)
    (ckpt / "state.json").write_text(json.dumps({"step": step, "epoch": epoch, "epoch_step": 0,
                                                 "best_step": best_step, "history": history}))
    (ckpt / "config.json").write_text(json.dumps({"eval": {"select_metric": "ndcg@10"}}))
    if committed:
        (ckpt / "COMMIT.json").write_text(json.dumps({"format": 1, "step": step, "epoch": epoch, "files": {}}))


def _history(*ndcgs: float) -> list:
    return [{"epoch": e, "step": 10 * (e + 1), "elapsed_s": 1.0, "metrics": {**METRICS, "ndcg@10": v}}
            for e, v in enumerate(ndcgs)]


def _age(path: Path, seconds: float) -> None:
    for p in [path, *path.rglob("*")]:
        t = time.time() - seconds
        os.utime(p, (t, t))


@pytest.fixture
def storage(tmp_path) -> Path:
    """Four runs: finished, in progress (fresh heartbeat), failed (recorded), stale (driver gone)."""
    done = tmp_path / "done"
    _checkpoint(done, 20, epoch=2, best_step=10, history=_history(0.05, 0.04))
    _checkpoint(done, 10, epoch=1, best_step=10, history=_history(0.05))
    (done / "result.json").write_text(json.dumps({
        "final": True, "best_epoch": 0, "epochs": 2, "steps": 20, "sequences_per_s": 1234.0, "targets_per_s": 5678.0,
        "train_seconds": 3.0, "peak_rss_mib_max": 512.0,
        **{f"valid/{k}": v for k, v in METRICS.items()}, **{f"test/{k}": v / 2 for k, v in METRICS.items()}}))
    (done / "evals").mkdir()
    (done / "evals" / "checkpoint-step000000010-test.json").write_text(json.dumps({**METRICS, "split": "test"}))
    _age(done, 7200)

    running = tmp_path / "running"
    _checkpoint(running, 10, epoch=1, best_step=10, history=_history(0.03))
    _checkpoint(running, 15, epoch=1, best_step=10, history=_history(0.03), committed=False)  # being written
    (running / "status.json").write_text(json.dumps({"status": "running", "updated": time.time()}))

    failed = tmp_path / "failed"
    failed.mkdir()
    (failed / "status.json").write_text(json.dumps({"status": "failed", "error": "data.dataset_dir=/x does not exist"}))

    stale = tmp_path / "stale"
    _checkpoint(stale, 10, epoch=1, best_step=10, history=_history(0.02))
    (stale / "status.json").write_text(json.dumps({"status": "running"}))
    _age(stale, 3 * 3600)

    (tmp_path / "not-a-run").mkdir()  # other directories are ignored
    return tmp_path


def test_list_shows_status_checkpoint_and_metrics(storage, capsys):
    assert main(["runs", "list", str(storage)]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert set(rows) == {"done", "running", "failed", "stale"}
    assert "finished" in rows["done"] and "step 20 (end of epoch 1)" in rows["done"]
    assert "ndcg@10 0.0500 @ epoch 0" in rows["done"] and "ndcg@10 0.0250" in rows["done"]  # best valid, test
    assert "in progress" in rows["running"] and "step 10 (end of epoch 0)" in rows["running"]
    assert "failed" in rows["failed"] and "failed" in rows["stale"]


def test_list_json(storage, capsys):
    assert main(["runs", "list", str(storage), "--json"]) == 0
    runs = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert runs["done"]["test"]["ndcg@10"] == pytest.approx(0.025)
    assert runs["done"]["best_valid"]["ndcg@10"] == 0.05 and runs["done"]["best_step"] == 10
    assert runs["failed"]["detail"] == "data.dataset_dir=/x does not exist"
    assert "resubmit the same command" in runs["stale"]["detail"]
    assert runs["running"]["checkpoints"][0] == {"name": "checkpoint-step000000015", "step": 15, "committed": False,
                                                 "epoch": None, "epoch_step": None}


def test_a_long_stale_after_keeps_a_silent_run_in_progress(storage, capsys):
    assert main(["runs", "list", str(storage), "--json", "--stale-after", str(10 * 3600)]) == 0
    assert {r["name"]: r["status"] for r in json.loads(capsys.readouterr().out)}["stale"] == "in progress"


def test_show_by_name_and_by_path(storage, capsys):
    assert main(["runs", "show", "done", "--storage-path", str(storage)]) == 0
    by_name = capsys.readouterr().out
    assert main(["runs", "show", str(storage / "done")]) == 0
    assert capsys.readouterr().out == by_name
    assert "status: finished" in by_name
    assert "checkpoint-step000000010  end of epoch 0  committed, best" in by_name
    assert "test: hr@10 0.0500 ndcg@10 0.0250 hr@20 0.1000 ndcg@20 0.0350" in by_name
    assert "throughput: 1,234 sequences/s" in by_name and "memory: peak RSS 512 MiB" in by_name
    assert "eval checkpoint-step000000010-test: hr@10 0.1000" in by_name
    assert "  epoch 1 step 20: hr@10 0.1000 ndcg@10 0.0400 hr@20 0.2000" in by_name


def test_show_marks_an_unfinished_checkpoint(storage, capsys):
    assert main(["runs", "show", str(storage / "running")]) == 0
    out = capsys.readouterr().out
    assert "status: in progress" in out and "checkpoint-step000000015  unfinished  UNFINISHED" in out


def test_an_empty_storage_path_has_no_runs(tmp_path, capsys):
    assert main(["runs", "list", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == f"no runs under {tmp_path}"


@pytest.mark.parametrize("argv,message", [
    (["runs", "list", "{tmp}/nope"], "mvrec runs list: error: storage path {tmp}/nope does not exist or is not a "
                                     "directory; pass the train.storage_path your runs were written to"),
    (["runs", "show", "nope", "--storage-path", "{tmp}"], "mvrec runs show: error: run {tmp}/nope does not exist or "
                                                          "is not a directory; pass a run directory or a name that "
                                                          "`mvrec runs list` shows"),
    (["runs", "compare", "{tmp}", "nope", "--storage-path", "{tmp}"],
     "mvrec runs compare: error: run {tmp}/nope does not exist or is not a directory; pass a run directory or a name "
     "that `mvrec runs list` shows"),
])
def test_a_missing_path_is_one_line(tmp_path, argv, message):
    argv = [a.format(tmp=tmp_path) for a in argv]
    proc = subprocess.run([sys.executable, "-m", "mvrec_dist.cli", *argv], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [message.format(tmp=tmp_path)]


@pytest.fixture
def drawn(monkeypatch) -> list:
    """The data behind every figure the command draws (``plot_curves``' return value), in order."""
    panels: list = []
    real = curves.plot_curves

    def recording(*args, **kwargs):
        panels.append(real(*args, **kwargs))
        return panels[-1]

    monkeypatch.setattr(curves, "plot_curves", recording)
    return panels


def test_show_plot_draws_the_run(tmp_path, monkeypatch, capsys, drawn):
    write_run(tmp_path / "runs" / "done", [9.0, 8.0, 7.5], [0.03, 0.05, 0.04])
    monkeypatch.chdir(tmp_path)
    assert main(["runs", "show", "done", "--plot"]) == 0
    out = capsys.readouterr().out
    assert "status: finished" in out
    assert out.rstrip().endswith("curves: done-curves.png (train loss, valid hr@10, valid hr@20, valid ndcg@10, "
                                 "valid ndcg@20)")
    assert (tmp_path / "done-curves.png").read_bytes().startswith(b"\x89PNG")
    (panels,) = drawn
    loss, ndcg = panels[curves.LOSS_PANEL][0], panels["valid ndcg@10"][0]
    assert loss.epochs == (0, 1, 2) and loss.values == (9.0, 8.0, 7.5)
    assert ndcg.values == (0.03, 0.05, 0.04) and (ndcg.best_epoch, ndcg.best_value) == (1, 0.05)


def test_show_plot_with_json_keeps_stdout_json(tmp_path, capsys):
    run = write_run(tmp_path / "done", [9.0], [0.03])
    assert main(["runs", "show", str(run), "--json", "--plot", "--output", str(tmp_path / "out" / "c.png")]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["name"] == "done"
    assert captured.err.startswith(f"curves: {tmp_path}/out/c.png (train loss, ")


def test_show_plot_of_a_run_with_nothing_recorded_yet(tmp_path, capsys, drawn):
    (tmp_path / "new" / "logs").mkdir(parents=True)
    assert main(["runs", "show", str(tmp_path / "new"), "--plot", "--output", str(tmp_path / "new.png")]) == 0
    assert f"curves: {tmp_path}/new.png (nothing yet: no epoch has finished)" in capsys.readouterr().out
    assert (tmp_path / "new.png").exists() and [s.epochs for s in drawn[0][curves.LOSS_PANEL]] == [()]


def test_compare_prints_a_table_and_draws_every_run(tmp_path, monkeypatch, capsys, drawn):
    storage = tmp_path / "runs"
    write_run(storage / "id", [9.0, 8.0, 7.5], [0.03, 0.05, 0.04])
    write_run(storage / "text", [9.5, 8.5], [0.02], finished=False)
    monkeypatch.chdir(tmp_path)
    assert main(["runs", "compare", "id", str(storage / "text")]) == 0
    *table, last = capsys.readouterr().out.splitlines()
    rows = {line[:14].strip(): line[14:].split() for line in table}
    assert rows["run"] == ["id", "text"] and rows["status"] == ["finished", "in", "progress"]
    assert rows["epochs"] == ["3", "2"] and rows["best epoch"] == ["1", "0"]
    assert rows["time to best"] == ["4s", "-"] and rows["sequences/s"] == ["1,000", "1,000"]
    assert rows["valid ndcg@10"] == ["0.0500", "0.0200"] and rows["test ndcg@10"] == ["0.0250", "-"]
    assert rows["test from"] == ["result.json", "-"]
    assert last.startswith("curves: runs-compare.png (train loss, valid hr@10")
    assert (tmp_path / "runs-compare.png").read_bytes().startswith(b"\x89PNG")
    (panels,) = drawn
    assert [(s.label, s.epochs, s.best_epoch) for s in panels["valid ndcg@10"]] == [("id", (0, 1, 2), 1),
                                                                                 ("text", (0,), 0)]
    assert [s.values for s in panels[curves.LOSS_PANEL]] == [(9.0, 8.0, 7.5), (9.5, 8.5)]


def test_compare_json(tmp_path, capsys):
    a, b = write_run(tmp_path / "a", [9.0], [0.03]), write_run(tmp_path / "b", [9.0, 8.0], [0.03, 0.04])
    assert main(["runs", "compare", str(a), str(b), "--json", "--output", str(tmp_path / "cmp.png")]) == 0
    captured = capsys.readouterr()
    runs = json.loads(captured.out)
    assert [(r["name"], r["best_epoch"], r["epochs"]) for r in runs] == [("a", 0, 1), ("b", 1, 2)]
    assert runs[1]["valid"]["ndcg@10"] == {"0": 0.03, "1": 0.04}
    assert captured.err.startswith(f"curves: {tmp_path}/cmp.png")
