"""Reliability regressions of fairopt.optim: held-out duals without data, (N, 1) scores, keyword-only data,
checkpoints that load with ``weights_only=True``, states of other constraints, augmented-Lagrangian precision."""

from __future__ import annotations

import inspect
import io
from fractions import Fraction

import cooper
import pytest
import torch
import torch.nn.functional as F
from cooper.optim.torch_optimizers.nupi_optimizer import nuPIInitType
from torch import Tensor

import fairopt
from fairopt.constraints import ConstraintValue
from fairopt.optim import (
    AugmentedLagrangian,
    ConstrainedOptimizer,
    FairnessCMP,
    IterateRecords,
    Lagrangian,
    LagrangianPlayer,
    Penalty,
    ProxyLagrangian,
    make_dual_optimizer,
)
from fairopt.optim.cooper_problem import augmented_lagrangian_term
from fairopt.stats import RunningGroupStats, group_stats
from tests.optim_data import (
    mlp,
    single_thread,  # noqa: F401
    tabular,
    train_step,
)

pytestmark = pytest.mark.usefixtures("single_thread")

DP = fairopt.DemographicParity(0.0)
X, Y, A = tabular(256, seed=0)
XV, YV, AV = tabular(128, seed=1)
BATCH = 64


def batch(step: int) -> tuple[Tensor, Tensor, Tensor]:
    rows = slice((step * BATCH) % X.shape[0], (step * BATCH) % X.shape[0] + BATCH)
    return X[rows], Y[rows], A[rows]


# 1. held-out duals without held-out data -----------------------------------------------------------------------
def heldout_opt(model: torch.nn.Module, **kwargs) -> ConstrainedOptimizer:
    return ConstrainedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), [DP], 2, dual_lr=0.5, dual_source="heldout", **kwargs
    )


def test_heldout_duals_without_any_heldout_data_raise_instead_of_training_unconstrained():
    model = mlp(X.shape[1])
    opt = heldout_opt(model)
    train_step(opt, model, *batch(0))  # one empty dual step is tolerated (a loop may observe after the step)
    assert opt.multipliers.item() == 0.0
    with pytest.raises(RuntimeError, match=r"no held-out statistics") as error:
        train_step(opt, model, *batch(1))
    message = str(error.value)
    assert "heldout=" in message and "observe_heldout(scores=..., labels=..., groups=...)" in message
    assert "dual_every=None" in message
    assert opt.num_steps == 1  # refused before anything moved


def test_the_no_heldout_error_counts_scheduled_dual_steps_only():
    model = mlp(X.shape[1])
    opt = heldout_opt(model, dual_every=3)
    for step in range(5):  # dual steps at 3 (tolerated) and 6
        train_step(opt, model, *batch(step))
    assert opt.num_steps == 5
    with pytest.raises(RuntimeError, match=r"2 scheduled dual steps \(one every dual_every=3"):
        train_step(opt, model, *batch(5))


def test_heldout_observed_once_makes_later_empty_dual_steps_legitimate():
    model = mlp(X.shape[1])
    opt = heldout_opt(model)
    train_step(opt, model, *batch(0))
    with torch.no_grad():
        scores = model(XV).squeeze(-1)
    opt.observe_heldout(scores=scores, labels=YV, groups=AV)  # after the step: read by the next dual step
    train_step(opt, model, *batch(1))
    g = DP.evaluate(group_stats(scores, labels=YV, groups=AV, num_groups=2)).hard.item()
    assert g > 0
    assert opt.multipliers.item() == pytest.approx(0.5 * g, abs=1e-12)
    for step in range(2, 5):  # nothing new observed: the duals wait, no error
        train_step(opt, model, *batch(step))
    assert opt.multipliers.item() == pytest.approx(0.5 * g, abs=1e-12)


def test_dual_every_none_moves_the_duals_only_through_update_duals():
    model = mlp(X.shape[1])
    opt = heldout_opt(model, dual_every=None)
    for step in range(4):
        result = train_step(opt, model, *batch(step))
        assert result.dual_value is None
    assert opt.multipliers.item() == 0.0
    with torch.no_grad():
        stats = group_stats(model(XV).squeeze(-1), labels=YV, groups=AV, num_groups=2)
    value = opt.update_duals(stats)
    g = DP.evaluate(stats).hard.item()
    assert value.hard.item() == pytest.approx(g, abs=1e-12)
    assert opt.multipliers.item() == pytest.approx(max(0.0, 0.5 * g), abs=1e-12) and g > 0
    with pytest.raises(ValueError, match="dual_every=None schedules none"):
        heldout_opt(model, dual_every=None, heldout=lambda: stats)
    with pytest.raises(ValueError, match="or None"):
        heldout_opt(model, dual_every=0)


