"""``mvrec shards verify`` / ``mvrec shards inspect``: check and look into an ingested dataset.

verify recomputes every shard's size and sha256 against manifest.json, reads every sample (.npy
with allow_pickle=False: a member that would unpickle objects is reported, never loaded) and checks
the dataset's invariants (shards/README.md). Exit status: 0 verified, 1 problems found (each
printed), 2 the path is not a dataset. inspect prints the manifest summary, a split's shards, or one
sample. Both are the same as `python -m mvrec_dist.data.verify|inspect`.
"""

from __future__ import annotations

import sys
from typing import Sequence

from mvrec_dist.cli.errors import CommandParser, guarded

__all__ = ["main_verify", "main_inspect"]


def _check(dataset: str) -> None:
    from mvrec_dist.runtime.paths import check_dataset_dir

    check_dataset_dir(dataset, key="dataset")


def main_verify(argv: Sequence[str] | None = None, *, prog: str = "mvrec shards verify") -> int:
    """``mvrec shards verify DATASET``.

    Args:
        argv: Arguments without the program name (default ``sys.argv[1:]``).
        prog: Program name for usage and error lines.

    Returns:
        0 verified, 1 problems found (each printed), 2 not a dataset.
    """
    parser = CommandParser(prog=prog, description=__doc__)
    parser.add_argument("dataset", help="dataset directory (the ingest job's ingest.output_dir): local path or URI")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    def run() -> int:
        from mvrec_dist.data import verify

        _check(args.dataset)
        return verify.main([args.dataset])

    return guarded(prog, args.debug, run)


def main_inspect(argv: Sequence[str] | None = None, *, prog: str = "mvrec shards inspect") -> int:
    """``mvrec shards inspect DATASET [--split S] [--key K]``.

    Args:
        argv: Arguments without the program name (default ``sys.argv[1:]``).
        prog: Program name for usage and error lines.

    Returns:
        0 printed, 1 no such sample, 2 not a dataset.
    """
    parser = CommandParser(prog=prog, description=__doc__)
    parser.add_argument("dataset", help="dataset directory (the ingest job's ingest.output_dir): local path or URI")
    parser.add_argument("--split", default=None,
                        help="list this split's shards (train, valid, test, items, content), or look up --key in it")
    parser.add_argument("--key", default=None,
                        help="print one sample: u0000000001 (a user, train split by default) or i0000000001 (an item)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    def run() -> int:
        from mvrec_dist.data import inspect

        _check(args.dataset)
        forwarded = [args.dataset] + (["--split", args.split] if args.split else []) + (
            ["--key", args.key] if args.key else [])
        return inspect.main(forwarded)

    return guarded(prog, args.debug, run)
