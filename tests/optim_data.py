"""Small seeded problems shared by the tests of fairopt.optim."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fairopt.optim import ConstrainedOptimizer, StepResult


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """Run a module's tiny problems on one thread: on a shared 2-core machine, OpenMP threads of small ops spin and
    contend (measured 20x slower with 2 threads under load); the previous setting is restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def tabular(n: int, seed: int, *, features: int = 4, minority: float = 0.3) -> tuple[Tensor, Tensor, Tensor]:
    """``x (n, features + 1)`` (the last column is the group), ``y (n,)`` float 0/1, ``a (n,)`` int64 in {0, 1}.

    Group 1 has a higher base rate, so unconstrained models violate demographic parity and equal opportunity.
    """
    gen = torch.Generator().manual_seed(seed)
    a = (torch.rand(n, generator=gen) < minority).long()
    x = torch.randn(n, features, generator=gen)
    x[:, 0] += 0.8 * a
    y = ((x[:, 0] + 0.5 * x[:, 1] + 0.5 * torch.randn(n, generator=gen)) > 0.5).float()
    return torch.cat([x, a[:, None].float()], dim=1), y, a


def mlp(inputs: int, hidden: int = 16, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, 1))


def train_step(opt: ConstrainedOptimizer, model: nn.Module, x: Tensor, y: Tensor, a: Tensor) -> StepResult:
    scores = model(x).squeeze(-1)
    opt.zero_grad()
    return opt.step(loss=F.binary_cross_entropy_with_logits(scores, y), scores=scores, labels=y, groups=a)


def train(
    opt: ConstrainedOptimizer, model: nn.Module, x: Tensor, y: Tensor, a: Tensor, steps: int, batch: int | None = None
) -> StepResult:
    """``steps`` steps, full batch or cycling through fixed minibatches of size ``batch``."""
    result = None
    n = x.shape[0]
    for step in range(steps):
        if batch is None:
            rows = slice(None)
        else:
            start = (step * batch) % n
            rows = slice(start, start + batch)
        result = train_step(opt, model, x[rows], y[rows], a[rows])
    assert result is not None
    return result
