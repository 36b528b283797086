"""The schema of a benchmark result (``benchmarks/results/<part>.json``) and of ``REPORT.md``, as code.

A result is one JSON object:

```
schema        "mvrec_dist.benchmark/1"
part          the part's name (file name without .json)
title         heading of its report section
date          ISO date-time the measurement finished (UTC)
command       the exact command that produced it
quick         true for the CI-sized run (figures are then not meaningful)
machine       the machine block (``machine.machine_info``): cpu, cores, memory_gib, gpus, libraries
settings      the inputs: dataset, preset, sizes, repeats, assumptions ... (free-form dict)
measurements  list of {name, unit, value | stats{min, median, max, n}, ...labels}
targets       list of {name, value, unit, op, threshold, met, source}
figures       list of {path (relative to the results dir), title, unit, command, repeats}
notes         list of strings
data          part-specific detail its renderer reads (free-form)
```

Units are from ``UNITS``; ``stats`` carry min <= median <= max over ``n`` repeats. ``validate_result``
and ``validate_report`` return every problem they find (empty when valid).
"""

from __future__ import annotations

import datetime
import math
import os
import re
from typing import Any, Iterable

__all__ = ["SCHEMA", "UNITS", "MACHINE_KEYS", "REQUIRED_LIBRARIES", "new_result", "measurement", "target",
           "figure", "stats_of", "validate_result", "validate_report", "median_note"]

SCHEMA = "mvrec_dist.benchmark/1"
UNITS = frozenset({
    "sequences/s", "targets/s", "items/s", "frames/s", "users/s", "interactions/s", "steps/s",
    "s", "min", "ms", "us", "us/interaction", "ns/interaction", "ms/step",
    "bytes", "MiB", "GiB", "MB", "GB", "bytes/step", "MB/s", "GB/s",
    "FLOPs", "GFLOPs", "TFLOP/s", "FLOPs/sequence",
    "ratio", "%", "count", "hr", "ndcg",
})
MACHINE_KEYS = ("cpu", "cores", "memory_gib", "gpus", "python", "libraries")
REQUIRED_LIBRARIES = ("torch", "torchrec", "deepspeed", "ray")
_TOP_KEYS = ("schema", "part", "title", "date", "command", "quick", "machine", "settings", "measurements",
             "targets", "figures", "notes", "data")
_OPS = {"<=": lambda v, t: v <= t, ">=": lambda v, t: v >= t}


def stats_of(values: Iterable[float]) -> dict:
    """``{min, median, max, n}`` of repeated measurements (the median of an even count is the mean of the middle two)."""
    xs = sorted(float(v) for v in values)
    if not xs:
        raise ValueError("stats_of needs at least one value")
    n = len(xs)
    med = xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])
    return {"min": xs[0], "median": med, "max": xs[-1], "n": n}


def new_result(part: str, title: str, *, command: str, quick: bool, machine: dict, settings: dict) -> dict:
    """An empty result of ``part`` (measurements, targets, figures, notes and data to be filled)."""
    return {"schema": SCHEMA, "part": part, "title": title,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "command": command, "quick": quick, "machine": machine, "settings": settings,
            "measurements": [], "targets": [], "figures": [], "notes": [], "data": {}}


def measurement(name: str, unit: str, *, value: float | None = None, values: Iterable[float] | None = None,
                **labels: Any) -> dict:
    """One measured quantity: a single ``value`` or repeated ``values`` (summarised as stats)."""
    if unit not in UNITS:
        raise ValueError(f"unit {unit!r} is not one of the schema's units")
    out: dict = {"name": name, "unit": unit, **labels}
    if values is not None:
        out["stats"] = stats_of(values)
    else:
        out["value"] = float(value)
    return out


def target(name: str, value: float, *, op: str, threshold: float, unit: str, source: str) -> dict:
    """A target check: ``value op threshold`` (``op`` is ``<=`` or ``>=``)."""
    return {"name": name, "value": float(value), "unit": unit, "op": op, "threshold": float(threshold),
            "met": bool(_OPS[op](value, threshold)), "source": source}


def median_note(repeats: int) -> str:
    """The phrase a caption uses for how a figure's points were aggregated."""
    return f"median of {repeats} repeats (bars: min..max)" if repeats > 1 else "single run (no repeats)"


def figure(path: str, title: str, *, unit: str, command: str, repeats: int) -> dict:
    """A figure entry; ``path`` is relative to the results directory."""
    if unit not in UNITS:
        raise ValueError(f"unit {unit!r} is not one of the schema's units")
    return {"path": path, "title": title, "unit": unit, "command": command, "repeats": int(repeats),
            "aggregation": median_note(repeats)}


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_machine(m: Any, p: list[str]) -> None:
    if not isinstance(m, dict):
        p.append("machine: must be an object")
        return
    for k in MACHINE_KEYS:
        if k not in m:
            p.append(f"machine.{k}: missing")
    if not (isinstance(m.get("cores"), int) and m.get("cores", 0) >= 1):
        p.append("machine.cores: must be a positive int")
    if not _number(m.get("memory_gib")):
        p.append("machine.memory_gib: must be a number")
    if not isinstance(m.get("gpus"), list):
        p.append("machine.gpus: must be a list (empty when there is no GPU)")
    libs = m.get("libraries") if isinstance(m.get("libraries"), dict) else {}
    for lib in REQUIRED_LIBRARIES:
        if lib not in libs:
            p.append(f"machine.libraries.{lib}: missing")


