"""Regenerate ``optim_reference.pt``: runs of the string + keyword front door as it was before the method objects.

Written with fairopt at commit 0f86415 (before ``fairopt.optim.Lagrangian`` & co.), so ``tests/test_methods.py`` can
check that a method object gives the run those keywords gave, and that a checkpoint saved then still loads. Rerun
only on purpose (``python tests/data/make_optim_reference.py``): the file is the record of the old behaviour.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
import torch.nn.functional as F

import fairopt
from fairopt.optim import ConstrainedOptimizer

# name -> (method, the method-specific keywords of the old signature)
CONFIGS: dict[str, tuple[str, dict]] = {
    "lagrangian": ("lagrangian", {}),
    "lagrangian-nupi-bound": (
        "lagrangian",
        {"dual_optimizer": "nupi", "dual_optimizer_kwargs": {"Kp": 1.0}, "multiplier_bound": 0.05},
    ),
    "lagrangian-momentum": ("lagrangian", {"dual_optimizer_kwargs": {"momentum": 0.5}}),
    "augmented-lagrangian": ("augmented_lagrangian", {}),
    "augmented-lagrangian-growth": ("augmented_lagrangian", {"penalty": 0.2, "penalty_growth": 1.5}),
    "proxy-lagrangian": ("proxy_lagrangian", {}),
    "proxy-lagrangian-external-additive": ("proxy_lagrangian", {"regret": "external", "regret_update": "additive"}),
    "proxy-lagrangian-swap-additive": ("proxy_lagrangian", {"regret_update": "additive"}),
    "penalty": ("penalty", {"penalty": 2.0}),
    "penalty-per-entry": ("penalty", {"penalty": [0.5, 3.0]}),
}
CHECKPOINTED = ("augmented-lagrangian-growth", "proxy-lagrangian-external-additive", "lagrangian-nupi-bound")
STEPS, STOP, BATCH = 6, 3, 64


def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    a = (torch.rand(256, generator=gen) < 0.3).long()
    x = torch.randn(256, 4, generator=gen, dtype=torch.float64)
    x[:, 0] += 0.8 * a
    y = ((x[:, 0] + 0.5 * x[:, 1] + 0.5 * torch.randn(256, generator=gen, dtype=torch.float64)) > 0.5).double()
    return torch.cat([x, a[:, None].double()], dim=1), y, a


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1)).double()


def steps(opt: ConstrainedOptimizer, net: torch.nn.Module, first: int, last: int) -> None:
    x, y, a = data()
    for step in range(first, last):
        rows = slice((step * BATCH) % 256, (step * BATCH) % 256 + BATCH)
        scores = net(x[rows]).squeeze(-1)
        opt.zero_grad()
        opt.step(
            loss=F.binary_cross_entropy_with_logits(scores, y[rows]), scores=scores, labels=y[rows], groups=a[rows]
        )


def flat(net: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in net.parameters()])


def main() -> None:
    out: dict = {"runs": {}, "checkpoints": {}}
    for name, (method, options) in CONFIGS.items():
        net = model()
        opt = ConstrainedOptimizer(
            torch.optim.Adam(net.parameters(), lr=0.05), [fairopt.EqualizedOdds(0.02)], 2, method=method, dual_lr=0.3,
            dual_min_count=None, **options,
        )  # fmt: skip
        steps(opt, net, 0, STOP)
        if name in CHECKPOINTED:
            buffer = io.BytesIO()
            torch.save({"model": net.state_dict(), "optimizer": opt.state_dict()}, buffer)
            out["checkpoints"][name] = buffer.getvalue()
        steps(opt, net, STOP, STEPS)
        out["runs"][name] = {"params": flat(net), "multipliers": opt.multipliers}
    torch.save(out, Path(__file__).with_name("optim_reference.pt"))


if __name__ == "__main__":
    main()
