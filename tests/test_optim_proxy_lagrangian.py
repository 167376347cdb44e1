"""The proxy-Lagrangian λ-player and its stochastic-matrix kernels."""

from __future__ import annotations

import copy
import math
import pickle
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fairopt.constraints import ConstraintValue
from fairopt.optim import ProxyLagrangianPlayer, project_simplex, stationary_distribution
from tests.optim_data import single_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64


def value(hard, defined=None):
    hard = torch.as_tensor(hard, dtype=F64)
    defined = torch.ones_like(hard, dtype=torch.bool) if defined is None else torch.as_tensor(defined)
    return ConstraintValue(hard, hard, defined)


def random_stochastic(n, seed):
    gen = np.random.default_rng(seed)
    m = gen.random((n, n)) + 1e-3
    return torch.tensor(m / m.sum(axis=0, keepdims=True), dtype=F64)


@pytest.mark.parametrize("n", [2, 3, 6])
@pytest.mark.parametrize("seed", [0, 1])
def test_stationary_distribution_matches_the_eigenvector(n, seed):
    matrix = random_stochastic(n, seed)
    eigenvalues, eigenvectors = np.linalg.eig(matrix.numpy())
    reference = np.real(eigenvectors[:, np.argmin(np.abs(eigenvalues - 1))])
    reference = reference / reference.sum()
    for lam in (
        stationary_distribution(matrix),
        stationary_distribution(matrix, init=torch.full((n,), 1.0 / n, dtype=F64)),
    ):
        np.testing.assert_allclose(lam.numpy(), reference, atol=1e-10)
        torch.testing.assert_close(matrix @ lam, lam, atol=1e-12, rtol=0)


def test_squaring_handles_periodic_and_reducible_chains():
    swap = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=F64)  # periodic: the lazy chain still converges
    lam = stationary_distribution(swap, init=torch.tensor([0.9, 0.1], dtype=F64))
    torch.testing.assert_close(lam, torch.tensor([0.5, 0.5], dtype=F64))
    identity = torch.eye(3, dtype=F64)  # reducible: every distribution is stationary; keep the previous one
    init = torch.tensor([0.2, 0.3, 0.5], dtype=F64)
    torch.testing.assert_close(stationary_distribution(identity, init=init), init)


def _bisection_projection(v, mass):
    """Euclidean projection onto {x >= 0, sum x = mass} by bisection on the threshold (independent reference)."""
    lo, hi = v.min() - mass - 1.0, v.max()
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if np.maximum(v - mid, 0).sum() > mass:
            lo = mid
        else:
            hi = mid
    return np.maximum(v - 0.5 * (lo + hi), 0)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-5, 5, allow_nan=False), min_size=1, max_size=7),
    st.floats(0.0, 3.0),
)
def test_simplex_projection_matches_a_bisection_reference(values, mass):
    v = np.array(values)
    projected = project_simplex(torch.tensor(v, dtype=F64)[:, None], mass)[:, 0].numpy()
    np.testing.assert_allclose(projected, _bisection_projection(v, mass), atol=1e-9)


def test_masked_projection_leaves_frozen_rows_out():
    v = torch.tensor([[0.9], [0.5], [-0.2], [0.4]], dtype=F64)
    mask = torch.tensor([True, False, True, True])
    projected = project_simplex(v, torch.tensor([0.6], dtype=F64), mask)
    assert projected[1, 0] == 0.0
    reference = _bisection_projection(np.array([0.9, -0.2, 0.4]), 0.6)
    np.testing.assert_allclose(projected[[0, 2, 3], 0].numpy(), reference, atol=1e-12)


