"""Study outputs: the console table, Markdown, JSON and PNG plots, and the comparison with published numbers."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from fairopt.validation.report.formatting import format_number

from .config import value_description
from .study import StudyResult, run_warnings, summarize, write_json

__all__ = [
    "format_table",
    "plot_histories",
    "plot_tradeoff",
    "print_and_write",
    "published_comparison",
    "to_markdown",
    "write_outputs",
]


def _num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return format_number(float(value), digits)


def _with_std(row: pd.Series, column: str) -> str:
    std = row.get(f"{column}_std")
    text = _num(row[column])
    return text if std is None or (isinstance(std, float) and math.isnan(std)) else f"{text}±{_num(std)}"


def _worst(row: pd.Series, columns: list[str]) -> str:
    values = [(row[c], c[len("test_accuracy[") : -1]) for c in columns if not pd.isna(row[c])]
    if not values:
        return "n/a"
    value, name = min(values)
    return f"{value:.3f} ({name})"


def bound(result: StudyResult) -> float:
    """The bound the constraint's entries are compared with (its tolerance; 0 for p%-rule forms)."""
    return result.runs[0].reports["test"].constraints[0].tolerance


def _rows(result: StudyResult) -> tuple[list[str], list[list[str]]]:
    summary = summarize(result)
    groups = [c for c in summary.columns if c.startswith("test_accuracy[")]
    short = [c[len("test_accuracy[") : -1] for c in groups]
    by_group = len(groups) <= 4  # more groups: the worst group's accuracy instead of one column each
    header = [
        "model",
        "method",
        "train acc",
        "test acc",
        ("test acc by group (" + " / ".join(short) + ")") if by_group else "worst-group test acc",
        "train",
        "validation",
        "held-out",
        "test [95% CI]" if len(result.config.seeds) == 1 else "test (mean±std over seeds)",
        "test verdict",
        "time s",
    ]
    rows = []
    for _, r in summary.iterrows():
        interval = f" [{_num(r['test_lower'])}, {_num(r['test_upper'])}]" if r["seeds"] == 1 else ""
        train = _num(r["train_value"]) + (" (illusion)" if "illusion" in str(r["train_flags"]) else "")
        rows.append(
            [
                r["model"],
                r["method"],
                _num(r["train_accuracy"]),
                _with_std(r, "test_accuracy"),
                " / ".join(_num(r[c]) for c in groups) if by_group else _worst(r, groups),
                train,
                _num(r["validation_value"]),
                _num(r["held-out_value"]),
                _with_std(r, "test_value") + interval,
                r["test_verdict"],
                f"{r['wall_time_s']:.1f}",
            ]
        )
    return header, rows


def _caption(result: StudyResult) -> str:
    c = result.config
    sizes = ", ".join(f"{k} {v:,}" for k, v in result.split_sizes.items())
    values = value_description(c.constraint, classes=bool(c.classes))
    return (
        f"{c.dataset}: {result.constraint}; groups {', '.join(result.group_names)}; {sizes} rows; "
        f"seeds {list(c.seeds)}. Columns train / validation / held-out / test: {values}, to "
        f"compare with its bound {bound(result):g}; validation drove the held-out duals and chose the "
        "final model, held-out (the audit split) did neither: it is the estimate for new data. Test verdict at 95% "
        "confidence, for the whole constraint (violated if any entry is, satisfied if all are)."
    )


def _warning_items(result: StudyResult) -> list[str]:
    """The data's notes (:attr:`StudyResult.notes`), then every run's warnings (:func:`run_warnings`), one line each."""
    items = list(result.notes)
    for run in result.runs:
        items += [f"{run.model} / {run.method} / seed {run.seed}: warning: {w}" for w in run_warnings(run)]
    return items


def _warning_summary(result: StudyResult) -> str | None:
    """One console line counting the notes and the runs with warnings (listed in study.md), or None."""
    warned = sum(1 for run in result.runs if run_warnings(run))
    if not result.notes and not warned:
        return None
    return (
        f"{len(result.notes)} note(s) on the data, warnings on {warned} of {len(result.runs)} run(s): "
        "listed in study.md (and under the runs' log lines)"
    )


def format_table(result: StudyResult) -> str:
    """A fixed-width console table of :func:`~fairopt.bench.study.summarize`, then a count of notes and warnings."""
    header, rows = _rows(result)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    out = [_caption(result), "", line, "-" * len(line)]
    out += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
    comparison = published_comparison(result)
    if comparison is not None:
        out += ["", "Published (test error / test violation) vs ours (mean ± std over seeds):"]
        out += [f"  {line}" for line in comparison.to_string(index=False).splitlines()]
    summary = _warning_summary(result)
    if summary is not None:
        out += ["", summary]
    return "\n".join(out)


