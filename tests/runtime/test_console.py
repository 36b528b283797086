"""What a person sees: known warnings filtered by exact message and category (others kept), progress
events drawn as lines and bars, thinned on their way to the driver, and library output sent to files.

The whole path under Ray Train (worker log files, the driver's queue, the demo's line count) is
covered end to end by tests/jobs/test_console_output.py.
"""

from __future__ import annotations

import io
import logging
import os
import warnings

import pytest

from mvrec_dist.runtime import console
from mvrec_dist.runtime.console import (KNOWN_WARNINGS, Console, QueueSink, install_warning_filters, library_logs,
                                        redirect_output, run_log_dir)

CLASS_WARNINGS = [w for w in KNOWN_WARNINGS if not isinstance(w.category, str)]
LOG_WARNINGS = [w for w in KNOWN_WARNINGS if isinstance(w.category, str)]
# The exact messages the libraries raise (KNOWN_WARNINGS holds them as escaped regexes).
RAISED = {
    "torch.distributed.c10d_logger": "`torch.distributed.all_gather_into_tensor` is deprecated. Please use "
                                     "`torch.distributed.all_gather_single` instead.",
    "torch.distributed.checkpoint.default_planner": "Please use DTensor instead and we are deprecating ShardedTensor.",
    "torch.fx._symbolic_trace": "is_fx_tracing will return true for both fx.symbolic_trace and torch.export. Please "
                                "use is_fx_tracing_symbolic_tracing() for specifically fx.symbolic_trace or "
                                "torch.compiler.is_compiling() for specifically torch.export/compile.",
}


