"""Issue 9's mechanisms: the count window of the dual table, standard errors and margins, selection with a margin,
the audit split, end-of-training checks, and group-threshold post-processing (against fairlearn)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import fairopt
import fairopt.datasets
from fairopt.constraints.device_evaluation import evaluate_device
from fairopt.constraints.expressions import value_range
from fairopt.optim import ConstrainedOptimizer, ConstraintSet, IterateRecords
from fairopt.postprocessing import GroupThresholds, InfeasibleFitWarning, expected_stats
from fairopt.stats import GroupStats, RunningGroupStats

from .optim_data import mlp, tabular, train_step

DP = fairopt.DemographicParity(0.1)


def _cells(rows: list[list[float]]) -> GroupStats:
    """A table from ``(tn, fp, fn, tp)`` per group (proxy columns copy the hard ones)."""
    table = torch.zeros(len(rows), 9, dtype=torch.float64)
    table[:, :4] = torch.tensor(rows, dtype=torch.float64)
    table[:, 4:8] = table[:, :4]
    return GroupStats(table)


# the count window ----------------------------------------------------------------------------------------------
def test_count_window_grows_until_every_group_and_label_has_min_count():
    run = RunningGroupStats(2, mode="count", min_count=3, window=10)
    batch = _cells([[2, 0, 1, 0], [5, 0, 0, 2]])  # group 0: 2 negatives, 1 positive; group 1: 5 / 2
    run.update(batch)
    assert int(run.last_window) == 1  # whole history (one table) is rarer than 3: take it all
    run.update(batch)
    assert int(run.last_window) == 2  # group 0 positives: 2 < 3, and 2 tables is all there is
    run.update(batch)
    assert int(run.last_window) == 3  # 3 positives of group 0 in the 3 newest tables
    torch.testing.assert_close(run.value.table, 3 * batch.table)
    for _ in range(4):
        run.update(batch)
    assert int(run.last_window) == 3  # stays at the shortest sufficient window
    torch.testing.assert_close(run.value.table, 3 * batch.table)


def test_count_window_caps_at_window_and_ignores_absent_groups():
    batch = _cells([[2, 0, 2, 0], [0, 0, 0, 0]])  # group 1 never appears: it must not lengthen the window
    run = RunningGroupStats(2, mode="count", min_count=4, window=10)
    for _ in range(6):
        run.update(batch)
    assert int(run.last_window) == 2  # group 0 reaches 4 of each label in 2 tables
    torch.testing.assert_close(run.value.table, 2 * batch.table)
    capped = RunningGroupStats(2, mode="count", min_count=100, window=4)
    for _ in range(6):
        capped.update(batch)
    assert int(capped.last_window) == 4  # never enough: the cap
    run = capped
    clone = RunningGroupStats(2, mode="count", min_count=100, window=4)
    clone.load_state_dict(run.state_dict())
    torch.testing.assert_close(clone.value.table, run.value.table)
    with pytest.raises(ValueError, match="min_count"):
        RunningGroupStats(2, mode="count", min_count=0)


def test_optimizer_dual_reads_the_count_window_by_default():
    x, y, a = tabular(64, seed=1)
    model = mlp(x.shape[1])
    opt = ConstrainedOptimizer(torch.optim.SGD(model.parameters(), lr=0.0), [fairopt.EqualOpportunity(0.0)], 2)
    assert opt.dual_window is None
    positives = int(((a == 1) & (y == 1)).sum())
    for step in range(1, 4):
        train_step(opt, model, x, y, a)
        assert opt.dual_window == step  # every batch is the same: the window grows while counts are short
    needed = math.ceil(100 / min(positives, int(((a == 0) & (y == 1)).sum())))
    assert needed > 3
    alone = ConstrainedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.0), [fairopt.EqualOpportunity(0.0)], 2, dual_min_count=None
    )
    train_step(alone, model, x, y, a)
    assert alone.dual_window is None and alone.dual_statistics.passthrough


# standard errors and margins ----------------------------------------------------------------------------------
def test_standard_errors_are_binomial_for_a_rate_and_add_for_a_gap():
    stats = _cells([[30, 10, 20, 40], [50, 50, 5, 45]])
    tpr0, tpr1 = 40 / 60, 45 / 50
    one = ConstraintSet([fairopt.tpr(0) <= 1.0], 2).standard_errors(stats)
    np.testing.assert_allclose(one, [math.sqrt(tpr0 * (1 - tpr0) / 60)], rtol=1e-6)
    gap = ConstraintSet([fairopt.EqualOpportunity(0.05)], 2).standard_errors(stats)
    np.testing.assert_allclose(gap, [math.sqrt(tpr0 * (1 - tpr0) / 60 + tpr1 * (1 - tpr1) / 50)], rtol=1e-6)
    dp = ConstraintSet([fairopt.DemographicParity(0.05)], 2).standard_errors(stats)
    s0, s1 = 50 / 100, 95 / 150
    np.testing.assert_allclose(dp, [math.sqrt(s0 * (1 - s0) / 100 + s1 * (1 - s1) / 150)], rtol=1e-6)
    function = fairopt.FunctionConstraint(lambda r: r.tpr[1] - r.tpr[0], 1, 0.05)
    with pytest.raises(TypeError, match=r"a FunctionConstraint has none: write it with rate expressions .*or choose"):
        ConstraintSet([function], 2).standard_errors(stats)


def test_standard_errors_of_a_set_are_those_of_its_constraints():
    # entries of equal size (1 and 1) once came out as garbage (~24.8): the stacked tables were concatenated along
    # the stack instead of the entries
    stats = _cells([[30, 10, 20, 40], [50, 50, 5, 45], [20, 20, 10, 10]])
    parts = [fairopt.DemographicParity(0.05), fairopt.EqualOpportunity(0.05), fairopt.error_rate.per_group() <= 0.3]
    alone = [ConstraintSet([c], 3).standard_errors(stats) for c in parts]
    for chosen in (parts[:2], parts[1:], parts):
        together = ConstraintSet(chosen, 3).standard_errors(stats)
        expected = np.concatenate([alone[parts.index(c)] for c in chosen])
        np.testing.assert_allclose(together, expected, rtol=1e-12)
    err0 = 30 / 100  # error rate of group 0: (fp + fn) / n
    np.testing.assert_allclose(alone[2][0], math.sqrt(err0 * (1 - err0) / 100), rtol=1e-12)
    stack = np.stack([stats.table.numpy()] * 4)  # the NumPy evaluator on a stack of tables: (B, m) entries
    lin = ConstraintSet(parts, 3)._linearize(stack, gradients=False)
    assert lin.hard.shape == (4, 5)
    np.testing.assert_array_equal(lin.hard[2], ConstraintSet(parts, 3).linearize(stats, gradients=False).hard)


def test_standard_error_of_an_absolute_gap_at_a_tie_is_that_of_the_difference():
    # equal TPRs (40/60 and 20/30): |tpr_1 - tpr_0| sits at its kink, where a central difference averages the two
    # slopes to 0; the derivative of the branch taken gives the variance of the difference
    stats = _cells([[30, 10, 20, 40], [50, 50, 10, 20]])
    r = 40 / 60
    gap = ConstraintSet([abs(fairopt.tpr(1) - fairopt.tpr(0)) <= 0.05], 2).standard_errors(stats)
    np.testing.assert_allclose(gap, [math.sqrt(r * (1 - r) / 60 + r * (1 - r) / 30)], rtol=1e-12)
    jacobian, cells, defined = ConstraintSet([fairopt.tpr.per_group() <= 1.0], 2).hard_jacobian(stats)
    # d(tp/(fn+tp)) = fn/n^2 d tp - tp/n^2 d fn; the negatives' cells do not enter
    np.testing.assert_allclose(jacobian[0, 0], [0.0, 0.0, -40 / 60**2, 20 / 60**2], rtol=1e-12)
    np.testing.assert_array_equal(jacobian[0, 1], 0.0)
    np.testing.assert_allclose(jacobian[1, 1], [0.0, 0.0, -20 / 30**2, 10 / 30**2], rtol=1e-12)
    assert cells.shape == (2, 4) and defined.all()


def test_standard_error_of_a_gap_over_tied_rates_is_that_of_a_difference():
    # equal TPRs (40/60, 20/30, and 30/45 for a third group): max takes the first entry and min the last, so the gap
    # differentiates as tpr_0 - tpr_last; a first entry for both gave tpr_0 - tpr_0, a standard error of 0
    r = 40 / 60
    two = _cells([[30, 10, 20, 40], [50, 50, 10, 20]])
    per_group = fairopt.tpr.per_group()
    for constraint in (fairopt.EqualOpportunity(0.05), per_group.max() - per_group.min() <= 0.05):
        se = ConstraintSet([constraint], 2).standard_errors(two)
        np.testing.assert_allclose(se, [math.sqrt(r * (1 - r) / 60 + r * (1 - r) / 30)], rtol=1e-12)
    three = _cells([[30, 10, 20, 40], [50, 50, 10, 20], [10, 10, 15, 30]])
    se = ConstraintSet([fairopt.EqualOpportunity(0.05)], 3).standard_errors(three)
    np.testing.assert_allclose(se, [math.sqrt(r * (1 - r) / 60 + r * (1 - r) / 45)], rtol=1e-12)
    # the values themselves are the training evaluators' (a tie is a gap of 0 either way), proxy bounds included:
    # only the hard value's entry changes at a tie, and with proxies that differ from the counts they would differ
    np.testing.assert_array_equal(ConstraintSet([fairopt.EqualOpportunity(0.05)], 3).evaluate(three).hard, [-0.05])
    table = three.table.clone()
    table[:, 4:8] += torch.arange(12, dtype=torch.float64).reshape(3, 4)
    for expr in (per_group.min(), per_group.max(), fairopt.EqualOpportunity(0.05).expr):
        plain, jacobian_mode = evaluate_device(expr, table), evaluate_device(expr, table, hard_gradients=True)
        for field in ("hard", "proxy_upper", "proxy_lower", "defined"):
            torch.testing.assert_close(getattr(jacobian_mode, field).detach(), getattr(plain, field), rtol=0, atol=0)
    # away from a tie nothing changes: the largest and the smallest rate, one entry each
    apart = _cells([[30, 10, 20, 40], [50, 50, 5, 45], [10, 10, 15, 30]])
    tpr1, tpr2 = 45 / 50, 30 / 45
    se = ConstraintSet([fairopt.EqualOpportunity(0.05)], 3).standard_errors(apart)
    np.testing.assert_allclose(se, [math.sqrt(tpr1 * (1 - tpr1) / 50 + tpr2 * (1 - tpr2) / 45)], rtol=1e-12)


def test_standard_errors_scale_to_many_groups():
    # one reverse pass per entry, O(G) each: 5,000 groups (central differences stacked 8G tables of G rows: 14 GB)
    num_groups = 5000
    rows = np.tile([[30.0, 10.0, 20.0, 40.0], [50.0, 50.0, 5.0, 45.0]], (num_groups // 2, 1))
    se = ConstraintSet([fairopt.EqualOpportunity(0.05)], num_groups).standard_errors(_cells(rows.tolist()))
    tpr0, tpr1 = 40 / 60, 45 / 50
    np.testing.assert_allclose(se, [math.sqrt(tpr0 * (1 - tpr0) / 60 + tpr1 * (1 - tpr1) / 50)], rtol=1e-12)


def _central_differences(cs: ConstraintSet, stats: GroupStats, step: float = 1e-5) -> np.ndarray:
    """``(m, G, 4)`` by central differences on the NumPy evaluator: an independent check of hard_jacobian."""
    table = stats.table.double().numpy()
    out = np.zeros((cs.num_constraints, table.shape[0], 4))
    for g in range(table.shape[0]):
        for j in range(4):
            values = []
            for sign in (1.0, -1.0):
                shifted = table.copy()
                shifted[g, j] += sign * step
                values.append(cs.linearize(GroupStats(torch.from_numpy(shifted)), gradients=False).hard)
            out[:, g, j] = (values[0] - values[1]) / (2 * step)
    return out


@pytest.mark.parametrize("num_groups", [3, 6])  # 6 pairs (reverse mode) and 30 pairs > 4G = 24 (forward mode)
def test_hard_jacobian_matches_central_differences_in_both_modes(num_groups):
    gen = torch.Generator().manual_seed(1)
    n = 400 * num_groups
    y = (torch.rand(n, generator=gen) < 0.4).float()
    a = torch.arange(n) % num_groups
    s = torch.randn(n, generator=gen) + y + 0.1 * a
    stats = fairopt.group_stats(s, labels=y, groups=a, num_groups=num_groups)
    cs = ConstraintSet(
        [fairopt.pairwise(fairopt.tpr.per_group(), fairopt.tpr.per_group()) <= 0.1, fairopt.DemographicParity(0.1)],
        num_groups,
    )
    jacobian, _, defined = cs.hard_jacobian(stats)
    assert jacobian.shape == (num_groups * (num_groups - 1) + 1, num_groups, 4) and defined.all()
    np.testing.assert_allclose(jacobian, _central_differences(cs, stats), rtol=1e-6, atol=1e-9)


def test_standard_errors_under_inference_mode_and_of_constants():
    from fairopt.constraints import device_evaluation
    from fairopt.constraints.expressions import Const

    stats = _cells([[30, 10, 20, 40], [50, 50, 5, 45]])
    cs = ConstraintSet([fairopt.EqualizedOdds(0.05)], 2)
    expected = cs.standard_errors(stats)
    # the evaluator's cached constants built under inference mode must not be inference tensors
    device_evaluation._CONSTANTS.clear()
    device_evaluation._AFFINE.clear()
    with torch.inference_mode():
        cs.evaluate_device(stats)
        np.testing.assert_allclose(cs.standard_errors(stats), expected, rtol=1e-12)
    np.testing.assert_allclose(cs.standard_errors(stats), expected, rtol=1e-12)
    with pytest.warns(UserWarning, match="can never be violated"):
        constant = ConstraintSet([Const(0.1) <= 0.2], 2)
    np.testing.assert_array_equal(constant.standard_errors(stats), [0.0])


def test_standard_errors_match_the_bootstrap_against_the_pooled_rate_and_undefined_is_inf():
    gen = torch.Generator().manual_seed(0)
    n = 3000
    y = (torch.rand(n, generator=gen) < 0.4).float()
    a = (torch.rand(n, generator=gen) * 3).long()
    s = torch.randn(n, generator=gen) + y + 0.3 * a
    # signed entries tpr_g - tpr (an abs near 0 folds the bootstrap distribution, the delta method does not)
    cs = ConstraintSet([fairopt.tpr.per_group() - fairopt.tpr() <= 0.0], 3)
    se = cs.standard_errors(fairopt.group_stats(s, labels=y, groups=a, num_groups=3))
    draws = []
    for _ in range(300):
        i = torch.randint(0, n, (n,), generator=gen)
        draws.append(cs.evaluate(fairopt.group_stats(s[i], labels=y[i], groups=a[i], num_groups=3)).hard.numpy())
    np.testing.assert_allclose(se, np.std(draws, axis=0), rtol=0.25)
    undefined = cs.standard_errors(_cells([[3, 1, 2, 2], [4, 1, 0, 0], [1, 1, 1, 1]]))
    assert math.isinf(undefined[1]) and np.isfinite(undefined[[0, 2]]).all()


def test_margin_shifts_what_the_dual_reads():
    x, y, a = tabular(200, seed=2)
    model = mlp(x.shape[1])
    common = {"dual_lr": 0.5, "dual_min_count": None}
    plain = ConstrainedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.0), [fairopt.DemographicParity(0.5)], 2, **common
    )
    with pytest.warns(UserWarning, match="margin too large on 1 entry"):  # 0.6 > 0.5: a gap cannot reach -0.1
        shifted = ConstrainedOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.0), [fairopt.DemographicParity(0.5)], 2, margin=0.6, **common
        )
    g = train_step(plain, model, x, y, a).value.hard.item()
    train_step(shifted, model, x, y, a)
    assert g < 0 and plain.multipliers.item() == 0.0  # satisfied: no weight
    assert shifted.multipliers.item() == pytest.approx(0.5 * (g + 0.6), abs=1e-12)
    with pytest.raises(ValueError, match="margin must"):
        shifted.margin = -0.1
    for text in ("0.01", True, [True], np.array(["0.01"])):  # text or flags are no margin, and nothing changes
        with pytest.raises(TypeError, match=r"margin must be a number or numbers .*got"):
            shifted.margin = text
        assert shifted.margin.tolist() == [0.6]
    shifted.margin = [math.inf]  # standard_errors' value for an undefined entry: no margin there
    assert shifted.margin.tolist() == [0.0]
    with pytest.raises(ValueError, match="dual_max_window"):
        ConstrainedOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.0), [DP], 2, dual_min_count=None, dual_max_window=0
        )
    with pytest.raises(ValueError, match="dual_min_count"):
        ConstrainedOptimizer(torch.optim.SGD(model.parameters(), lr=0.0), [DP], 2, dual_min_count=True)
    with pytest.raises(ValueError, match="shape"):
        shifted.margin = [0.1, 0.2]


def test_value_range_bounds_every_value_and_is_tight_for_the_parity_conventions():
    tpr, fpr = fairopt.tpr, fairopt.fpr
    # hand values: a gap max - min of one vector and |.| are >= 0; a difference of two rates is in [-1, 1]
    assert value_range(fairopt.EqualizedOdds(0.05).expr) == (0.0, 1.0)
    assert value_range(fairopt.DemographicParity(0.1, convention="vs_overall").expr) == (0.0, 1.0)
    assert value_range(fairopt.DemographicParity(0.1, convention="pairwise").expr) == (0.0, 1.0)
    assert value_range((tpr(1) - tpr(0)) * 2 + 0.5) == (-1.5, 2.5)
    assert value_range(0.8 - tpr.per_group()) == pytest.approx((-0.2, 0.8))
    assert value_range(tpr(1) / 2) == (0.0, 0.5)
    assert value_range(tpr(1) / (fpr(0) - 0.5)) == (-math.inf, math.inf)  # the denominator can be 0
    assert value_range(fairopt.BoundedGroupLoss(1.0).expr) == (-math.inf, math.inf)  # losses are any numbers
    assert value_range(fairopt.Constraint(fairopt.tpr(1), 0.0).expr / 0.1)[0] == 0.0
    assert value_range((fairopt.tpr(1) * 0 + 0.3) / 0.1) == (0.3 / 0.1, 0.3 / 0.1)  # rounded as evaluated: 2.9999...
    # max - min of one vector object is >= 0; of two vectors that merely print alike, not
    r = fairopt.tpr.per_group()
    assert value_range(r.max() - r.min())[0] == 0.0
    assert value_range(fairopt.DisparateImpact(0.8).expr) == (0.8 - 1.0, 0.8)  # p * max - min >= p - 1, exactly
    assert value_range(1.5 * r.max() - r.min())[0] == -1.0  # c > 1: no such bound (interval arithmetic)
    assert value_range((r * 1e6).max() - (r * 1000004.0).min())[0] < 0.0  # both print as tpr[g] * 1e+06
    # the bound holds on random tables (every entry, every constraint)
    rng = np.random.default_rng(0)
    constraints = [fairopt.EqualizedOdds(0.05), fairopt.DisparateImpact(0.8), fairopt.PredictiveParity(0.1)]
    constraints += [fairopt.tpr(1) - 2 * fairopt.fpr(0) <= 0.1, fairopt.ErrorRateParity(0.1, convention="pairwise")]
    for c in constraints:
        lo, hi = value_range(c.expr)
        for _ in range(50):
            values = c.evaluate(_cells(rng.integers(0, 30, (3, 4)).tolist()))
            expr = values.hard.numpy()[values.defined.numpy()] + c.tolerance
            assert (expr >= lo - 1e-12).all() and (expr <= hi + 1e-12).all(), (c.name, expr, lo, hi)


def test_a_margin_no_model_can_meet_warns_once_and_check_reports_it():
    model = torch.nn.Linear(3, 1)
    constraints = [fairopt.EqualizedOdds(0.05), fairopt.RateBound("tpr", min=0.8)]
    opt = ConstrainedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), constraints, 2)
    np.testing.assert_allclose(opt.constraint_set.lowest_values(), [-0.05, -0.05, -0.2, -0.2])
    # per entry: a floor and a ceiling in one constraint (a concat) each get their own bound
    both = ConstraintSet(fairopt.RateBound("tpr", min=0.8, max=0.9), 2)
    np.testing.assert_allclose(both.lowest_values(), [-0.2, -0.2, -0.9, -0.9])
    # a dual reading proxy values, or a method with no dual player, is not judged by the hard values' bounds
    for kwargs in ({"dual_value": "proxy"}, {"method": "penalty"}):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ConstrainedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), constraints, 2, margin=0.5, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.margin = [0.049, 0.0, 0.19, 0.0]  # below what each tolerance leaves: no warning
        opt.margin = [0.05, 0.05, 0.2, 0.0]  # a gap of 0 (equal rates, e.g. a perfect classifier) is reachable
    assert opt._unreachable_margin() is None
    # the README recipe on a small selection split: 1.645 standard errors of 0.066 exceed the tolerance of 0.05
    with pytest.warns(UserWarning, match=r"margin too large on 2 entries \(EqualizedOdds.*tpr.*margin 0\.108, but g "
                      r"= expr - tolerance is never below -0\.05; RateBound.*margin 0\.25,") as caught:  # fmt: skip
        opt.margin = [0.108, 0.0, 0.25, 0.0]
    assert caught[0].filename == __file__  # points at the assignment, not into fairopt
    with warnings.catch_warnings():  # once per optimizer, not at every epoch's reassignment
        warnings.simplefilter("error")
        opt.margin = [0.108, 0.0, 0.25, 0.0]
    stats = _cells([[40, 10, 10, 40], [45, 5, 15, 35]])
    problems = opt.check(stats, warn=False)
    assert sum("margin too large on 2 entries" in p for p in problems) == 1
    opt.margin = 0.01
    assert not any("margin too large" in p for p in opt.check(stats, warn=False))


def test_selection_honours_the_margin_and_falls_back_with_a_warning():
    records = IterateRecords(keep_states=False)
    records.record(1, 0.10, torch.tensor([-0.01]), margin=0.02)  # feasible, not with its margin
    records.record(2, 0.20, torch.tensor([-0.05]), margin=0.02)  # feasible with its margin
    assert records.best_index(rank_objectives=False) == 1 and records.margin_used and not records.margin_missed
    # the LP mixes them: 0.75 * (-0.01 + 0.02) + 0.25 * (-0.05 + 0.02) = 0, at a lower objective than iterate 2
    np.testing.assert_allclose(records.best_distribution(), [0.75, 0.25], atol=1e-9)
    tight = IterateRecords(keep_states=False)
    tight.record(1, 0.10, torch.tensor([-0.01]), margin=0.5)
    tight.record(2, 0.20, torch.tensor([0.03]), margin=0.5)
    with pytest.warns(UserWarning, match="cannot certify"):
        assert tight.best_index(rank_objectives=False) == 0
    assert not tight.margin_used and tight.margin_missed
    plain = IterateRecords(keep_states=False)  # no margin asked: none used, none missed
    plain.record(1, 0.10, torch.tensor([0.01]))
    assert plain.best_index() == 0 and not plain.margin_used and not plain.margin_missed
    with pytest.raises(ValueError, match="margin"):
        tight.record(3, 0.1, torch.tensor([0.0]), margin=-1.0)
    with pytest.raises(ValueError, match="1 entries"):
        tight.record(3, 0.1, torch.tensor([0.0]), margin=[0.1, 0.2, 0.3])
    # an undefined entry gets no margin (and inf, standard_errors' value for it, is accepted)
    undefined = IterateRecords(keep_states=False)
    undefined.record(1, 0.1, torch.tensor([0.0, -0.1]), defined=torch.tensor([False, True]), margin=[math.inf, 0.05])
    assert undefined.margins().tolist() == [[0.0, 0.05]] and undefined.best_index() == 0 and undefined.margin_used


def test_check_reports_violation_and_unsettled_multipliers():
    x, y, a = tabular(400, seed=3)
    model = torch.nn.Linear(x.shape[1], 1)
    with torch.no_grad():  # scores follow feature 0, which group 1 shifts: a large demographic-parity gap
        model.weight.zero_()
        model.weight[0, 0] = 3.0
        model.bias.zero_()
    opt = ConstrainedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.0), [fairopt.DemographicParity(0.0)], 2, dual_lr=1.0
    )
    for _ in range(12):
        train_step(opt, model, x, y, a)
    with torch.no_grad():
        stats = fairopt.group_stats(model(x).squeeze(-1), labels=y, groups=a, num_groups=2)
    with pytest.warns(UserWarning) as caught:
        problems = opt.check(stats, group_names=["a", "b"])
    assert any("is violated by" in p for p in problems)
    assert any("have not settled" in p for p in problems)  # λ grows linearly while θ is frozen
    assert len(caught) == len(problems)
    quiet = ConstrainedOptimizer(torch.optim.SGD(model.parameters(), lr=0.0), [fairopt.DemographicParity(1.0)], 2)
    assert quiet.check(stats) == []


def _parity_check(predicted: list[int], tolerance: float) -> tuple[ConstrainedOptimizer, fairopt.GroupStats]:
    """An optimizer with DemographicParity(tolerance) over 2 groups of 10 rows, and the table of the 0/1
    ``predicted`` labels (the first 10 in group 0)."""
    groups = torch.tensor([0] * 10 + [1] * 10)
    scores = 2 * torch.tensor(predicted, dtype=torch.float64) - 1
    stats = fairopt.group_stats(scores, labels=torch.zeros(20), groups=groups, num_groups=2)
    model = torch.nn.Linear(1, 1)
    opt = ConstrainedOptimizer(torch.optim.SGD(model.parameters(), lr=0.0), [fairopt.DemographicParity(tolerance)], 2)
    return opt, stats


def test_check_says_cannot_tell_for_an_entry_above_its_bound_within_noise():
    """Selection rates 6/10 and 5/10: a gap of 0.1 above a bound of 0 with a standard error of
    sqrt(0.6*0.4/10 + 0.5*0.5/10) = 0.221, so 20 rows cannot tell; an empty list read as "met"."""
    opt, stats = _parity_check([1] * 6 + [0] * 4 + [1] * 5 + [0] * 5, 0.0)
    with pytest.warns(UserWarning, match="cannot tell whether it is met"):
        [problem] = opt.check(stats)
    assert "is above its bound by 0.1000 at the end of training, within two standard errors (0.2214)" in problem
    met, _ = _parity_check([0] * 20, 0.1)
    assert met.check(stats) == []  # a gap of exactly the bound is met


def test_check_says_that_a_zero_standard_error_measures_nothing():
    """Selection rates 10/10 and 0/10: a gap of 1 whose delta-method standard error is 0 (every rate exactly 0 or
    1), which the message showed as "standard error 0.0000", read as certainty on 20 rows."""
    opt, stats = _parity_check([1] * 10 + [0] * 10, 0.05)
    with pytest.warns(UserWarning, match="is violated by 0.9500"):
        [problem] = opt.check(stats)
    assert "(standard error 0 by the delta method, whose rates are all exactly 0 or 1 here: no measure of" in problem


def test_check_names_groups_without_examples():
    """num_groups=3 for data with 2 groups trained without a word: check() names the empty group."""
    groups = torch.tensor([0] * 10 + [1] * 10)
    predicted = torch.tensor([1, 0] * 10, dtype=torch.float64)
    stats = fairopt.group_stats(2 * predicted - 1, labels=torch.zeros(20), groups=groups, num_groups=3)
    model = torch.nn.Linear(1, 1)
    opt = ConstrainedOptimizer(torch.optim.SGD(model.parameters(), lr=0.0), [fairopt.DemographicParity(0.1)], 3)
    with pytest.warns(UserWarning, match="have no examples"):
        [problem] = opt.check(stats, group_names=["a", "b", "c"])
    assert problem.startswith("group(s) c have no examples in these statistics (num_groups=3): nothing constrains")
    two = ConstrainedOptimizer(torch.optim.SGD(model.parameters(), lr=0.0), [fairopt.DemographicParity(0.1)], 2)
    full = fairopt.group_stats(2 * predicted - 1, labels=torch.zeros(20), groups=groups, num_groups=2)
    assert two.check(full) == []


# the audit split -----------------------------------------------------------------------------------------------
def test_with_audit_is_disjoint_stratified_and_seeded():
    data = fairopt.datasets.load_german(seed=0)
    cut = data.with_audit(0.5, seed=4)
    v, audit = cut.validation, cut.audit
    assert audit is not None and cut.split("audit") is audit
    assert len(v) + len(audit) == len(data.validation)
    assert not set(v.index) & set(audit.index)
    for g in range(data.num_groups):
        for label in (0.0, 1.0):
            total = int(((data.validation.groups == g) & (data.validation.y == label)).sum())
            mine = int(((audit.groups == g) & (audit.y == label)).sum())
            assert abs(mine - total / 2) <= 1
    np.testing.assert_array_equal(data.with_audit(0.5, seed=4).audit.index, audit.index)
    with pytest.raises(ValueError, match="no audit split"):
        data.split("audit")
    small = data.subsample_train(100, seed=1, audit_size=50)
    assert len(small.audit) == 50 and not set(small.audit.index) & set(small.train.index)


# post-processing ----------------------------------------------------------------------------------------------
def _scored(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    a = (torch.rand(n, generator=gen) < 0.35).long()
    y = (torch.rand(n, generator=gen) < 0.25 + 0.2 * a).float()
    s = 1.5 * y - 0.5 + 0.8 * a + torch.randn(n, generator=gen)
    return s.double(), y, a


@pytest.mark.parametrize("constraint", [fairopt.EqualizedOdds(0.02), fairopt.DemographicParity(0.03)])
def test_randomized_thresholds_meet_the_constraint_exactly_on_the_fit_data(constraint):
    s, y, a = _scored(2000, seed=5)
    policy = GroupThresholds.fit(s, labels=y, groups=a, constraints=constraint, num_groups=2)
    assert policy.feasible
    stats = policy.stats(s, labels=y, groups=a)
    value = ConstraintSet([constraint], 2).evaluate(stats).hard
    assert float(value.max()) <= 1e-7
    error = fairopt.rates.compute_rate(stats.overall(), "error_rate").value.item()
    assert policy.error == pytest.approx(error, abs=1e-9)
    loose = GroupThresholds.fit(
        s, labels=y, groups=a, constraints=type(constraint)(1.0), num_groups=2
    )  # a bound that never binds
    assert loose.error <= policy.error + 1e-12 and loose.error < float(((s > 0).float() != y).float().mean())


def test_randomized_thresholds_meet_two_constraints_at_once():
    # the cuts read hard_jacobian of the whole set: it was garbage for two 1-entry constraints (the LP ran for
    # minutes and ended infeasible)
    s, y, a = _scored(2000, seed=5)
    both = [fairopt.DemographicParity(0.03), fairopt.EqualOpportunity(0.03)]
    policy = GroupThresholds.fit(s, labels=y, groups=a, constraints=both, num_groups=2)
    assert policy.feasible
    value = ConstraintSet(both, 2).evaluate(policy.stats(s, labels=y, groups=a)).hard
    assert value.shape == (2,) and float(value.max()) <= 1e-7


def test_thresholds_beat_or_match_fairlearn_threshold_optimizer():
    from fairlearn.postprocessing import ThresholdOptimizer
    from sklearn.base import BaseEstimator, ClassifierMixin

    s, y, a = _scored(3000, seed=6)

    class Prefit(ClassifierMixin, BaseEstimator):
        def fit(self, X, y):
            return self

        def __sklearn_is_fitted__(self):
            return True

        def decision_function(self, X):
            return np.asarray(X)[:, 0]

    for constraints, tol, ours in (
        ("equalized_odds", None, fairopt.EqualizedOdds),
        ("demographic_parity", 0.05, fairopt.DemographicParity),
    ):
        to = ThresholdOptimizer(
            estimator=Prefit(), constraints=constraints, prefit=True, predict_method="decision_function", tol=tol
        )
        X = s.numpy()[:, None]
        to.fit(X, y.numpy().astype(int), sensitive_features=a.numpy())
        p = torch.as_tensor(np.asarray(to._pmf_predict(X, sensitive_features=a.numpy()))[:, 1])
        theirs = expected_stats(p, labels=y, groups=a, num_groups=2)
        their_error = fairopt.rates.compute_rate(theirs.overall(), "error_rate").value.item()
        their_gap = float(ConstraintSet([ours(0.0)], 2).evaluate(theirs).hard.max())
        policy = GroupThresholds.fit(
            s, labels=y, groups=a, constraints=ours(max(tol or 0.0, their_gap) + 1e-6), num_groups=2
        )
        assert policy.feasible
        assert policy.error <= their_error + 1e-6  # the exact LP optimum at a bound no tighter than theirs


def test_deterministic_thresholds_are_one_per_group_and_margin_tightens():
    s, y, a = _scored(2000, seed=7)
    policy = GroupThresholds.fit(
        s, labels=y, groups=a, constraints=fairopt.DemographicParity(0.05), num_groups=2, randomized=False
    )
    assert not policy.randomized and policy.probabilities.shape[1] == 1
    p = policy.positive_probability(s, a)
    assert set(p.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(policy.predict(s, a), p > 0.5)
    assert policy.feasible and float(policy.values.max()) <= 1e-7
    tight = GroupThresholds.fit(
        s, labels=y, groups=a, constraints=fairopt.DemographicParity(0.05), num_groups=2, margin=0.03
    )
    assert float(tight.values.max()) <= -0.03 + 1e-7
    with pytest.warns(InfeasibleFitWarning) as caught:  # 0.2 > 0.05: a gap cannot reach -0.2
        impossible = GroupThresholds.fit(
            s, labels=y, groups=a, constraints=fairopt.DemographicParity(0.05), num_groups=2, margin=0.2
        )
    assert not impossible.feasible
    (message,) = [str(w.message) for w in caught]
    assert message.startswith("no policy found that meets the constraints with the margin on these data (Demographic")
    assert ", needs <= -0.2)" in message and message.endswith("fit without a margin, or on more rows, and check the "
                                                              "result on test data")  # fmt: skip
    # (N, 1) columns read as (N,); a length mismatch is named by the argument that has it
    column = GroupThresholds.fit(s[:, None], labels=y[:, None], groups=a[:, None],
                                 constraints=fairopt.DemographicParity(0.05), num_groups=2)  # fmt: skip
    flat = GroupThresholds.fit(s, labels=y, groups=a, constraints=fairopt.DemographicParity(0.05), num_groups=2)
    assert torch.equal(column.positive_probability(s[:, None], a[:, None]), flat.positive_probability(s, a))
    with pytest.raises(ValueError, match=r"groups has \d+ entries but scores has"):
        policy.positive_probability(s, a[1:])
    with pytest.raises(ValueError, match=r"scores must have shape \(N,\)"):
        policy.positive_probability(s.reshape(1, -1), a)
    # fitted on logits, asked about probabilities (or the reverse): each kind needs its own thresholds
    assert flat.score_kind == "logits"
    with pytest.warns(UserWarning, match="fitted on logits, these scores look like probabilities"):
        flat.positive_probability(torch.sigmoid(s), a)
    on_probabilities = GroupThresholds.fit(torch.sigmoid(s), labels=y, groups=a,
                                           constraints=fairopt.DemographicParity(0.05), num_groups=2)  # fmt: skip
    assert on_probabilities.score_kind == "probabilities"
    with pytest.warns(UserWarning, match="fitted on probabilities, these scores look like logits"):
        on_probabilities.predict(s, a)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        on_probabilities.stats(torch.sigmoid(s), labels=y, groups=a)
        flat.positive_probability(s[:10], a[:10])  # too few to tell
    assert "the margin of 1 entry is out of reach on any data (g = expr - tolerance is never below -0.05 for" in message
    with pytest.raises(ValueError, match=r"margin must be one number or 1 \(one per constraint entry: Demog"):
        GroupThresholds.fit(s, labels=y, groups=a, constraints=fairopt.DemographicParity(0.05), num_groups=2,
                            margin=[0.01, 0.02])  # fmt: skip
    with pytest.raises(TypeError, match=r"scores must be a torch.Tensor, got ndarray; convert it"):
        GroupThresholds.fit(s.numpy(), labels=y, groups=a, constraints=fairopt.DemographicParity(0.05), num_groups=2)
    with pytest.raises(ValueError, match=r"groups must be ids in \[0, 2\)"):
        policy.positive_probability(s, a + 1)
    # the last cut round's solution is checked too: one round suffices for a single linear gap here
    one_round = GroupThresholds.fit(
        s, labels=y, groups=a, constraints=fairopt.DemographicParity(0.05), num_groups=2, max_cuts=1
    )
    assert one_round.feasible
    with pytest.raises(ValueError, match=r"groups must be ids in \[0, 2\)"):
        GroupThresholds.fit(s, labels=y, groups=a + 1, constraints=fairopt.DemographicParity(0.05), num_groups=2)
