"""What a person sees: the project's lines and progress bars on the console, every library's output in the run's logs.

By default a job's console shows this project's lines only: a progress bar (tqdm: rate, ETA) while an epoch or
an evaluation runs, one line per epoch, validation and checkpoint, and the job's summary. What the libraries
print goes to files instead: each Ray Train worker's stdout and stderr (fbgemm's load lines, TorchRec's planner
box, DeepSpeed, Ray Train's reports) to ``<run>/logs/<job>-rank<r>.log``, the driver's Ray and Ray Data log
records to ``<run>/logs/driver.log``. ``ray.verbose=true`` (``--verbose``) shows all of it as Ray streams it.

* ``KNOWN_WARNINGS`` / ``install_warning_filters``: the one list of warnings this project cannot fix, each
  matched by exact message and category, with the reason; installed on the driver and in every worker.
* Driver: ``library_logs`` routes Ray's log records while a job is connected; ``Console`` draws progress
  events; ``console_relay`` feeds it from a Ray queue while ``TorchTrainer.fit`` blocks.
* Workers: ``logged_worker`` (Ray Train's per-worker function) moves the rank's output into its log file
  *before* the job's worker module (TorchRec, fbgemm, DeepSpeed) is imported; ``worker_sink`` sends rank 0's
  events to the driver.

Events are plain tuples, so Ray ships them without pickling classes: ``("line", text)``,
``("open", key, desc, total, unit, initial)``, ``("update", key, n, postfix)``, ``("close", key)``.
This module imports neither torch nor Ray at import time (Ray Train workers import it first).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import re
import sys
import threading
import time
import traceback
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator

__all__ = ["KnownWarning", "KNOWN_WARNINGS", "install_warning_filters", "library_logs", "redirect_output",
           "run_log_dir", "Console", "QueueSink", "console_relay", "logged_worker", "worker_sink", "Sink",
           "STATUS_SECONDS", "UPDATE_SECONDS"]

Sink = Callable[[tuple], None]
"""Where progress events go: a ``Console`` (draws them here) or a ``QueueSink`` (sends them to the driver)."""

STATUS_SECONDS = 30.0
"""Without a TTY (CI logs, ``ray job logs``) a running bar is written as one line at most this often."""

UPDATE_SECONDS = 0.5
"""A worker sends the driver at most one update per bar this often (the last one always)."""


@dataclass(frozen=True)
class KnownWarning:
    """A warning this project cannot fix (it comes from inside a library), filtered where it is raised."""

    message: str
    """Regex the start of the message must match (the exact text, escaped)."""
    category: type[Warning] | str
    """The ``Warning`` class, or for a library's log record the name of the logger that emits it."""
    why: str
    """Why it cannot be fixed here, and why hiding it loses nothing."""
    module: str = ""
    """Regex of the module the warning is attributed to ('' any): keeps our own call sites warning."""


KNOWN_WARNINGS: tuple[KnownWarning, ...] = (
    KnownWarning(re.escape("`torch.distributed.all_gather_into_tensor` is deprecated."), FutureWarning,
                 "DeepSpeed 0.19's ZeRO-1/2 optimizer step gathers the updated partitions with it "
                 "(deepspeed/runtime/utils.py all_gather_into_tensor_dp_groups); this project never calls it.",
                 module=r"torch\.distributed\.c10d_logger"),
    KnownWarning(re.escape("Please use DTensor instead and we are deprecating ShardedTensor."), FutureWarning,
                 "TorchRec 1.8 hands sharded tables to torch.distributed.checkpoint as ShardedTensors, and the "
                 "checkpoint planner warns while saving and loading them; our own code uses no deprecated "
                 "ShardedTensor method (parallel/sharding.py reads widths from the table specs).",
                 module=r"torch\.distributed\.checkpoint\."),
    KnownWarning(re.escape("is_fx_tracing will return true for both fx.symbolic_trace and torch.export."),
                 "torch.fx._symbolic_trace",
                 "TorchRec's sharded modules call torch.fx's is_fx_tracing(); torch logs this once per process "
                 "for a choice TorchRec makes, not this project."),
)
"""Every warning this project filters. A warning we *can* fix is fixed where it arises instead."""


class _MessageFilter(logging.Filter):
    """Drops a logger's records whose message starts with ``pattern``."""

    def __init__(self, pattern: str):
        super().__init__()
        self.pattern = pattern
        self._regex = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self._regex.match(record.getMessage())


