"""Proxy constraints: the dual player must read the true rate (Cotter et al., JMLR 2019, Sections 2 and 6).

A linear model whose unconstrained positive-prediction rate is ~29% must predict positive on at least 55% of
examples. With the hinge proxy the relaxed constraint ``1 - mean(max(0, 1 - s)) >= 0.55`` needs most examples at
``s >= 1``: a player that also *reads* the hinge value over-constrains and lands far above 55%. The proxy-Lagrangian
whose λ-player reads the hard rate stops pushing once the true rate reaches 55%.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fairopt
from fairopt.optim import ConstrainedOptimizer
from tests.optim_data import single_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")

STEPS = 600


def positive_rates(dual_value: str, method: str = "proxy_lagrangian") -> np.ndarray:
    gen = torch.Generator().manual_seed(0)
    n = 2000
    x = torch.randn(n, 2, generator=gen)
    y = ((x[:, 0] + 0.7 * x[:, 1] + 0.5 * torch.randn(n, generator=gen)) > 0.7).float()
    features = torch.cat([x, torch.ones(n, 1)], dim=1)
    groups = torch.zeros(n, dtype=torch.long)
    theta = torch.zeros(3, requires_grad=True)
    opt = ConstrainedOptimizer(
        torch.optim.Adam([theta], lr=0.1),
        [fairopt.RateBound("selection_rate", min=0.55, overall=True)],
        1,
        method=method,
        proxy="hinge",
        dual_value=dual_value,
        dual_lr=0.5,
    )
    rates = []
    for _ in range(STEPS):
        scores = features @ theta
        opt.zero_grad()
        result = opt.step(loss=F.binary_cross_entropy_with_logits(scores, y), scores=scores, groups=groups)
        rates.append(0.55 - result.value.hard.item())  # hard value = 0.55 - positive rate
    return np.array(rates[STEPS // 2 :])


def test_hinge_read_by_both_players_over_constrains():
    rates = positive_rates("proxy")
    assert rates.mean() > 0.75  # asks for 55%, gets far more


def test_proxy_lagrangian_with_hard_duals_lands_near_the_target():
    rates = positive_rates("hard")
    assert rates.mean() == pytest.approx(0.55, abs=0.015)  # the randomized model over iterates
    assert rates.min() > 0.5 and rates.max() < 0.6  # and every late iterate is close
