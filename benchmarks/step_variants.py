"""The training step the step benchmarks time, plain or constrained, defined once so that
``bench_step_overhead.py``, ``bench_image_step.py`` and ``device/image_step.py`` compare the same code.

Imports only torch and fairopt; ``benchmarks/`` is on ``sys.path`` under pytest (rootdir conftest), and the device
script adds it itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

import fairopt


def training_step(
    model: Callable[[Tensor], Tensor],
    base: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    a: Tensor,
    options: Mapping[str, Any] | None,
) -> Callable[[], None]:
    """One step on the fixed batch ``(x, y, a)``: with ``options`` None a plain ``zero_grad; BCE backward; step`` of
    ``base``; else ``fairopt.ConstrainedOptimizer(base, [EqualizedOdds(0.05)], 2, dual_lr=0.01, **options).step``.
    ``model`` maps ``x`` to ``(N,)`` float32 logits (a module, or a function wrapping one in autocast)."""
    if options is None:

        def plain() -> None:
            base.zero_grad()
            F.binary_cross_entropy_with_logits(model(x), y).backward()
            base.step()

        return plain
    opt = fairopt.ConstrainedOptimizer(base, [fairopt.EqualizedOdds(0.05)], 2, dual_lr=0.01, **options)

    def constrained() -> None:
        scores = model(x)
        opt.zero_grad()
        opt.step(loss=F.binary_cross_entropy_with_logits(scores, y), scores=scores, labels=y, groups=a)

    return constrained