def test_swap_regret_step_is_the_multiplicative_matrix_update():
    floor = 1e-3
    player = ProxyLagrangianPlayer(2, lr=0.8, minimum_weight=floor)
    player.update(value([0.3, -0.1]))
    m0, lam0 = player.matrix, player.distribution
    g = torch.tensor([0.5, -0.4], dtype=F64)
    player.update(value(g))
    delta = torch.cat([torch.zeros(1, dtype=F64), g])
    expected = m0 * torch.exp(0.8 * delta[:, None] * lam0[None, :])  # M ⊙ exp(η Δ λᵀ)
    expected = expected / expected.sum(dim=0, keepdim=True)
    expected = (1 - floor) * expected + floor / 3  # the floor: mix with the uniform column
    torch.testing.assert_close(player.matrix, expected, atol=1e-12, rtol=0)
    lam = player.distribution
    torch.testing.assert_close(player.matrix @ lam, lam, atol=1e-12, rtol=0)
    assert lam[1] > lam0[1]  # weight moves to the violated constraint


def test_external_regret_is_hedge():
    player = ProxyLagrangianPlayer(3, lr=2.0, regret="external", minimum_weight=1e-6)
    lam0 = player.distribution
    g = torch.tensor([0.2, 0.0, -0.3], dtype=F64)
    player.update(value(g))
    expected = lam0 * torch.exp(2.0 * torch.cat([torch.zeros(1, dtype=F64), g]))
    expected = (1 - 1e-6) * expected / expected.sum() + 1e-6 / 4
    torch.testing.assert_close(player.distribution, expected, atol=1e-14, rtol=0)


def test_additive_updates_are_projected_gradient_steps():
    player = ProxyLagrangianPlayer(2, lr=0.5, regret="external", update="additive")
    assert player.distribution.tolist() == [1.0, 0.0, 0.0]  # all weight on the objective
    player.update(value([0.6, -0.2]))
    reference = _bisection_projection(np.array([1.0, 0.3, -0.1]), 1.0)
    np.testing.assert_allclose(player.distribution.numpy(), reference, atol=1e-12)
    swap = ProxyLagrangianPlayer(2, lr=0.5, update="additive")
    swap.update(value([0.6, -0.2]))
    torch.testing.assert_close(swap.matrix.sum(dim=0), torch.ones(3, dtype=F64))
    torch.testing.assert_close(swap.matrix @ swap.distribution, swap.distribution, atol=1e-9, rtol=0)


def test_primal_objective_weighs_objective_and_proxies():
    player = ProxyLagrangianPlayer(2, lr=1.0)
    for _ in range(5):
        player.update(value([0.4, 0.1]))
    lam = player.distribution
    proxy = torch.tensor([0.3, -0.2], dtype=F64, requires_grad=True)
    loss = torch.tensor(0.9, dtype=F64, requires_grad=True)
    objective = player.primal_objective(loss, ConstraintValue(proxy.detach(), proxy, torch.tensor([True, True])))
    objective.backward()
    assert loss.grad.item() == pytest.approx(lam[0].item())
    torch.testing.assert_close(proxy.grad, lam[1:])
    assert player.objective_weight == lam[0] and torch.equal(player.multipliers, lam[1:])


def test_primal_weights_follow_every_update_and_a_loaded_state():
    """``primal_weights`` (a cached read-only view of λ) reads λ after each update, the new λ after
    ``load_state_dict`` (which replaces the tensor), and never writes it."""
    player = ProxyLagrangianPlayer(2, lr=1.0)
    other = ProxyLagrangianPlayer(2, lr=1.0)
    other.update(value([0.9, -0.3]))
    for _ in range(3):
        player.update(value([0.4, 0.1]))
        w0, mu = player.primal_weights()
        assert [w0, *mu.tolist()] == player.distribution.tolist()
    with pytest.raises(ValueError, match="read-only"):
        mu[0] = 0.0
    player.load_state_dict(other.state_dict())
    w0, mu = player.primal_weights()
    assert [w0, *mu.tolist()] == other.distribution.tolist() != [1.0, 0.0, 0.0]


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copied_player_continues_as_the_original(how):
    """The host path and the primal weights keep NumPy views of the state and of λ: a copy (deepcopy, pickle, as
    torch.save does) must not keep the original's views, whose memory the copy's tensors no longer share, but
    continue exactly as the original does."""
    player = ProxyLagrangianPlayer(2, lr=1.0)
    player.host_arithmetic = True
    for hard in ([0.4, 0.1], [0.2, -0.3]):
        player.update(value(hard))
        player.primal_weights()
    copied = copy.deepcopy(player) if how == "deepcopy" else pickle.loads(pickle.dumps(player))
    for hard in ([0.9, -0.3], [-0.1, 0.5], [0.3, 0.3]):
        for p in (player, copied):
            p.update(value(hard))
            w0, mu = p.primal_weights()
            assert [w0, *mu.tolist()] == p.distribution.tolist()
        assert torch.equal(copied.matrix, player.matrix) and torch.equal(copied.distribution, player.distribution)


