"""Lagrangian methods on cooper: the FairnessCMP bridge, multiplier projection, augmented Lagrangian, nuPI."""

from __future__ import annotations

import math

import cooper
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import fairopt
from fairopt.constraints import ConstraintValue
from fairopt.optim import FairnessCMP, FairnessMultiplier, LagrangianPlayer, make_dual_optimizer
from fairopt.stats import group_stats
from tests.optim_data import (
    mlp,
    single_thread,  # noqa: F401
    tabular,
)

pytestmark = pytest.mark.usefixtures("single_thread")

DP = fairopt.DemographicParity(0.0)


def test_fairness_cmp_plugs_into_cooper_roll_with_proxy_primal_and_hard_dual():
    x, y, a = tabular(256, seed=0)
    model = mlp(x.shape[1], seed=2)
    cmp = FairnessCMP([DP], num_groups=2)
    primal = torch.optim.SGD(model.parameters(), lr=0.1)
    dual = torch.optim.SGD(cmp.dual_parameters(), lr=0.5, maximize=True)
    coop = cooper.optim.SimultaneousOptimizer(cmp, primal_optimizers=primal, dual_optimizers=dual)
    hard = []
    for _ in range(2):
        scores = model(x).squeeze(-1)
        hard.append(
            DP.evaluate(group_stats(scores.detach(), labels=y, groups=a, num_groups=2, proxy="hinge")).hard.item()
        )
        roll = coop.roll(
            compute_cmp_state_kwargs={
                "loss": F.binary_cross_entropy_with_logits(scores, y),
                "scores": scores,
                "labels": y,
                "groups": a,
            }
        )
    (state,) = roll.cmp_state.observed_constraints.values()
    assert state.strict_violation.item() == pytest.approx(hard[1], abs=1e-12)
    assert state.violation.requires_grad and not state.strict_violation.requires_grad
    lam = max(0.0, 0.5 * hard[0])
    lam = max(0.0, lam + 0.5 * hard[1])
    assert cmp.multiplier_values().item() == pytest.approx(lam, abs=1e-12)
    assert roll.cmp_state.misc["stats"].num_groups == 2


def test_cooper_state_can_read_heldout_statistics_for_the_dual():
    x, y, a = tabular(200, seed=1)
    xv, yv, av = tabular(200, seed=2)
    model = mlp(x.shape[1])
    cmp = FairnessCMP([DP], num_groups=2, proxy="hinge")
    with torch.no_grad():
        heldout = group_stats(model(xv).squeeze(-1), labels=yv, groups=av, num_groups=2, proxy="hinge")
    scores = model(x).squeeze(-1)
    state = cmp.compute_cmp_state(
        F.binary_cross_entropy_with_logits(scores, y), scores, groups=a, labels=y, dual_stats=heldout
    ).observed_constraints
    (constraint_state,) = state.values()
    assert constraint_state.strict_violation.item() == pytest.approx(DP.evaluate(heldout).hard.item(), abs=1e-12)
    train_proxy = DP.evaluate(group_stats(scores, labels=y, groups=a, num_groups=2, proxy="hinge")).proxy
    torch.testing.assert_close(constraint_state.violation, train_proxy)


def test_one_cooper_constraint_per_fairopt_constraint_with_named_multipliers():
    cmp = FairnessCMP([DP, fairopt.EqualizedOdds(0.05)], num_groups=2, multiplier_bound=2.0)
    names = [name for name, _ in cmp.named_multipliers()]
    assert names == ["constraint_0", "constraint_1"]
    assert [m.weight.numel() for _, m in cmp.named_multipliers()] == [1, 2]
    assert cmp.multiplier_values().shape == (3,) and cmp.constraint_set.num_constraints == 3
    with pytest.raises(ValueError, match="num_groups is required"):
        FairnessCMP([DP])


def test_augmented_lagrangian_primal_term_is_coopers_formula():
    cmp = FairnessCMP(
        [fairopt.EqualizedOdds(0.0)],
        2,
        formulation_type=cooper.formulations.AugmentedLagrangian,
        penalty_coefficient=0.7,
    )
    player = LagrangianPlayer(
        cmp,
        torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1),
        make_dual_optimizer(cmp.dual_parameters(), "sgd", 0.5),
    )
    player.update(
        ConstraintValue(
            torch.tensor([0.4, -0.2], dtype=torch.float64),
            torch.zeros(2, dtype=torch.float64),
            torch.tensor([True, True]),
        )
    )
    lam = cmp.multiplier_values()
    torch.testing.assert_close(lam, torch.tensor([0.2, 0.0], dtype=torch.float64))
    proxy = torch.tensor([0.3, -0.5], dtype=torch.float64, requires_grad=True)
    loss = torch.tensor(1.25, dtype=torch.float64, requires_grad=True)
    value = ConstraintValue(proxy.detach(), proxy, torch.tensor([True, True]))
    objective = player.primal_objective(loss, value)
    rho = 0.7
    expected = 1.25 + ((torch.relu(lam + rho * proxy) ** 2 - lam**2) / (2 * rho)).sum()
    assert objective.item() == pytest.approx(expected.item(), abs=1e-12)


