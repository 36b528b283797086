"""Run a function on several deterministic gloo ranks (CPU, loopback) and collect what each returns.

The torchrec ``multi_process.py`` idea: spawn real processes with a real process group, one thread
each, so sharded and ZeRO code paths run exactly as in a job. Results travel back through
``torch.save`` files (tensors, numbers, lists, dicts), loaded with ``weights_only=True``.
"""

from __future__ import annotations

import os
import socket
import tempfile
import warnings
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
    from mvrec_dist.parallel.process_groups import destroy_distributed, init_distributed

    ctx = init_distributed(use_gpu=False, timeout_s=300)
    try:
        result = fn(ctx, *args)
    finally:
        destroy_distributed()
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))


def run_ranks(fn: Callable[..., Any], world_size: int, *args: Any) -> list[Any]:
    """Run ``fn(ctx, *args)`` on ``world_size`` gloo ranks; return each rank's result in rank order.

    Args:
        fn: A module-level function (it is pickled into the children) taking a ``DistContext``.
        world_size: Number of ranks.
        *args: Extra picklable arguments.

    Returns:
        The per-rank return values.
    """
    for attempt in (1, 2):
        with tempfile.TemporaryDirectory() as out_dir:
            try:
                mp.start_processes(_entry, args=(world_size, free_port(), out_dir, fn, args), nprocs=world_size,
                                   join=True, start_method="spawn")
            except mp.ProcessExitedException as exc:
                # Known, rare, not yet understood: a rank aborting in C++ ("terminate called without an
                # active exception", SIGABRT) under heavy machine load (seen once in test_resume's
                # zero2-bf16 case, 2026-11-24). Retried once and reported; a Python exception, a wrong
                # result or a second abort still fails the test.
                if attempt == 1 and exc.signal_name == "SIGABRT":
                    warnings.warn(f"run_ranks: {exc}; retrying once (known rare C++ abort)")
                    continue
                raise
            return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=True) for r in range(world_size)]
    raise AssertionError("unreachable")