def test_state_dict_round_trip_and_checks():
    player = ProxyLagrangianPlayer(2, lr=0.3)
    player.update(value([0.5, 0.2]))
    clone = ProxyLagrangianPlayer(2, lr=0.3)
    clone.load_state_dict(player.state_dict())
    for p in (player, clone):
        p.update(value([0.1, -0.4]))
    assert torch.equal(player.matrix, clone.matrix) and torch.equal(player.distribution, clone.distribution)
    with pytest.raises(ValueError, match="regret"):
        ProxyLagrangianPlayer(2, lr=0.3, regret="external").load_state_dict(player.state_dict())
    with pytest.raises(ValueError, match="constraints"):
        ProxyLagrangianPlayer(3, lr=0.3).load_state_dict(player.state_dict())
    with pytest.raises(ValueError, match="minimum_weight"):
        ProxyLagrangianPlayer(2, lr=0.3, update="additive", minimum_weight=0.1)
    with pytest.raises(ValueError, match="dual learning rate"):
        ProxyLagrangianPlayer(2, lr=0.0)


finite_or_not = st.one_of(
    st.floats(min_value=-1e4, max_value=1e4, allow_nan=False),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e300]),
)


@settings(max_examples=40, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.lists(finite_or_not, min_size=3, max_size=3), st.lists(st.booleans(), min_size=3, max_size=3)),
        min_size=1,
        max_size=10,
    ),
    regret=st.sampled_from(["swap", "external"]),
    update=st.sampled_from(["multiplicative", "additive"]),
    lr=st.sampled_from([0.01, 1.0, 100.0]),
)
def test_the_lambda_player_stays_on_the_simplex_under_adversarial_violations(steps, regret, update, lr):
    player = ProxyLagrangianPlayer(3, lr=lr, regret=regret, update=update)
    for values, defined in steps:
        hard = torch.tensor(values, dtype=F64)
        mask = torch.tensor(defined)
        before = player.matrix
        player.update(ConstraintValue(hard, hard, mask))
        lam, matrix = player.distribution, player.matrix
        assert torch.isfinite(lam).all() and (lam >= 0).all()
        assert lam.sum().item() == pytest.approx(1.0, abs=1e-9)
        assert torch.isfinite(matrix).all() and (matrix >= 0).all()
        torch.testing.assert_close(matrix.sum(dim=0), torch.ones(matrix.shape[1], dtype=F64), atol=1e-9, rtol=0)
        if update == "multiplicative":
            assert (matrix > 0).all()
        frozen = torch.cat([torch.tensor([False]), ~mask | ~torch.isfinite(hard)])
        torch.testing.assert_close(matrix[frozen], before[frozen], atol=0, rtol=0)


def test_host_update_of_a_float32_state_takes_float64_values_beyond_float32_silently_as_the_tensor_path():
    # 1e300 becomes inf in float32 (then the ±MAX_VIOLATION clamp) on both paths; NumPy's cast would warn of overflow
    def run(host: bool) -> torch.Tensor:
        player = ProxyLagrangianPlayer(2, lr=0.1, dtype=torch.float32)
        player.host_arithmetic = host
        hard = torch.tensor([1e300, 0.1], dtype=torch.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            player.update(ConstraintValue(hard, hard, torch.tensor([True, True])))
        return player.multipliers

    assert torch.equal(run(True), run(False)) and run(True)[0] > 0.99
