"""Regressions from the reliability bug hunt (issue 10): results that were silently wrong, and input edges.

Each test names the kind of bug it covers and fails on the code before its fix.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, TensorDataset

import fairopt
from fairopt import Groups, group_stats, selection_rate, tpr
from fairopt.optim import IterateRecords, StochasticClassifier
from fairopt.postprocessing import GroupThresholds
from fairopt.validation import FairnessReport, Verdict, collect_stats, evaluate


def stats_of(scores, labels, groups, num_groups):
    return group_stats(
        torch.tensor(scores, dtype=torch.float64),
        labels=torch.tensor(labels),
        groups=torch.tensor(groups),
        num_groups=num_groups,
    )


# 1. A max-min gap over fewer than two defined groups is undefined, never "0, satisfied" --------------------------

# Group 1 has no positive label: its TPR is undefined. Group 0: one positive (predicted), one negative.
ONE_GROUP_WITH_POSITIVES = ([2.0, -1.0, 3.0, 1.0], [1, 0, 0, 0], [0, 0, 1, 1])


@pytest.mark.parametrize("constraint", [fairopt.EqualOpportunity(0.05), fairopt.DisparateImpact(0.8, rate="tpr")])
def test_a_gap_over_one_defined_group_is_undefined_for_both_players(constraint):
    stats = stats_of(*ONE_GROUP_WITH_POSITIVES, 2)
    value = constraint.evaluate(stats)
    assert value.defined.tolist() == [False]  # was defined, hard value -0.05 ("satisfied")
    assert value.hard.tolist() == [0.0] and value.proxy.tolist() == [0.0]


def test_equalized_odds_keeps_the_defined_fpr_part_and_drops_the_tpr_part():
    value = fairopt.EqualizedOdds(0.05).evaluate(stats_of(*ONE_GROUP_WITH_POSITIVES, 2))
    assert value.defined.tolist() == [False, True]
    # FPR: group 0 has 1 negative predicted negative (0.0), group 1 has 2 negatives predicted positive (1.0)
    assert value.hard[1].item() == pytest.approx(1.0 - 0.05)


def test_a_single_group_gives_an_undefined_gap():
    stats = stats_of([2.0, -1.0, 3.0], [1, 0, 1], [0, 0, 0], 1)
    for c in (fairopt.EqualOpportunity(0.05), fairopt.DemographicParity(0.05), fairopt.EqualizedOdds(0.05)):
        assert not c.evaluate(stats).defined.any(), c.name


def test_predictive_parity_with_no_predicted_positives_in_a_group_is_undefined():
    # group 1 predicts no positives: its precision is undefined, so the gap is not 0 "fair"
    stats = stats_of([2.0, -1.0, -3.0, -1.0], [1, 0, 1, 0], [0, 0, 1, 1], 2)
    assert fairopt.PredictiveParity(0.05).evaluate(stats).defined.tolist() == [False]


def test_min_defined_one_gives_the_extremum_of_whatever_is_defined():
    stats = stats_of(*ONE_GROUP_WITH_POSITIVES, 2)
    worst = fairopt.Constraint(tpr.per_group().min(min_defined=1) * -1.0, -0.5)  # min_g TPR >= 0.5
    value = worst.evaluate(stats)
    assert value.defined.tolist() == [True] and value.hard.item() == pytest.approx(-1.0 + 0.5)
    with pytest.raises(ValueError, match="min_defined"):
        tpr.per_group().max(min_defined=0)


def test_the_gradient_of_an_undefined_gap_is_zero():
    scores = torch.tensor([2.0, -1.0, 3.0, 1.0], dtype=torch.float64, requires_grad=True)
    stats = group_stats(scores, labels=torch.tensor([1, 0, 0, 0]), groups=torch.tensor([0, 0, 1, 1]), num_groups=2)
    fairopt.EqualOpportunity(0.0).evaluate(stats).proxy.sum().backward()
    assert scores.grad is not None and scores.grad.abs().sum().item() == 0.0


def test_the_report_lists_the_excluded_group_and_warns():
    report = FairnessReport.from_stats(
        stats_of(*ONE_GROUP_WITH_POSITIVES, 2), [fairopt.EqualOpportunity(0.05)], group_names=["a", "b"]
    )
    entry = report.constraints[0].entries[0]
    assert entry.value is None and entry.verdict is Verdict.CANNOT_TELL  # was "0.000 [0.000, 0.000] satisfied"
    assert entry.excluded == ("b",)
    assert (
        "too few have the rates it needs" in entry.reason
        and "true_positive_rate[b]: no examples with label = 1" in entry.reason
    )
    assert any("is undefined" in w and "[b]" in w for w in report.warnings)
    assert FairnessReport.from_json(report.to_json()) == report


def test_a_gap_over_the_remaining_groups_names_the_group_it_left_out():
    # three groups, group 2 has no positives: the TPR gap is over groups 0 and 1 (0.5 - 0.0) and says so
    scores = [2.0, -1.0, -1.0, 1.0, 1.0, -2.0]
    labels = [1, 1, 1, 0, 0, 0]
    report = FairnessReport.from_stats(
        stats_of(scores, labels, [0, 0, 1, 1, 2, 2], 3), [fairopt.EqualOpportunity(0.05)], group_names=["a", "b", "c"]
    )
    entry = report.constraints[0].entries[0]
    assert entry.value == pytest.approx(0.5) and entry.excluded == ("c",)
    assert "left out" in entry.reason
    assert any("leaves out group(s) 'c'" in w for w in report.warnings)


def test_a_report_of_the_previous_schema_still_reads():
    report = FairnessReport.from_stats(stats_of(*ONE_GROUP_WITH_POSITIVES, 2), [fairopt.EqualOpportunity(0.05)])
    data = report.to_dict()
    data["schema_version"] = 1
    for c in data["constraints"]:
        for e in c["entries"]:
            del e["excluded"]
    assert FairnessReport.from_dict(data).constraints[0].entries[0].excluded == ()


def test_the_optimizer_dual_does_not_move_on_an_undefined_gap():
    shift = torch.zeros(1, requires_grad=True)
    opt = fairopt.ConstrainedOptimizer(
        torch.optim.SGD([shift], lr=0.0),
        [fairopt.EqualOpportunity(0.05)],
        2,
        method="lagrangian",
        dual_lr=1.0,
        dual_min_count=None,  # one batch per dual step
    )

    def step(scores, labels, groups):
        out = torch.tensor(scores, dtype=torch.float64) + shift
        opt.step(loss=out.sum() * 0.0, scores=out, labels=torch.tensor(labels), groups=torch.tensor(groups))

    step([2.0, -1.0, -3.0, 1.0], [1, 0, 1, 0], [0, 0, 1, 1])  # TPR 1 vs 0: gap 1, violated by 0.95
    assert opt.multipliers.tolist() == pytest.approx([0.95])
    step(*ONE_GROUP_WITH_POSITIVES)  # group 1 has no positives: the gap is undefined, the multiplier stays
    assert opt.multipliers.tolist() == pytest.approx([0.95])  # was 0.90: the gap read as 0, "satisfied"
    problems = opt.check(stats_of(*ONE_GROUP_WITH_POSITIVES, 2), warn=False)
    assert any("undefined" in p for p in problems)


def test_a_reduction_of_a_fixed_length_vector_needs_one_defined_entry():
    full = stats_of([2.0, -1.0, 3.0, 1.0], [1, 0, 1, 0], [0, 0, 1, 1], 2)
    one_gap = fairopt.Constraint(abs(tpr(1) - tpr(0)).max(), 0.05)
    assert one_gap.evaluate(full).defined.tolist() == [True]
    tpr_gap = tpr.per_group().max() - tpr.per_group().min()
    fpr_gap = fairopt.fpr.per_group().max() - fairopt.fpr.per_group().min()
    worst = fairopt.Constraint(fairopt.concat(tpr_gap, fpr_gap).max(), 0.05)
    value = worst.evaluate(stats_of(*ONE_GROUP_WITH_POSITIVES, 2))  # the TPR gap is undefined, the FPR gap is 1
    assert value.defined.tolist() == [True] and value.hard.item() == pytest.approx(0.95)
    report = FairnessReport.from_stats(stats_of(*ONE_GROUP_WITH_POSITIVES, 2), [worst])
    assert report.constraints[0].entries[0].value == pytest.approx(1.0)


@pytest.mark.parametrize(
    "constraint",
    [
        fairopt.DemographicParity(0.05, convention="vs_overall"),
        fairopt.EqualOpportunity(0.05, convention="vs_overall"),
        fairopt.DisparateImpact(0.8, convention="vs_overall"),
    ],
    ids=lambda c: c.name,
)
def test_each_group_against_the_overall_rate_needs_two_groups(constraint):
    single = stats_of([2.0, -1.0, 3.0], [1, 0, 1], [0, 0, 0], 1)
    assert constraint.evaluate(single).defined.tolist() == [False]  # was [True], |r - r| = 0 "satisfied"
    report = FairnessReport.from_stats(single, [constraint])
    assert report.constraints[0].entries[0].verdict is Verdict.CANNOT_TELL and report.warnings
    two = stats_of([2.0, -1.0, 3.0, -1.0], [1, 0, 1, 0], [0, 0, 1, 1], 2)
    assert constraint.evaluate(two).defined.all()


# 2. Selection never reads an undefined entry as satisfied ---------------------------------------------------------


def test_an_iterate_with_an_undefined_entry_does_not_beat_a_feasible_one():
    records = IterateRecords(keep_states=False)
    records.record(0, 0.30, torch.tensor([-0.01, -0.02]))  # feasible, less accurate
    records.record(1, 0.10, torch.tensor([0.0, -0.02]), defined=torch.tensor([False, True]))  # entry 0 undefined
    with pytest.warns(UserWarning, match="1 of 2 records skipped"):
        assert records.best_index() == 0  # was 1: the undefined entry read as 0 <= 0
    with pytest.warns(UserWarning, match="skipped"):
        assert records.best_distribution().tolist() == [1.0, 0.0]


def test_a_known_violation_does_not_beat_records_that_meet_every_entry_they_define():
    records = IterateRecords(keep_states=False)
    records.record(0, 0.40, torch.tensor([0.30, 0.20]))  # defines both entries and violates both
    for step in range(1, 5):
        records.record(step, 0.10, torch.tensor([0.0, -0.05]), defined=torch.tensor([False, True]))
    with pytest.warns(UserWarning, match="every record competes on the entries all of them define"):
        assert records.best_index() == 1
    with pytest.warns(UserWarning, match=r"entries \[0\] are ignored"):
        assert records.best_distribution()[0] == 0.0


def test_an_entry_undefined_for_every_record_is_ignored_with_a_warning():
    records = IterateRecords(keep_states=False)
    undefined = torch.tensor([True, False])
    records.record(0, 0.30, torch.tensor([-0.01, 0.0]), defined=undefined)
    records.record(1, 0.10, torch.tensor([0.20, 0.0]), defined=undefined)
    with pytest.warns(UserWarning, match=r"entries \[1\] are undefined for every record"):
        assert records.best_index(rank_objectives=False) == 0


def test_selection_without_undefined_entries_is_silent_and_unchanged():
    records = IterateRecords(keep_states=False)
    records.record(0, 0.30, torch.tensor([-0.01]))
    records.record(1, 0.10, torch.tensor([0.05]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert records.best_index(rank_objectives=False) == 0


# 3. DistributedSampler padding is not counted -----------------------------------------------------------------------


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(3, 1)


@pytest.mark.parametrize("world", [2, 3, 4, 7])
def test_sharded_evaluation_equals_the_single_process_table_for_any_world_size(world):
    torch.manual_seed(1)
    x, y, a = torch.randn(10, 3), torch.randint(0, 2, (10,)), torch.randint(0, 2, (10,))
    model, data = _model(), TensorDataset(x, y, a)
    full, _ = collect_stats(model, (x, y, a), 2)
    total = None
    for rank in range(world):  # what all_reduce=True sums over the ranks
        sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=3)
        stats, _ = collect_stats(model, DataLoader(data, batch_size=2, sampler=sampler), 2)
        total = stats if total is None else total + stats
    assert total is not None
    assert torch.equal(total.table[:, :4], full.table[:, :4])  # was 10 + padding rows
    assert torch.allclose(total.table, full.table, atol=1e-12)


def test_a_distributed_sampler_inside_a_batch_sampler_is_trimmed_too():
    torch.manual_seed(1)
    x, y, a = torch.randn(10, 3), torch.randint(0, 2, (10,)), torch.randint(0, 2, (10,))
    model, data = _model(), TensorDataset(x, y, a)
    full, _ = collect_stats(model, (x, y, a), 2)
    total = None
    for rank in range(4):
        sampler = DistributedSampler(data, num_replicas=4, rank=rank, shuffle=False)
        loader = DataLoader(data, batch_sampler=BatchSampler(sampler, batch_size=2, drop_last=False))
        stats, _ = collect_stats(model, loader, 2)
        total = stats if total is None else total + stats
    assert total is not None and torch.equal(total.table[:, :4], full.table[:, :4])  # was 12 rows


def test_a_loader_that_drops_its_last_batch_is_refused():
    data = TensorDataset(torch.randn(10, 3), torch.randint(0, 2, (10,)), torch.randint(0, 2, (10,)))
    with pytest.raises(ValueError, match="drops the last 2 of its 10 rows"):
        collect_stats(_model(), DataLoader(data, batch_size=4, drop_last=True), 2)
    sampler = DistributedSampler(data, num_replicas=4, rank=0)
    with pytest.raises(ValueError, match="drop_last=True"):
        collect_stats(_model(), DataLoader(data, batch_size=2, sampler=sampler, drop_last=True), 2)
    collect_stats(_model(), DataLoader(data, batch_size=5, drop_last=True), 2)  # nothing dropped: fine


def test_a_dropping_distributed_sampler_is_refused():
    data = TensorDataset(torch.randn(10, 3), torch.randint(0, 2, (10,)), torch.randint(0, 2, (10,)))
    sampler = DistributedSampler(data, num_replicas=3, rank=0, drop_last=True)
    with pytest.raises(ValueError, match="drop_last=True"):
        collect_stats(_model(), DataLoader(data, sampler=sampler), 2)


# 4. With checks off, a label outside {0, 1} stays in its own group's row ----------------------------------------------


def test_an_out_of_range_label_with_checks_off_stays_in_its_group():
    scores = torch.tensor([1.0, 1.0, -1.0])
    stats = group_stats(
        scores, labels=torch.tensor([0, -1, 2]), groups=torch.tensor([0, 1, 1]), num_groups=2, validate_args=False
    )
    counts = stats.table[:, :4]  # tn, fp, fn, tp
    assert counts.sum(dim=1).tolist() == [1.0, 2.0]  # was [2, 1]: the -1 of group 1 landed in group 0
    assert counts[0].tolist() == [0.0, 1.0, 0.0, 0.0]
    assert counts[1].tolist() == [0.0, 1.0, 1.0, 0.0]  # -1: negative, predicted positive; 2: positive, missed
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        group_stats(
            scores, labels=torch.tensor([0, -1, 2]), groups=torch.tensor([0, 1, 1]), num_groups=2, validate_args=True
        )


# 5. Missing values in a sensitive attribute: the same error for every input type -------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        ["F", "M", float("nan")],
        ("F", "M", None),
        np.array(["F", "M", np.nan], dtype=object),
        pd.Series(["F", "M", np.nan]),
        pd.DataFrame({"group": ["F", "M", np.nan]}),
        {"group": ["F", "M", float("nan")]},
    ],
    ids=["list", "tuple", "ndarray", "series", "dataframe", "dict"],
)
def test_a_missing_sensitive_value_is_an_error_for_every_input_type(data):
    with pytest.raises(ValueError, match="1 missing value"):  # the list gave a group named 'nan'
        Groups.fit(data)
    with pytest.raises(ValueError, match="1 missing value"):
        Groups({"group": ["F", "M"]}).encode(data)


def test_lists_without_missing_values_encode_as_before():
    groups = Groups.fit(["M", "F", "M"])
    assert groups.names == ("F", "M") and groups.encode(["M", "F"]).tolist() == [1, 0]
    assert Groups.fit([True, False]).names == ("False", "True")


# 6. Probability outputs get one warning; (N, 1) outputs are read as (N,) ---------------------------------------------


def _tabular(n: int = 100) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(2)
    return torch.randn(n, 3), torch.randint(0, 2, (n,)), torch.randint(0, 2, (n,))


def test_a_model_ending_in_a_sigmoid_is_warned_about_once():
    model = nn.Sequential(nn.Linear(3, 1), nn.Sigmoid())
    with pytest.warns(UserWarning, match="ends in Sigmoid") as caught:
        evaluate(model, _tabular(), [fairopt.DemographicParity(0.1)], num_groups=2, batch_size=10)
    assert sum("probabilities" in str(w.message) for w in caught) == 1


class _FunctionalSigmoid(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3, 1)

    def forward(self, x):
        return torch.sigmoid(self.head(x)).squeeze(-1)


class _Gate(nn.Module):
    """Returns logits; registers a sigmoid last (used inside, not at the output)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x):
        return (self.head(x) * self.gate(x[:, :1]) * 4.0 - 2.0).squeeze(-1)


