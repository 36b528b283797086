"""``benchmarks/REPORT.md``: every part's latest result, the machine, the targets, figures with captions.

The report is rebuilt from the JSON files in the results directory each time the harness runs, so
parts measured at different times (or by other engineers' scripts) all appear, each with its own
command and date.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Sequence

from benchmarks.harness.parts import Part, RenderContext

# Free-form notes of the latest suite run (results directory), shown under the machine block.
RUN_NOTES = "run_notes.md"

__all__ = ["render_report", "table", "fmt_stats", "fmt", "machine_line", "load_line", "measurement_table",
           "targets_table"]


def fmt(x: Any, digits: int = 3) -> str:
    """A number with thousands separators and ~``digits`` significant figures; other values as str."""
    if isinstance(x, bool) or x is None:
        return str(x)
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if x == 0:
            return "0"
        mag = abs(x)
        if mag >= 10 ** digits:
            return f"{x:,.0f}"
        decimals = max(0, digits - 1 - int(f"{mag:e}".split("e")[1]))
        return f"{x:,.{decimals}f}"
    return str(x)


def fmt_stats(s: dict | float | None, digits: int = 3) -> str:
    """``median (min..max, n=N)`` of a stats dict; a plain number as ``fmt``."""
    if s is None:
        return "-"
    if not isinstance(s, dict):
        return fmt(s, digits)
    if s["n"] == 1:
        return fmt(s["median"], digits)
    return f"{fmt(s['median'], digits)} ({fmt(s['min'], digits)}..{fmt(s['max'], digits)}, n={s['n']})"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A markdown table (cells formatted with ``fmt`` unless already strings)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        lines.append("| " + " | ".join(c if isinstance(c, str) else fmt(c) for c in row) + " |")
    return "\n".join(lines) + "\n"


def machine_line(m: dict) -> str:
    """One-paragraph description of a machine block."""
    libs = ", ".join(f"{k} {v}" for k, v in sorted(m.get("libraries", {}).items()))
    gpus = ", ".join(m.get("gpus") or []) or "no GPU"
    git = m.get("git") or {}
    code = (f" Code at commit {git['commit'][:10]}{' with uncommitted changes' if git.get('tracked_changes') else ''}."
            if git.get("commit") else "")
    return (f"{m.get('cpu', '?')}, {m.get('cores', '?')} logical cores, {m.get('memory_gib', '?')} GiB RAM, {gpus}; "
            f"Python {m.get('python', '?')}; {libs}.{code}")


def load_line(m: dict | None) -> str:
    """`` Load average ...`` of a machine block that recorded it (the machine may have been shared), else ''."""
    if not isinstance(m, dict) or "load_average_start" not in m:
        return ""
    cores = m.get("cores", "?")
    start = "/".join(f"{x:.1f}" for x in m["load_average_start"])
    end = "/".join(f"{x:.1f}" for x in m["load_average_end"]) if "load_average_end" in m else "?"
    loads = list(m["load_average_start"]) + list(m.get("load_average_end", []))
    shared = (" (above the core count: other jobs shared the machine)"
              if isinstance(cores, int) and max(loads) > cores else "")
    return f" Load average (1/5/15 min) on the {cores} cores: {start} at the start, {end} at the end{shared}."


def measurement_table(result: dict, names: Sequence[str] | None = None) -> str:
    """The result's measurements (optionally only ``names``) as a table."""
    rows = []
    for m in result["measurements"]:
        if names is not None and m["name"] not in names:
            continue
        labels = ", ".join(f"{k}={v}" for k, v in m.items() if k not in ("name", "unit", "value", "stats"))
        rows.append([m["name"], labels, fmt_stats(m.get("stats", m.get("value"))), m["unit"]])
    return table(["measurement", "labels", "value: median (min..max, n)", "unit"], rows)


def targets_table(results: Iterable[dict]) -> str:
    """Every target of ``results``: value, threshold, met, source."""
    rows = []
    for r in results:
        for t in r.get("targets", []):
            rows.append([r["part"], t["name"], f"{fmt(t['value'])} {t['unit']}", f"{t['op']} {fmt(t['threshold'])}",
                         "met" if t["met"] else "**not met**", t["source"]])
    if not rows:
        return "No targets in these results.\n"
    return table(["part", "target", "measured", "threshold", "status", "source"], rows)


def _machines(results: Iterable[dict]) -> list[tuple[dict, list[str]]]:
    seen: list[tuple[dict, list[str]]] = []
    for r in results:
        m = r.get("machine")
        if not isinstance(m, dict):
            continue
        key = {k: m.get(k) for k in ("cpu", "cores", "memory_gib", "gpus", "libraries", "git")}
        for known, parts in seen:
            if {k: known.get(k) for k in key} == key:
                parts.append(r["part"])
                break
        else:
            seen.append((m, [r["part"]]))
    return seen


def _anchor(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^a-z0-9 _-]", "", title.lower()).replace(" ", "-")


def render_report(parts: Sequence[Part], results: dict[str, dict], rctx: RenderContext, *, command: str) -> str:
    """The whole report.

    Args:
        parts: Every known part, in report order.
        results: Part name -> its latest result (parts without one are listed as not run).
        rctx: Figure links.
        command: The harness invocation that rendered the report.
    """
    mine = [results[p.name] for p in parts if p.name in results and p.run is not None]
    out = ["# mvrec_dist benchmark report", "",
           f"Rendered by `{command}` from the JSON results in `{rctx.link('.')}/`; each section names the "
           "command and date of its own measurement. Conventions: comparisons are ratios of configurations "
           "measured side by side in one run (interleaved, so drift on this shared machine hits each alike); "
           "absolute times are given as median (min..max, n=repeats). Quick-mode (CI) results are marked: "
           "their numbers only show that the harness works.", "",
           "## Machine", ""]
    for m, names in _machines(mine) or [({}, [])]:
        out.append(f"* {machine_line(m)} Parts: {', '.join(names) or '-'}.")
    notes = rctx.results_dir / RUN_NOTES
    if notes.exists():  # what the person who ran the suite wants every reader to know (shared machine, skips)
        out += ["", "## Run notes", "", notes.read_text().strip()]
    out += ["", "## Targets", "", targets_table(mine), "## Contents", ""]
    for p in parts:
        state = "" if p.name in results else " (no result yet)"
        out.append(f"* [{p.title}](#{_anchor(p.title)}){state}")
    out.append("")
    for p in parts:
        out += [f"## {p.title}", ""]
        r = results.get(p.name)
        if r is None:
            how = p.owner_command or f"python benchmarks/run.py --only {p.name}"
            out += [f"Not measured yet: `{how}` produces it.", ""]
            continue
        if p.run is not None:
            quick = " **Quick (CI-sized) run: not a measurement.**" if r.get("quick") else ""
            out += [f"Command: `{r['command']}`; measured {r['date']}.{load_line(r.get('machine'))}{quick}", ""]
        out.append(p.render(r, rctx))
        notes = r.get("notes") or []
        if notes and p.run is not None:
            out += ["Notes:", ""] + [f"* {n}" for n in notes] + [""]
    return "\n".join(out).rstrip() + "\n"
