"""The NumPy evaluator: values against fairopt.rates, Jacobians against finite differences, stacks against single
tables, and the optimizer's linearized objective against the differentiable one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fairopt as fo
from fairopt.constraints import Constraint, FunctionConstraint, RateRef, concat, maximum, minimum, pairwise
from fairopt.constraints.evaluation import attach
from fairopt.constraints.expressions import as_expr
from fairopt.optim import ConstrainedOptimizer, ConstraintSet
from fairopt.rates import RATES, compute_rate
from fairopt.stats import GroupStats, group_stats

G = 3
F64 = torch.float64

CONSTRAINTS = [
    fo.EqualizedOdds(0.05),
    fo.EqualizedOdds(0.05, convention="pairwise"),
    fo.EqualizedOdds(0.0, convention="vs_overall"),
    fo.DemographicParity(0.1),
    fo.DisparateImpact(0.8),
    fo.DisparateImpact(0.8, convention="pairwise"),
    fo.DisparateImpact(0.8, convention="vs_overall"),
    fo.PredictiveParity(0.1),
    fo.BoundedGroupLoss(0.5),
    fo.RateBound("tpr", min=0.7, max=0.95),
    fo.ErrorRateParity(0.02),
    fo.selection_rate(1) / fo.selection_rate(2) >= 0.8,
    fo.tpr(1) * fo.fpr(2) <= 0.1,
    abs(fo.tpr((0, 1)) - fo.tpr()) <= 0.02,
    maximum(fo.tpr.per_group(), fo.fpr.per_group()).max() - minimum(fo.tpr.per_group(), fo.fpr(1)).min() <= 0.3,
    RateRef("precision")(1) / RateRef("npv")(2) <= 1.2,
    RateRef("base_rate")(1) * fo.tpr(2) >= 0.1,
    RateRef("error_rate").per_group() - 0.5 * RateRef("accuracy")() <= 0.1,
    (fo.fpr(2) - 3.0) * (fo.tpr(0) + 0.5) <= 1.0,
    (2.0 / (fo.tpr.per_group() + 1.0)).min() >= 0.1,
    concat(-fo.tpr.per_group(), RateRef("fnr")(0) - RateRef("tnr")()) <= 0.0,
    abs(pairwise(fo.fpr.per_group(), symmetric=True)) <= 0.1,
]


def random_table(seed: int, *, empty_positives: bool = False, empty_group: bool = False) -> torch.Tensor:
    """A (G, 9) float64 table: integer hard cells, positive proxy sums (not normalized), a loss column."""
    g = torch.Generator().manual_seed(seed)
    hard = torch.randint(1, 20, (G, 4), generator=g).double()
    if empty_positives:
        hard[0, 2:4] = 0  # group 0: TPR, FNR, precision-by-label... undefined
    if empty_group:
        hard[1] = 0
    proxy = torch.rand(G, 4, generator=g, dtype=F64) * 10 + 0.1
    loss = torch.rand(G, 1, generator=g, dtype=F64) * 5
    return torch.cat([hard, proxy, loss], dim=1)


@pytest.mark.parametrize("name", sorted(RATES))
@pytest.mark.parametrize("group", [None, 1, (0, 2), "per_group"])
def test_rate_leaves_match_compute_rate(name, group):
    """Each leaf against the tensor implementation of fairopt.rates (its own tests check it against sklearn)."""
    table = random_table(3, empty_positives=True)
    ref = RateRef(name).per_group() if group == "per_group" else RateRef(name)(group)
    bounds = ref.evaluate(GroupStats(table))
    if group is None:
        rows = GroupStats(table).overall()
    elif group == "per_group":
        rows = GroupStats(table)
    else:
        ids = [group] if isinstance(group, int) else list(group)
        rows = GroupStats(table[ids].sum(dim=0, keepdim=True))
    rv = compute_rate(rows, name)
    torch.testing.assert_close(bounds.hard, rv.value, rtol=0, atol=1e-15)
    torch.testing.assert_close(bounds.proxy_upper, rv.proxy_upper, rtol=0, atol=1e-15)
    torch.testing.assert_close(bounds.proxy_lower, rv.proxy_lower, rtol=0, atol=1e-15)
    assert bounds.defined.tolist() == rv.defined.tolist()


@pytest.mark.parametrize("index", range(len(CONSTRAINTS)))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_proxy_gradient_matches_finite_differences(index, seed):
    """gradcheck of the proxy values w.r.t. the proxy and loss columns (the hard columns are counts)."""
    constraint = CONSTRAINTS[index]
    table = random_table(seed, empty_positives=seed == 1, empty_group=seed == 2)
    hard = table[:, :4]

    def proxy(rest: torch.Tensor) -> torch.Tensor:
        return constraint.evaluate(GroupStats(torch.cat([hard, rest], dim=1))).proxy

    assert torch.autograd.gradcheck(proxy, (table[:, 4:].clone().requires_grad_(),))


@pytest.mark.parametrize("index", range(len(CONSTRAINTS)))
def test_lower_bound_gradient_matches_finite_differences(index):
    expr = CONSTRAINTS[index].expr
    table = random_table(5)

    def lower(rest: torch.Tensor) -> torch.Tensor:
        return expr.evaluate(GroupStats(torch.cat([table[:, :4], rest], dim=1))).proxy_lower

    assert torch.autograd.gradcheck(lower, (table[:, 4:].clone().requires_grad_(),))


def test_a_stack_of_tables_gives_the_values_of_each_table():
    tables = torch.stack(
        [random_table(s, empty_positives=s % 3 == 0, empty_group=s % 5 == 0) for s in range(12)]
    ).numpy()
    constant = Constraint(concat(as_expr(0.25), as_expr(-1.0)), 0.5)  # no rate at all: broadcast over the stack
    for constraint in [*CONSTRAINTS, constant]:
        stacked = constraint.linearize(tables, gradients=False)
        assert stacked.hard.shape == (12, constraint.num_entries(G)) and stacked.vjp is None
        for i, table in enumerate(tables):
            one = constraint.linearize(table)
            np.testing.assert_array_equal(stacked.hard[i], one.hard, err_msg=constraint.name)
            np.testing.assert_array_equal(stacked.proxy_upper[i], one.proxy_upper, err_msg=constraint.name)
            np.testing.assert_array_equal(stacked.proxy_lower[i], one.proxy_lower, err_msg=constraint.name)
            np.testing.assert_array_equal(stacked.defined[i], one.defined, err_msg=constraint.name)
    with pytest.raises(ValueError, match="one \\(G, K\\) table"):
        CONSTRAINTS[0].linearize(tables)


def test_undefined_entries_are_zero_with_zero_jacobian():
    table = random_table(0, empty_positives=True).numpy()
    lin = fo.EqualOpportunity(0.0, convention="vs_overall").linearize(table)
    assert lin.defined.tolist() == [False, True, True]
    assert lin.hard[0] == lin.proxy_upper[0] == 0.0 and not lin.jacobian()[0].any() and lin.jacobian()[1:].any()
    # the max/min reduce over the defined groups only
    gap = fo.EqualOpportunity(0.0).linearize(table)
    tpr = table[1:, 3] / table[1:, 2:4].sum(axis=1)
    assert gap.defined.tolist() == [True] and gap.hard[0] == pytest.approx(float(tpr.max() - tpr.min()))


def test_attach_gives_the_value_and_the_vjp_as_gradient():
    table = torch.rand(2, 9, dtype=F64, requires_grad=True)
    jacobian = np.arange(36, dtype=np.float64).reshape(2, 18)
    out = attach(np.array([0.5, -1.0]), lambda c: c @ jacobian, table)
    assert out.tolist() == [0.5, -1.0]
    (grad,) = torch.autograd.grad(out @ torch.tensor([2.0, 3.0], dtype=F64), table)
    np.testing.assert_allclose(grad.reshape(-1).numpy(), 2.0 * jacobian[0] + 3.0 * jacobian[1])


def test_linearize_is_the_first_order_expansion_of_evaluate():
    constraint = fo.DisparateImpact(0.8, convention="pairwise")
    table = random_table(7).numpy()
    lin = constraint.linearize(table)
    step = np.zeros_like(table)
    step[:, 4:] = np.random.default_rng(0).normal(size=(G, 5)) * 1e-6
    moved = constraint.linearize(table + step)
    np.testing.assert_allclose(moved.proxy_upper, lin.proxy_upper + lin.jacobian() @ step.reshape(-1), atol=1e-10)


def test_function_constraints_are_evaluated_by_their_function_in_a_mixed_set():
    custom = FunctionConstraint(lambda view: view.selection_rate - 0.5, num_entries=lambda g: g, name="sr")
    cs = ConstraintSet([fo.DemographicParity(0.1), custom], G)
    assert not cs.linearizable and cs.num_constraints == 1 + G
    stats = GroupStats(random_table(1))
    value = cs.evaluate(stats)
    sr = compute_rate(stats, "selection_rate").value
    torch.testing.assert_close(value.hard[1:], sr - 0.5)
    torch.testing.assert_close(value.hard[:1], fo.DemographicParity(0.1).evaluate(stats).hard)
    with pytest.raises(TypeError, match="FunctionConstraint"):
        cs.linearize(stats)


@pytest.mark.parametrize("method", ["lagrangian", "proxy_lagrangian"])
@pytest.mark.parametrize("proxy", ["sigmoid", "hinge"])
def test_linearized_objective_has_the_value_and_gradient_of_the_differentiable_one(method, proxy):
    """The optimizer's W·T objective against player.primal_objective on the differentiable evaluation."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(300, 5, generator=g, dtype=F64)
    y = (torch.rand(300, generator=g) < 0.4).double()
    a = torch.randint(0, G, (300,), generator=g)
    w = torch.rand(300, generator=g, dtype=F64) + 0.5
    model = torch.nn.Linear(5, 1).double()
    constraints = [fo.EqualizedOdds(0.02), fo.DisparateImpact(0.9, convention="vs_overall"), fo.BoundedGroupLoss(0.3)]
    opt = ConstrainedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), constraints, G, method=method, proxy=proxy)
    with torch.no_grad():  # non-trivial multipliers
        scores = model(x).squeeze(-1)
        losses = F.binary_cross_entropy_with_logits(scores, y, reduction="none")
        stats = opt.constraint_set.measure(scores, groups=a, labels=y, example_losses=losses)
    for _ in range(3):
        opt.player.update(opt.evaluate(stats))
    assert (opt.multipliers > 0).any()
    cs = opt.constraint_set

    def objective(path: str) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        scores = model(x).squeeze(-1)
        losses = F.binary_cross_entropy_with_logits(scores, y, reduction="none")
        batch = {"groups": a, "labels": y, "weights": w, "example_losses": losses}
        if path == "terms":  # the CPU step: the gradient through the per-example terms, the table without a graph
            terms = cs.measure(scores, **batch, terms=True)
            stats = terms.stats
            return opt._primal_objective(losses.mean(), stats, opt.evaluate(stats), cs.linearize(stats), terms)
        stats = cs.measure(scores, **batch)
        if path == "table":
            return opt._primal_objective(losses.mean(), stats, opt.evaluate(stats), cs.linearize(stats))
        return opt.player.primal_objective(losses.mean(), cs.evaluate(stats))

    _assert_same_value_and_gradient(model, objective, paths=("table", "terms"))


