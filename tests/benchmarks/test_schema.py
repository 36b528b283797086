"""The result and report schema (benchmarks/harness/schema.py): valid results pass, each kind of breakage is named."""

from __future__ import annotations

import copy

import pytest

from benchmarks.harness.machine import machine_info
from benchmarks.harness.parts import Part, RenderContext
from benchmarks.harness.plots import line_plot
from benchmarks.harness.report import render_report
from benchmarks.harness.schema import (figure, measurement, new_result, stats_of, target, validate_report,
                                       validate_result)


def _result(tmp_path) -> dict:
    r = new_result("demo", "Demo part", command="python benchmarks/run.py --only demo", quick=True,
                   machine=machine_info(), settings={"repeats": 3})
    r["measurements"] += [measurement("throughput", "sequences/s", values=[3.0, 1.0, 2.0], batch=8),
                          measurement("size", "MB", value=1.5)]
    r["targets"].append(target("ratio >= 0.8", 0.9, op=">=", threshold=0.8, unit="ratio", source="issue 3"))
    line_plot(str(tmp_path / "figures" / "demo.png"), {"a": ([1, 2], [r["measurements"][0]["stats"], 2.0])},
              title="t", xlabel="x", ylabel="y")
    r["figures"].append(figure("figures/demo.png", "Demo figure", unit="sequences/s", command=r["command"], repeats=3))
    return r


def test_stats_of():
    assert stats_of([3, 1, 2]) == {"min": 1.0, "median": 2.0, "max": 3.0, "n": 3}
    assert stats_of([1, 2, 3, 10])["median"] == 2.5
    with pytest.raises(ValueError):
        stats_of([])


def test_machine_block_names_cpu_memory_and_libraries():
    m = machine_info()
    assert m["cores"] >= 1 and m["memory_gib"] > 0 and isinstance(m["gpus"], list)
    for lib in ("torch", "torchrec", "deepspeed", "ray"):
        assert lib in m["libraries"]


def test_valid_result_passes(tmp_path):
    assert validate_result(_result(tmp_path), results_dir=str(tmp_path)) == []


@pytest.mark.parametrize("breakage, expected", [
    (lambda r: r.pop("machine"), "machine: missing"),
    (lambda r: r["machine"]["libraries"].pop("torchrec"), "machine.libraries.torchrec"),
    (lambda r: r["measurements"][1].update(unit="furlongs"), "unit 'furlongs'"),
    (lambda r: r["measurements"][0]["stats"].update(min=5.0), "min <= median <= max"),
    (lambda r: r["measurements"][1].pop("value"), "needs a finite value or stats"),
    (lambda r: r["targets"][0].update(met=False), "'met' disagrees"),
    (lambda r: r["figures"][0].update(path="figures/absent.png"), "does not exist"),
    (lambda r: r["figures"][0].pop("unit"), "needs path, title, unit"),
    (lambda r: r.update(command="bench it"), "command: must be the python command"),
    (lambda r: r.update(measurements=[]), "measurements: empty"),
])
def test_each_breakage_is_named(tmp_path, breakage, expected):
    r = copy.deepcopy(_result(tmp_path))
    breakage(r)
    problems = validate_result(r, results_dir=str(tmp_path))
    assert any(expected in p for p in problems), problems


def test_constructors_refuse_unknown_units():
    with pytest.raises(ValueError, match="unit"):
        measurement("x", "parsecs", value=1)
    with pytest.raises(ValueError, match="unit"):
        figure("figures/x.png", "x", unit="parsecs", command="python x", repeats=1)


def test_rendered_report_validates_and_catches_a_missing_figure(tmp_path):
    r = _result(tmp_path)
    part = Part(name="demo", title="Demo part", run=lambda ctx: r,
                render=lambda res, rctx: "\n".join(rctx.figure_md(f) for f in res["figures"]))
    rctx = RenderContext(results_dir=tmp_path, report_dir=tmp_path.parent)
    text = render_report([part], {"demo": r}, rctx, command="python benchmarks/run.py --quick")
    assert validate_report(text, [r], report_dir=str(tmp_path.parent), results_dir=str(tmp_path)) == []
    assert "Unit: sequences/s" in text and "median of 3 repeats" in text and "## Machine" in text
    broken = text.replace(f"]({tmp_path.name}/figures/demo.png)", "]()")
    assert any("not embedded" in p for p in validate_report(broken, [r], report_dir=str(tmp_path.parent),
                                                             results_dir=str(tmp_path)))
