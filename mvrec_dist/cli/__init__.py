"""The ``mvrec`` command: ingest, train, evaluate, benchmark, check datasets and look at runs.

Each subcommand is a module of this package with a ``main(argv, prog=...)``; the job scripts in
``jobs/`` call the same functions, so ``mvrec train`` and ``python jobs/train_videorec.py`` are one
program. Subcommand modules are imported only when chosen, so ``mvrec --help`` and ``mvrec runs
list`` stay fast (training pulls in torch, TorchRec and DeepSpeed).
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Sequence

__all__ = ["main", "COMMANDS"]

# name -> (module, function, one-line summary); a group maps to its own table.
COMMANDS: dict[str, tuple[str, str, str] | dict[str, tuple[str, str, str]]] = {
    "ingest": ("mvrec_dist.cli.ingest", "main", "raw MicroLens (or synthetic) interactions -> webdataset shards"),
    "train": ("mvrec_dist.cli.train", "main", "train, validate and test a recommender with Ray Train"),
    "eval": ("mvrec_dist.cli.eval", "main", "score a run's checkpoint (best by default) on valid or test"),
    "bench": ("mvrec_dist.cli.bench", "main", "run the benchmark harness (benchmarks/run.py) or one benchmark"),
    "shards": {
        "verify": ("mvrec_dist.cli.shards", "main_verify", "check an ingested dataset against its manifest"),
        "inspect": ("mvrec_dist.cli.shards", "main_inspect", "print a dataset's summary, shards or one sample"),
    },
    "runs": {
        "list": ("mvrec_dist.cli.runs", "main_list", "runs under a storage path: status, checkpoint, metrics"),
        "show": ("mvrec_dist.cli.runs", "main_show", "one run in detail: checkpoints, validations, test, evals; "
                 "--plot draws its curves"),
        "compare": ("mvrec_dist.cli.runs", "main_compare",
                    "several runs side by side: a table and their curves in one PNG"),
    },
}


def _usage() -> str:
    lines = ["usage: mvrec [--debug] COMMAND [ARGS ...]", "",
             "Ingest, train, evaluate, benchmark, check datasets and look at runs (mvrec_dist).", "", "commands:"]
    for name, entry in COMMANDS.items():
        if isinstance(entry, dict):
            lines += [f"  {name + ' ' + sub:<17} {summary}" for sub, (_, _, summary) in entry.items()]
        else:
            lines.append(f"  {name:<17} {entry[2]}")
    lines += ["", "`mvrec COMMAND --help` explains each command and every option;",
              "--debug shows the full traceback of a failure instead of one line."]
    return "\n".join(lines)


def _fail(message: str) -> int:
    print(f"mvrec: error: {message}; see mvrec --help", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mvrec``: pick the subcommand and hand it the rest of the command line.

    Args:
        argv: Arguments without the program name (default ``sys.argv[1:]``); a leading
            ``--debug`` is passed on to the subcommand.

    Returns:
        The exit status: 0 success, 1 failed, 2 cannot start as given.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args[:1]
    if debug:
        args = args[1:]
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    entry = COMMANDS.get(name)
    prog = f"mvrec {name}"
    if entry is None:
        return _fail(f"unknown command {name!r}")
    if isinstance(entry, dict):
        if not rest or rest[0] in ("-h", "--help"):
            print(f"usage: {prog} {{{','.join(entry)}}} ...\n")
            print("\n".join(f"  {prog} {sub:<10} {summary}" for sub, (_, _, summary) in entry.items()))
            return 0 if rest else 2
        if rest[0] not in entry:
            return _fail(f"unknown command {name} {rest[0]!r} (one of: {', '.join(entry)})")
        prog = f"{prog} {rest[0]}"
        entry, rest = entry[rest[0]], rest[1:]
    module, function, _ = entry
    if debug and "--debug" not in rest and module != "mvrec_dist.cli.bench":
        rest.append("--debug")
    try:
        return getattr(importlib.import_module(module), function)(rest, prog=prog)
    except BrokenPipeError:
        # The reader went away (`mvrec ... | head`): not an error; keep Python from complaining at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