def test_a_resumed_run_remembers_that_heldout_data_was_observed():
    model = mlp(X.shape[1])
    opt = heldout_opt(model)
    with torch.no_grad():
        opt.observe_heldout(scores=model(XV).squeeze(-1), labels=YV, groups=AV)
    train_step(opt, model, *batch(0))
    state = opt.state_dict()
    assert state["dual_statistics"]["num_observed"] == 1
    fresh = heldout_opt(model)
    fresh.load_state_dict(state)
    for step in range(1, 4):  # no new observation: legitimate once something was observed
        train_step(fresh, model, *batch(step))
    assert fresh.multipliers.item() == opt.multipliers.item() > 0
    legacy = {**state, "dual_statistics": {k: v for k, v in state["dual_statistics"].items() if k != "num_observed"}}
    older = heldout_opt(model)
    older.load_state_dict(legacy)  # a state saved before the counter existed is taken as having observed
    assert older.dual_statistics.num_observed == 1


# 2. (N, 1) scores -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["lagrangian", "proxy_lagrangian"])
def test_n_by_1_scores_train_exactly_like_n_scores(method):
    runs = []
    for column in (False, True):
        model = mlp(X.shape[1], seed=3)
        opt = ConstrainedOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.1), [fairopt.EqualOpportunity(0.0)], 2, dual_lr=0.5, method=method
        )
        results = []
        for step in range(3):
            x, y, a = batch(step)
            out = model(x)  # (N, 1): nn.Linear(d, 1)'s head
            assert out.shape == (BATCH, 1)
            scores = out if column else out.squeeze(-1)
            target = y[:, None] if column else y
            opt.zero_grad()
            loss = F.binary_cross_entropy_with_logits(scores, target)
            results.append(opt.step(loss=loss, scores=scores, labels=y, groups=a))
        runs.append((model, opt, results))
    (model, opt, results), (model_c, opt_c, results_c) = runs
    for mine, theirs in zip(results, results_c):
        assert torch.equal(mine.value.hard, theirs.value.hard)
        assert torch.equal(mine.value.proxy, theirs.value.proxy)
        assert torch.equal(mine.objective, theirs.objective)
    assert torch.equal(opt.multipliers, opt_c.multipliers) and opt.multipliers.sum() > 0
    for p, q in zip(model.parameters(), model_c.parameters()):
        assert torch.equal(p, q)


def test_n_by_1_heldout_scores_are_read_as_n():
    model = mlp(X.shape[1])
    opt = heldout_opt(model)
    with torch.no_grad():
        column = opt.observe_heldout(scores=model(XV), labels=YV, groups=AV)
        flat = opt.observe_heldout(scores=model(XV).squeeze(-1), labels=YV, groups=AV)
    assert torch.equal(column.table, flat.table) and column.table[:, 0].sum() > 0


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((BATCH, 2), r"got \(64, 2\); for a two-logit softmax head pass scores=logits\[:, 1\] - logits\[:, 0\]"),
        ((BATCH, 1, 1), r"got \(64, 1, 1\); pass scores.squeeze\(-1\)"),
        ((), r"got \(\); pass scores.squeeze\(-1\)"),
    ],
)
def test_other_score_shapes_are_refused_with_the_shape_and_the_fix(shape, match):
    model = mlp(X.shape[1])
    opt = ConstrainedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), [DP], 2)
    x, y, a = batch(0)
    scores = model(x).sum() * torch.ones(shape)
    with pytest.raises(ValueError, match=r"scores must have shape \(N,\) or \(N, 1\)") as error:
        opt.step(loss=scores.mean(), scores=scores, labels=y, groups=a)
    assert error.match(match)
    assert opt.num_steps == 0


# 3. keyword-only data arguments -----------------------------------------------------------------------------------
def test_step_takes_its_data_by_keyword_only():
    parameters = list(inspect.signature(ConstrainedOptimizer.step).parameters.values())[1:]
    assert [p.name for p in parameters][:4] == ["loss", "scores", "groups", "labels"]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in parameters)
    model = mlp(X.shape[1])
    opt = ConstrainedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), [DP], 2)
    x, y, a = batch(0)
    scores = model(x).squeeze(-1)
    loss = F.binary_cross_entropy_with_logits(scores, y)
    with pytest.raises(TypeError, match="positional"):
        opt.step(loss, scores, a, y)  # type: ignore[misc]
    with pytest.raises(TypeError, match="positional"):
        opt.step(scores, loss=loss, groups=a, labels=y)  # type: ignore[misc]
    assert opt.num_steps == 0


