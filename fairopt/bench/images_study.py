"""Run a whole image study and write it: the tabular study's result, report and files, plus the width sweep.

:func:`run_image_study` gives a :class:`~fairopt.bench.study.StudyResult` like :func:`~fairopt.bench.run_study`, so
the console table, ``study.json``, ``study.md``, ``runs.csv`` and the two PNGs come from :mod:`fairopt.bench.output`
unchanged. What images add is the capacity sweep of Cherepanova et al. (arXiv 2102.06764) and Veldanda et al. (TMLR
2023): for ``preact-resnet18-w{k}`` models, the constraint's largest expression value (``g + tolerance``, the
quantity compared with the bound; docs/glossary.md) on train / validation / held-out / test by width k and method
(:func:`width_table`), as Markdown and a plot against width (:func:`plot_constraint_vs_width`,
``constraint_vs_width.png``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from .images import ImageStudyConfig, load_image_study_data, model_width, run_image_one
from .output import bound, format_table, to_markdown, write_outputs
from .runner import SPLITS
from .study import StudyResult, run_study, summarize

__all__ = [
    "format_image_table",
    "plot_constraint_vs_width",
    "run_image_study",
    "width_markdown",
    "width_table",
    "write_image_outputs",
]


def run_image_study(
    config: ImageStudyConfig, *, progress: bool = True, log: Callable[[str], None] | None = None
) -> StudyResult:
    """Run every (model, method, seed) of an image study: :func:`~fairopt.bench.run_study` with the image data
    (:func:`~fairopt.bench.images.load_image_study_data`) and the image run of one configuration
    (:func:`~fairopt.bench.images.run_image_one`).

    Each seed gets its own audit carve-out, training subsample, initialization and batch order. ``log`` receives the
    data's notes and the loaders' warnings once (:func:`~fairopt.bench.study.data_notes`), then one line per run
    and its warnings (:func:`~fairopt.bench.study.run_warnings`).

    Raises:
        ValueError, FileNotFoundError: from :func:`~fairopt.bench.images.load_image_study_data` (an unknown
            attribute or column, a missing image ...).
    """
    return run_study(
        config,  # type: ignore[arg-type]
        progress=progress,
        log=log,
        load=load_image_study_data,
        run=run_image_one,
    )


def width_table(result: StudyResult) -> pd.DataFrame:
    """One row per (width k, method) of the ``preact-resnet18-w{k}`` runs (mean over seeds): ``width``, ``method``,
    ``train_accuracy``, ``test_accuracy`` and the constraint's largest expression value on each split
    (``train_value``, ``validation_value``, ``held-out_value``, ``test_value``, the columns of
    :func:`~fairopt.bench.study.summarize`; rate units, to compare with the bound). Empty when the
    study has no such model."""
    summary = summarize(result)
    widths = summary["model"].map(model_width)
    columns = ["train_accuracy", "test_accuracy", *(f"{s}_value" for s in SPLITS)]
    table = summary.assign(width=widths)[widths.notna()][["width", "method", *columns]]
    table["width"] = table["width"].astype(int)
    order = {m: i for i, m in enumerate(dict.fromkeys(table["method"]))}  # the study's method order
    return table.sort_values(["method", "width"], key=lambda c: c.map(order) if c.name == "method" else c).reset_index(
        drop=True
    )


def _num(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.3f}"


def width_markdown(result: StudyResult) -> str:
    """:func:`width_table` as a Markdown table with a caption (empty string when there is no width sweep)."""
    table = width_table(result)
    if table.empty:
        return ""
    lines = [
        f"Expression value by width k of preact-resnet18-w{{k}} (largest entry; bound {bound(result):g}); "
        "held-out = the audit split, used neither to train nor to choose.",
        "",
        "| k | method | train acc | test acc | train | validation | held-out | test |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for _, r in table.iterrows():
        values = [r["train_accuracy"], r["test_accuracy"], *(r[f"{s}_value"] for s in SPLITS)]
        lines.append(f"| {r['width']} | {r['method']} | " + " | ".join(_num(v) for v in values) + " |")
    return "\n".join(lines) + "\n"


def plot_constraint_vs_width(result: StudyResult, path: Path) -> None:
    """Expression value (largest entry) vs width k on each split, one panel per method, with the bound
    as a horizontal line: the training value falling to 0 while the held-out and test values stay is the "illusion
    of fairness" of an interpolating net (Cherepanova et al. 2021)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = width_table(result)
    methods = list(dict.fromkeys(table["method"]))
    fig, axes = plt.subplots(1, len(methods), figsize=(3.4 * len(methods), 2.8), squeeze=False, sharey=True)
    for ax, method in zip(axes[0], methods):
        rows = table[table["method"] == method]
        for split, style in (("train", "o-"), ("validation", "^-."), ("held-out", "s--"), ("test", "d:")):
            ax.plot(rows["width"], rows[f"{split}_value"], style, label=split, markersize=4)
        ax.axhline(bound(result), color="black", linewidth=0.8, alpha=0.6)
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(rows["width"]), [str(k) for k in rows["width"]])
        ax.set_title(method, fontsize=9)
        ax.set_xlabel("width k", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("expression value", fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{result.constraint} vs width (line: bound)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _note(result: StudyResult) -> str:
    return getattr(result.config, "published_note", "")


def format_image_table(result: StudyResult) -> str:
    """The console report: :func:`~fairopt.bench.output.format_table`, the width sweep and the preset's note on the
    published numbers."""
    parts = [format_table(result)]
    sweep = width_markdown(result)
    if sweep:
        parts.append(sweep.rstrip())
    if _note(result):
        parts.append(f"Published: {_note(result)}")
    return "\n\n".join(parts)


def write_image_outputs(result: StudyResult, out: Path, *, plots: bool = True) -> list[Path]:
    """:func:`~fairopt.bench.output.write_outputs` (``study.json``, ``study.md``, ``runs.csv``, two PNGs), with the
    width sweep and the published note added to ``study.md`` and, when there is a width sweep of two widths or more
    and matplotlib, ``constraint_vs_width.png``."""
    written = write_outputs(result, out, plots=plots)
    extra = [part for part in (width_markdown(result), _note(result) and f"Published: {_note(result)}\n") if part]
    if extra:
        (out / "study.md").write_text(to_markdown(result) + "\n" + "\n".join(extra))
    widths = width_table(result)
    # a plot against width needs two widths at least (one point per panel says nothing)
    if plots and any(p.suffix == ".png" for p in written) and not widths.empty and widths["width"].nunique() > 1:
        plot_constraint_vs_width(result, out / "constraint_vs_width.png")
        written.append(out / "constraint_vs_width.png")
    return written
