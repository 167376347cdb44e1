"""Matplotlib figures of fairness results (optional dependency: ``pip install fairopt[plots]``).

Every function builds a ``matplotlib.figure.Figure`` directly (no ``pyplot``, so no GUI backend and no global
state: safe in scripts, notebooks and on headless servers), writes a PNG when ``path`` is given, and returns the
figure.

* :func:`plot_group_rates`: per-group rates with their confidence intervals as error bars; the group names are
  wrapped, and turned upright when they would still overlap (checked on the laid-out figure).
* :func:`plot_constraint_history`: the signed constraint value ``g`` (``g <= 0``: satisfied) vs training step, one
  line per split (train / held-out / test), with the line ``g = 0`` and, when known, the margin line
  ``g = -margin``; from a :class:`~fairopt.validation.diagnose.monitor.FairnessMonitor` or its ``history()`` table.
* :func:`plot_generalization_gap`: each constraint entry's value per split, with intervals and the bound.
* :func:`plot_accuracy_vs_constraint`: accuracy vs constraint value, one point per run, with interval bars; points
  are translucent with solid edges, and runs at the same place are drawn as concentric rings and counted.
"""

from __future__ import annotations

import itertools
import os
import re
import textwrap
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fairopt.validation.diagnose.gap import GeneralizationGap
from fairopt.validation.diagnose.monitor import FairnessMonitor
from fairopt.validation.report.fairness_report import FairnessReport
from fairopt.validation.report.formatting import RATE_LABELS

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


if TYPE_CHECKING:  # imported where used: `import fairopt` stays light
    import pandas as pd

__all__ = [
    "plot_accuracy_vs_constraint",
    "plot_constraint_history",
    "plot_generalization_gap",
    "plot_group_rates",
    "plot_violation_history",
]

_SPLIT_COLORS = {"train": "tab:blue", "held-out": "tab:orange", "validation": "tab:orange", "test": "tab:green"}


def _new_figure(width: float, height: float) -> Figure:
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "fairopt's plots need matplotlib, which is not installed; install it with: pip install fairopt[plots]"
        ) from error
    return Figure(figsize=(width, height), layout="constrained")


def _save(fig: Figure, path: str | os.PathLike[str] | None, dpi: int) -> Figure:
    if path is not None:
        fig.savefig(path, format="png", dpi=dpi)
    return fig


def _error_bars(values: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """``(2, N)`` distances below and above ``values (N,)`` for matplotlib's ``xerr``/``yerr``; 0 where unknown."""
    below = np.where(np.isnan(lower), 0.0, np.clip(values - lower, 0.0, None))
    above = np.where(np.isnan(upper), 0.0, np.clip(upper - values, 0.0, None))
    return np.nan_to_num(np.vstack([below, above]))


_BREAK_AFTER = re.compile(r"(?<=[\s,=/_|&:;-])")


def _wrap_label(name: str, width: int = 12) -> str:
    """``name`` on lines of at most ``width`` characters, broken after spaces and ``, = / _ | & : ; -``.

    A piece longer than ``width`` without a break stays whole. E.g. ``"race=African-American"`` becomes three
    lines, ``race=`` / ``African-`` / ``American``; ``"sex=Female"`` stays one.
    """
    lines: list[str] = []
    line = ""
    for piece in (p for p in _BREAK_AFTER.split(name) if p):
        if line and len(line) + len(piece.rstrip()) > width:
            lines.append(line.rstrip())
            line = piece.lstrip()
        else:
            line += piece
    lines.append(line.rstrip())
    return "\n".join(lines)


def _x_labels_overlap(ax: Axes) -> bool:
    """Whether two x tick labels of ``ax`` overlap on the laid-out figure (call after a draw)."""
    boxes = [t.get_window_extent() for t in ax.get_xticklabels() if t.get_visible() and t.get_text()]
    return any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2))