def test_a_sigmoid_in_forward_is_seen_in_the_forward_pass():
    with pytest.warns(UserWarning, match="comes out of a sigmoid"):  # was silent, every selection rate 1.0
        collect_stats(_FunctionalSigmoid(), _tabular(), 2)


def test_a_sigmoid_registered_last_but_not_at_the_output_is_not_a_probability():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        collect_stats(_Gate(), _tabular(), 2)


def test_scores_all_in_unit_interval_are_warned_about_after_the_whole_evaluation():
    x, y, a = _tabular()
    with pytest.warns(UserWarning, match="every one of the 100 scores lies in"):
        collect_stats(lambda s: torch.rand(s.shape[0]), (x, y, a), 2, batch_size=7)


def test_logits_are_not_warned_about():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        collect_stats(_model(), _tabular(), 2)
        collect_stats(lambda s: torch.rand(s.shape[0]), _tabular(), 2, threshold=0.5)  # the user chose probabilities
        collect_stats(lambda s: torch.rand(s.shape[0]), _tabular(10), 2)  # too few scores to tell


def test_a_column_output_is_read_as_a_vector():
    x, y, a = _tabular()
    model = _model()
    column, _ = collect_stats(model, (x, y, a), 2)
    vector, _ = collect_stats(lambda v: model(v).squeeze(-1), (x, y, a), 2)
    assert torch.equal(column.table, vector.table)


