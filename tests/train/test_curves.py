"""Run curves: what ``load_curves`` reads from recorded runs and what ``plot_curves`` draws (the data, not pixels)."""

from __future__ import annotations

import json

import pytest

from mvrec_dist.train import curves as curves_module
from mvrec_dist.train.curves import (CURVES_NAME, LOSS_PANEL, curve_panels, load_curves, plot_curves,
                                     save_run_curves)
from tests.helpers.run_dirs import SEQUENCES_PER_S, valid_metrics, write_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PANELS = [LOSS_PANEL, "valid hr@10", "valid ndcg@10", "valid hr@20", "valid ndcg@20"]


def test_a_finished_run(tmp_path):
    run = write_run(tmp_path / "done", [9.0, 8.0, 7.5], [0.03, 0.05, 0.04])
    c = load_curves(str(run))
    assert c.status == "finished" and c.epochs == 3 and c.best_epoch == 1
    assert c.loss == {0: 9.0, 1: 8.0, 2: 7.5}  # the epoch records' mean loss, not the in-epoch train records
    assert c.metric_names == ["hr@10", "hr@20", "ndcg@10", "ndcg@20"]  # as recorded: no config to order them
    assert c.valid["ndcg@10"] == {0: 0.03, 1: 0.05, 2: 0.04}
    assert c.valid_at_best == pytest.approx(valid_metrics(0.05))
    assert c.test == pytest.approx({k: v / 2 for k, v in valid_metrics(0.05).items()})
    assert c.test_source == "result.json"
    assert c.sequences_per_s == SEQUENCES_PER_S and c.seconds_to_best == 4.0


def test_panels_hold_every_epoch_and_mark_the_best(tmp_path):
    run = write_run(tmp_path / "done", [9.0, 8.0, 7.5], [0.03, 0.05, 0.04])
    out = tmp_path / "figs" / "curves.png"
    panels = plot_curves([load_curves(str(run))], str(out))
    assert out.read_bytes().startswith(PNG_MAGIC)
    assert sorted(panels) == sorted(PANELS) and list(panels)[0] == LOSS_PANEL
    (loss,), (ndcg,) = panels[LOSS_PANEL], panels["valid ndcg@10"]
    assert (loss.label, loss.epochs, loss.values, loss.best_epoch, loss.best_value) == ("done", (0, 1, 2),
                                                                                         (9.0, 8.0, 7.5), 1, 8.0)
    assert ndcg.epochs == (0, 1, 2) and ndcg.values == (0.03, 0.05, 0.04) and ndcg.best_value == 0.05
    assert panels["valid hr@20"][0].values == pytest.approx((0.09, 0.15, 0.12))


def test_an_unfinished_run_takes_its_best_epoch_and_throughput_from_the_log(tmp_path):
    # No result.json and no checkpoint state: the best is the newest checkpoint record marked best.
    run = write_run(tmp_path / "going", [9.0, 8.0, 7.9], [0.03, 0.05], finished=False)
    c = load_curves(str(run))
    assert c.status == "in progress" and c.epochs == 3 and c.best_epoch == 1
    assert c.valid["ndcg@10"] == {0: 0.03, 1: 0.05}  # the third epoch has not validated yet
    assert c.test is None and c.test_source is None
    assert c.sequences_per_s == SEQUENCES_PER_S and c.valid_at_best["ndcg@10"] == 0.05
    panels = plot_curves([c], str(tmp_path / "x.png"))
    assert panels[LOSS_PANEL][0].epochs == (0, 1, 2) and panels["valid ndcg@10"][0].epochs == (0, 1)


def test_a_stopped_run_tested_by_mvrec_eval(tmp_path):
    run = write_run(tmp_path / "stopped", [9.0, 8.0], [0.03, 0.05], finished=False)
    ckpt = run / "checkpoint-step000000020"
    ckpt.mkdir()
    history = [{"epoch": e, "step": 10 * (e + 1), "elapsed_s": 3.0 * (e + 1), "metrics": valid_metrics(v)}
               for e, v in enumerate([0.03, 0.05])]
    (ckpt / "state.json").write_text(json.dumps({"epoch": 2, "epoch_step": 0, "best_step": 20, "history": history}))
    (ckpt / "COMMIT.json").write_text("{}")
    (run / "evals").mkdir()
    (run / "evals" / "checkpoint-step000000020-test.json").write_text(json.dumps({"hr@10": 0.07, "users": 100}))
    c = load_curves(str(run))
    assert c.best_epoch == 1 and c.seconds_to_best == 6.0  # from the checkpoint's validation history
    assert c.test == {"hr@10": 0.07} and c.test_source == "evals/checkpoint-step000000020-test.json"