# 4. every state loads with torch.load(weights_only=True) --------------------------------------------------------
def adam_dual(params):
    return torch.optim.Adam(params, lr=0.1, maximize=True)


LAGRANGIAN_DUALS = {
    "sgd": {},
    "sgd-momentum": {"dual_optimizer_kwargs": {"momentum": 0.5}},
    "nupi": {"dual_optimizer": "nupi", "dual_optimizer_kwargs": {"Kp": 1.0}},
    "nupi-zeros": {"dual_optimizer": "nupi", "dual_optimizer_kwargs": {"Kp": 0.5, "init_type": nuPIInitType.ZEROS}},
    "callable-adam": {"dual_optimizer": adam_dual},
}
CONFIGS = {
    **{f"lagrangian-{name}": {"method": Lagrangian(**dual)} for name, dual in LAGRANGIAN_DUALS.items()},
    **{f"augmented-{name}": {"method": AugmentedLagrangian(**dual)} for name, dual in LAGRANGIAN_DUALS.items()},
    "augmented-growth-alternating": {
        "method": AugmentedLagrangian(penalty=0.2, penalty_growth=1.5),
        "dual_update": "alternating",
    },
    "proxy-swap-multiplicative": {"method": "proxy_lagrangian"},
    "proxy-swap-additive": {"method": ProxyLagrangian(regret_update="additive")},
    "proxy-external-multiplicative": {"method": ProxyLagrangian(regret="external")},
    "proxy-external-additive": {"method": ProxyLagrangian(regret="external", regret_update="additive")},
    "penalty": {"method": Penalty(coefficients=2.0)},
    "margin-records-count-window": {"margin": 0.01, "records": True, "dual_min_count": 10, "dual_max_window": 3},
    "heldout-ema-nupi": {
        "dual_source": "heldout",
        "running": "ema",
        "method": Lagrangian(dual_optimizer="nupi"),
        "dual_every": 2,
    },
    "window-every-2-proxy": {"method": "proxy_lagrangian", "running": "window", "dual_every": 2},
}


def build(config: dict, model: torch.nn.Module) -> ConstrainedOptimizer:
    config = dict(config)
    running = config.pop("running", None)
    if running is not None:
        config["running"] = RunningGroupStats(2, mode=running, decay=0.7, window=2)
    if config.pop("records", False):
        config["records"] = IterateRecords()
    if config.get("dual_source") == "heldout":
        config["heldout"] = lambda: {"scores": model(XV), "labels": YV, "groups": AV}
    return ConstrainedOptimizer(
        torch.optim.Adam(model.parameters(), lr=0.01), [fairopt.EqualizedOdds(0.02)], 2, dual_lr=0.3, **config
    )


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_state_dict_loads_with_weights_only_and_resumes_bit_for_bit(name):
    model = mlp(X.shape[1], seed=4)
    opt = build(CONFIGS[name], model)
    for step in range(4):
        train_step(opt, model, *batch(step))
    if opt.records is not None:
        with torch.no_grad():
            opt.record(group_stats(model(XV).squeeze(-1), labels=YV, groups=AV, num_groups=2), model=model)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    state = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    resumed_model = mlp(X.shape[1], seed=5)
    resumed_model.load_state_dict(model.state_dict())
    resumed = build(CONFIGS[name], resumed_model)
    resumed.load_state_dict(state)
    if resumed.dual_optimizer is not None:  # enums are enums again: nuPI's branch is the saved one
        for mine, theirs in zip(resumed.dual_optimizer.param_groups, opt.dual_optimizer.param_groups):
            assert {k: v for k, v in mine.items() if k != "params"}.keys() == theirs.keys() - {"params"}
            if "init_type" in theirs:
                assert mine["init_type"] is theirs["init_type"]
    for step in range(4, 7):
        train_step(opt, model, *batch(step))
        train_step(resumed, resumed_model, *batch(step))
    assert torch.equal(opt.multipliers, resumed.multipliers)
    assert torch.equal(opt.objective_weight, resumed.objective_weight)
    if name != "penalty":
        assert opt.multipliers.abs().sum() > 0  # the duals moved: the comparison means something
    for p, q in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(p, q)
    if opt.margin is not None:
        assert resumed.margin is not None and resumed.margin.tolist() == opt.margin.tolist() == [0.01, 0.01]
    if opt.records is not None:
        assert resumed.records is not None and len(resumed.records) == len(opt.records) == 1