# The stochastic classifier evaluates directly, in expectation --------------------------------------------------------


def test_a_stochastic_classifier_evaluates_to_its_expected_table():
    x, y, a = _tabular()
    first, second = _model(), nn.Linear(3, 1)
    chosen = StochasticClassifier(first, [first.state_dict(), second.state_dict()], [0.25, 0.75])
    mixed, _ = collect_stats(chosen, (x, y, a), 2, batch_size=33)  # was: forward() missing example_ids
    one, _ = collect_stats(first, (x, y, a), 2)
    two, _ = collect_stats(second, (x, y, a), 2)
    assert torch.allclose(mixed.table, 0.25 * one.table + 0.75 * two.table, atol=1e-12)
    report = evaluate(chosen, (x, y, a), [fairopt.DemographicParity(0.1)], num_groups=2)
    assert report.overall.count == 100


# 10. Weights that are non-negative up to rounding --------------------------------------------------------------------


def test_weights_negative_by_rounding_count_as_zero():
    p = torch.tensor([1.0 + 2e-16, 0.5, 0.25], dtype=torch.float64)
    weights = 1.0 - p  # [-2.2e-16, 0.5, 0.75]
    assert weights[0] < 0
    stats = group_stats(
        torch.tensor([1.0, 1.0, -1.0]),
        labels=torch.tensor([1, 0, 1]),
        groups=torch.tensor([0, 0, 1]),
        num_groups=2,
        weights=weights,
    )
    assert stats.table[0, :4].tolist() == [0.0, 0.5, 0.0, 0.0]  # the rounding negative is 0, not -2e-16
    with pytest.raises(ValueError, match=r"weights must be finite and >= 0 \(up to rounding\)"):
        group_stats(
            torch.tensor([1.0]),
            labels=torch.tensor([1]),
            groups=torch.tensor([0]),
            num_groups=1,
            weights=torch.tensor([-1e-5]),
        )
    # float32 rounding is coarser: 1 - 1.0000001f is -1.19e-7, within 16 eps
    group_stats(
        torch.tensor([1.0]),
        labels=torch.tensor([1]),
        groups=torch.tensor([0]),
        num_groups=1,
        weights=torch.tensor([-1.2e-7]),
    )