def test_penalty_growth_multiplies_the_coefficient_of_violated_entries():
    x, y, a = tabular(200, seed=3)
    model = mlp(x.shape[1])
    opt = fairopt.optim.ConstrainedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.0),
        [fairopt.EqualizedOdds(0.0)],
        2,
        method=fairopt.optim.AugmentedLagrangian(penalty=0.5, penalty_growth=2.0),
    )
    scores = model(x).squeeze(-1)
    result = opt.step(loss=F.binary_cross_entropy_with_logits(scores, y), scores=scores, labels=y, groups=a)
    (constraint,) = opt.problem.constraints()
    expected = torch.where(result.value.hard > 1e-4, 1.0, 0.5).to(torch.float64)
    torch.testing.assert_close(constraint.penalty_coefficient.value, expected)


def test_quadratic_penalty_formulation_through_the_bridge():
    cmp = FairnessCMP([DP], 2, formulation_type=cooper.formulations.QuadraticPenalty, penalty_coefficient=4.0)
    assert not cmp.has_multipliers
    proxy = torch.tensor([0.25], dtype=torch.float64, requires_grad=True)
    value = ConstraintValue(proxy.detach(), proxy, torch.tensor([True]))
    states = cmp.constraint_states(value, dual=True)
    (state,) = states.values()
    assert not state.contributes_to_dual_update
    lagrangian = cooper.CMPState(loss=torch.tensor(1.0, dtype=torch.float64), observed_constraints=states)
    assert lagrangian.compute_primal_lagrangian().lagrangian.item() == pytest.approx(1.0 + 0.5 * 4.0 * 0.25**2)


def test_nupi_multipliers_follow_coopers_nupi_fed_with_the_hard_values():
    cmp = FairnessCMP([fairopt.EqualizedOdds(0.0)], 2)
    dual = make_dual_optimizer(cmp.dual_parameters(), "nupi", 0.5, {"Kp": 1.0})
    player = LagrangianPlayer(cmp, torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), dual)
    reference = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    reference_opt = cooper.optim.nuPI([reference], lr=0.5, Kp=1.0, maximize=True)
    defined = torch.tensor([True, True])
    for values in ([0.4, 0.2], [0.1, 0.3], [-0.6, 0.1]):
        g = torch.tensor(values, dtype=torch.float64)
        player.update(ConstraintValue(g, g, defined))
        reference.grad = g.clone()
        reference_opt.step()
        reference.data.clamp_(min=0)
        torch.testing.assert_close(player.multipliers, reference.detach())
    assert player.multipliers[0] == 0.0  # projected


def test_fairness_multiplier_validates_and_projects():
    with pytest.raises(ValueError, match="bound"):
        FairnessMultiplier(2, bound=0.0)
    with pytest.raises(ValueError, match="finite and >= 0"):
        FairnessMultiplier(init=torch.tensor([-1.0, 0.0], dtype=torch.float64))
    multiplier = FairnessMultiplier(3, bound=1.0)
    multiplier.set_constraint_type(cooper.ConstraintType.INEQUALITY)
    multiplier.weight.data = torch.tensor([-0.5, 2.0, math.nan], dtype=torch.float64)
    multiplier.post_step_()  # no mask: plain projection; a non-finite entry falls back to 0
    assert multiplier.weight.tolist() == [0.0, 1.0, 0.0]


finite_or_not = st.one_of(
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e300, -1e300]),
)


@settings(max_examples=40, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.lists(finite_or_not, min_size=3, max_size=3), st.lists(st.booleans(), min_size=3, max_size=3)),
        min_size=1,
        max_size=12,
    ),
    kind=st.sampled_from(["sgd", "momentum", "nupi"]),
    bound=st.sampled_from([None, 5.0]),
)
def test_multipliers_stay_nonnegative_finite_and_bounded_under_adversarial_violations(steps, kind, bound):
    cmp = FairnessCMP([fairopt.EqualOpportunity(0.0, convention="pairwise")], 3, multiplier_bound=bound)
    options = {"momentum": 0.9} if kind == "momentum" else ({"Kp": 3.0} if kind == "nupi" else None)
    dual = make_dual_optimizer(cmp.dual_parameters(), "nupi" if kind == "nupi" else "sgd", 0.7, options)
    player = LagrangianPlayer(cmp, torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), dual)
    for values, defined in steps:
        hard = torch.tensor(values, dtype=torch.float64)
        mask = torch.tensor(defined)
        before = player.multipliers
        player.update(ConstraintValue(hard, hard, mask))
        after = player.multipliers
        assert torch.isfinite(after).all() and (after >= 0).all()
        if bound is not None:
            assert (after <= bound).all()
        frozen = ~mask | ~torch.isfinite(hard)
        assert torch.equal(after[frozen], before[frozen])
