"""Run a function on several deterministic gloo ranks (CPU, loopback) and collect what each returns.

The torchrec ``multi_process.py`` idea: spawn real processes with a real process group, one thread
each, so sharded and ZeRO code paths run exactly as in a job. Results travel back through
``torch.save`` files (tensors, numbers, lists, dicts), loaded with ``weights_only=True``.

A rank that returned ends with ``exit_rank_process`` (no interpreter finalization): a gloo worker
thread that drops a finished collective's tensors while the interpreter finalizes aborts the
process ("terminate called without an active exception"); see that function. A rank that raised
leaves through ``torch.multiprocessing`` (its traceback is written before the process exits), and
any abort, SIGABRT included, fails the test.
"""

from __future__ import annotations

import os
import socket
import tempfile
from typing import Any, Callable

import torch
import torch.multiprocessing as mp

__all__ = ["run_ranks", "free_port"]


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world_size: int, port: int, out_dir: str, fn: Callable, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo",
                      RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)
    from mvrec_dist.parallel.process_groups import destroy_distributed, exit_rank_process, init_distributed

    ctx = init_distributed(use_gpu=False, timeout_s=300)
    try:
        torch.save(fn(ctx, *args), os.path.join(out_dir, f"rank{rank}.pt"))
    except BaseException:
        destroy_distributed()
        raise
    exit_rank_process(0)


def run_ranks(fn: Callable[..., Any], world_size: int, *args: Any) -> list[Any]:
    """Run ``fn(ctx, *args)`` on ``world_size`` gloo ranks; return each rank's result in rank order.

    Args:
        fn: A module-level function (it is pickled into the children) taking a ``DistContext``.
        world_size: Number of ranks.
        *args: Extra picklable arguments.

    Returns:
        The per-rank return values.
    """
    with tempfile.TemporaryDirectory() as out_dir:
        mp.start_processes(_entry, args=(world_size, free_port(), out_dir, fn, args), nprocs=world_size, join=True,
                           start_method="spawn")
        return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=True) for r in range(world_size)]