def _assert_same_value_and_gradient(model: torch.nn.Module, objective, paths: tuple[str, ...] = ("table",)) -> None:
    """``objective(path)`` for the optimizer's linearized paths (``(value, descended)`` pairs) against
    ``objective("reference")`` (a tensor): same value, same gradient."""
    values, grads = [], []
    for path in (*paths, "reference"):
        model.zero_grad()
        out = objective(path)
        value, descended = out if isinstance(out, tuple) else (out.detach(), out)
        assert not value.requires_grad
        descended.backward()
        values.append(value.item())
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    for value, grad in zip(values[:-1], grads[:-1]):
        assert value == pytest.approx(values[-1], rel=1e-12)
        torch.testing.assert_close(grad, grads[-1], rtol=1e-10, atol=1e-12)
    assert grads[-1].abs().sum() > 0


def test_group_stats_gradient_of_the_derived_negative_proxy_columns():
    """Normalized proxy without weights: tn/fn proxy columns are label counts minus the positive ones."""
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(20, generator=g, dtype=F64, requires_grad=True)
    labels, groups = torch.randint(0, 2, (20,), generator=g), torch.randint(0, 3, (20,), generator=g)
    mix = torch.randn(3, 9, generator=g, dtype=F64)
    assert torch.autograd.gradcheck(
        lambda s: (group_stats(s, labels=labels, groups=groups, num_groups=3).table * mix).sum(), (scores,)
    )


