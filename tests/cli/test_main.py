"""``mvrec``: the command table, every subcommand's --help, and unknown commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mvrec_dist.cli import COMMANDS, main

REPO = Path(__file__).resolve().parents[2]
MVREC = Path(sys.executable).with_name("mvrec")

# Every subcommand, and options its --help must explain (a sample of each, settings included).
HELP = {
    ("ingest",): ["--config", "--on-bad-rows", "--debug", "ingest.input", "ingest.progress", "synthetic.users",
                  "mvrec ingest --config"],
    ("train",): ["--config", "--resume", "--run-name", "--debug", "train.quiet", "parallel.num_workers",
                 "model.loss.name", "mvrec train --config"],
    ("eval",): ["--checkpoint", "--split", "--output", "--address", "--debug", "parallel.num_workers",
                "eval.ks", "best", "latest"],
    ("shards", "verify"): ["dataset", "--debug", "allow_pickle=False"],
    ("shards", "inspect"): ["dataset", "--split", "--key", "--debug"],
    ("runs", "list"): ["storage_path", "--stale-after", "--json", "finished", "in progress", "failed"],
    ("runs", "show"): ["run", "--storage-path", "--stale-after", "--json", "--plot", "--output", "curves.png"],
    ("runs", "compare"): ["RUN", "--storage-path", "--output", "runs-compare.png", "--json", "best epoch"],
}


def _commands() -> list[tuple[str, ...]]:
    out = []
    for name, entry in COMMANDS.items():
        out += [(name, sub) for sub in entry] if isinstance(entry, dict) else [(name,)]
    return out


def test_every_command_has_help_checks():
    assert set(_commands()) == set(HELP) | {("bench",)}


@pytest.mark.parametrize("command", sorted(HELP))
def test_help_explains_every_option(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: mvrec {' '.join(command)}")
    for text in HELP[command]:
        assert text in out, f"{text!r} missing from `mvrec {' '.join(command)} --help`"


def test_bench_help_is_the_harness_help(capfd):
    assert main(["bench", "--help"]) == 0
    out = capfd.readouterr().out  # the harness prints from its own process
    assert out.startswith("usage: mvrec bench [HARNESS ARGS ...]")
    for option in ("--only", "--quick", "--render-only", "--launcher"):
        assert option in out


def test_top_level_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in _commands():
        assert " ".join(command) in out


@pytest.mark.parametrize("argv,message", [
    (["nope"], "mvrec: error: unknown command 'nope'; see mvrec --help"),
    (["runs", "nope"], "mvrec: error: unknown command runs 'nope' (one of: list, show, compare); see mvrec --help"),
])
def test_unknown_commands_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines() == [message]


def test_the_installed_entry_point_runs():
    proc = subprocess.run([str(MVREC), "runs", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "mvrec runs list" in proc.stdout and "mvrec runs show" in proc.stdout


def test_mvrec_train_resolves_the_same_config_as_the_job():
    args = ["--config", "jobs/configs/synthetic/sasrec-id-small.yaml", "--run-name=x", "train.lr=0.01",
            "--print-config"]
    by_mvrec = subprocess.run([str(MVREC), "train", *args], cwd=REPO, capture_output=True, text=True, timeout=120)
    by_job = subprocess.run([sys.executable, "jobs/train_videorec.py", *args], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert by_mvrec.returncode == by_job.returncode == 0, by_mvrec.stderr + by_job.stderr
    assert by_mvrec.stdout == by_job.stdout
    assert "run_name: x" in by_mvrec.stdout and "lr: 0.01" in by_mvrec.stdout