def _separate_x_labels(fig: Figure, axes: Sequence[Axes]) -> None:
    """Lay ``fig`` out and, where x tick labels overlap, turn them upright, then shrink them (to 5 pt at least).

    The check uses the labels' extents on the laid-out figure (``draw_without_rendering``, no backend needed).
    """
    fig.draw_without_rendering()
    crowded = [ax for ax in axes if _x_labels_overlap(ax)]
    if not crowded:
        return
    for ax in crowded:
        ax.tick_params(axis="x", labelrotation=90)
    size = float(crowded[0].get_xticklabels()[0].get_fontsize())
    while size > 5.0:
        fig.draw_without_rendering()
        crowded = [ax for ax in crowded if _x_labels_overlap(ax)]
        if not crowded:
            return
        size = max(5.0, size - 1.0)
        for ax in crowded:
            ax.tick_params(axis="x", labelsize=size)


def plot_group_rates(
    report: FairnessReport,
    rates: Sequence[str] = ("selection_rate", "true_positive_rate", "false_positive_rate", "error_rate"),
    *,
    path: str | os.PathLike[str] | None = None,
    include_overall: bool = True,
    dpi: int = 120,
) -> Figure:
    """Bar chart of each group's rates with interval error bars, one panel per rate.

    Undefined rates get no bar and the label "undefined". The overall rate is drawn as a dashed line. Group names
    are wrapped at about 12 characters; where they would still overlap on the laid-out figure they are turned
    upright (and, for very many groups, made smaller), so no two x labels overlap.

    Args:
        report: a :class:`FairnessReport`. rates: rates from ``report.rates``. path: write a PNG there.
        include_overall: draw the pooled rate. dpi: resolution of the PNG.

    Raises:
        ImportError: matplotlib is missing. ValueError: a rate not in the report.
    """
    missing = [r for r in rates if r not in report.rates]
    if missing:
        raise ValueError(f"rates {missing} are not in the report; it has {list(report.rates)}")
    names = list(report.group_names)
    fig = _new_figure(max(4.0, 1.0 + 0.5 * len(names)) * len(rates) / 1.5 + 1.0, 3.6)
    axes = np.atleast_1d(fig.subplots(1, len(rates), squeeze=False)[0])
    x = np.arange(len(names))
    level = f"{report.options.confidence:.0%}"
    for ax, rate in zip(axes, rates):
        est = [row.rates[rate] for row in report.groups]
        values = np.array([np.nan if e.value is None else e.value for e in est])
        lower = np.array([np.nan if e.lower is None else e.lower for e in est])
        upper = np.array([np.nan if e.upper is None else e.upper for e in est])
        ax.bar(x, np.nan_to_num(values), yerr=_error_bars(values, lower, upper), capsize=3, color="tab:blue")
        for i in np.flatnonzero(np.isnan(values)):
            ax.text(x[i], 0.02, "undefined", rotation=90, ha="center", va="bottom", fontsize=8)
        overall = report.overall.rates[rate].value
        if include_overall and overall is not None:
            ax.axhline(overall, color="black", linestyle="--", linewidth=1, label="overall")
            ax.legend(fontsize=8, loc="best")
        ax.set_title(f"{RATE_LABELS.get(rate, rate)} ({level} CI)", fontsize=10)
        ax.set_xticks(x, [_wrap_label(n) for n in names])
        if rate != "mean_loss":
            ax.set_ylim(0.0, 1.05)
    fig.suptitle(f"Group rates{f' ({report.split})' if report.split else ''}", fontsize=11)
    _separate_x_labels(fig, list(axes))
    return _save(fig, path, dpi)


def _history_frame(history: FairnessMonitor | pd.DataFrame) -> pd.DataFrame:
    frame = history.history() if isinstance(history, FairnessMonitor) else history
    needed = {"step", "split", "constraint", "value", "violation"}
    if not needed <= set(frame.columns):
        raise ValueError(f"history needs columns {sorted(needed)}, got {list(frame.columns)}")
    return frame