def test_a_state_with_nupis_enum_saved_by_the_previous_version_still_loads():
    model = mlp(X.shape[1])
    opt = build({"method": Lagrangian(**LAGRANGIAN_DUALS["nupi-zeros"])}, model)
    train_step(opt, model, *batch(0))
    state = opt.state_dict()
    state["player"]["dual_optimizer"] = opt.dual_optimizer.state_dict()  # the enum itself, as saved before
    state["optimizer"] = opt.optimizer.state_dict()
    fresh = build({"method": Lagrangian(**LAGRANGIAN_DUALS["nupi-zeros"])}, mlp(X.shape[1]))
    fresh.load_state_dict(state)
    assert fresh.dual_optimizer.param_groups[0]["init_type"] is nuPIInitType.ZEROS
    assert torch.equal(fresh.multipliers, opt.multipliers)


# 5. a state of other constraints is refused -----------------------------------------------------------------------
def optimizer_for(constraints, **kwargs) -> ConstrainedOptimizer:
    model = mlp(X.shape[1])
    return ConstrainedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), constraints, 2, **kwargs)


def trained(constraints) -> tuple[ConstrainedOptimizer, dict]:
    """An optimizer after one step (its multipliers moved) and its state."""
    model = mlp(X.shape[1])
    opt = ConstrainedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), constraints, 2, dual_lr=0.5)
    train_step(opt, model, *batch(0))
    assert opt.multipliers.sum() > 0
    return opt, opt.state_dict()


def test_a_demographic_parity_state_is_refused_by_an_equal_opportunity_optimizer():
    _, state = trained([fairopt.DemographicParity(0.02)])
    target = optimizer_for([fairopt.EqualOpportunity(0.02)])
    with pytest.raises(ValueError, match="state_dict was saved for the constraints") as error:
        target.load_state_dict(state)
    message = str(error.value)
    assert "DemographicParity(tolerance=0.02" in message and "selection_rate" in message
    assert "EqualOpportunity(tolerance=0.02" in message and "tpr" in message
    assert target.multipliers.item() == 0.0  # nothing was loaded


def test_an_equalized_odds_state_is_refused_by_a_two_constraint_optimizer_with_a_fairopt_error():
    _, state = trained([fairopt.EqualizedOdds(0.02)])
    target = optimizer_for([fairopt.DemographicParity(0.02), fairopt.EqualOpportunity(0.02)])
    assert target.num_constraints == 2  # same m: only the constraints tell them apart
    with pytest.raises(ValueError, match="state_dict was saved for the constraints") as error:
        target.load_state_dict(state)
    message = str(error.value)
    assert "EqualizedOdds(tolerance=0.02, max_min) (2 entries" in message
    assert "DemographicParity(tolerance=0.02, max_min) (1 entries" in message
    assert "num_constraints=2, num_groups=2" in message


def test_the_same_constraints_with_another_tolerance_load():
    source, state = trained([fairopt.EqualizedOdds(0.02)])
    target = optimizer_for([fairopt.EqualizedOdds(0.05)])
    target.load_state_dict(state)
    assert torch.equal(target.multipliers, source.multipliers)


def test_a_format_1_state_loads_into_the_same_constraints_and_is_refused_by_others():
    source, state = trained([fairopt.EqualOpportunity(0.02)])
    summary = {k: v for k, v in state["constraints"].items() if k != "entries"}  # format 1 had no entries
    legacy = {**state, "format": 1, "constraints": summary}
    same = optimizer_for([fairopt.EqualOpportunity(0.02)])
    same.load_state_dict(legacy)
    assert torch.equal(same.multipliers, source.multipliers)
    other = {**legacy, "constraints": {**summary, "constraints": ["DemographicParity(tolerance=0.02, max_min)"]}}
    with pytest.raises(ValueError, match=r"\[DemographicParity\(tolerance=0.02, max_min\)\] \(num_constraints=1"):
        optimizer_for([fairopt.EqualOpportunity(0.02)]).load_state_dict(other)


