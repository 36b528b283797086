"""Parts whose results other scripts write: the report shows their markdown as those scripts render it.

``benchmarks/bench_ingest.py`` (ingestion vs parse-only), ``benchmarks/bench_video.py`` (video
encoders), ``benchmarks/bench_multihost.py`` (node loss on the namespace cluster) and
``benchmarks/mmra_report.py`` (the MMRA runs' report) and ``benchmarks/frame_report.py`` (FRAME beside SASRec) write ``<name>.json`` and ``<name>.md`` in their own format into the results directory.
The harness runs them (full mode only: they write the committed results and take minutes) and
embeds their markdown, with headings demoted and relative links rebased onto the report.
"""

from __future__ import annotations

import re
import subprocess
import sys

from benchmarks.harness.jobs import REPO
from benchmarks.harness.parts import Part, RenderContext

__all__ = ["passthrough_part", "embed_markdown", "run_owner_script", "INGEST", "VIDEO", "MULTIHOST", "MMRA", "FRAME"]


def embed_markdown(md: str, rctx: RenderContext) -> str:
    """``md`` without its title line, headings demoted two levels, relative links rebased."""
    lines = md.splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    out = []
    for line in lines:
        if line.startswith("#"):
            line = "##" + line
        out.append(re.sub(r"\]\((?!https?://|/|#)([^)]+)\)", lambda m: f"]({rctx.link(m.group(1))})", line))
    return "\n".join(out).strip() + "\n"


def run_owner_script(script: str, args: tuple[str, ...] = ()) -> None:
    """Run another engineer's benchmark script as its README says (it writes its own results)."""
    subprocess.run([sys.executable, str(REPO / script), *args], cwd=REPO, check=True)


def passthrough_part(name: str, title: str, script: str) -> Part:
    """A part rendered from ``<name>.md`` that ``script`` writes."""

    def render(result: dict, rctx: RenderContext) -> str:
        md = rctx.results_dir / f"{name}.md"
        body = embed_markdown(md.read_text(), rctx) if md.exists() else "(no markdown next to the JSON)\n"
        return f"Written by `python {script}` (its own format; measured {result.get('date', 'see below')}).\n\n{body}"

    return Part(name=name, title=title, run=None, render=render, owner_command=f"python {script}",
                owner_script=script)


INGEST = passthrough_part("ingest", "Ingestion throughput (vs pyarrow parse-only)", "benchmarks/bench_ingest.py")
VIDEO = passthrough_part("video", "Video encoder throughput", "benchmarks/bench_video.py")
MULTIHOST = passthrough_part("multihost", "Multi-host faults (namespace cluster, S3 store)", "benchmarks/bench_multihost.py")
MMRA = passthrough_part("mmra", "MMRA popularity prediction on MicroLens-50K",
                        "benchmarks/mmra_report.py --runs runs/mmra-report --notes benchmarks/results/mmra_notes.md")
FRAME = passthrough_part("frame", "FRAME beside SASRec", "benchmarks/frame_report.py --runs runs/frame-report")