def _tolerance(
    name: str, part: pd.DataFrame, history: FairnessMonitor | pd.DataFrame, tolerances: Mapping[str, float] | None
) -> float:
    """The tolerance of constraint ``name``: given, from the monitor, a ``tolerance`` column, or the violated rows.

    A violated row has ``violation = g > 0`` and ``value = g + tolerance``, so ``value - violation`` is exact there.

    Raises:
        ValueError: none of these is available.
    """
    if tolerances is not None and name in tolerances:
        return float(tolerances[name])
    if isinstance(history, FairnessMonitor):
        for c in history.constraints:
            if c.name == name:
                return float(c.tolerance)
    if "tolerance" in part and part["tolerance"].notna().any():
        return float(part["tolerance"].dropna().iloc[0])
    violated = part[part["violation"].astype(float) > 0] if not part.empty else part
    if not violated.empty:
        return float(np.median(violated["value"].to_numpy(dtype=float) - violated["violation"].to_numpy(dtype=float)))
    raise ValueError(
        f"cannot tell the tolerance of {name!r} (g = value - tolerance): no row is violated; pass the "
        f"FairnessMonitor, a 'tolerance' column, or tolerances={{{name!r}: ...}}"
    )


def _margin_line(name: str, part: pd.DataFrame, margins: float | Mapping[str, float] | None) -> pd.Series | None:
    """The margin of constraint ``name`` per step (largest over its rows), or ``None`` when the data carry none.

    Raises:
        ValueError: a negative margin.
    """
    import pandas as pd

    if isinstance(margins, Mapping):
        given: float | None = margins.get(name)
    else:
        given = margins
    if given is not None:
        if not given >= 0:
            raise ValueError(f"margins must be >= 0 (constraint units), got {given!r} for {name!r}")
        steps = np.unique(part["step"].to_numpy())
        return pd.Series(float(given), index=steps)
    if "margin" not in part or not part["margin"].notna().any():
        return None
    line = part.dropna(subset=["margin"]).groupby("step", sort=True)["margin"].max().astype(float)
    if (line < 0).any():
        raise ValueError(f"the 'margin' column of {name!r} has negative values ({line.min():g}); margins are >= 0")
    return line


def plot_constraint_history(
    history: FairnessMonitor | pd.DataFrame,
    *,
    constraints: Sequence[str] | None = None,
    tolerances: Mapping[str, float] | None = None,
    margins: float | Mapping[str, float] | None = None,
    path: str | os.PathLike[str] | None = None,
    dpi: int = 120,
) -> Figure:
    """The signed constraint value ``g`` of each constraint vs training step, one line per split.

    ``g = value - tolerance`` is the constraint's own value, not clipped: ``g <= 0`` is satisfied and how far below
    0 a split stays is visible. Per step each line shows the largest ``g`` over the constraint's defined entries.
    A solid line marks ``g = 0``; a dotted line marks ``g = -margin`` when a margin is known (the optimizers aim at
    ``g + margin <= 0``).

    Args:
        history: a :class:`FairnessMonitor` or its ``history()`` DataFrame (columns ``step, split, constraint,
            value, violation``; optional ``tolerance`` and ``margin``, constraint units).
        constraints: names to plot (default: all).
        tolerances: constraint name → tolerance, to recover ``g`` from a DataFrame; default: the monitor's
            constraints, else a ``tolerance`` column, else ``value - violation`` on the violated rows (exact there).
        margins: the margin (>= 0, constraint units), one number or per constraint name; default: the per-step
            largest value of a ``margin`` column if the DataFrame has one, else no margin line.
        path: write a PNG there. dpi: resolution of the PNG.

    Raises:
        ImportError: matplotlib is missing. ValueError: an empty history, missing columns, unknown constraint
            names, a constraint whose tolerance cannot be told, or a negative margin.
    """
    frame = _history_frame(history)
    if frame.empty:
        raise ValueError("the history is empty; call FairnessMonitor.update(...) during training first")
    names = list(dict.fromkeys(frame["constraint"])) if constraints is None else list(constraints)
    unknown = set(names) - set(frame["constraint"])
    if unknown:
        raise ValueError(f"no history for constraints {sorted(unknown)}")
    fig = _new_figure(6.0, 2.6 * len(names) + 0.6)
    axes = fig.subplots(len(names), 1, squeeze=False)[:, 0]
    for ax, name in zip(axes, names):
        rows = frame[frame["constraint"] == name]
        tolerance = _tolerance(name, rows, history, tolerances)
        part = rows.dropna(subset=["value"])
        part = part.assign(g=part["value"].astype(float) - tolerance)
        worst = part.groupby(["split", "step"], sort=True)["g"].max().reset_index()
        for split in dict.fromkeys(frame["split"]):
            line = worst[worst["split"] == split]
            if not line.empty:
                ax.plot(
                    line["step"].to_numpy(),
                    line["g"].to_numpy(dtype=float),
                    marker="o",
                    markersize=3,
                    label=split,
                    color=_SPLIT_COLORS.get(split),
                )
        ax.axhline(0.0, color="black", linewidth=0.9, label="g = 0 (bound)")
        margin = _margin_line(name, rows, margins)
        if margin is not None:
            ax.plot(margin.index.to_numpy(), -margin.to_numpy(), ":", color="black", linewidth=1.2, label="-margin")
        # wrapped: a constraint's name can be longer than the axes are wide (matplotlib clips a title)
        ax.set_title("\n".join(textwrap.wrap(f"{name} (g = value - {tolerance:g}; <= 0 satisfied)", 70)), fontsize=10)
        ax.set_ylabel("largest g")
        ax.legend(fontsize=8, loc="best")
    axes[-1].set_xlabel("training step")
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)
    return _save(fig, path, dpi)