def _bounds(name: str, stats: GroupStats) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rv = compute_rate(stats, name)
    return rv.value.numpy(), rv.proxy_upper.detach().numpy(), rv.proxy_lower.detach().numpy()


def test_composite_bounds_follow_interval_arithmetic_on_the_rates():
    """Independent reference: composite values built by hand from fairopt.rates (hard, upper, lower)."""
    g = torch.Generator().manual_seed(11)  # hinge: genuine bounds, lower <= hard <= upper
    labels, groups = torch.randint(0, 2, (400,), generator=g), torch.randint(0, G, (400,), generator=g)
    stats = group_stats(
        torch.randn(400, generator=g, dtype=F64), labels=labels, groups=groups, num_groups=G, proxy="hinge"
    )
    tpr_h, tpr_u, tpr_l = _bounds("tpr", stats)
    fpr_h, fpr_u, fpr_l = _bounds("fpr", stats)

    def check(expr, hard, upper, lower):
        b = expr.evaluate(stats)
        np.testing.assert_allclose(b.hard.numpy(), hard, rtol=0, atol=1e-14, err_msg=str(expr))
        np.testing.assert_allclose(b.proxy_upper.detach().numpy(), upper, rtol=0, atol=1e-14, err_msg=str(expr))
        np.testing.assert_allclose(b.proxy_lower.detach().numpy(), lower, rtol=0, atol=1e-14, err_msg=str(expr))

    # a - b: the upper bound subtracts b's lower bound
    check(fo.tpr(1) - fo.fpr(2), [tpr_h[1] - fpr_h[2]], [tpr_u[1] - fpr_l[2]], [tpr_l[1] - fpr_u[2]])
    # |a - b|: the branch of the true sign
    d_h, d_u, d_l = tpr_h - fpr_h, tpr_u - fpr_l, tpr_l - fpr_u
    pos = d_h >= 0
    check(abs(fo.tpr.per_group() - fo.fpr.per_group()), np.abs(d_h), np.where(pos, d_u, -d_l), np.where(pos, d_l, -d_u))
    # max_g - min_g: the groups extreme in the true value, with their own bounds
    hi, lo = tpr_h.argmax(), tpr_h.argmin()
    check(fo.EqualOpportunity(0.0).expr, [tpr_h[hi] - tpr_h[lo]], [tpr_u[hi] - tpr_l[lo]], [tpr_l[hi] - tpr_u[lo]])
    # a negative constant factor swaps the bounds; a positive one keeps them
    check(-2.0 * fo.tpr(0), [-2 * tpr_h[0]], [-2 * tpr_l[0]], [-2 * tpr_u[0]])
    check(0.5 * fo.fpr(1), [0.5 * fpr_h[1]], [0.5 * fpr_u[1]], [0.5 * fpr_l[1]])
    # quotient: interval corners when the denominator's lower bound is positive, else divide by its hard value
    den = (fpr_u[1], fpr_l[1]) if fpr_l[1] > 0 else (fpr_h[1], fpr_h[1])
    corners = [num / d for num in (tpr_u[0], tpr_l[0]) for d in den]
    check(fo.tpr(0) / fo.fpr(1), [tpr_h[0] / fpr_h[1]], [max(corners)], [min(corners)])
    assert fpr_l[1] <= fpr_h[1] <= fpr_u[1] and tpr_l[0] < tpr_u[0]  # genuine, non-degenerate intervals
    # pairwise(a, b)[i, j] = a_i - b_j over ordered pairs i != j, in row-major order
    pairs = [(i, j) for i in range(G) for j in range(G) if i != j]
    check(
        pairwise(fo.tpr.per_group(), fo.fpr.per_group()),
        [tpr_h[i] - fpr_h[j] for i, j in pairs],
        [tpr_u[i] - fpr_l[j] for i, j in pairs],
        [tpr_l[i] - fpr_u[j] for i, j in pairs],
    )