def _check_measurement(i: int, m: Any, p: list[str]) -> None:
    where = f"measurements[{i}]"
    if not isinstance(m, dict) or not isinstance(m.get("name"), str):
        p.append(f"{where}: needs a name")
        return
    where = f"{where} ({m['name']})"
    if m.get("unit") not in UNITS:
        p.append(f"{where}: unit {m.get('unit')!r} is not a schema unit")
    if "stats" in m:
        s = m["stats"]
        if not (isinstance(s, dict) and all(_number(s.get(k)) for k in ("min", "median", "max"))
                and isinstance(s.get("n"), int) and s["n"] >= 1):
            p.append(f"{where}: stats need numeric min/median/max and n >= 1")
        elif not s["min"] <= s["median"] <= s["max"]:
            p.append(f"{where}: stats must satisfy min <= median <= max")
    elif not _number(m.get("value")):
        p.append(f"{where}: needs a finite value or stats")


def validate_result(result: Any, *, results_dir: str | None = None) -> list[str]:
    """Every schema problem of one result (empty list: valid).

    Args:
        result: The parsed JSON.
        results_dir: When given, figure files must exist under it.

    Returns:
        Problems, each naming the key.
    """
    p: list[str] = []
    if not isinstance(result, dict):
        return ["result: must be a JSON object"]
    for k in _TOP_KEYS:
        if k not in result:
            p.append(f"{k}: missing")
    if p:
        return p
    if result["schema"] != SCHEMA:
        p.append(f"schema: expected {SCHEMA!r}, got {result['schema']!r}")
    if not re.fullmatch(r"[a-z][a-z0-9_]*", str(result["part"])):
        p.append("part: must be a lower-case identifier")
    if not str(result["command"]).startswith("python "):
        p.append("command: must be the python command that produced the result")
    if not isinstance(result["quick"], bool):
        p.append("quick: must be true or false")
    _check_machine(result["machine"], p)
    for i, m in enumerate(result["measurements"]):
        _check_measurement(i, m, p)
    if not result["measurements"]:
        p.append("measurements: empty")
    for i, t in enumerate(result["targets"]):
        if not (isinstance(t, dict) and {"name", "value", "unit", "op", "threshold", "met", "source"} <= set(t)):
            p.append(f"targets[{i}]: needs name, value, unit, op, threshold, met, source")
        elif t["op"] not in _OPS or t["met"] != _OPS[t["op"]](t["value"], t["threshold"]):
            p.append(f"targets[{i}] ({t['name']}): 'met' disagrees with value {t['op']} threshold")
    for i, f in enumerate(result["figures"]):
        if not (isinstance(f, dict) and {"path", "title", "unit", "command", "repeats", "aggregation"} <= set(f)):
            p.append(f"figures[{i}]: needs path, title, unit, command, repeats, aggregation")
            continue
        if f["unit"] not in UNITS:
            p.append(f"figures[{i}]: unit {f['unit']!r} is not a schema unit")
        if not str(f["path"]).endswith(".png"):
            p.append(f"figures[{i}]: must be a PNG")
        if results_dir is not None and not os.path.isfile(os.path.join(results_dir, f["path"])):
            p.append(f"figures[{i}]: {f['path']} does not exist under {results_dir}")
    return p


def validate_report(text: str, results: list[dict], *, report_dir: str, results_dir: str) -> list[str]:
    """Problems of a rendered ``REPORT.md`` against the results it was rendered from.

    The report must describe the machine, have a section per result giving its command, and embed
    every figure (linked relative to the report) with a caption giving its unit and how it was
    aggregated.

    Args:
        text: The report's markdown.
        results: The results it was rendered from.
        report_dir: Directory of the report (figure links are relative to it).
        results_dir: Directory of the results (figure paths are relative to it).
    """
    p = []
    if "## Machine" not in text:
        p.append("REPORT.md: no '## Machine' section")
    for lib in REQUIRED_LIBRARIES if results else ():
        if f"{lib} " not in text:
            p.append(f"REPORT.md: machine block does not name {lib}'s version")
    for r in results:
        if f"## {r['title']}" not in text:
            p.append(f"REPORT.md: no section '## {r['title']}' for part {r['part']}")
        if r["command"] not in text:
            p.append(f"REPORT.md: part {r['part']} does not give its command")
        for f in r["figures"]:
            link = os.path.relpath(os.path.join(results_dir, f["path"]), report_dir)
            if f"]({link})" not in text:
                p.append(f"REPORT.md: figure {link} is not embedded")
            if f"Unit: {f['unit']}" not in text:
                p.append(f"REPORT.md: figure {f['path']} caption lacks 'Unit: {f['unit']}'")
            if f["aggregation"] not in text:
                p.append(f"REPORT.md: figure {f['path']} caption lacks its aggregation")
    return p