def _shown(message: str, category: type[Warning], module: str) -> bool:
    """Whether ``message`` warned from ``module`` gets through once the filters are installed."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        install_warning_filters()
        warnings.warn_explicit(message, category, filename=f"{module.replace('.', '/')}.py", lineno=1, module=module)
    return len(caught) == 1


def test_every_known_warning_says_why_and_every_raised_message_is_known():
    assert all(len(w.why) > 40 for w in KNOWN_WARNINGS)
    assert len(KNOWN_WARNINGS) == len(RAISED)


@pytest.mark.parametrize("module", ["torch.distributed.c10d_logger", "torch.distributed.checkpoint.default_planner"])
def test_a_known_library_warning_is_filtered_by_its_exact_message_and_category(module):
    message = RAISED[module]
    assert not _shown(message, FutureWarning, module)
    assert _shown(message, UserWarning, module)  # another category: kept
    assert _shown("Please use something else instead.", FutureWarning, module)  # another message: kept
    assert _shown(message.replace("deprecat", "remov"), FutureWarning, module)


def test_the_sharded_tensor_deprecation_still_warns_from_this_projects_code():
    message = RAISED["torch.distributed.checkpoint.default_planner"]
    assert _shown(message, FutureWarning, "mvrec_dist.parallel.sharding")


def test_a_known_library_log_record_is_dropped_and_its_logger_keeps_the_others(caplog):
    [known] = LOG_WARNINGS
    install_warning_filters()
    install_warning_filters()  # idempotent: one filter
    logger = logging.getLogger(known.category)
    assert sum(isinstance(f, console._MessageFilter) for f in logger.filters) == 1
    with caplog.at_level(logging.WARNING, logger=known.category):
        logger.warning(RAISED[known.category])
        logger.warning("is_fx_tracing is about something else")
    assert [r.getMessage() for r in caplog.records] == ["is_fx_tracing is about something else"]


def test_without_a_tty_lines_print_and_a_bar_is_a_status_line_now_and_then(capsys, monkeypatch):
    draw = Console(tty=False)
    draw(("open", 1, "epoch 0", 4, "step", 0))
    draw(("update", 1, 1, "loss 8.0000, 100 seq/s"))  # within STATUS_SECONDS of opening: nothing
    draw(("line", "checkpoint checkpoint-step000000001"))
    monkeypatch.setattr(console, "STATUS_SECONDS", 0.0)
    draw(("update", 1, 2, "loss 7.5000, 100 seq/s"))
    draw(("close", 1))
    draw(("update", 1, 3, "late"))  # a closed bar ignores stragglers
    out, err = capsys.readouterr()
    assert out == "checkpoint checkpoint-step000000001\n"
    [status] = err.splitlines()
    assert status.startswith("epoch 0:  50% 2/4 [") and status.endswith("step/s, loss 7.5000, 100 seq/s]")


def test_on_a_tty_a_bar_is_drawn_and_lines_go_around_it(capsys):
    draw = Console(tty=True)
    draw(("open", 1, "valid", 100, "users", 0))
    draw(("update", 1, 50, ""))
    draw(("line", "epoch 0 done"))
    draw.close()  # closes what is left open
    out, err = capsys.readouterr()
    assert out == "epoch 0 done\n"
    assert "valid:" in err and "50/100" in err


class FakeQueue:
    def __init__(self, fail: bool = False):
        self.items, self.fail = [], fail

    def put(self, item):
        if self.fail:
            raise ConnectionError("the queue actor died")
        self.items.append(item)


def test_a_worker_sends_lines_at_once_and_thins_bar_updates():
    queue = FakeQueue()
    sink = QueueSink(queue)
    sink(("open", 0, "epoch 0", 1000, "step", 0))
    for n in range(1, 1001):
        sink(("update", 0, n, f"loss {n}"))
    sink(("line", "a line"))
    sink(("close", 0))
    kinds = [e[0] for e in queue.items]
    assert kinds[0] == "open" and kinds[-2:] == ["update", "close"] and "line" in kinds
    updates = [e for e in queue.items if e[0] == "update"]
    assert len(updates) <= 3  # the first, maybe one more, and the last before closing
    assert updates[0][2] == 1 and updates[-1] == ("update", 0, 1000, "loss 1000")


def test_a_worker_whose_driver_is_gone_keeps_its_lines(capsys):
    sink = QueueSink(FakeQueue(fail=True))
    sink(("line", "valid epoch 0: hr@10 0.1"))
    assert capsys.readouterr().out == "valid epoch 0: hr@10 0.1\n"


def test_redirect_output_takes_file_descriptors_one_and_two(tmp_path, capfd):
    path = tmp_path / "logs" / "train-rank0.log"
    with redirect_output(str(path)):
        print("from python", flush=True)
        os.system("echo from a child process; echo to stderr >&2")
    print("after")
    text = path.read_text()
    assert "from python" in text and "from a child process" in text and "to stderr" in text
    out, err = capfd.readouterr()
    assert out == "after\n" and err == ""


def test_run_log_dir_is_the_runs_logs_or_a_local_copy_for_remote_storage():
    assert run_log_dir("/data/runs", "r1") == "/data/runs/r1/logs"
    assert run_log_dir("file:///data/runs", "r1") == "/data/runs/r1/logs"
    assert run_log_dir("s3://bucket/runs", "r1") == os.path.join("runs-local", "r1", "logs")


def test_library_records_go_to_the_driver_log_once_the_run_exists_and_errors_stay_on_the_console(tmp_path, capfd,
                                                                                                  monkeypatch):
    log_file = tmp_path / "run" / "logs" / "driver.log"
    # Ray's own console handler (the "ray" logger does not propagate) keeps the stream it was made
    # with: in a full test run that is an earlier test's captured stderr. Read it from a stream of ours.
    ray_console = io.StringIO()
    for h in logging.getLogger("ray").handlers:
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
            monkeypatch.setattr(h, "stream", ray_console)
    with library_logs(str(log_file), verbose=False):
        logging.getLogger("ray.data._internal.execution.streaming_executor").info("Starting execution of Dataset d")
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("a library's warning", UserWarning)
        assert not log_file.parent.exists()  # held: the run directory is not claimed yet
        log_file.parent.mkdir(parents=True)
        logging.getLogger("ray._private.worker").info("Started a local Ray instance.")
        logging.getLogger("ray.train").error("a worker died")
    text = log_file.read_text()
    for line in ("Starting execution of Dataset d", "a library's warning", "Started a local Ray instance.",
                 "a worker died"):
        assert line in text
    out, err = capfd.readouterr()
    err += ray_console.getvalue()
    assert "Starting execution" not in out + err and "Started a local Ray" not in out + err
    assert "a library's warning" not in err and "a worker died" in err
    # Afterwards Ray's console handler is as it was.
    logging.getLogger("ray").info("after the job")
    assert "after the job" in capfd.readouterr().err + ray_console.getvalue()


def test_a_driver_log_whose_run_never_started_is_not_written(tmp_path):
    log_file = tmp_path / "run" / "logs" / "driver.log"
    with library_logs(str(log_file), verbose=False):
        logging.getLogger("ray").warning("Token authentication is enabled for this Ray cluster.")
    assert not (tmp_path / "run").exists()


def test_the_relay_queue_lives_on_the_drivers_node(monkeypatch):
    """A retry's queue left to the scheduler could land on a worker node that just died (not yet marked dead):
    every progress line of that attempt was lost. The queue is pinned to the driver's node, which drains it."""
    import ray
    import ray.util.queue

    made = {}

    class FakeQueue:
        def __init__(self, actor_options):
            made.update(actor_options)

        def get(self, timeout):
            raise ray.util.queue.Empty

        def qsize(self):
            return 0

        def get_nowait_batch(self, n):
            return []

        def shutdown(self, force):
            pass

    class Context:
        def get_node_id(self):
            return "ab" * 28

    monkeypatch.setattr(ray.util.queue, "Queue", FakeQueue)
    monkeypatch.setattr(ray, "get_runtime_context", lambda: Context())
    with console.console_relay(Console(tty=False)):
        pass
    strategy = made["scheduling_strategy"]
    assert made["num_cpus"] == 0 and strategy.node_id == "ab" * 28 and strategy.soft is False
