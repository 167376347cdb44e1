"""Matplotlib figures of fairness results (optional dependency: ``pip install fairopt[plots]``).

Every function builds a ``matplotlib.figure.Figure`` directly (no ``pyplot``, so no GUI backend and no global
state: safe in scripts, notebooks and on headless servers), writes a PNG when ``path`` is given, and returns the
figure.

* :func:`plot_group_rates`: per-group rates with their confidence intervals as error bars.
* :func:`plot_violation_history`: constraint violation vs training step, one line per split (train / held-out /
  test), from a :class:`~fairopt.validation.monitor.FairnessMonitor` or its ``history()`` table.
* :func:`plot_generalization_gap`: each constraint entry's value per split, with intervals and the bound.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fairopt.validation.formatting import RATE_LABELS
from fairopt.validation.gap import GeneralizationGap
from fairopt.validation.monitor import FairnessMonitor
from fairopt.validation.report import FairnessReport

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_generalization_gap", "plot_group_rates", "plot_violation_history"]

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
    below = np.where(np.isnan(lower), 0.0, np.clip(values - lower, 0.0, None))
    above = np.where(np.isnan(upper), 0.0, np.clip(upper - values, 0.0, None))
    return np.nan_to_num(np.vstack([below, above]))


def plot_group_rates(
    report: FairnessReport,
    rates: Sequence[str] = ("selection_rate", "true_positive_rate", "false_positive_rate", "error_rate"),
    *,
    path: str | os.PathLike[str] | None = None,
    include_overall: bool = True,
    dpi: int = 120,
) -> Figure:
    """Bar chart of each group's rates with interval error bars, one panel per rate.

    Undefined rates get no bar and the label "undefined". The overall rate is drawn as a dashed line.

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
        ax.set_xticks(x, names, rotation=45 if len(names) > 3 else 0, ha="right" if len(names) > 3 else "center")
        if rate != "mean_loss":
            ax.set_ylim(0.0, 1.05)
    fig.suptitle(f"Group rates{f' ({report.split})' if report.split else ''}", fontsize=11)
    return _save(fig, path, dpi)


def _history_frame(history: FairnessMonitor | pd.DataFrame) -> pd.DataFrame:
    frame = history.history() if isinstance(history, FairnessMonitor) else history
    needed = {"step", "split", "constraint", "violation"}
    if not needed <= set(frame.columns):
        raise ValueError(f"history needs columns {sorted(needed)}, got {list(frame.columns)}")
    return frame


def plot_violation_history(
    history: FairnessMonitor | pd.DataFrame,
    *,
    constraints: Sequence[str] | None = None,
    path: str | os.PathLike[str] | None = None,
    dpi: int = 120,
) -> Figure:
    """Largest violation of each constraint (over its defined entries) vs training step, one line per split.

    Args:
        history: a :class:`FairnessMonitor` or its ``history()`` DataFrame.
        constraints: names to plot (default: all). path: write a PNG there. dpi: resolution of the PNG.

    Raises:
        ImportError: matplotlib is missing. ValueError: an empty history or unknown constraint names.
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
        part = frame[frame["constraint"] == name].dropna(subset=["violation"])
        worst = part.groupby(["split", "step"], sort=True)["violation"].max().reset_index()
        for split in dict.fromkeys(frame["split"]):
            line = worst[worst["split"] == split]
            if not line.empty:
                ax.plot(
                    line["step"].to_numpy(),
                    line["violation"].to_numpy(dtype=float),
                    marker="o",
                    markersize=3,
                    label=split,
                    color=_SPLIT_COLORS.get(split),
                )
        ax.axhline(0.0, color="gray", linewidth=0.8)
        ax.set_title(name, fontsize=10)
        ax.set_ylabel("max violation")
        ax.legend(fontsize=8, loc="best")
    axes[-1].set_xlabel("training step")
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)
    return _save(fig, path, dpi)


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
    ax.set_ylabel("constraint value")
    ax.legend(fontsize=8)
    ax.set_title("Constraint values by split", fontsize=11)
    return _save(fig, path, dpi)
