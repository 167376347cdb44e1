"""Held-out dual updates generalize better than single-dataset ones for a net that fits its training set.

The "illusion of fairness" (Cherepanova et al., ICLR 2021 RAI workshop): an over-parameterized MLP interpolates its
300 training examples, so every training TPR is 1 and the equal-opportunity constraint looks satisfied; a
single-dataset dual player then stops pushing, and the test TPR gap stays large (group 1's labels are noisier, so
its test TPR is lower). Updating λ on an independent validation set (Cotter, Gupta, Jiang, Srebro, Sridharan, Wang,
Woodworth, You, ICML 2019) keeps the multiplier growing until the *held-out* gap closes, and the test gap follows.
Seeded; averaged over seeds; the margin is about a third of the effect measured when the test was written
(test gaps ~0.07 vs ~0.25).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import fairopt
from fairopt.optim import ConstrainedOptimizer
from tests.optim_data import single_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")

FEATURES = 10
SEEDS = (0, 1, 2, 3)


def sample(n: int, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    a = (torch.rand(n, generator=gen) < 0.3).long()
    x = torch.randn(n, FEATURES, generator=gen)
    y = (2.0 * x[:, 0] + 1.5 * x[:, 1] - 0.3 + 0.3 * torch.randn(n, generator=gen) > 0).float()
    flip = (a == 1) & (torch.rand(n, generator=gen) < 0.3)  # group 1: 30% label noise
    y = torch.where(flip, 1 - y, y)
    return torch.cat([x, a[:, None].float()], dim=1), y, a


def tpr_gap(scores: Tensor, y: Tensor, a: Tensor) -> float:
    tpr = [(scores[(a == g) & (y == 1)] > 0).float().mean().item() for g in (0, 1)]
    return abs(tpr[0] - tpr[1])


def run(seed: int, source: str, steps: int = 250) -> tuple[float, float, float]:
    gen = torch.Generator().manual_seed(seed)
    train, val, test = sample(300, gen), sample(300, gen), sample(5000, gen)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(FEATURES + 1, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 1))
    heldout = {}
    if source == "heldout":
        xv, yv, av = val
        heldout = {
            "dual_source": "heldout",
            "heldout": lambda: {"scores": model(xv).squeeze(-1), "labels": yv, "groups": av},
        }
    opt = ConstrainedOptimizer(
        torch.optim.Adam(model.parameters(), lr=1e-2), [fairopt.EqualOpportunity(0.05)], 2, dual_lr=2.0, **heldout
    )
    x, y, a = train
    for _ in range(steps):
        scores = model(x).squeeze(-1)
        opt.zero_grad()
        opt.step(loss=F.binary_cross_entropy_with_logits(scores, y), scores=scores, labels=y, groups=a)
    with torch.no_grad():
        train_gap = tpr_gap(model(x).squeeze(-1), y, a)
        test_gap = tpr_gap(model(test[0]).squeeze(-1), test[1], test[2])
    return train_gap, test_gap, opt.multipliers.item()


def test_heldout_duals_lower_the_test_violation_of_an_interpolating_net():
    single = np.array([run(seed, "train") for seed in SEEDS])
    heldout = np.array([run(seed, "heldout") for seed in SEEDS])
    # the net fits its training set: the training constraint is satisfied in both runs ...
    assert single[:, 0].max() <= 0.02 and heldout[:, 0].max() <= 0.05
    # ... so the single-dataset multiplier has decayed to 0 (nothing pushes any more) ...
    assert single[:, 2].max() == 0.0 and heldout[:, 2].min() > 0.0
    # ... while the test gap stays large; held-out duals close most of it.
    assert single[:, 1].mean() > 0.15
    assert heldout[:, 1].mean() < single[:, 1].mean() - 0.06