def test_a_constraint_subclass_with_its_own_evaluate_is_evaluated_by_it():
    class Shifted(Constraint):
        def evaluate(self, stats):
            value = super().evaluate(stats)
            return type(value)(value.hard + 1.0, value.proxy + 1.0, value.defined)

    constraint = Shifted(fo.tpr(1) - fo.tpr(0), 0.05)
    assert not constraint.linearizable and fo.EqualizedOdds(0.1).linearizable
    stats = GroupStats(random_table(2))
    expected = (fo.tpr(1) - fo.tpr(0) <= 0.05).evaluate(stats).hard + 1.0
    cs = ConstraintSet([constraint], G)
    torch.testing.assert_close(cs.evaluate(stats).hard, expected)


def test_linearized_lagrangian_objective_matches_cooper_primal_lagrangian():
    """Reference through cooper: CMPState.compute_primal_lagrangian on the differentiable evaluation."""
    from cooper import CMPState

    g = torch.Generator().manual_seed(8)
    x = torch.randn(200, 4, generator=g, dtype=F64)
    y = (torch.rand(200, generator=g) < 0.5).double()
    a = torch.randint(0, G, (200,), generator=g)
    model = torch.nn.Linear(4, 1).double()
    opt = ConstrainedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), [fo.EqualizedOdds(0.01)], G, dual_lr=0.5)
    with torch.no_grad():
        stats = opt.constraint_set.measure(model(x).squeeze(-1), groups=a, labels=y)
    opt.player.update(opt.evaluate(stats))
    assert (opt.multipliers > 0).any()
    cs = opt.constraint_set

    def objective(path: str) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        scores = model(x).squeeze(-1)
        loss = F.binary_cross_entropy_with_logits(scores, y)
        stats = cs.measure(scores, groups=a, labels=y)
        if path == "table":
            return opt._primal_objective(loss, stats, opt.evaluate(stats), cs.linearize(stats))
        states = opt.problem.constraint_states(cs.evaluate(stats), dual=False)
        return CMPState(loss=loss, observed_constraints=states).compute_primal_lagrangian().lagrangian

    _assert_same_value_and_gradient(model, objective)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("proxy", ["sigmoid", "hinge"])
