"""A convex constrained problem with a known optimum: the Lagrangian methods reach it.

Logistic regression on two groups under a demographic-parity constraint whose surrogate is *linear* in the scores:
with the linear proxy ``positive(m) = m`` (``negative = 1 - m``) the proxy selection rate of group g is the mean
logit of group g, so the constraint ``mean_1(s) - mean_0(s) <= ε`` (the "decision boundary covariance" style
constraint of Zafar, Valera, Gomez-Rodriguez, Gummadi, AISTATS 2017) is linear in θ, and the problem is convex.
Both players read the proxy (``dual_value="proxy"``), so the game is exactly this convex program. Its optimum θ* is
found independently by scipy's SLSQP, its multiplier λ* from the KKT stationarity condition.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize

import fairopt
from fairopt.optim import ConstrainedOptimizer
from fairopt.proxies import Proxy
from tests.optim_data import single_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")

EPS = 0.1


def _linear_positive(margin):
    return margin


def _linear_negative(margin):
    return 1.0 - margin


LINEAR = Proxy("linear", positive=_linear_positive, negative=_linear_negative)


@pytest.fixture(scope="module")
def problem():
    gen = torch.Generator().manual_seed(0)
    n = 1000
    a = (torch.rand(n, generator=gen) < 0.4).long()
    x = torch.randn(n, 2, generator=gen, dtype=torch.float64) + torch.stack([a * 1.0, a * 0.5], dim=1)
    y = ((x[:, 0] + 0.5 * x[:, 1] + torch.randn(n, generator=gen, dtype=torch.float64)) > 0.6).double()
    features = torch.cat([x, torch.ones(n, 1, dtype=torch.float64)], dim=1)

    def objective(theta):
        t = torch.tensor(theta, requires_grad=True)
        loss = F.binary_cross_entropy_with_logits(features @ t, y)
        loss.backward()
        return loss.item(), t.grad.numpy()

    def gap(theta):
        t = torch.tensor(theta, requires_grad=True)
        s = features @ t
        value = s[a == 1].mean() - s[a == 0].mean() - EPS
        value.backward()
        return value.item(), t.grad.numpy()

    solution = minimize(
        lambda t: objective(t)[0],
        np.zeros(3),
        jac=lambda t: objective(t)[1],
        constraints=[{"type": "ineq", "fun": lambda t: -gap(t)[0], "jac": lambda t: -gap(t)[1]}],
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 500},
    )
    assert solution.success
    theta = solution.x
    assert abs(gap(theta)[0]) < 1e-9  # the constraint is active at the optimum
    grad_f, grad_g = objective(theta)[1], gap(theta)[1]
    multiplier = -grad_f @ grad_g / (grad_g @ grad_g)  # KKT: ∇f + λ ∇g = 0
    assert np.linalg.norm(grad_f + multiplier * grad_g) < 1e-5 and multiplier > 0
    return features, y, a, theta, multiplier, solution.fun


@pytest.mark.parametrize(
    ("method", "dual_lr", "steps", "kwargs"),
    [
        ("lagrangian", 0.2, 300, {}),
        ("lagrangian", 0.2, 150, {"dual_update": "alternating"}),
        (fairopt.optim.Lagrangian(dual_optimizer="nupi", dual_optimizer_kwargs={"Kp": 1.0}), 0.2, 150, {}),
        ("augmented_lagrangian", 1.0, 100, {}),
    ],
)
def test_lagrangian_methods_reach_the_constrained_optimum(problem, method, dual_lr, steps, kwargs):
    features, y, a, theta_star, multiplier_star, f_star = problem
    theta = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = ConstrainedOptimizer(
        torch.optim.SGD([theta], lr=1.0),
        [fairopt.selection_rate(1) - fairopt.selection_rate(0) <= EPS],
        2,
        method=method,
        proxy=LINEAR,
        dual_value="proxy",
        dual_lr=dual_lr,
        **kwargs,
    )
    for _ in range(steps):
        scores = features @ theta
        opt.zero_grad()
        result = opt.step(loss=F.binary_cross_entropy_with_logits(scores, y), scores=scores, labels=y, groups=a)
    np.testing.assert_allclose(theta.detach().numpy(), theta_star, atol=1e-4)
    assert result.multipliers.item() == pytest.approx(multiplier_star, abs=1e-3)
    assert result.loss.item() == pytest.approx(f_star, abs=1e-6)
    assert abs(result.value.proxy.item()) < 1e-4


def test_proxy_lagrangian_equilibrium_is_the_kkt_point(problem):
    """At the proxy-Lagrangian's equilibrium θ minimizes λ_0 f + λ_1 g̃, i.e. f + (λ_1/λ_0) g̃: the same KKT point."""
    features, y, a, theta_star, multiplier_star, _ = problem
    theta = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = ConstrainedOptimizer(
        torch.optim.SGD([theta], lr=1.0),
        [fairopt.selection_rate(1) - fairopt.selection_rate(0) <= EPS],
        2,
        method="proxy_lagrangian",
        proxy=LINEAR,
        dual_value="proxy",
        dual_lr=1.0,
    )
    for _ in range(150):
        scores = features @ theta
        opt.zero_grad()
        result = opt.step(loss=F.binary_cross_entropy_with_logits(scores, y), scores=scores, labels=y, groups=a)
    np.testing.assert_allclose(theta.detach().numpy(), theta_star, atol=5e-3)
    ratio = (result.multipliers / opt.objective_weight).item()
    assert ratio == pytest.approx(multiplier_star, rel=0.01)
