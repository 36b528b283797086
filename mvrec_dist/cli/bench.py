"""``mvrec bench``: the benchmark harness (benchmarks/run.py), which ships with the repository, not the package.

Every argument is forwarded to benchmarks/run.py, run from the repository root:
    mvrec bench --quick                   (CI-sized run of the harness's own parts, a few minutes)
    mvrec bench --only train,eval         (chosen parts; REPORT.md keeps the others)
    mvrec bench --render-only             (rebuild benchmarks/REPORT.md from benchmarks/results/*.json)
Benchmarks start Ray and several processes: on a shared machine wrap them in
`flock /tmp/mvrec_heavy.lock`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["main", "harness"]


def harness() -> Path | None:
    """``benchmarks/run.py`` of the checkout the package was installed from (editable), else of the cwd.

    Returns:
        The script's path, or None outside a checkout.
    """
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        if (root / "benchmarks" / "run.py").is_file():
            return root / "benchmarks" / "run.py"
    return None


def main(argv: Sequence[str] | None = None, *, prog: str = "mvrec bench") -> int:
    """``mvrec bench [HARNESS ARGS ...]``.

    Args:
        argv: Arguments without the program name (default ``sys.argv[1:]``), forwarded as they are.
        prog: Program name for usage and error lines.

    Returns:
        The harness's exit status; 2 outside a checkout; 130 after Ctrl-C.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    script = harness()
    if script is None:
        print(f"{prog}: error: benchmarks/run.py not found: the benchmarks ship with the repository, not the "
              "package; run from a checkout", file=sys.stderr)
        return 2
    if argv[:1] in (["-h"], ["--help"]):
        print(f"usage: {prog} [HARNESS ARGS ...]\n\n{__doc__.strip()}\n\n{script} --help follows:\n", flush=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    try:
        return subprocess.call([sys.executable, str(script), *argv], cwd=script.parents[1], env=env)
    except KeyboardInterrupt:
        return 130