def test_group_stats_gradients_in_low_precision_follow_the_float64_ones(dtype, proxy):
    g = torch.Generator().manual_seed(3)
    scores64 = torch.randn(64, generator=g, dtype=F64)
    weights64 = torch.rand(64, generator=g, dtype=F64) + 0.5
    loss64 = torch.rand(64, generator=g, dtype=F64)
    labels, groups = torch.randint(0, 2, (64,), generator=g), torch.randint(0, G, (64,), generator=g)
    mix = torch.randn(G, 9, generator=g, dtype=F64)
    grads = {}
    for dt in (F64, dtype):
        inputs = [t.detach().to(dt).requires_grad_() for t in (scores64, weights64, loss64)]
        table = group_stats(
            inputs[0],
            labels=labels,
            groups=groups,
            num_groups=G,
            weights=inputs[1],
            example_losses=inputs[2],
            proxy=proxy,
        ).table
        (table * mix).sum().backward()
        assert all(t.grad.dtype == dt for t in inputs)
        grads[dt] = [t.grad.double() for t in inputs]
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
    for got, want in zip(grads[dtype], grads[F64]):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def _range_case_expr(case: int):
    tpr, sel = fo.tpr.per_group(), fo.selection_rate.per_group()
    err = RateRef("error_rate").per_group()
    return [
        fo.EqualizedOdds(0.05).expr,
        fo.DemographicParity(0.1).expr,
        fo.EqualOpportunity(0.02).expr,
        fo.ErrorRateParity(0.0).expr,
        concat(tpr.min() - tpr.max(), err.max(min_defined=3) - err.min(min_defined=1), sel.max() - sel.min()),
    ][case]