# API friction -------------------------------------------------------------------------------------------------------


def test_a_group_name_in_a_rate_reference_gets_a_clear_error():
    with pytest.raises(ValueError, match=r"groups\.id"):
        tpr("region=north")
    with pytest.raises(ValueError, match=r"groups\.id"):
        selection_rate(("a", "b"))


def test_the_optimizer_warns_once_when_the_first_scores_look_like_probabilities():
    x, y, a = _tabular()
    model = nn.Sequential(nn.Linear(3, 1), nn.Sigmoid())
    opt = fairopt.ConstrainedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), [fairopt.DemographicParity(0.1)], 2, method="lagrangian"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a step that fails on its input warns of nothing and uses up nothing
        out = model(x)
        with pytest.raises(TypeError, match="groups must hold integer group ids"):
            opt.step(loss=out.mean(), scores=out, groups=a.float(), labels=y)
    # the fix in step()'s own terms (step takes scores, not a model=)
    with pytest.warns(UserWarning, match=r"the scores come out of a sigmoid.*pass scores=torch\.logit\(p, eps=1e-6\)"):
        out = model(x)
        opt.step(loss=out.mean(), scores=out, groups=a, labels=y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once only
        out = model(x)
        opt.step(loss=out.mean(), scores=out, groups=a, labels=y)


def test_the_optimizer_refuses_a_heldout_that_is_not_callable_and_an_unknown_dual_source():
    x, y, a = _tabular()
    model = nn.Linear(3, 1)

    def build(**options):
        return fairopt.ConstrainedOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.1), [fairopt.DemographicParity(0.1)], 2, **options
        )

    batch = {"scores": model(x).squeeze(-1), "labels": y, "groups": a}
    with pytest.raises(TypeError, match=r"heldout must be a callable .* got dict; wrap it: heldout=lambda: \{"):
        build(dual_source="heldout", heldout=batch)
    with pytest.raises(ValueError, match=r"dual_source must be one of \('train', 'heldout'\), got 'validation'"):
        build(dual_source="validation", heldout=lambda: batch)
    opt = build()
    with pytest.raises(TypeError, match=r"groups must be a torch.Tensor, got list; encode the names .*fairopt.Groups"):
        out = model(x).squeeze(-1)
        opt.step(loss=out.mean(), scores=out, labels=y, groups=["F", "M"] * (len(y) // 2))
    with pytest.raises(TypeError, match=r"labels must be a torch.Tensor, got list; convert it with torch.as_tensor"):
        opt.step(loss=out.mean(), scores=out, labels=y.tolist(), groups=a)


def test_report_mean_loss_intervals_stay_non_negative():
    # two examples with tiny losses and a large spread: the Student-t interval would reach below 0
    scores = torch.tensor([8.0, 3.0, -8.0, -3.0], dtype=torch.float64)
    labels, groups = torch.tensor([1, 1, 0, 0]), torch.tensor([0, 0, 1, 1])
    report = evaluate(lambda s: s, (scores, labels, groups), num_groups=2)
    for row in report.groups:
        estimate = row.rates["mean_loss"]
        assert estimate.lower is not None and estimate.lower >= 0.0
    signed = evaluate(
        lambda s: s,
        (scores, labels, groups),
        num_groups=2,
        options=fairopt.validation.ReportOptions(loss_nonnegative=False),
    )
    assert signed.groups[0].rates["mean_loss"].lower < 0.0  # the unclipped t interval


def test_the_optimizer_does_not_warn_about_fresh_logits_near_zero():
    x, y, a = _tabular()
    model = nn.Linear(3, 1)
    nn.init.zeros_(model.weight)
    nn.init.constant_(model.bias, 0.5)  # every first-step logit is 0.5, inside [0, 1]: still logits
    opt = fairopt.ConstrainedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), [fairopt.DemographicParity(0.1)], 2, method="lagrangian"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = model(x)
        opt.step(loss=out.mean(), scores=out, groups=a, labels=y)


def test_constraint_labels_show_group_names_as_the_entries_do():
    constraint = tpr(1) - tpr(0) <= 0.05
    assert constraint.name == "tpr[1] - tpr[0] <= 0.05"  # the key stays the same
    assert constraint.label(["north", "south"]) == "tpr[south] - tpr[north] <= 0.05"
    report = FairnessReport.from_stats(
        stats_of([2.0, -1.0, 3.0, 1.0], [1, 0, 1, 0], [0, 0, 1, 1], 2), [constraint], group_names=["north", "south"]
    )
    result = report.constraints[0]
    assert result.label == "tpr[south] - tpr[north] <= 0.05" and result.entries[0].name == "tpr[south] - tpr[north]"
    assert "| tpr[south] - tpr[north] <= 0.05 |" in report.to_markdown()  # was tpr[1] - tpr[0] <= 0.05
    assert report.constraint(constraint.name) is result and FairnessReport.from_json(report.to_json()) == report
    assert fairopt.EqualizedOdds(0.05).label(["a", "b"]) == "EqualizedOdds(tolerance=0.05, max_min)"


def test_data_arguments_after_scores_are_keywords():
    scores, labels, groups = torch.tensor([1.0, -1.0]), torch.tensor([1, 0]), torch.tensor([0, 1])
    with pytest.raises(TypeError, match="positional"):
        group_stats(scores, groups, labels, 2)  # a swap that used to run silently
    with pytest.raises(TypeError, match="positional"):
        GroupThresholds.fit(scores, labels, groups, [fairopt.DemographicParity(0.1)], 2)
    assert group_stats(scores, labels=labels, groups=groups, num_groups=2).table.shape == (2, 9)