def to_markdown(result: StudyResult) -> str:
    """The study as Markdown: caption, table, the published comparison (if any), then notes and warnings."""
    header, rows = _rows(result)
    lines = [_caption(result), "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    comparison = published_comparison(result)
    if comparison is not None:
        lines += ["", "Published vs ours:", ""]
        cols = list(comparison.columns)
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in comparison.itertuples(index=False)]
    items = _warning_items(result)
    if items:
        lines += ["", "Notes and warnings:", ""] + [f"- {item}" for item in items]
    return "\n".join(lines) + "\n"


def published_comparison(result: StudyResult) -> pd.DataFrame | None:
    """Our test error and test violation (mean ± std over seeds) next to the preset's published numbers."""
    if not result.config.published:
        return None
    table = result.table()
    rows = []
    for pub in result.config.published:
        ours = table[(table["method"] == pub.method) & (table["model"] == pub.model)]
        if ours.empty:
            continue
        error = 1.0 - ours["test_accuracy"]
        violation = ours["test_violation"].astype(float)
        rows.append(
            {
                "method": f"{pub.method} ({pub.model})",
                "published error": f"{pub.test_error:.3f}",
                "published violation": f"{pub.test_violation:.3f}",
                "our error": f"{error.mean():.3f} ± {error.std(ddof=1) if len(ours) > 1 else 0:.3f}",
                "our violation": f"{violation.mean():.3f} ± {violation.std(ddof=1) if len(ours) > 1 else 0:.3f}",
                "source": pub.source,
            }
        )
    return pd.DataFrame(rows) if rows else None


def plot_histories(result: StudyResult, path: Path) -> None:
    """The largest expression value (``g + tolerance``, e.g. a rate gap) vs epoch on train / validation / held-out /
    test, one panel per (model, method) (first seed), with the bound as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models, methods = list(result.config.models), list(result.config.methods)
    fig, axes = plt.subplots(len(models), len(methods), figsize=(3.2 * len(methods), 2.6 * len(models)), squeeze=False)
    first = {(r.model, r.method): r for r in reversed(result.runs)}
    for i, model in enumerate(models):
        for j, method in enumerate(methods):
            ax = axes[i][j]
            run = first.get((model, method))
            if run is None or not run.history:
                ax.set_axis_off()
                continue
            epochs = [p["epoch"] for p in run.history]
            for split, style in (("train", "-"), ("validation", "-."), ("held-out", "--"), ("test", ":")):
                ax.plot(epochs, [p[split] for p in run.history], style, label=split)
            ax.axhline(bound(result), color="black", linewidth=0.8, alpha=0.6)
            ax.set_title(f"{model} / {method}", fontsize=8)
            ax.tick_params(labelsize=7)
            if i == len(models) - 1:
                ax.set_xlabel("epoch", fontsize=8)
            if j == 0:
                ax.set_ylabel("expression value", fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{result.constraint} (line: bound)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_tradeoff(result: StudyResult, path: Path) -> None:
    """Test accuracy vs test constraint value for every run, with interval bars
    (:func:`fairopt.validation.plots.plot_accuracy_vs_constraint`)."""
    import matplotlib.pyplot as plt

    from fairopt.validation.plots import plot_accuracy_vs_constraint

    figure = plot_accuracy_vs_constraint(result.table(), bound=bound(result), title=result.constraint, path=path)
    plt.close(figure)


def write_outputs(result: StudyResult, out: Path, *, plots: bool = True) -> list[Path]:
    """Write ``study.json``, ``study.md``, ``runs.csv`` and (if matplotlib is installed) two PNGs into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "study.json", out / "study.md", out / "runs.csv"]
    write_json(result, written[0])
    written[1].write_text(to_markdown(result))
    result.table().to_csv(written[2], index=False)
    if plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            return written
        plot_histories(result, out / "constraint_vs_epoch.png")
        plot_tradeoff(result, out / "accuracy_vs_constraint.png")
        written += [out / "constraint_vs_epoch.png", out / "accuracy_vs_constraint.png"]
    return written


def print_and_write(
    result: StudyResult,
    out: Path,
    *,
    plots: bool = True,
    table: Callable[[StudyResult], str] = format_table,
    write: Callable[..., list[Path]] = write_outputs,
) -> list[Path]:
    """What ``fairopt bench`` ends with: the console table (``table(result)``) on stdout, the files written to ``out``
    (``write(result, out, plots=plots)``), a line when the plots were asked for but matplotlib is missing, and one
    line naming the files and the study's total time. The image bench passes its own ``table`` and ``write``
    (:func:`fairopt.bench.images_study.format_image_table`, :func:`~fairopt.bench.images_study.write_image_outputs`).
    Returns the paths written."""
    print(table(result))
    written = write(result, out, plots=plots)
    if plots and not any(p.suffix == ".png" for p in written):
        print("(no PNG plots: matplotlib is not installed; pip install 'fairopt[plots]')")
    names = ", ".join(p.name for p in written)
    print(f"\nwrote {len(written)} files to {out}/ ({names}); total {result.wall_time:.0f} s")
    return written