@pytest.mark.parametrize("case", range(5))
def test_range_fast_path_matches_the_walk_bit_for_bit(case: int) -> None:
    """The built-in parity constraints (ranges of per-group label-conditioned rates) take a path without a node per
    operator: on Python floats for a few groups (``_linearize_small``), in NumPy otherwise (``_linearize_ranges``).
    Each must give the walk's values, mask and gradients exactly, on tables with absent groups, a single group,
    weighted (non-integer) cells, ties, denominators below float64's normal range (where the float path declines),
    signed zeros and non-finite cells."""
    from fairopt.constraints.evaluation import (
        _linearize_ranges,
        _linearize_small,
        _linearize_walk,
        _rate_ranges,
        linearize,
    )
    from fairopt.stats import FEW_GROUPS

    expr = _range_case_expr(case)
    ranges = _rate_ranges(expr)
    assert ranges is not None  # the fast path is taken
    rng = np.random.default_rng(case)
    checked_undefined = checked_small = declined = 0
    for trial in range(300):
        num_groups = int(rng.integers(1, 6)) if trial % 7 else int(rng.integers(FEW_GROUPS - 1, FEW_GROUPS + 4))
        table = rng.integers(0, 5, (num_groups, 9)).astype(float)
        if trial % 2:
            table *= rng.random((num_groups, 9))  # weighted counts and proxy sums
        if trial % 5 == 0:
            table[rng.integers(0, num_groups)] = 0.0  # an absent group
        if trial % 11 == 0:
            table[:, :4] *= 1e-310  # subnormal denominators: 1 / den overflows
        if trial % 13 == 0:  # a signed zero, or a NaN or inf in any cell (the walk's product spreads it along its row)
            table[rng.integers(0, num_groups), rng.integers(0, 9)] = (-0.0, np.nan, np.inf)[trial % 3]
        for offset in (0.0, 0.05):
            with np.errstate(all="ignore"):
                walk = _linearize_walk(expr, table, True, offset)
                fast = [linearize(expr, table, offset=offset), _linearize_ranges(ranges, table, True, offset)]
                small = _linearize_small(ranges, table, True, offset)
                if small is None:
                    declined += 1
                else:
                    fast.append(small)
                    checked_small += 1
                k = walk.hard.shape[0]
                c_upper, c_lower = rng.normal(size=k), rng.normal(size=k)
                for lin in fast:
                    for got, want in zip(lin[:4], walk[:4]):
                        assert got.dtype == want.dtype and got.shape == want.shape
                        np.testing.assert_array_equal(got, want)
                        np.testing.assert_array_equal(np.signbit(got), np.signbit(want))  # == ignores a zero's sign
                    for cu, cl in ((c_upper, None), (c_upper, c_lower), (None, c_lower)):
                        np.testing.assert_array_equal(lin.vjp(cu, cl), walk.vjp(cu, cl))
                nograd = [linearize(expr, table, gradients=False, offset=offset)]
                small = _linearize_small(ranges, table, False, offset)
                # without gradients only a table with a non-finite cell may be declined (subnormal denominators
                # are fine)
                assert small is not None or not np.isfinite(table).all()
                nograd.append(small or nograd[0])
            for lin in nograd:
                assert lin.vjp is None
                for got, want in zip(lin[:4], walk[:4]):
                    np.testing.assert_array_equal(got, want)
            checked_undefined += int(not walk.defined.all())
    assert checked_small > 400 and declined > 0
    assert checked_undefined > 0  # the undefined cases were met


def test_range_fast_path_is_only_taken_for_ranges_of_per_group_label_rates() -> None:
    from fairopt.constraints.evaluation import _rate_ranges

    tpr = fo.tpr.per_group()
    assert _rate_ranges(fo.EqualizedOdds(0.05).expr) is not None
    assert _rate_ranges(fo.EqualizedOdds(0.05, convention="pairwise").expr) is None
    assert _rate_ranges(RateRef("precision").per_group().max() - RateRef("precision").per_group().min()) is None
    assert _rate_ranges(tpr.max() - fo.fpr.per_group().min()) is None  # two different rates
    assert _rate_ranges(fo.tpr((0, 1)) - fo.tpr()) is None
    assert _rate_ranges(concat(tpr.max() - tpr.min(), fo.tpr(1))) is None
