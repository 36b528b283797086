"""Command-line parsing shared by every job: ``--config preset.yaml``, flag aliases, dotted overrides.

A job names its config class and a few flag aliases (``--resume`` -> ``train.resume``); everything
else is a ``section.key=value`` override (``--verbose``, for every job with a ``ray`` section, is
``ray.verbose=true``). ``--help`` lists every key with its type and doc, read
from the dataclass schema, so help never drifts from the code.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import Mapping, Sequence, TypeVar

from mvrec_dist.config.fields import ConfigError
from mvrec_dist.config.load import config_to_yaml, describe_config, load_config

__all__ = ["JobArgs", "parse_job_args", "resolved_yaml", "settings_help"]

T = TypeVar("T")


@dataclass(frozen=True)
class JobArgs:
    """What a job's command line resolved to."""

    config: object
    """The validated top-level config."""
    preset: str | None
    """The YAML preset given with ``--config`` (None when defaults only)."""
    overrides: tuple[str, ...]
    """Dotted overrides in the order applied, aliases already expanded."""
    print_config: bool
    """``--print-config`` was given: print the resolved config and exit."""
    debug: bool = False
    """``--debug`` was given: show tracebacks instead of one-line errors."""


def parse_job_args(cls: type[T], argv: Sequence[str], *, prog: str, description: str,
                   aliases: Mapping[str, str] | None = None) -> JobArgs:
    """Parse a job's argv into a validated config.

    Args:
        cls: Top-level config dataclass of the job.
        argv: Arguments without the program name.
        prog: Program name shown in usage.
        description: First lines of ``--help``.
        aliases: Flag name (without dashes) -> dotted key, e.g. ``{"resume": "train.resume"}``.

    Returns:
        A ``JobArgs``; exits with status 0 after ``--help`` and 2 on a config error, printing one
        line per problem.
    """
    aliases = dict(aliases or {})
    preset: str | None = None
    overrides: list[str] = []
    print_config = debug = False
    args = list(argv)
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("-h", "--help"):
            print(_help(cls, prog, description, aliases))
            raise SystemExit(0)
        if a == "--print-config":
            print_config = True
        elif a == "--debug":
            debug = True
        elif a == "--verbose" and _has_ray_section(cls):
            overrides.append("ray.verbose=true")
        elif a.startswith("--"):
            name, eq, value = a[2:].partition("=")
            if not eq:
                if i + 1 >= len(args):
                    _fail(prog, f"{a} needs a value")
                i += 1
                value = args[i]
            if name == "config":
                preset = value
            elif name in aliases:
                overrides.append(f"{aliases[name]}={value}")
            else:
                flags = ["--config", "--print-config", "--debug"] + (["--verbose"] if _has_ray_section(cls) else [])
                known = ", ".join(flags + [f"--{k}" for k in aliases])
                _fail(prog, f"unknown flag {a}; known flags: {known}; other settings go as key=value")
        elif "=" in a:
            overrides.append(a)
        else:
            _fail(prog, f"unexpected argument {a!r}: settings are given as section.key=value")
        i += 1
    try:
        cfg = load_config(cls, preset, overrides)
    except FileNotFoundError:
        _fail(prog, f"preset {preset!r} does not exist; presets live under jobs/configs/")
    except ConfigError as exc:
        _fail(prog, *exc.problems)
    return JobArgs(config=cfg, preset=preset, overrides=tuple(overrides), print_config=print_config, debug=debug)


def _has_ray_section(cls: type) -> bool:
    return any(f.name == "ray" for f in dataclasses.fields(cls))


def _fail(prog: str, *problems: str) -> None:
    for problem in problems:
        print(f"{prog}: error: {problem}", file=sys.stderr)
    raise SystemExit(2)


def _help(cls: type, prog: str, description: str, aliases: Mapping[str, str]) -> str:
    verbose = _has_ray_section(cls)
    lines = [f"usage: {prog} [--config PRESET.yaml] [--print-config] [--debug]{' [--verbose]' if verbose else ''} "
             "[section.key=value ...]", "",
             description.strip(), "", "flags:",
             "  --config PATH       YAML preset (jobs/configs/...); overrides apply on top of it",
             "  --print-config      print the resolved config as YAML and exit",
             "  --debug             on failure show the full traceback instead of one line"]
    if verbose:
        lines.append("  --verbose           show every library's output on the console too (same as ray.verbose=true)")
    for flag, key in aliases.items():
        lines.append(f"  --{flag:<17} same as {key}=VALUE")
    return "\n".join(lines + ["", settings_help(cls)])


def settings_help(cls: type) -> str:
    """Every ``section.key`` of ``cls`` with its type and doc, as ``--help`` lists them."""
    lines = ["settings (section.key=value):"]
    for key, tp, doc in describe_config(cls):
        lines.append(f"  {key}  ({tp})")
        lines.append(f"      {doc}")
    return "\n".join(lines)


def resolved_yaml(cfg: object) -> str:
    """The resolved config as commented YAML (what ``--print-config`` prints)."""
    return config_to_yaml(cfg)