def install_warning_filters() -> None:
    """Filter ``KNOWN_WARNINGS`` in this process (idempotent; other warnings are left alone)."""
    for known in KNOWN_WARNINGS:
        if isinstance(known.category, str):
            logger = logging.getLogger(known.category)
            if not any(isinstance(f, _MessageFilter) and f.pattern == known.message for f in logger.filters):
                logger.addFilter(_MessageFilter(known.message))
        else:  # filterwarnings drops an identical earlier filter, so repeated calls add nothing
            warnings.filterwarnings("ignore", message=known.message, category=known.category, module=known.module)


def run_log_dir(storage_path: str, run_name: str) -> str:
    """Local directory of a run's log files: ``<run>/logs`` on local storage; on remote storage a local
    ``runs-local/<run>/logs`` (rank 0 copies it into the run directory at the end)."""
    from mvrec_dist.data.fs import is_local

    if is_local(storage_path):
        return os.path.join(storage_path.removeprefix("file://"), run_name, "logs")
    return os.path.join("runs-local", run_name, "logs")


class _RunLogHandler(logging.Handler):
    """Appends records to a run's log file once its directory exists, holding earlier ones in memory.

    The driver connects to Ray (and may ingest) before it claims the run directory, and a claim with
    ``train.resume=never`` empties it: a file written earlier would count as an earlier run's leftover,
    and be deleted. Records wait until the directory is there (``_fit`` creates it), or are dropped if
    it never is (the job stopped before the run started). A file removed meanwhile is opened anew.
    """

    HELD = 10_000
    """Most records held while the directory does not exist (the oldest are kept)."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self._held: list[str] = []
        self._stream: Any = None
        self._identity: tuple[int, int] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            if os.path.isdir(os.path.dirname(self.path)):
                self._write(text)
            elif len(self._held) < self.HELD:
                self._held.append(text)
        except Exception:  # noqa: BLE001 (logging must not fail the job; Handler reports it)
            self.handleError(record)

    def _write(self, text: str | None) -> None:
        try:
            st = os.stat(self.path)
            current = (st.st_dev, st.st_ino) == self._identity
        except FileNotFoundError:
            current = False
        if not current:
            if self._stream is not None:
                self._stream.close()
            self._stream = open(self.path, "a", encoding="utf-8")
            st = os.fstat(self._stream.fileno())
            self._identity = (st.st_dev, st.st_ino)
        for line in [*self._held, *([text] if text is not None else [])]:
            self._stream.write(line + "\n")
        self._held.clear()
        self._stream.flush()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self._held and os.path.isdir(os.path.dirname(self.path)):
                self._write(None)
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        super().close()


def _console_handlers(logger: logging.Logger) -> list[logging.Handler]:
    return [h for h in logger.handlers
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]


@contextlib.contextmanager
def library_logs(log_file: str | None, *, verbose: bool) -> Iterator[None]:
    """While the block runs, this process's library log records and Python warnings go to ``log_file``.

    The console keeps errors. Covers the ``ray`` loggers (Ray's banners, Ray Data's per-dataset INFO
    lines and warnings) and everything reaching the root logger or ``warnings``; this project's own
    lines are printed, not logged, and stay on the console. ``KNOWN_WARNINGS`` are filtered either way.

    Args:
        log_file: Where the records go (appended once its directory exists, see ``_RunLogHandler``);
            None drops them (Ray Data still keeps its own log in Ray's session directory).
        verbose: Leave every handler as it is (the console shows everything).
    """
    install_warning_filters()
    if verbose:
        yield
        return
    import ray.data  # noqa: F401  (Ray Data sets up its loggers on import: they must exist to be turned down)

    handler: logging.Handler = _RunLogHandler(log_file) if log_file else logging.NullHandler()
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    errors_only = logging.StreamHandler(sys.stderr)
    errors_only.setLevel(logging.ERROR)
    root, py_warnings = logging.getLogger(), logging.getLogger("py.warnings")
    levels = [(h, h.level) for name in ("ray", "ray.data") for h in _console_handlers(logging.getLogger(name))]
    attached = [(logging.getLogger(name), handler) for name in ("ray", "ray.data")]
    attached += [(root, handler), (root, errors_only), (py_warnings, handler)]
    propagate = py_warnings.propagate
    for h, _ in levels:
        h.setLevel(max(h.level, logging.ERROR))
    for logger, h in attached:
        logger.addHandler(h)
    # Warnings as log records: into the file, and not on through the root's console handler.
    logging.captureWarnings(True)
    py_warnings.propagate = False
    try:
        yield
    finally:
        logging.captureWarnings(False)
        py_warnings.propagate = propagate
        for logger, h in attached:
            logger.removeHandler(h)
        for h, level in levels:
            h.setLevel(level)
        handler.close()


@contextlib.contextmanager
def redirect_output(path: str) -> Iterator[None]:
    """Send this process's stdout and stderr to ``path`` (appending) while the block runs.

    File descriptors 1 and 2 are redirected, so output of C++ extensions, of Ray's and of every
    Python library lands there too, and ``sys.stdout`` / ``sys.stderr`` write to them line by line
    whatever they were before (a wrapper that bypasses the descriptors included); all is restored
    afterwards.
    """
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved, streams = (os.dup(1), os.dup(2)), (sys.stdout, sys.stderr)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
        sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        sys.stdout, sys.stderr = streams
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)


class Console:
    """Draws progress events: lines on stdout; bars on stderr.

    On a TTY a bar is a live tqdm bar that disappears when closed (the line that follows keeps the
    record). Without one (CI, ``ray job logs``, a pipe) a running bar is written as one line every
    ``STATUS_SECONDS``, so a long epoch still shows signs of life and a short one adds nothing.

    Args:
        tty: Draw live bars; None: when stderr is a terminal (with a width).
    """

    def __init__(self, *, tty: bool | None = None):
        self._tty = tty
        self._bars: dict[Any, Any] = {}  # key -> tqdm (TTY) or _Status

    def __call__(self, event: tuple) -> None:
        kind, *args = event
        {"line": self._line, "open": self._open, "update": self._update, "close": self._close}[kind](*args)

    def close(self) -> None:
        """Close every bar still open (a worker that failed mid-epoch leaves one)."""
        for key in list(self._bars):
            self._close(key)

    def _is_tty(self) -> bool:
        if self._tty is None:
            # A terminal of width 0 (a pty nobody sized, as some CI runners give) would draw empty bars.
            try:
                self._tty = sys.stderr.isatty() and os.get_terminal_size(sys.stderr.fileno()).columns > 0
            except (OSError, ValueError):
                self._tty = False
        return self._tty

    def _line(self, text: str) -> None:
        if any(not isinstance(b, _Status) for b in self._bars.values()):
            from tqdm import tqdm

            tqdm.write(text, file=sys.stdout)  # clears the live bars, writes, redraws them
        else:
            print(text, file=sys.stdout, flush=True)

    def _open(self, key: Any, desc: str, total: int, unit: str, initial: int) -> None:
        self._close(key)
        if self._is_tty():
            from tqdm import tqdm

            self._bars[key] = tqdm(total=total, desc=desc, unit=unit, initial=initial, leave=False, file=sys.stderr,
                                   dynamic_ncols=True)
        else:
            self._bars[key] = _Status(desc=desc, total=total, unit=unit, n=initial)

    def _update(self, key: Any, n: int, postfix: str) -> None:
        bar = self._bars.get(key)
        if bar is None:
            return
        if bar.total is not None and n > bar.total:  # the total was an estimate (an epoch's steps): stretch it
            bar.total = n
        if isinstance(bar, _Status):
            bar.n, bar.postfix = n, postfix
            if time.monotonic() - bar.shown >= STATUS_SECONDS:
                bar.shown = time.monotonic()
                print(bar.text(), file=sys.stderr, flush=True)
            return
        bar.set_postfix_str(postfix, refresh=False)
        bar.update(n - bar.n)

    def _close(self, key: Any) -> None:
        bar = self._bars.pop(key, None)
        if bar is not None and not isinstance(bar, _Status):
            bar.close()


@dataclass
class _Status:
    """A bar without a TTY: its state, written as a line now and then."""

    desc: str
    total: int
    unit: str
    n: int
    postfix: str = ""
    start: float = 0.0
    shown: float = 0.0

    def __post_init__(self) -> None:
        self.start = self.shown = time.monotonic()

    def text(self) -> str:
        from tqdm import tqdm

        return tqdm.format_meter(self.n, self.total, time.monotonic() - self.start, prefix=self.desc, unit=self.unit,
                                 postfix=self.postfix or None,
                                 bar_format="{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} "
                                            "[{elapsed}<{remaining}, {rate_fmt}{postfix}]")


class QueueSink:
    """Sends events to the driver's console queue (rank 0 of a Ray Train job).

    Bar updates are thinned to one per ``UPDATE_SECONDS`` per bar (the last is sent before the bar
    closes), so a fast loop costs the queue a couple of calls a second. If the driver's queue is gone,
    events are drawn here instead (into this rank's log file).

    Args:
        queue: The ``ray.util.queue.Queue`` of ``console_relay``.
    """

    def __init__(self, queue: Any):
        self.queue = queue
        self._sent: dict[Any, float] = {}
        self._pending: dict[Any, tuple] = {}
        self._fallback: Console | None = None

    def __call__(self, event: tuple) -> None:
        kind = event[0]
        if kind == "update":
            key, now = event[1], time.monotonic()
            if now - self._sent.get(key, float("-inf")) < UPDATE_SECONDS:
                self._pending[key] = event
                return
            self._sent[key] = now
            self._pending.pop(key, None)
        elif kind == "close":
            self._sent.pop(event[1], None)
            pending = self._pending.pop(event[1], None)
            if pending is not None:
                self._put(pending)
        self._put(event)

    def _put(self, event: tuple) -> None:
        if self._fallback is None:
            try:
                self.queue.put(event)
                return
            except Exception:  # noqa: BLE001 (the queue died with the driver: keep the lines in this rank's log)
                self._fallback = Console(tty=False)
        self._fallback(event)


@contextlib.contextmanager
def console_relay(console: Console) -> Iterator[Any]:
    """A Ray queue whose events ``console`` draws, from a driver thread, while the block runs.

    Yields:
        The ``ray.util.queue.Queue`` to hand the workers (``QueueSink``); everything put into it
        before the block ends is drawn, in order, before this returns.
    """
    import ray
    from ray.util.queue import Empty, Queue
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # num_cpus=0: the queue must not take a CPU the Ray Train workers were sized to use. On the driver's node:
    # left to the scheduler, a retry's queue could land on a worker node that just died but is not yet marked
    # dead (Ray's health checks take ~15-30 s), and every progress line of that attempt was lost.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    queue = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})
    stop = threading.Event()

    def pump() -> None:
        while not stop.is_set():
            try:
                console(queue.get(timeout=0.25))
            except Empty:
                continue
            except Exception:  # noqa: BLE001 (the queue went away with the cluster; the job reports why)
                return

    thread = threading.Thread(target=pump, name="console-relay", daemon=True)
    thread.start()
    try:
        yield queue
    finally:
        stop.set()
        thread.join()
        with contextlib.suppress(Exception):
            for event in queue.get_nowait_batch(queue.qsize()):
                console(event)
        console.close()
        with contextlib.suppress(Exception):
            queue.shutdown(force=True)


def worker_sink(loop_config: dict, rank: int) -> Sink | None:
    """Where this rank's progress events go: the driver's queue for rank 0 under ``console_relay``, else
    None (drawn in this process)."""
    queue = (loop_config.get("console") or {}).get("queue")
    return QueueSink(queue) if queue is not None and rank == 0 else None


def logged_worker(loop_config: dict) -> None:
    """Ray Train's ``train_loop_per_worker``: run the job's worker function with this rank's output in its log file.

    ``loop_config["console"]`` holds ``entry`` (``"module:function"``, called with ``loop_config``; imported
    only after the redirection, so import-time output such as fbgemm's is in the file too), ``log_dir`` and
    ``log_name`` (the file is ``<log_dir>/<log_name>-rank<r>.log``, appended: retries follow each other),
    ``verbose`` (leave the output where Ray streams it to the driver) and ``queue`` (``worker_sink``).
    """
    import ray.train

    spec = loop_config["console"]
    install_warning_filters()
    module, _, name = spec["entry"].partition(":")
    if spec["verbose"]:
        getattr(importlib.import_module(module), name)(loop_config)
        return
    rank = ray.train.get_context().get_world_rank()
    with redirect_output(os.path.join(spec["log_dir"], f"{spec['log_name']}-rank{rank}.log")):
        print(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} {spec['log_name']} rank {rank}, pid {os.getpid()}",
              flush=True)
        try:
            getattr(importlib.import_module(module), name)(loop_config)
        except BaseException:
            traceback.print_exc()  # the driver prints one line; the whole story stays in the rank's log
            raise