def test_a_one_epoch_run(tmp_path):
    run = write_run(tmp_path / "one", [9.0], [0.02])
    panels = plot_curves([load_curves(str(run))], str(tmp_path / "one.png"))
    assert (tmp_path / "one.png").read_bytes().startswith(PNG_MAGIC)
    assert all(s.epochs == (0,) and s.best_epoch == 0 and s.best_value is not None
               for series in panels.values() for s in series)


def test_a_redone_epoch_keeps_its_last_record_and_bad_values_are_left_out(tmp_path):
    run = write_run(tmp_path / "retried", [9.0, 8.0], [0.03, 0.05])
    log = run / "logs" / "metrics.jsonl"
    extra = [{"kind": "epoch", "epoch": 1, "step": 20, "loss": 7.0},  # epoch 1 redone after a retry
             {"kind": "valid", "epoch": 1, "step": 20, "hr@10": float("nan"), "ndcg@10": 0.06}]
    log.write_text(log.read_text() + "".join(json.dumps(r) + "\n" for r in extra) + '{"kind": "va')  # cut short
    c = load_curves(str(run))
    assert c.loss == {0: 9.0, 1: 7.0}
    assert c.valid["ndcg@10"] == {0: 0.03, 1: 0.06} and c.valid["hr@10"] == {0: 0.06}  # NaN: no point
    assert c.valid["hr@20"] == {0: 0.09}  # missing from the redone record


def test_a_run_without_records_draws_empty_panels(tmp_path):
    (tmp_path / "empty").mkdir()
    c = load_curves(str(tmp_path / "empty"))
    assert (c.epochs, c.best_epoch, c.loss, c.metric_names, c.sequences_per_s) == (0, None, {}, [], None)
    panels = plot_curves([c], str(tmp_path / "empty.png"))
    assert list(panels) == [LOSS_PANEL] and panels[LOSS_PANEL][0].epochs == ()
    assert (tmp_path / "empty.png").read_bytes().startswith(PNG_MAGIC)


def test_several_runs_share_panels_and_keep_their_positions(tmp_path):
    a = write_run(tmp_path / "a" / "same", [9.0, 8.0], [0.03, 0.05])
    b = write_run(tmp_path / "b" / "same", [9.5], [0.02], finished=False)
    c = write_run(tmp_path / "c", [], [], finished=False)
    runs = [load_curves(str(p)) for p in (a, b, c)]
    panels = curve_panels(runs)
    assert [s.label for s in panels["valid ndcg@10"]] == [str(a), str(b), "c"]  # names alike: directories
    assert [s.epochs for s in panels[LOSS_PANEL]] == [(0, 1), (0,), ()]
    assert [s.best_epoch for s in panels["valid ndcg@10"]] == [1, 0, None]
    assert plot_curves(runs, str(tmp_path / "cmp.png")) == panels


def test_the_run_figure_is_written_into_the_run(tmp_path):
    run = write_run(tmp_path / "done", [9.0, 8.0], [0.03, 0.05])
    said: list[str] = []
    assert save_run_curves(str(run), said.append) == f"{run}/{CURVES_NAME}"
    assert (run / CURVES_NAME).read_bytes().startswith(PNG_MAGIC) and said == []


def test_the_run_figure_on_an_fsspec_uri(tmp_path):
    fsspec = pytest.importorskip("fsspec")
    local = write_run(tmp_path / "done", [9.0, 8.0], [0.03, 0.05])
    fs = fsspec.filesystem("memory")
    for path in (local / "result.json", local / "logs" / "metrics.jsonl"):
        fs.pipe(f"/curves-test/done/{path.relative_to(local)}", path.read_bytes())
    try:
        assert load_curves("memory://curves-test/done").best_epoch == 1
        assert save_run_curves("memory://curves-test/done") == f"memory://curves-test/done/{CURVES_NAME}"
        assert fs.cat(f"/curves-test/done/{CURVES_NAME}").startswith(PNG_MAGIC)
    finally:
        fs.rm("/curves-test", recursive=True)


def test_a_failed_figure_is_one_warning_not_an_error(tmp_path, monkeypatch):
    run = write_run(tmp_path / "done", [9.0], [0.03])

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(curves_module, "plot_curves", broken)
    said: list[str] = []
    assert save_run_curves(str(run), said.append) is None
    assert len(said) == 1 and said[0].startswith(f"warning: could not draw {run}/{CURVES_NAME} (OSError: ")
    assert "No space left on device" in said[0] and "--plot" in said[0]


def test_a_run_without_records_gets_no_figure(tmp_path):
    (tmp_path / "empty" / "logs").mkdir(parents=True)
    said: list[str] = []
    assert save_run_curves(str(tmp_path / "empty"), said.append) is None
    assert not (tmp_path / "empty" / CURVES_NAME).exists() and said == []
