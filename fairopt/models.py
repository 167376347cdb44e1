"""Small reference models for tabular data, used by ``fairopt bench`` and the examples.

Every model maps ``x: (N, D)`` float32 features to ``(N,)`` logits. :func:`create_model` is the one entry point
(as in timm): ``create_model("mlp", num_features=80)``.

=================  =======================================================================================
name               architecture
=================  =======================================================================================
``logistic``       logistic regression: one linear layer (convex in its parameters)
``mlp``            one hidden layer of 50 ReLU units: the network of Cotter et al., ICML 2019 (Section 6)
``mlp-large``      an over-parameterized net (2 hidden layers of 512 ReLU units, 304k parameters for 80 inputs)
                   that nearly fits a few thousand training rows, as in the "illusion of fairness" experiments
                   of Cherepanova et al. 2021
=================  =======================================================================================
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["MLP", "MODELS", "LogisticRegression", "create_model"]


class LogisticRegression(nn.Module):
    """Logistic regression: ``logits = x @ w + b``. Input ``(N, D)``, output ``(N,)`` logits."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(num_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x).squeeze(-1)


class MLP(nn.Module):
    """A ReLU multilayer perceptron. Input ``(N, D)``, output ``(N,)`` logits.

    Args:
        num_features: D. hidden: widths of the hidden layers, e.g. ``(50,)``.
    """

    def __init__(self, num_features: int, hidden: Sequence[int] = (50,)) -> None:
        super().__init__()
        if not hidden or any(h < 1 for h in hidden):
            raise ValueError(f"hidden must list at least one positive width, got {tuple(hidden)}")
        layers: list[nn.Module] = []
        width = num_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)


MODELS: dict[str, Callable[[int], nn.Module]] = {
    "logistic": LogisticRegression,
    "mlp": lambda d: MLP(d, (50,)),
    "mlp-large": lambda d: MLP(d, (512, 512)),
}


def create_model(name: str, num_features: int, *, seed: int | None = None) -> nn.Module:
    """Build model ``name`` (see the module table) for ``num_features`` inputs.

    Args:
        seed: if given, parameters are initialized from ``torch.manual_seed(seed)`` (the global RNG state is
            restored afterwards).

    Raises:
        ValueError: unknown name (the message lists the choices) or ``num_features < 1``.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    if num_features < 1:
        raise ValueError(f"num_features must be >= 1, got {num_features}")
    if seed is None:
        return MODELS[name](num_features)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MODELS[name](num_features)
