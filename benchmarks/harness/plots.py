"""PNG figures for the report (matplotlib, headless).

Every plot function writes one PNG and returns nothing; the caller records it with
``schema.figure`` (unit, command, aggregation), which the report prints as the caption.
Series values are either plain numbers or ``stats`` dicts (``{min, median, max, n}``): a stats
point is drawn at its median with a min..max error bar.
"""

from __future__ import annotations

import os
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # no display on benchmark machines
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402

__all__ = ["line_plot", "bar_plot", "stacked_bars"]

Point = float | dict


def _split(values: Sequence[Point]) -> tuple[list[float], list[float], list[float]]:
    mid, lo, hi = [], [], []
    for v in values:
        if isinstance(v, dict):
            mid.append(v["median"])
            lo.append(v["median"] - v["min"])
            hi.append(v["max"] - v["median"])
        else:
            mid.append(float(v))
            lo.append(0.0)
            hi.append(0.0)
    return mid, lo, hi


def _save(fig, path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def line_plot(path: str, series: dict[str, tuple[Sequence[float], Sequence[Point]]], *, title: str, xlabel: str,
              ylabel: str, logx: bool = False, logy: bool = False, dashed: Sequence[str] = ()) -> None:
    """Lines with markers (and min..max bars for stats points).

    Args:
        path: PNG to write.
        series: label -> (xs, ys).
        title: Plot title.
        xlabel: X axis label (with unit).
        ylabel: Y axis label (with unit).
        logx: Log-scale x.
        logy: Log-scale y.
        dashed: Labels drawn dashed without markers (ideal / projected lines).
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    colors: dict[str, str] = {}  # a dashed line takes the colour of the measured series it belongs to
    ticks: set[float] = set()
    for label, (xs, ys) in sorted(series.items(), key=lambda kv: kv[0] in dashed):
        mid, lo, hi = _split(ys)
        ticks.update(xs)
        prefix = label.split(" (")[0]
        if label in dashed:
            ax.plot(xs, mid, linestyle="--", color=colors.get(prefix, "grey"), label=label)
        else:
            bars = ax.errorbar(xs, mid, yerr=[lo, hi], marker="o", capsize=3, label=label)
            colors[prefix] = bars.lines[0].get_color()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logx:
        ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    if len(ticks) <= 8:  # label the measured points themselves, in plain numbers
        ax.set_xticks(sorted(ticks))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_locator(ticker.NullLocator())
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def bar_plot(path: str, groups: Sequence[str], series: dict[str, Sequence[Point | None]], *, title: str,
             ylabel: str) -> None:
    """Grouped bars: one group per entry of ``groups``, one bar per series (None leaves a gap)."""
    fig, ax = plt.subplots(figsize=(max(7.5, 0.9 * len(groups) * max(1, len(series)) / 2 + 2.5), 4.0))
    width = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups)) if values[g] is not None]
        mid, lo, hi = _split([v for v in values if v is not None])
        ax.bar(xs, mid, width, yerr=[lo, hi] if any(lo) or any(hi) else None, capsize=3, label=label)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=20, ha="right", fontsize=8)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _save(fig, path)


def stacked_bars(path: str, bars: Sequence[str], parts: dict[str, Sequence[float]], *, title: str,
                 ylabel: str) -> None:
    """One stacked bar per entry of ``bars``; ``parts`` maps a component to its value in each bar."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    bottom = [0.0] * len(bars)
    for label, values in parts.items():
        ax.bar(range(len(bars)), values, 0.6, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_xticks(range(len(bars)))
    ax.set_xticklabels(bars, fontsize=9)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(True, axis="y", alpha=0.3)
    _save(fig, path)
