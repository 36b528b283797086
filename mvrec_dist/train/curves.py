"""Training curves: a run's training loss and every validation metric per epoch, with the best epoch marked.

``load_curves`` reads a run directory (local path or URI) as ``mvrec runs show`` does: the per-epoch
records of ``logs/metrics.jsonl`` (``epoch``: the epoch's mean training loss; ``valid``: its validation
metrics), and ``result.json`` or the newest checkpoint's state for the best epoch and the final figures.
An epoch recorded twice (a retry or resume redid it from a checkpoint) keeps its last record.

``plot_curves`` draws one run or several in one figure, one panel per series (``train loss``, then
``valid <metric>`` in the task's order), and writes it as a PNG with matplotlib's Agg backend. It returns
the data behind the figure (``Series`` per panel), so callers and tests check what was drawn, not pixels.
``save_run_curves`` is what the driver calls when a run finished: ``<run>/curves.png``, never failing the run.

Epochs are 0-based, as in ``metrics.jsonl``, ``result.json`` and ``mvrec runs show``.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

from mvrec_dist.data.fs import open_output_stream
from mvrec_dist.train.runs import checkpoint_name, metric_keys, read_metrics_log, summarize_run

__all__ = ["CURVES_NAME", "LOSS_PANEL", "RunCurves", "Series", "load_curves", "curve_panels", "plot_curves",
           "save_run_curves"]

CURVES_NAME = "curves.png"
"""The figure a finished run leaves in its directory."""
LOSS_PANEL = "train loss"
"""Title of the training-loss panel; a validation metric's panel is ``valid <metric>``."""


