"""Reliable report texts, intervals and plots: leveling-down wording, "-0.000", ranges of intervals, readable plots.

Every expected number here is computed by hand from the inputs (shown next to the assertion).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PathCollection

import fairopt as fo
from fairopt.validation import (
    FairnessMonitor,
    FairnessReport,
    GeneralizationGap,
    bootstrap_constraint_interval,
    leveling_down,
    mean_interval,
    rate_estimates,
    second_moments,
)
from fairopt.validation.plots import plot_constraint_history, plot_group_rates
from fairopt.validation.report.formatting import format_estimate, format_number
from tests.validation_data import linear_model, make_data, stats_from_cells

Z95 = 1.959963984540054  # standard normal 0.975 quantile
T95_DF3 = 3.182446305284263  # Student-t 0.975 quantile, 3 degrees of freedom


pytestmark = pytest.mark.usefixtures("agg_backend")  # tests/conftest.py


# ---- 1. leveling-down texts --------------------------------------------------------------------------------------


def _report(tpr_by_group, names=("A", "B"), n=10_000):
    """Groups with 50% positives, FPR 0.1 and the given TPRs (exact: n/2 = 5000 positives, so 1/5000 steps)."""
    cells = []
    for tpr in tpr_by_group:
        pos = neg = n // 2
        tp, fp = round(tpr * pos), round(0.1 * neg)
        cells.append([neg - fp, fp, pos - tp, tp])
    return FairnessReport.from_stats(stats_from_cells(cells), group_names=list(names))


def test_tied_rates_name_two_groups_once_and_print_no_negative_zero():
    # FPR 0.1 in both groups and both reports; FPR is lower-is-better, so d = -1 and d * 0 = -0.0
    result = leveling_down(_report([0.58, 0.55]), _report([0.90, 0.60]), rates=["fpr"])
    (finding,) = result.findings
    assert finding.better_off == "A" and finding.worse_off == "B"  # two distinct groups, first in order on ties
    assert math.copysign(1.0, finding.reference_gap) == 1.0 and math.copysign(1.0, finding.better_off_change) == 1.0
    assert "-0.0" not in result.findings_table().to_string()
    assert finding.reason == (
        "A and B had the same FPR in the reference (0.100), and both are unchanged: it did not narrow by at least 0.01"
    )
    markdown = result.to_markdown()
    assert "-0.000" not in markdown and "+0.000" not in markdown
    assert "| A | 0.100 → 0.100 (unchanged) |" in markdown and "| B | 0.100 → 0.100 (unchanged) |" in markdown


def test_every_group_tied_among_three_is_still_two_distinct_groups():
    result = leveling_down(_report([0.7, 0.7, 0.7], "ABC"), _report([0.7, 0.7, 0.7], "ABC"), rates=["tpr"])
    (finding,) = result.findings
    assert (finding.better_off, finding.worse_off) == ("A", "B")
    assert finding.reason.startswith("A and B had the same TPR in the reference (0.700), and both are unchanged")
    assert not finding.leveling_down and finding.reference_gap == 0.0 and finding.current_gap == 0.0


def test_each_group_is_named_on_the_side_its_change_has():
    # A: 0.90 -> 0.64 (-0.26, worse); B: 0.60 -> 0.62 (+0.02, better); gap 0.30 -> 0.02
    (finding,) = leveling_down(_report([0.64, 0.62]), _report([0.90, 0.60]), rates=["tpr"]).findings
    assert finding.reason == (
        "the TPR gap went from 0.300 to 0.020; A (better off in the reference) got worse (-0.260), "
        "B got better (+0.020): mainly because the better-off group got worse"
    )


def test_a_change_below_the_printed_precision_is_unchanged():
    # A: 0.9000 -> 0.9002 (+0.0002 prints as 0.000), B: 0.60 -> 0.85 (+0.25); gap 0.30 -> 0.0502
    result = leveling_down(_report([0.9002, 0.85]), _report([0.90, 0.60]), rates=["tpr"])
    (finding,) = result.findings
    assert finding.better_off_change == pytest.approx(0.0002) and finding.worse_off_change == pytest.approx(0.25)
    assert "A (better off in the reference) unchanged, B got better (+0.250)" in finding.reason
    assert "worse-off group improved" in finding.reason
    assert "| A | 0.900 → 0.900 (unchanged) |" in result.to_markdown()


def test_a_reversed_gap_is_not_a_closed_gap():
    # A: 0.9 -> 0.5, B: 0.6 -> 0.8: the gap is 0.3 before and after (B ahead now), nothing closed
    (finding,) = leveling_down(_report([0.5, 0.8]), _report([0.9, 0.6]), rates=["tpr"]).findings
    assert finding.current_gap == pytest.approx(-0.3)
    assert not finding.leveling_down and not finding.strict
    assert finding.reason == (
        "the TPR gap went from 0.300 to 0.300, with the order reversed; A (better off in the reference) got worse "
        "(-0.400), B got better (+0.200): it did not narrow by at least 0.01"
    )


def test_a_tie_that_opens_up_names_each_group_once():
    # TPR 0.5 in both groups, then A 0.4 (-0.1), B 0.6 (+0.1)
    (finding,) = leveling_down(_report([0.4, 0.6]), _report([0.5, 0.5]), rates=["tpr"]).findings
    assert finding.reason == (
        "the TPR was 0.500 for both groups in the reference and the gap is now 0.200; "
        "A got worse (-0.100), B got better (+0.100): it did not narrow by at least 0.01"
    )
    assert not finding.leveling_down


# ---- "-0.000" elsewhere -----------------------------------------------------------------------------------------


def test_numbers_that_round_to_zero_print_without_a_sign():
    from fairopt.validation.report.formatting import format_signed

    assert format_number(-0.0) == "0.000" and format_number(-0.0004) == "0.000" and format_number(-0.0006) == "-0.001"
    assert format_estimate(-0.0001, -0.0003, 0.0101) == "0.000 [0.000, 0.010]"
    assert format_signed(0.0004) == "0.000" and format_signed(-0.0004) == "0.000" and format_signed(-0.0) == "0.000"
    assert format_signed(0.02) == "+0.020" and format_signed(-0.26) == "-0.260" and format_signed(None) == "undefined"


def test_generalization_gap_of_tiny_decrease_prints_zero():
    # selection rates (A, B): 0.5, 0.4 -> DP value 0.1; then 0.5, 0.40004 -> 0.09996; gap -0.00004 prints 0.000
    def report(selected_b, n):
        cells = [[n // 2, n // 2, 0, 0], [n - selected_b, selected_b, 0, 0]]
        return FairnessReport.from_stats(stats_from_cells(cells), [fo.DemographicParity(0.05)], group_names=["A", "B"])

    gap = GeneralizationGap({"train": report(40, 100), "test": report(40004, 100_000)})
    assert gap.table()["gap"].iloc[0] == pytest.approx(-0.00004)
    markdown = gap.to_markdown()
    assert "-0.000" not in markdown and markdown.splitlines()[-1].endswith("| 0.000 |")


# ---- 2. intervals within the range of their quantity ------------------------------------------------------------


def test_mean_interval_clips_at_a_known_lower_bound():
    # 0.05 ± 1.96 * 0.05 = [-0.048, 0.148]; with lower_bound 0: [0, 0.148]
    lo, hi = mean_interval(0.05, 0.05)
    assert float(lo) == pytest.approx(0.05 - Z95 * 0.05) and float(lo) < 0
    lo, hi = mean_interval([0.05, 0.05], [0.05, 0.05], lower_bound=[0.0, np.nan])
    assert lo.tolist() == pytest.approx([0.0, 0.05 - Z95 * 0.05])
    assert hi.tolist() == pytest.approx([0.05 + Z95 * 0.05] * 2)
    assert np.isnan(mean_interval(np.nan, 0.1, lower_bound=0.0)[0])  # undefined stays undefined, not 0
    with pytest.raises(ValueError, match="below its lower_bound"):
        mean_interval(-0.2, 0.05, lower_bound=0.0)


def _loss_tables(losses_by_group):
    """Unweighted tables with the given per-example losses (all labels 1, all predicted 1)."""
    losses = torch.tensor([v for group in losses_by_group for v in group], dtype=torch.float64)
    groups = torch.tensor([g for g, group in enumerate(losses_by_group) for _ in group])
    scores, labels = torch.ones_like(losses), torch.ones_like(losses)
    g = len(losses_by_group)
    stats = fo.group_stats(scores, labels=labels, groups=groups, num_groups=g, example_losses=losses)
    return stats, second_moments(scores, labels=labels, groups=groups, num_groups=g, example_losses=losses, stats=stats)


def test_mean_loss_interval_is_clipped_at_zero_only_for_non_negative_losses():
    # group 0: losses 0, 0, 0, 3: mean 0.75, sd 1.5, se 0.75, t(3) interval 0.75 ± 3.1824 * 0.75 = [-1.637, 3.137]
    # group 1: losses -1, 0, 1, 2: mean 0.5, may be negative, so never clipped
    stats, moments = _loss_tables([[0.0, 0.0, 0.0, 3.0], [-1.0, 0.0, 1.0, 2.0]])
    half = T95_DF3 * 0.75
    raw = rate_estimates(stats, "mean_loss", moments=moments)
    assert raw.value.tolist() == pytest.approx([0.75, 0.5]) and raw.lower[0] == pytest.approx(0.75 - half)
    clipped = rate_estimates(stats, "mean_loss", moments=moments, loss_nonnegative=[True, False])
    assert clipped.lower[0] == 0.0 and clipped.upper[0] == pytest.approx(0.75 + half)
    sd1 = np.std([-1.0, 0.0, 1.0, 2.0], ddof=1)  # 1.29099
    assert clipped.lower[1] == pytest.approx(0.5 - T95_DF3 * sd1 / 2) and clipped.lower[1] < 0
    negative, negative_moments = _loss_tables([[-1.0, -1.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="mean loss is negative"):
        rate_estimates(negative, "mean_loss", moments=negative_moments, loss_nonnegative=True)
    with pytest.raises(ValueError, match="one per row"):
        rate_estimates(stats, "mean_loss", moments=moments, loss_nonnegative=[True, True, True])


def test_bootstrapped_mean_loss_stays_non_negative_for_non_negative_losses():
    stats, moments = _loss_tables([[0.0, 0.0, 0.0, 3.0], [0.2, 0.4, 0.6, 0.8]])
    constraint = fo.BoundedGroupLoss(1.0)  # entries: each group's mean loss (value = mean loss, bound 1)
    lo, _ = bootstrap_constraint_interval(constraint, stats, moments=moments, n_resamples=400, seed=0)
    assert lo[0] < 0  # se 0.75 on a mean of 0.75: the normal redraw alone goes below 0
    lo, hi = bootstrap_constraint_interval(
        constraint, stats, moments=moments, n_resamples=400, seed=0, loss_nonnegative=True
    )
    assert (lo >= 0).all() and (hi > lo).all()


@pytest.mark.parametrize("method", ["wilson", "clopper-pearson"])
def test_rate_intervals_lie_in_zero_one_and_contain_the_estimate(method):
    data = make_data(300, 3, seed=5)
    with torch.no_grad():
        scores = linear_model()(data.x).squeeze(1).double()
    stats = fo.group_stats(scores, labels=data.y, groups=data.g, num_groups=3, weights=data.w)
    moments = second_moments(scores, labels=data.y, groups=data.g, num_groups=3, weights=data.w, stats=stats)
    for rate in ("selection_rate", "true_positive_rate", "false_positive_rate", "error_rate", "precision"):
        est = rate_estimates(stats, rate, moments=moments, method=method)
        assert (est.lower >= 0).all() and (est.upper <= 1).all()
        assert (est.lower <= est.value + 1e-12).all() and (est.value <= est.upper + 1e-12).all()


# ---- 3. plots ---------------------------------------------------------------------------------------------------


def _drawn(fig):
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def test_group_rate_labels_do_not_overlap_with_three_long_names():
    names = ["race=African-American", "race=Caucasian", "race=Hispanic"]
    cells = [[40, 10, 10, 40], [30, 20, 15, 35], [45, 5, 20, 30]]
    fig = plot_group_rates(FairnessReport.from_stats(stats_from_cells(cells), group_names=names))
    renderer = _drawn(fig)
    for ax in fig.axes:
        labels = [t for t in ax.get_xticklabels() if t.get_text()]
        boxes = [t.get_window_extent(renderer) for t in labels]
        assert not any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2))
        assert [t.get_text() for t in labels] == ["race=\nAfrican-\nAmerican", "race=\nCaucasian", "race=\nHispanic"]


def test_group_rate_labels_turn_upright_when_wrapping_is_not_enough():
    names = [f"group-number-{i:02d}" for i in range(12)]
    fig = plot_group_rates(FairnessReport.from_stats(stats_from_cells([[40, 10, 10, 40]] * 12), group_names=names))
    renderer = _drawn(fig)
    for ax in fig.axes:
        labels = ax.get_xticklabels()
        assert labels[0].get_rotation() == 90.0
        boxes = [t.get_window_extent(renderer) for t in labels if t.get_text()]
        assert not any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2))


def _history(tolerance=0.1, margin=None):
    """Two steps, two entries, one split: g = value - 0.1 is (-0.08, -0.05) at step 0 and (0.05, -0.06) at step 1."""
    values = [(0, 0.02), (0, 0.05), (1, 0.15), (1, 0.04)]
    rows = [
        {"step": s, "split": "held-out", "constraint": "dp", "entry": f"e{i % 2}", "value": v,
         "violation": max(0.0, v - tolerance)}
        for i, (s, v) in enumerate(values)
    ]  # fmt: skip
    frame = pd.DataFrame(rows)
    if margin is not None:
        frame["margin"] = margin
    return frame


def test_violation_history_shows_signed_values_with_zero_and_margin_lines():
    fig = plot_constraint_history(_history(margin=0.02))
    (ax,) = fig.axes
    by_label = {line.get_label(): line for line in ax.lines}
    assert by_label["held-out"].get_ydata().tolist() == pytest.approx([-0.05, 0.05])  # max g per step, not clipped
    assert list(by_label["g = 0 (bound)"].get_ydata()) == [0.0, 0.0]
    assert by_label["-margin"].get_ydata().tolist() == pytest.approx([-0.02, -0.02])
    _drawn(fig)
    assert ax.get_ylim()[0] < -0.05


def test_violation_history_reads_tolerances_from_the_monitor_and_asks_when_it_cannot_tell():
    data = make_data(300, 3, seed=2)
    monitor = FairnessMonitor([fo.DemographicParity(0.9)], {"held-out": data.tensors()}, num_groups=3, every=1)
    model = linear_model()
    for step in range(3):
        with torch.no_grad():
            model.bias += 0.2
        monitor.update(step, model)
    history = monitor.history()
    expected = (history["value"].astype(float) - 0.9).groupby(history["step"]).max().to_numpy()
    (ax,) = plot_constraint_history(monitor, margins=0.01).axes
    line = next(line for line in ax.lines if line.get_label() == "held-out")
    assert line.get_ydata().tolist() == pytest.approx(expected.tolist()) and (line.get_ydata() < 0).all()
    # the same satisfied history as a DataFrame: no violated row tells the tolerance
    with pytest.raises(ValueError, match="cannot tell the tolerance"):
        plot_constraint_history(history)
    (ax,) = plot_constraint_history(history, tolerances={monitor.constraints[0].name: 0.9}).axes
    assert ax.lines[0].get_ydata().tolist() == pytest.approx(expected.tolist())
    with pytest.raises(ValueError, match="margins must be >= 0"):
        plot_constraint_history(monitor, margins=-0.1)


def test_accuracy_vs_constraint_shows_every_run_with_interval_bars(tmp_path):
    from fairopt.validation.plots import plot_accuracy_vs_constraint

    runs = pd.DataFrame(
        {
            "model": ["mlp", "mlp", "linear"],
            "method": ["lagrangian", "penalty", "lagrangian"],
            "test_value": [0.04, 0.04, 0.10],  # the first two runs coincide
            "test_accuracy": [0.80, 0.80, 0.85],
            "test_lower": [0.02, 0.01, np.nan],  # the third run has no constraint interval: no horizontal bar
            "test_upper": [0.07, 0.08, np.nan],
            "test_accuracy_lower": [0.78, 0.77, 0.84],
            "test_accuracy_upper": [0.82, 0.83, 0.86],
        }
    )
    fig = plot_accuracy_vs_constraint(runs, bound=0.05, title="DemographicParity", path=tmp_path / "tradeoff.png")
    assert (tmp_path / "tradeoff.png").read_bytes().startswith(b"\x89PNG")
    (ax,) = fig.axes
    points = [c for c in ax.collections if isinstance(c, PathCollection) and len(c.get_offsets())]
    assert [tuple(c.get_offsets()[0]) for c in points] == [(0.04, 0.80), (0.04, 0.80), (0.10, 0.85)]
    sizes = [float(c.get_sizes()[0]) for c in points]
    assert sizes[0] > sizes[1]  # the coinciding runs are concentric rings: the later one is smaller, both show
    assert points[0].get_facecolor()[0][3] == pytest.approx(0.35) and points[0].get_edgecolor()[0][3] == 1.0
    assert [t.get_text() for t in ax.texts] == ["×2"]
    bars = [c.lines[2] for c in ax.containers]  # (x bars, y bars) LineCollections per run
    x_segments = [np.asarray(b[0].get_segments()[0])[:, 0].tolist() for b in bars]
    y_segments = [np.asarray(b[1].get_segments()[0])[:, 1].tolist() for b in bars]
    np.testing.assert_allclose(x_segments, [[0.02, 0.07], [0.01, 0.08], [0.10, 0.10]])
    np.testing.assert_allclose(y_segments, [[0.78, 0.82], [0.77, 0.83], [0.84, 0.86]])
    with pytest.raises(ValueError, match="runs need columns"):
        plot_accuracy_vs_constraint(runs.drop(columns=["test_accuracy"]))
