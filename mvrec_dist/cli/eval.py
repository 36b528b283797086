"""Evaluate a run's checkpoint on valid or test (full ranking, HR@K / NDCG@K) with Ray Train workers.

The best checkpoint of a run (the one its best validation wrote), on the test split:
    mvrec eval runs/demo-sasrec-id
The newest checkpoint on valid, with 4 workers on a running cluster:
    mvrec eval runs/demo-sasrec-id --checkpoint latest --split valid parallel.num_workers=4 --address auto
A checkpoint directory directly:
    mvrec eval runs/demo-sasrec-id/checkpoint-step000000086
The model, dataset and settings are the checkpoint's own (its config.json); section.key=value
overrides change how it is run (parallel.*, eval.*, ray.*, data.dataset_dir when the dataset moved),
never the model (model.* is refused: the weights fix it). The checkpoint is verified (sizes, sha256)
and loaded without unpickling anything but tensors. Metrics are printed and written to
<run>/evals/<checkpoint>-<split>.json (see `mvrec runs show`).
"""

from __future__ import annotations

import json
import sys
from typing import Sequence

from mvrec_dist.cli.errors import CommandParser, guarded
from mvrec_dist.config.cli import settings_help
from mvrec_dist.config.jobs import TrainJobConfig

__all__ = ["main", "evaluate"]


def _parser(prog: str) -> CommandParser:
    parser = CommandParser(prog=prog, description=__doc__, epilog=settings_help(TrainJobConfig))
    parser.add_argument("target", help="a run directory (<train.storage_path>/<train.run_name>) or a checkpoint "
                                       "directory (checkpoint-step<N>/ holding COMMIT.json)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="settings applied on top of the checkpoint's config (not model.*)")
    parser.add_argument("--checkpoint", default="best",
                        help="for a run directory: 'best' (default: the best validation's checkpoint), "
                             "'latest' (the newest finished one) or a checkpoint-step<N> name")
    parser.add_argument("--split", choices=("valid", "test"), default="test", help="split to score (default: test)")
    parser.add_argument("--output", default=None,
                        help="where to write the metrics JSON (default: <run>/evals/<checkpoint>-<split>.json)")
    parser.add_argument("--address", default=None, help="Ray cluster address; same as ray.address=VALUE")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = "mvrec eval") -> int:
    """``mvrec eval TARGET``: score a checkpoint.

    Args:
        argv: Arguments without the program name (default ``sys.argv[1:]``).
        prog: Program name for usage and error lines.

    Returns:
        The exit status: 0 done, 2 cannot start as given, 1 failed.
    """
    args = _parser(prog).parse_args(sys.argv[1:] if argv is None else argv)
    overrides = list(args.overrides) + ([f"ray.address={args.address}"] if args.address else [])
    return guarded(prog, args.debug, lambda: evaluate(args.target, which=args.checkpoint, split=args.split,
                                                      overrides=overrides, output=args.output,
                                                      print_config=args.print_config))


def checkpoint_config(checkpoint: str, overrides: Sequence[str]) -> TrainJobConfig:
    """The config a checkpoint was trained with (its ``config.json``) with ``overrides`` applied.

    Args:
        checkpoint: The checkpoint directory (verified before this reads from it).
        overrides: ``section.key=value`` settings; ``model.*`` is refused.

    Returns:
        The resolved config.

    Raises:
        PathError: when the checkpoint has no readable config.
        ConfigError: for a bad or refused override.
    """
    from mvrec_dist.config.fields import ConfigError
    from mvrec_dist.config.load import apply_overrides, build_config
    from mvrec_dist.runtime.paths import PathError
    from mvrec_dist.train.runs import read_json

    refused = [o for o in overrides if o.split("=", 1)[0].startswith("model.") or "=" not in o]
    if refused:
        raise ConfigError([f"{o.split('=', 1)[0]}: " + ("the model is fixed by the checkpoint's weights; "
                                                        "evaluate another checkpoint instead" if "=" in o else
                                                        "settings are given as section.key=value")
                           for o in refused])
    raw = read_json(f"{checkpoint}/config.json")
    if raw is None:
        raise PathError(f"{checkpoint} has no readable config.json; it was not written by this project's "
                        "training job")
    return build_config(TrainJobConfig, apply_overrides(raw, overrides))


def evaluate(target: str, *, which: str = "best", split: str = "test", overrides: Sequence[str] = (),
             output: str | None = None, print_config: bool = False) -> int:
    """Find the checkpoint, check everything on the driver, then score it under Ray Train.

    Args:
        target: A run or checkpoint directory.
        which: ``best``, ``latest`` or a checkpoint name (for a run directory).
        split: ``valid`` or ``test``.
        overrides: ``section.key=value`` settings on top of the checkpoint's config.
        output: Metrics JSON path; default ``<run>/evals/<checkpoint>-<split>.json``.
        print_config: Print the resolved config and return without evaluating.

    Returns:
        The exit status (0).
    """
    from mvrec_dist.config.cli import resolved_yaml
    from mvrec_dist.train.checkpointing import check_checkpoint
    from mvrec_dist.train.runs import resolve_checkpoint

    run, checkpoint = resolve_checkpoint(target, which)
    # Verified (and its pickles refused) before anything, its config included, is read from it.
    check_checkpoint(checkpoint, key="checkpoint")
    cfg = checkpoint_config(checkpoint, overrides)
    if print_config:
        print(resolved_yaml(cfg), end="")
        return 0
    from mvrec_dist.runtime.ray_cluster import ray_session
    from mvrec_dist.train.launch import absolute_paths, preflight, run_evaluation

    name = checkpoint.rstrip("/").rsplit("/", 1)[-1]
    output = output or f"{run}/evals/{name}-{split}.json"
    print(f"evaluating {checkpoint} on {split} with {cfg.parallel.num_workers} workers", flush=True)
    preflight(absolute_paths(cfg), evaluating=checkpoint)  # fails before any cluster starts
    with ray_session(cfg.ray):
        metrics = run_evaluation(cfg, checkpoint, split, output)
    shown = {m.name: metrics[m.name] for m in cfg.metrics if m.name in metrics}
    counted = {k: metrics[k] for k in ("users", "items") if k in metrics}
    print("result:", json.dumps({**shown, **counted, "step": metrics.get("step"),
                                 "split": split, "checkpoint": checkpoint, "written_to": output}, indent=1))
    return 0