def plot_violation_history(*args: Any, **kwargs: Any) -> Figure:
    """Deprecated name of :func:`plot_constraint_history` (it plots the signed value ``g``, not the violation
    ``max(0, g)``); same arguments, with a ``DeprecationWarning``."""
    warnings.warn(
        "plot_violation_history is deprecated; use plot_constraint_history (same arguments)",
        DeprecationWarning,
        stacklevel=2,
    )
    return plot_constraint_history(*args, **kwargs)


def plot_generalization_gap(
    gap: GeneralizationGap, *, path: str | os.PathLike[str] | None = None, dpi: int = 120
) -> Figure:
    """Each constraint entry's value per split, with interval error bars and its bound as a red tick.

    Raises:
        ImportError: matplotlib is missing.
    """
    table: Any = gap.table()
    splits = gap.splits
    n = len(table)
    fig = _new_figure(max(5.0, 0.9 * n * len(splits) / 2 + 2.0), 4.0)
    ax = fig.subplots()
    width = 0.8 / len(splits)
    x = np.arange(n)
    for k, split in enumerate(splits):
        values = table[f"{split}_value"].to_numpy(dtype=float, na_value=np.nan)
        lower = table[f"{split}_lower"].to_numpy(dtype=float, na_value=np.nan)
        upper = table[f"{split}_upper"].to_numpy(dtype=float, na_value=np.nan)
        ax.bar(
            x + (k - (len(splits) - 1) / 2) * width,
            np.nan_to_num(values),
            width,
            yerr=_error_bars(values, lower, upper),
            capsize=2,
            label=split,
            color=_SPLIT_COLORS.get(split),
        )
    first = next(iter(gap.reports.values()))
    bounds = [e.tolerance for c in first.constraints for e in c.entries]
    ax.hlines(bounds, x - 0.45, x + 0.45, colors="red", linewidth=1.5, label="bound", zorder=3)
    ax.set_xticks(x, [str(e) for e in table["entry"]], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("expression value (g + tolerance)")
    ax.legend(fontsize=8)
    ax.set_title("Expression values by split (line: bound)", fontsize=11)
    return _save(fig, path, dpi)


_MARKERS = "osD^vP*X<>"


def _column(table: pd.DataFrame, name: str) -> np.ndarray:
    """Column ``name`` as float64 with NaN for missing values; all NaN when the table has no such column."""
    import pandas as pd

    if name not in table:
        return np.full(len(table), np.nan)
    return pd.to_numeric(table[name], errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def plot_accuracy_vs_constraint(
    runs: pd.DataFrame,
    *,
    bound: float | None = None,
    title: str | None = None,
    path: str | os.PathLike[str] | None = None,
    dpi: int = 120,
) -> Figure:
    """Test accuracy vs test constraint value, one point per run; colour = method, marker = model.

    Each point has the interval bars the table carries: horizontal from ``test_lower``/``test_upper`` (the
    constraint value's interval), vertical from ``test_accuracy_lower``/``test_accuracy_upper``. Points are
    translucent with solid edges; runs at the same place (to 3 decimals on both axes) are drawn as concentric rings
    (later runs smaller, so none hides another) and labelled ``×k``. Runs without both values are left out.

    Args:
        runs: one row per run, e.g. :meth:`fairopt.bench.StudyResult.table`: columns ``model``, ``method``,
            ``test_value`` (constraint units) and ``test_accuracy`` (in [0, 1]); optional ``test_lower``,
            ``test_upper``, ``test_accuracy_lower``, ``test_accuracy_upper`` (missing or NaN: no bar).
        bound: the constraint's bound, drawn as a vertical line. title: the axes title (e.g. the constraint).
        path: write a PNG there. dpi: resolution of the PNG.

    Raises:
        ImportError: matplotlib is missing. ValueError: missing columns or no run with both values.
    """
    needed = {"model", "method", "test_value", "test_accuracy"}
    if not needed <= set(runs.columns):
        raise ValueError(f"runs need columns {sorted(needed)}, got {list(runs.columns)}")
    x, y = _column(runs, "test_value"), _column(runs, "test_accuracy")
    shown = ~np.isnan(x) & ~np.isnan(y)
    if not shown.any():
        raise ValueError("no run has both a test_value and a test_accuracy to plot")
    xerr = _error_bars(x, _column(runs, "test_lower"), _column(runs, "test_upper"))
    yerr = _error_bars(y, _column(runs, "test_accuracy_lower"), _column(runs, "test_accuracy_upper"))
    models = list(dict.fromkeys(runs["model"]))
    methods = list(dict.fromkeys(runs["method"]))
    markers = {m: _MARKERS[i % len(_MARKERS)] for i, m in enumerate(models)}
    colors = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    fig = _new_figure(6.4, 4.4)  # raises the install hint when matplotlib is missing
    from matplotlib.colors import to_rgba

    ax = fig.subplots()
    places: dict[tuple[float, float], list[int]] = {}
    for i in np.flatnonzero(shown):
        places.setdefault((round(float(x[i]), 3), round(float(y[i]), 3)), []).append(int(i))
    for members in places.values():
        for rank, i in enumerate(members):
            row = runs.iloc[i]
            color = colors[row["method"]]
            ax.errorbar(
                x[i],
                y[i],
                xerr=xerr[:, i : i + 1],
                yerr=yerr[:, i : i + 1],
                fmt="none",
                ecolor=color,
                elinewidth=1.0,
                capsize=2,
                alpha=0.7,
                zorder=2,
            )
            ax.scatter(
                [x[i]],
                [y[i]],
                s=70.0 * (1.0 - 0.55 * rank / len(members)),
                marker=markers[row["model"]],
                facecolors=[to_rgba(color, 0.35)],
                edgecolors=[color],
                linewidths=1.3,
                zorder=3 + rank,
            )
        if len(members) > 1:
            first = members[0]
            ax.annotate(f"×{len(members)}", (x[first], y[first]), xytext=(6, 6), textcoords="offset points", fontsize=8)
    for method, color in colors.items():
        ax.scatter([], [], marker="o", facecolors=[to_rgba(color, 0.35)], edgecolors=[color], label=method)
    for model, marker in markers.items():
        ax.scatter([], [], marker=marker, facecolors="none", edgecolors="gray", label=model)
    if bound is not None:
        ax.axvline(bound, color="black", linewidth=0.8, alpha=0.6, label="bound")
    ax.set_xlabel("test expression value, largest entry (bars: intervals)")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=7, loc="best")
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path, dpi)