@dataclass
class RunCurves:
    """One run's per-epoch series and the figures ``mvrec runs compare`` puts in its table."""

    name: str
    """Run name (directory name)."""
    uri: str
    """Run directory."""
    status: str
    """``finished``, ``in progress`` or ``failed`` (as ``mvrec runs list`` says)."""
    select_metric: str
    """The validation metric that picks the best epoch."""
    metric_names: list[str]
    """Validation metrics in display order (the task's when its config is readable, else as recorded)."""
    loss: dict[int, float] = field(default_factory=dict)
    """Epoch -> mean training loss of the epoch."""
    valid: dict[str, dict[int, float]] = field(default_factory=dict)
    """Validation metric -> epoch -> value (non-finite values left out)."""
    best_epoch: int | None = None
    """The best validation's epoch (None before the first validation)."""
    epochs: int = 0
    """Epochs trained (finished ones)."""
    sequences_per_s: float | None = None
    """Training throughput over the run (``result.json``; an unfinished run's from its epoch records)."""
    seconds_to_best: float | None = None
    """Wall time from the start to the best validation."""
    valid_at_best: dict[str, float] = field(default_factory=dict)
    """Validation metrics of the best epoch."""
    test: dict[str, float] | None = None
    """Test metrics of the best weights, when the run (or ``mvrec eval`` of its best checkpoint) tested."""
    test_source: str | None = None
    """Where ``test`` comes from: ``result.json`` or ``evals/<checkpoint>-test.json``."""

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json`` output (epochs as JSON keys become strings)."""
        return asdict(self)


def _per_epoch(records: list[dict], kind: str) -> dict[int, dict]:
    # Later records win: after a retry or resume the redone epoch is logged again, and that is the one
    # whose weights the run went on with.
    out: dict[int, dict] = {}
    for r in records:
        if r.get("kind") == kind and isinstance(r.get("epoch"), int):
            out[r["epoch"]] = r
    return dict(sorted(out.items()))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _best_from_log(records: list[dict], valid: dict[int, dict]) -> int | None:
    """The best epoch from the log alone: the newest checkpoint record marked ``best``, matched to the
    validation of its step (a run whose checkpoint state is unreadable or not committed yet)."""
    steps = [r.get("step") for r in records if r.get("kind") == "checkpoint" and r.get("best")]
    by_step = {r.get("step"): epoch for epoch, r in valid.items()}
    return next((by_step[s] for s in reversed(steps) if s in by_step), None)


def load_curves(run_uri: str, *, stale_after: float = float("inf")) -> RunCurves:
    """Read a run's per-epoch curves and final figures (no torch; local path or URI).

    Args:
        run_uri: The run directory.
        stale_after: Seconds without change after which an unfinished run counts as failed (its status).

    Returns:
        The curves; a run with no records yet has empty series.
    """
    summary = summarize_run(run_uri, stale_after=stale_after)
    records = read_metrics_log(run_uri)
    epochs, validations = _per_epoch(records, "epoch"), _per_epoch(records, "valid")
    names = list(summary.metric_names)
    for r in validations.values():  # metrics the config did not name (or no config): as recorded
        names += [k for k in metric_keys(r) if k not in names]
    curves = RunCurves(name=summary.name, uri=run_uri, status=summary.status, select_metric=summary.select_metric,
                       metric_names=names)
    curves.loss = {e: float(r["loss"]) for e, r in epochs.items() if _finite(r.get("loss"))}
    curves.valid = {m: {e: float(r[m]) for e, r in validations.items() if _finite(r.get(m))} for m in names}
    best = summary.best_epoch
    curves.best_epoch = best if isinstance(best, int) and best >= 0 else _best_from_log(records, validations)
    result = summary.result or {}
    curves.epochs = int(result.get("epochs") or (max(epochs) + 1 if epochs else 0))
    rates = [(r["sequences_per_s"], r["seconds"]) for r in epochs.values()
             if _finite(r.get("sequences_per_s")) and _finite(r.get("seconds"))]
    if _finite(result.get("sequences_per_s")):
        curves.sequences_per_s = float(result["sequences_per_s"])
    elif rates and sum(s for _, s in rates) > 0:  # sequences over seconds, summed over the epochs
        curves.sequences_per_s = sum(r * s for r, s in rates) / sum(s for _, s in rates)
    at_best = next((h for h in summary.history if h.get("epoch") == curves.best_epoch), None)
    if _finite(result.get("seconds_to_best")):
        curves.seconds_to_best = float(result["seconds_to_best"])
    elif at_best is not None and _finite(at_best.get("elapsed_s")):
        curves.seconds_to_best = float(at_best["elapsed_s"])
    best_valid = summary.best_valid or (validations.get(curves.best_epoch, {}) if curves.best_epoch is not None else {})
    curves.valid_at_best = {k: float(best_valid[k]) for k in metric_keys(best_valid)}
    if summary.test:
        curves.test, curves.test_source = {k: float(summary.test[k]) for k in metric_keys(summary.test)}, "result.json"
    elif summary.best_step is not None:  # a stopped run whose best checkpoint `mvrec eval` tested
        stem = f"{checkpoint_name(summary.best_step)}-test"
        if stem in summary.evals:
            ev = summary.evals[stem]
            curves.test, curves.test_source = {k: float(ev[k]) for k in metric_keys(ev)}, f"evals/{stem}.json"
    return curves


@dataclass(frozen=True)
class Series:
    """One run's line in one panel."""

    label: str
    """The run's name (its directory when two compared runs share a name)."""
    epochs: tuple[int, ...]
    """X values: the epochs with a value, ascending."""
    values: tuple[float, ...]
    """Y values, one per epoch."""
    best_epoch: int | None
    """The run's best epoch (marked with a star when this series has a value there)."""
    best_value: float | None
    """The series' value at the best epoch, or None."""


def curve_panels(runs: Sequence[RunCurves]) -> dict[str, list[Series]]:
    """The data ``plot_curves`` draws: panel title -> one ``Series`` per run, in the runs' order.

    Panels: ``train loss``, then ``valid <metric>`` for every metric any run recorded (the first run's
    order first). A run without values for a panel has an empty series there, so a run keeps its
    position (and colour) in every panel.
    """
    names = [r.name for r in runs]
    labels = [r.uri if names.count(r.name) > 1 else r.name for r in runs]
    metrics: list[str] = []
    for r in runs:
        metrics += [m for m in r.metric_names if m not in metrics]

    def series(label: str, run: RunCurves, points: dict[int, float]) -> Series:
        best = run.best_epoch
        at_best = points.get(best) if best is not None else None
        return Series(label, tuple(points), tuple(points.values()), best, at_best)

    panels = {LOSS_PANEL: [series(label, r, r.loss) for label, r in zip(labels, runs)]}
    for m in metrics:
        panels[f"valid {m}"] = [series(label, r, r.valid.get(m, {})) for label, r in zip(labels, runs)]
    return panels


