"""A pool of ranks on this machine (gloo on CPU over loopback, or nccl on local GPUs) running tasks in turn.

Each rank is a spawned process with a real process group (``mvrec_dist.parallel.process_groups``),
as in ``tests/helpers/dist.py``, but kept alive between tasks: importing torchrec and DeepSpeed and
creating the group costs seconds per process, which would dominate short benchmark tasks. A task
is a module-level function ``fn(ctx, *args, **kwargs)`` run by every rank; each rank's return value
(picklable) comes back in rank order. A task that raises on any rank closes the pool (its peers may
be stuck in a collective) and re-raises here with the rank's traceback.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection as mp_connection
import os
import socket
import time
import traceback
from typing import Any, Callable

__all__ = ["RankPool", "free_port"]


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world_size: int, port: int, threads: int, use_gpu: bool, timeout_s: int, conn) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo", RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), OMP_NUM_THREADS=str(threads),
                      RAY_USAGE_STATS_ENABLED="0")
    if not use_gpu:
        os.environ["DS_ACCELERATOR"] = "cpu"
    import torch

    torch.set_num_threads(threads)
    from mvrec_dist.parallel.process_groups import destroy_distributed, exit_rank_process, init_distributed

    ctx = init_distributed(use_gpu=use_gpu, timeout_s=timeout_s)
    try:
        while True:
            task = conn.recv()
            if task is None:
                break
            fn, args, kwargs = task
            try:
                conn.send(("ok", fn(ctx, *args, **kwargs)))
            except BaseException:  # noqa: BLE001 - the traceback travels to the driver
                conn.send(("error", traceback.format_exc()))
                break
    finally:
        destroy_distributed()
        conn.close()
    exit_rank_process(0)  # no interpreter finalization with gloo threads alive (see there)


class RankPool:
    """``world_size`` ranks on this machine with ``threads`` torch threads each; use as a context manager.

    Args:
        world_size: Number of ranks.
        threads: torch intra-op threads per rank (1 on this 2-core machine).
        use_gpu: nccl and one local GPU per rank instead of gloo on CPU.
        timeout_s: Collective timeout of the process group, and how long ``run`` waits for a rank.
    """

    def __init__(self, world_size: int, *, threads: int = 1, use_gpu: bool = False, timeout_s: int = 1800):
        self.world_size = world_size
        self.use_gpu = use_gpu
        self.threads = threads
        self.timeout_s = timeout_s
        self._procs: list[multiprocessing.Process] = []
        self._conns: list[Any] = []

    def __enter__(self) -> "RankPool":
        mp = multiprocessing.get_context("spawn")
        port = free_port()
        for rank in range(self.world_size):
            parent, child = mp.Pipe()
            proc = mp.Process(target=_rank_main, args=(rank, self.world_size, port, self.threads, self.use_gpu,
                                                       self.timeout_s, child), name=f"bench-rank{rank}")
            proc.start()
            child.close()
            self._procs.append(proc)
            self._conns.append(parent)
        return self

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> list[Any]:
        """Run ``fn(ctx, *args, **kwargs)`` on every rank; returns the per-rank results in rank order."""
        if not self._procs:
            raise RuntimeError("the rank pool is not running (use it as a context manager)")
        for conn in self._conns:
            conn.send((fn, args, kwargs))
        results: dict[int, Any] = {}
        errors: list[str] = []
        pending = dict(enumerate(self._conns))
        deadline = time.monotonic() + self.timeout_s
        while pending:
            # After a failure the others are likely stuck in a collective: give them seconds, not the timeout.
            wait_s = 10.0 if errors else max(0.0, deadline - time.monotonic())
            ready = mp_connection.wait(list(pending.values()), timeout=wait_s)
            if not ready:
                errors += [f"rank {r}: no answer within {wait_s:.0f} s" for r in pending]
                break
            for conn in ready:
                rank = next(r for r, c in pending.items() if c is conn)
                del pending[rank]
                try:
                    status, value = conn.recv()
                except EOFError:
                    errors.append(f"rank {rank}: the process died (exit code {self._procs[rank].exitcode})")
                    continue
                if status == "error":
                    errors.append(f"rank {rank}:\n{value}")
                results[rank] = value
        if errors:
            self.close()
            raise RuntimeError(f"{getattr(fn, '__name__', fn)} failed on the rank pool:\n" + "\n".join(errors))
        return [results[r] for r in range(self.world_size)]

    def close(self) -> None:
        """Stop every rank (politely, then by terminating the processes this pool started)."""
        for conn in self._conns:
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for proc in self._procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=10)
        for conn in self._conns:
            conn.close()
        self._procs, self._conns = [], []

    def __exit__(self, *exc: object) -> None:
        self.close()