# 6. augmented-Lagrangian precision --------------------------------------------------------------------------------
LAM = [0.3, 0.0, 0.5, 1e-3, 0.0, 0.25]
VIOLATION = [0.2, 0.1, -0.4, -0.7, -0.3, -0.9]


def exact_term(lam: list[float], rho: float, violation: list[float]) -> float:
    """``Σ (relu(λ + ρg)² − λ²) / (2ρ)`` in exact rational arithmetic on the float inputs."""
    total = Fraction(0)
    for l, g in zip(map(Fraction, lam), map(Fraction, violation)):
        total += (max(Fraction(0), l + Fraction(rho) * g) ** 2 - l**2) / (2 * Fraction(rho))
    return float(total)


def augmented_player(rho: float, lam: list[float]) -> LagrangianPlayer:
    constraints = [fairopt.tpr(1) - fairopt.tpr(0) <= 0.0 for _ in lam]
    cmp = FairnessCMP(constraints, 2, formulation_type=cooper.formulations.AugmentedLagrangian, penalty_coefficient=rho)
    for constraint, value in zip(cmp.constraints(), lam):
        constraint.multiplier.weight.data.fill_(value)
    dual = make_dual_optimizer(cmp.dual_parameters(), "sgd", 0.5)
    return LagrangianPlayer(cmp, torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), dual)


@pytest.mark.parametrize("rho", [1e-12, 0.7])
def test_the_augmented_lagrangian_term_is_exact_at_any_penalty(rho):
    player = augmented_player(rho, LAM)
    proxy = torch.tensor(VIOLATION, dtype=torch.float64, requires_grad=True)
    loss = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
    objective = player.primal_objective(loss, ConstraintValue(proxy.detach(), proxy, torch.ones(6, dtype=torch.bool)))
    expected = exact_term(LAM, rho, VIOLATION)
    assert objective.item() == pytest.approx(expected, rel=4e-15)
    (gradient,) = torch.autograd.grad(objective, proxy)
    lam = torch.tensor(LAM, dtype=torch.float64)
    torch.testing.assert_close(gradient, torch.relu(lam + rho * proxy.detach()), rtol=1e-15, atol=0)
    direct = augmented_lagrangian_term(lam, torch.full((6,), rho, dtype=torch.float64), proxy)
    assert direct.item() == pytest.approx(expected, rel=4e-15)
    if rho < 1e-6:  # cooper's form loses the digits this test is about
        cancelling = ((torch.relu(lam + rho * proxy) ** 2 - lam**2) / (2 * rho)).sum().item()
        assert abs(cancelling - expected) > 1e-7


def test_the_augmented_lagrangian_term_passes_gradcheck_in_float64():
    lam = torch.tensor(LAM, dtype=torch.float64)
    violation = torch.tensor(VIOLATION, dtype=torch.float64, requires_grad=True)
    # ρ chosen so that both branches occur and no entry sits within gradcheck's step of the switch λ + ρg = 0
    penalty = torch.tensor([0.7, 1.3, 2.0, 0.5, 0.9, 0.1], dtype=torch.float64, requires_grad=True)
    active = lam + penalty.detach() * violation.detach() >= 0
    assert active.any() and not active.all()
    assert bool(((lam + penalty.detach() * violation.detach()).abs() > 1e-3).all())
    assert torch.autograd.gradcheck(augmented_lagrangian_term, (lam, penalty, violation), eps=1e-6, atol=1e-9)
    assert torch.autograd.gradgradcheck(augmented_lagrangian_term, (lam, penalty, violation), eps=1e-6, atol=1e-9)


def test_a_state_saved_with_pooled_groups_named_the_old_way_loads():
    """Up to 2026-12 a rate pooled over groups was named tpr[0 + 2]; a checkpoint holding such names must load
    into the same constraints, now named tpr[{0, 2}], and another pooling is still refused."""
    pooled = [fairopt.tpr((0, 1)) >= 0.99]
    source, state = trained(pooled)
    [[name]] = state["constraints"]["entries"]
    assert "tpr[{0, 1}]" in name
    state["constraints"]["entries"] = [[name.replace("{0, 1}", "0 + 1")]]
    target = optimizer_for(pooled)
    target.load_state_dict(state)
    assert torch.equal(target.multipliers, source.multipliers)
    other = optimizer_for([fairopt.tpr(1) >= 0.99])
    with pytest.raises(ValueError, match="state_dict was saved for the constraints"):
        other.load_state_dict(state)