def plot_curves(runs: Sequence[RunCurves], path: str, *, title: str | None = None) -> dict[str, list[Series]]:
    """Draw the runs' curves in one figure and write it to ``path`` as a PNG.

    Each panel has one line per run (markers at every epoch, so a one-epoch run shows); a star marks each
    run's best epoch, and with a single run a dotted line marks it across all panels.

    Args:
        runs: The runs (``load_curves``); one for ``mvrec runs show --plot``, several to compare.
        path: Where the PNG goes: a local path or URI (parent directories are created).
        title: The figure's title; by default it names the run (or the number of runs).

    Returns:
        The data behind the figure (``curve_panels``).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    panels = curve_panels(runs)
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    # A bare Figure on an Agg canvas: no pyplot, so no global backend switch and no figure kept alive.
    fig = Figure(figsize=(4.2 * ncols, 3.0 * nrows + 0.9), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (panel, series) in zip(axes, panels.items()):
        for i, s in enumerate(series):
            if not s.epochs:
                continue
            color = f"C{i % 10}"
            ax.plot(s.epochs, s.values, marker="o", markersize=3, linewidth=1.4, color=color)
            if s.best_value is not None:
                ax.plot([s.best_epoch], [s.best_value], marker="*", markersize=13, color=color,
                        markeredgecolor="black", markeredgewidth=0.6, linestyle="none", zorder=3)
            if len(series) == 1 and s.best_epoch is not None:
                ax.axvline(s.best_epoch, color="grey", linestyle=":", linewidth=1)
        if not any(s.epochs for s in series):
            ax.text(0.5, 0.5, "no records yet", transform=ax.transAxes, ha="center", va="center", color="grey")
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    handles = [Line2D([], [], color=f"C{i % 10}", marker="o", markersize=3,
                      label=s.label + ("" if r.status == "finished" else f" ({r.status})"))
               for i, (s, r) in enumerate(zip(panels[LOSS_PANEL], runs))]
    selects = {r.select_metric for r in runs}
    by = f"valid {selects.pop()}" if len(selects) == 1 else "each run's selection metric"
    handles.append(Line2D([], [], color="grey", marker="*", markersize=11, linestyle="none",
                          label=f"best epoch (by {by})"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 3), fontsize=9)
    if title is None and len(runs) == 1:
        r = runs[0]
        best = f"best epoch {r.best_epoch}" if r.best_epoch is not None else "not validated yet"
        title = f"{r.name}: {r.status}, {r.epochs} epochs, {best}"
    fig.suptitle(title or f"{len(runs)} runs: training loss and validation metrics per epoch")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    with open_output_stream(path) as f:
        f.write(buf.getvalue())
    return panels


def save_run_curves(run_uri: str, say: Callable[[str], None] = print) -> str | None:
    """Write ``<run>/curves.png`` for a run that just finished; a failure is one warning line, not an error.

    Args:
        run_uri: The run directory (local path or URI).
        say: Where the warning goes.

    Returns:
        The PNG's path, or None when it could not be drawn or the run recorded no epoch to draw.
    """
    path = f"{run_uri.rstrip('/')}/{CURVES_NAME}"
    try:
        curves = load_curves(run_uri)
        if not curves.loss and not any(curves.valid.values()):
            return None  # an empty figure in the run directory would only suggest something went wrong
        plot_curves([curves], path)
    except Exception as exc:  # noqa: BLE001 (the run finished; a missing figure must not turn it into a failure)
        from mvrec_dist.runtime.errors import describe_failure

        say(f"warning: could not draw {path} ({describe_failure(exc)}); `mvrec runs show {run_uri} --plot` "
            "draws the curves later")
        return None
    return path
