"""FairnessReport: verdicts, interval methods per constraint, pandas / Markdown / JSON output."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import fairopt as fo
from fairopt.validation import (
    SCHEMA_VERSION,
    FairnessReport,
    ReportOptions,
    Verdict,
    assess_constraint,
    bootstrap_constraint_interval,
    evaluate,
)
from tests.validation_data import linear_model, make_data, stats_from_cells


def _tables(tpr0, tpr1, positives):
    """Two groups with the given TPRs (exact) and FPR 0.2, ``positives`` positives and negatives each."""
    neg, fp = positives, round(0.2 * positives)
    return stats_from_cells(
        [
            [neg - fp, fp, positives - round(tpr0 * positives), round(tpr0 * positives)],
            [neg - fp, fp, positives - round(tpr1 * positives), round(tpr1 * positives)],
        ]
    )


@pytest.mark.parametrize(
    ("tpr0", "tpr1", "positives", "verdict"),
    [
        (0.80, 0.60, 2000, Verdict.VIOLATED),  # gap 0.2, far above 0.05
        (0.80, 0.80, 20000, Verdict.SATISFIED),  # gap 0, interval narrower than 0.05
        (0.80, 0.76, 100, Verdict.CANNOT_TELL),  # gap 0.04, but 100 positives: the interval straddles 0.05
    ],
)
def test_verdicts(tpr0, tpr1, positives, verdict):
    result = assess_constraint(fo.EqualOpportunity(0.05), _tables(tpr0, tpr1, positives))
    entry = result.entries[0]
    assert entry.verdict is verdict and result.verdict is verdict
    assert entry.value == pytest.approx(abs(tpr0 - tpr1), abs=1e-9)
    assert entry.lower <= entry.value <= entry.upper
    assert entry.violation == pytest.approx(max(0.0, abs(tpr0 - tpr1) - 0.05), abs=1e-9)
    assert entry.method == "newcombe" and "interval" in entry.reason


BUILTINS = [
    (fo.EqualizedOdds(0.05), "newcombe"),
    (fo.EqualizedOdds(0.05, convention="vs_overall"), "newcombe"),
    (fo.EqualizedOdds(0.05, convention="pairwise"), "newcombe"),
    (fo.DemographicParity(0.05), "newcombe"),
    (fo.ErrorRateParity(0.05, convention="vs_overall"), "newcombe"),
    (fo.FalsePositiveRateParity(0.05), "newcombe"),
    (fo.PredictiveParity(0.05), "newcombe"),
    (fo.DisparateImpact(0.8), "newcombe"),
    (fo.DisparateImpact(0.8, convention="vs_overall"), "newcombe"),
    (fo.DisparateImpact(0.8, convention="pairwise"), "newcombe"),
    (fo.RateBound("tpr", min=0.5, max=0.95), "wilson"),
    (fo.RateBound("accuracy", min=0.6, overall=True), "wilson"),
    (fo.BoundedGroupLoss(0.8), "student-t"),
    (abs(fo.tpr.per_group() - fo.tpr()) <= 0.05, "newcombe"),
    (fo.tpr((0, 1)) - fo.tpr(2) <= 0.05, "newcombe"),  # a pooled (marginal) group against another group
    (fo.tpr((0, 2)) >= 0.5, "wilson"),
]


@pytest.fixture(scope="module")
def held_out():
    data = make_data(6000, 3, seed=4)
    from fairopt.validation import collect_stats

    return collect_stats(linear_model(), data.tensors(), 3)


@pytest.mark.parametrize(("constraint", "method"), BUILTINS, ids=[c.name for c, _ in BUILTINS])
def test_builtins_get_analytic_intervals_that_agree_with_the_bootstrap(held_out, constraint, method):
    stats, moments = held_out
    result = assess_constraint(constraint, stats, moments=moments)
    lo_b, hi_b = bootstrap_constraint_interval(constraint, stats, moments=moments, n_resamples=2000, seed=1)
    core = constraint.evaluate(stats)
    for i, entry in enumerate(result.entries):
        assert entry.method.startswith(method), entry.method
        assert entry.value == pytest.approx(core.hard[i].item() + constraint.tolerance, abs=1e-12)
        assert entry.lower <= entry.value + 1e-12 and entry.value - 1e-12 <= entry.upper
        # analytic and bootstrap intervals describe the same uncertainty (Bonferroni makes some wider)
        assert abs(entry.lower - lo_b[i]) < 0.03 and abs(entry.upper - hi_b[i]) < 0.03, (entry.name, entry, lo_b, hi_b)


def test_expressions_outside_the_normal_forms_use_the_bootstrap(held_out):
    stats, moments = held_out
    ratio = (fo.tpr(1) - fo.tpr(0)) / fo.fpr(2) <= 1.0
    dependent = fo.tpr(0) - fo.selection_rate(0) <= 0.1  # both rates count the same positives
    function = fo.FunctionConstraint(lambda v: v.tpr - v.overall("tpr"), num_entries=3, tolerance=0.05)
    for constraint in (ratio, dependent, function):
        result = assess_constraint(constraint, stats, moments=moments)
        for entry in result.entries:
            assert entry.method == "bootstrap (2000)"
            assert entry.lower <= entry.value <= entry.upper
    # seeded: the same seed gives the same interval, another seed another one
    a = assess_constraint(function, stats, options=ReportOptions(seed=3)).entries[0]
    b = assess_constraint(function, stats, options=ReportOptions(seed=3)).entries[0]
    c = assess_constraint(function, stats, options=ReportOptions(seed=4)).entries[0]
    assert (a.lower, a.upper) == (b.lower, b.upper) != (c.lower, c.upper)


def test_clopper_pearson_option_widens_rate_intervals(held_out):
    stats, moments = held_out
    wilson = FairnessReport.from_stats(stats, moments=moments)
    exact = FairnessReport.from_stats(stats, moments=moments, options=ReportOptions(method="clopper-pearson"))
    for a, b in zip(wilson.groups, exact.groups):
        w, e = a.rates["true_positive_rate"], b.rates["true_positive_rate"]
        assert w.value == e.value and e.upper - e.lower > w.upper - w.lower


def test_options_are_checked_at_construction():
    for bad in (
        {"confidence": 1.0},
        {"method": "wald"},
        {"constraint_method": "delta"},
        {"n_resamples": 10},
        {"max_train_error": 1.5},
    ):
        with pytest.raises(ValueError):
            ReportOptions(**bad)


@pytest.fixture(scope="module")
def report():
    data = make_data(800, 3, seed=8)
    y = data.y.clone()
    y[data.g == 2] = 0.0  # group "c": TPR, FNR undefined
    constraints = [
        fo.EqualizedOdds(0.05, convention="pairwise"),
        fo.BoundedGroupLoss(0.7),
        fo.FunctionConstraint(lambda v: v.selection_rate - v.overall("selection_rate"), num_entries=3),
    ]
    return evaluate(
        linear_model(),
        (data.x, y, data.g, data.w),
        constraints,
        group_names=["a", "b", "c"],
        split="test",
        options=ReportOptions(n_resamples=300, seed=1),
        metadata={"model": "linear", "epoch": 3},
    )


def test_json_round_trip_is_exact(report, tmp_path):
    text = report.to_json()
    assert FairnessReport.from_json(text) == report
    path = tmp_path / "report.json"
    report.to_json(path)
    assert FairnessReport.from_json(path) == report
    data = json.loads(text)
    assert data["schema"] == "fairopt.validation.FairnessReport" and data["schema_version"] == SCHEMA_VERSION
    assert "NaN" not in text and "Infinity" not in text
    tpr_c = data["groups"][2]["rates"]["true_positive_rate"]
    assert tpr_c["value"] is None and tpr_c["lower"] is None  # undefined: null, never 0 or NaN
    assert data["metadata"]["model"] == "linear" and data["split"] == "test"
    entries = [e for c in data["constraints"] for e in c["entries"]]
    assert {e["verdict"] for e in entries} <= {"satisfied", "violated", "cannot tell"}
    # the stored table reproduces the report
    again = FairnessReport.from_stats(
        report.stats,
        [],
        moments=report.second_moments,
        group_names=report.group_names,
        options=report.options,
        rates=report.rates,
    )
    assert again.groups == report.groups and again.overall == report.overall


def test_json_refuses_other_schemas(report):
    data = report.to_dict()
    with pytest.raises(ValueError, match="upgrade fairopt"):
        FairnessReport.from_dict({**data, "schema_version": SCHEMA_VERSION + 1})
    with pytest.raises(ValueError, match="not a fairopt fairness report"):
        FairnessReport.from_dict({**data, "schema": "something else"})


def test_dataframes_use_nullable_floats(report):
    groups = report.group_table()
    assert list(groups.index) == ["a", "b", "c", "overall"]
    assert str(groups["true_positive_rate"].dtype) == "Float64"
    assert groups.loc["c", "true_positive_rate"] is pd.NA and groups.loc["c", "true_positive_rate_lower"] is pd.NA
    assert groups.loc["c", "false_positive_rate"] is not pd.NA
    for rate in report.rates:
        defined = groups[rate].notna()
        assert (groups.loc[defined, f"{rate}_lower"] <= groups.loc[defined, rate]).all()
    constraints = report.constraint_table()
    assert len(constraints) == sum(len(c.entries) for c in report.constraints)
    undefined = constraints[constraints["value"].isna()]
    assert len(undefined) > 0 and (undefined["verdict"] == "cannot tell").all()
    assert {"constraint", "entry", "value", "lower", "upper", "verdict", "method", "reason"} <= set(constraints.columns)


def test_markdown(report):
    text = report.to_markdown()
    assert text.startswith("## Fairness report (test)")
    assert "| group | count | base rate | selection rate | TPR |" in text
    assert "undefined" in text and "### Constraints" in text and "### Notes" in text
    assert "\\|tpr[a] - tpr[b]\\|" in text  # pipes in entry names are escaped
    lines = [line for line in text.splitlines() if line.startswith("|")]
    assert len({line.replace("\\|", "").count("|") for line in lines[:6]}) == 1  # a well-formed group table
    assert str(report) == text


def test_report_accessors(report):
    assert report.constraint(report.constraints[1].name).kind == "BoundedGroupLoss"
    with pytest.raises(KeyError):
        report.constraint("nope")
    assert report.verdict in set(Verdict)
    assert report.stats.table.shape == (3, 9) and report.second_moments.table.shape == (3, 7)
    np.testing.assert_allclose(report.stats.count.numpy(), [r.count for r in report.groups])


def test_from_stats_without_moments_and_loss():
    stats = stats_from_cells([[40, 10, 5, 45], [30, 20, 10, 40]])
    report = FairnessReport.from_stats(stats, fo.BoundedGroupLoss(0.5), group_names=["x", "y"])
    assert "mean_loss" not in report.rates and report.moments is None
    entry = report.constraints[0].entries[0]
    assert entry.verdict is Verdict.CANNOT_TELL and "no interval" in entry.reason
    with pytest.raises(ValueError, match="unique"):
        FairnessReport.from_stats(stats, group_names=["x", "x"])
    with pytest.raises(ValueError, match="num_groups is 2"):
        FairnessReport.from_stats(stats, group_names=["x", "y", "z"])


def test_a_constant_classifier_is_named_in_the_reports_warnings():
    """A model that predicts one label for every row meets demographic parity and equalized odds exactly (every
    group's selection rate, TPR and FPR are 0, or all 1), and learned nothing: the report must say so."""
    all_negative = stats_from_cells([[30, 0, 10, 0], [50, 0, 5, 0]])  # tn, fp, fn, tp: no positive prediction
    report = FairnessReport.from_stats(all_negative, [fo.DemographicParity(0.05)], split="test")
    assert report.constraints[0].entries[0].value == 0.0  # "met"
    (warning,) = [w for w in report.warnings if "constant classifier" in w]
    assert warning.startswith("the model predicts 0 for every row (a constant classifier)")
    all_positive = FairnessReport.from_stats(stats_from_cells([[0, 30, 0, 10], [0, 5, 0, 5]]), [])
    assert any(w.startswith("the model predicts 1 for every row (a constant") for w in all_positive.warnings)
    one_positive = FairnessReport.from_stats(stats_from_cells([[30, 0, 10, 0], [50, 1, 5, 0]]), [])
    assert not any("constant classifier" in w for w in one_positive.warnings)
    empty = FairnessReport.from_stats(stats_from_cells([[0, 0, 0, 0], [0, 0, 0, 0]]), [])
    assert not any("constant classifier" in w for w in empty.warnings)


def test_a_nearly_constant_classifier_is_named_in_the_reports_warnings():
    # 1 positive prediction in 96 rows where 15 are positive (< a tenth of 15.6%): every TPR is 0 or nearly, so an
    # equalized-odds gap looks met; a positive share a tenth of the base rate or more is a model's own choice
    rare = FairnessReport.from_stats(stats_from_cells([[30, 0, 10, 0], [50, 1, 5, 0]]), [fo.EqualizedOdds(0.05)])
    (warning,) = [w for w in rare.warnings if "nearly constant" in w]
    assert warning.startswith("the model predicts 1 for 1.0% of the rows, where 15.6% have label 1 (nearly constant)")
    few_negatives = stats_from_cells([[1, 40, 0, 50], [0, 30, 0, 20]])  # 1 negative prediction; 71 negatives
    (warning,) = [w for w in FairnessReport.from_stats(few_negatives, []).warnings if "nearly constant" in w]
    assert warning.startswith("the model predicts 0 for 0.7% of the rows, where 50.4% have label 0")
    assert "TPRs and FPRs near 1 in every group" in warning  # (near 0 when 1 is the rare prediction)
    # a rare label predicted about as often as it occurs (fraud-like base rates) is not flagged
    rare_label = stats_from_cells([[970, 5, 10, 15], [980, 3, 5, 12]])  # 35 positive predictions, 42 positives
    assert not any("nearly constant" in w for w in FairnessReport.from_stats(rare_label, []).warnings)
    constant = FairnessReport.from_stats(stats_from_cells([[30, 0, 10, 0], [50, 0, 5, 0]]), [])
    assert not any("nearly constant" in w for w in constant.warnings)  # said once, as a constant classifier


def test_an_undefined_entry_is_noted_once_in_reports_of_either_schema():
    stats = stats_from_cells([[30, 10, 0, 0], [50, 1, 5, 3]])  # no positive label in group 0: its TPR is undefined
    report = FairnessReport.from_stats(stats, [fo.tpr(1) - fo.tpr(0) <= 0.05])
    (entry,) = report.constraints[0].entries
    assert not entry.defined
    notes = report.to_markdown().split("### Notes")[1]
    assert notes.count(entry.reason) == 1  # among the warnings (schema 2)
    # a schema-1 report has no such warning: the entry's own note is then the only one
    old = report.to_dict()
    old["schema_version"], old["warnings"] = 1, []
    notes = FairnessReport.from_dict(old).to_markdown().split("### Notes")[1]
    assert notes.count(entry.reason) == 1 and f"{entry.name}: {entry.reason}" in notes
