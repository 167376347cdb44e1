"""Cost of one constrained training step vs one plain step of the same model, in the same run.

Run::

    python -m pytest benchmarks/bench_step_overhead.py --benchmark-only

For each model, pytest-benchmark times a plain step (``zero_grad``, forward, BCE, ``backward``, Adam ``step``) and the
same step through :class:`fairopt.optim.ConstrainedOptimizer` with an equalized-odds constraint over 2 groups and a
dual update on *every* step (the worst case; ``dual_every=k`` amortizes it, and ``validate_args=False`` drops the
per-batch value checks: one variant shows both), for every method with the default evaluator (``"auto"``: NumPy on
the CPU) and with ``evaluator="device"`` (torch ops, the GPU path: on the CPU it pays one dispatch per tensor
operation, so it is expected to be slower here). Its table groups the variants of one
model, with ratios to the fastest in parentheses, and ``benchmarks/conftest.py`` prints each median as a ratio of the
same-run ``plain_step``. A last table reports the overhead measured by interleaving plain and constrained blocks (the
minimum over blocks of each; robust to load drifting during the run).

Models: the 50-unit MLP of Cotter et al. (ICML 2019) (batch 512 and 4096) and two wider MLPs on Adult-sized input
(100 features, batch 512), and a small conv net (3x32x32 input, batch 128). The ``hand-written floor`` variant is a
reference, not a fairopt path: the same Lagrangian step hand-coded for exactly this case (see
:func:`hand_written_step`), to show how much of the overhead any eager implementation pays on this machine.
``FAIROPT_BENCH_THREADS`` sets torch's thread count
(default 1: on a shared 2-core machine, 2 OpenMP threads make small-op timings swing by 10x).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from step_variants import training_step  # benchmarks/ is on sys.path under pytest (rootdir conftest)
from torch import Tensor, nn

from fairopt.models import MLP

VARIANTS = {
    "plain": None,
    "lagrangian": {"method": "lagrangian"},
    "lagrangian, device evaluator": {"method": "lagrangian", "evaluator": "device"},
    "augmented_lagrangian": {"method": "augmented_lagrangian"},
    "augmented_lagrangian, device evaluator": {"method": "augmented_lagrangian", "evaluator": "device"},
    "penalty": {"method": "penalty"},
    "penalty, device evaluator": {"method": "penalty", "evaluator": "device"},
    "proxy_lagrangian": {"method": "proxy_lagrangian"},
    "proxy_lagrangian, device evaluator": {"method": "proxy_lagrangian", "evaluator": "device"},
    "lagrangian, per-batch dual, no checks": {"method": "lagrangian", "dual_min_count": None, "validate_args": False},
    "proxy_lagrangian, per-batch dual": {"method": "proxy_lagrangian", "dual_min_count": None},
    "proxy_lagrangian, dual_every=10, no checks": {
        "method": "proxy_lagrangian",
        "dual_every": 10,
        "validate_args": False,
    },
    "hand-written floor": None,  # see hand_written_step
}


class ConvNet(nn.Module):
    """Two conv blocks and a linear head: ``(N, 3, 32, 32) -> (N,)`` logits."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Linear(32 * 8 * 8, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).flatten(1)).squeeze(-1)


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "mlp-50 (Cotter et al.)": (lambda: MLP(100, (50,)), (512, 100)),
    "mlp-50, batch 4096": (lambda: MLP(100, (50,)), (4096, 100)),
    "mlp-256x2": (lambda: MLP(100, (256, 256)), (512, 100)),
    "mlp-512x3 (over-parameterized)": (lambda: MLP(100, (512, 512, 512)), (512, 100)),
    "conv-16-32": (ConvNet, (128, 3, 32, 32)),
}


def make_step(model_name: str, variant: str) -> Callable[[], None]:
    factory, shape = MODELS[model_name]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=gen)
    y = (torch.rand(shape[0], generator=gen) < 0.3).float()
    a = torch.randint(0, 2, (shape[0],), generator=gen)
    torch.manual_seed(0)
    model = factory()
    base = torch.optim.Adam(model.parameters(), lr=1e-3)
    if variant == "hand-written floor":
        return hand_written_step(model, base, x, y, a)
    return training_step(model, base, x, y, a, VARIANTS[variant])


def hand_written_step(
    model: nn.Module, base: torch.optim.Optimizer, x: Tensor, y: Tensor, a: Tensor
) -> Callable[[], None]:
    """A reference, not a fairopt path: the same Lagrangian step (equalized odds, max - min over 2 groups, sigmoid
    proxy, hard duals, SGD on λ every step) written by hand for exactly this case: 6 tensor operations for the
    statistics, the constraint and the dual update in NumPy on 8 numbers, no validation, no cooper. What is left
    between it and the plain step is the floor of an eager PyTorch implementation on this machine."""
    lam = np.zeros(2)
    code2 = torch.add(y != 0, a, alpha=2)
    num_groups = 2

    def step() -> None:
        scores = model(x)
        base.zero_grad()
        loss = F.binary_cross_entropy_with_logits(scores, y)
        positive = torch.sigmoid(scores)
        hard = torch.bincount(torch.add(scores.detach() > 0, code2, alpha=2), minlength=4 * num_groups).numpy()
        counts = hard.reshape(num_groups, 2, 2).astype(np.float64)  # group, label, prediction
        n = counts.sum(axis=2)
        rates = counts[:, :, 1] / n  # FPR (label 0), TPR (label 1) per group
        gradient = np.zeros((num_groups, 2))
        violation = np.zeros(2)
        for label in (0, 1):
            hi, lo = rates[:, label].argmax(), rates[:, label].argmin()
            violation[label] = rates[hi, label] - rates[lo, label] - 0.05
            gradient[hi, label] += lam[label] / n[hi, label]
            gradient[lo, label] -= lam[label] / n[lo, label]
        coefficient = torch.from_numpy(gradient.reshape(-1)).float()[code2]
        (loss + torch.dot(coefficient, positive)).backward()
        base.step()
        lam[:] = np.maximum(lam + 0.01 * violation, 0.0)

    return step


def interleaved_ms(first: Callable[[], None], second: Callable[[], None], budget_s: float = 3.0) -> tuple[float, float]:
    """Minimum per-step time of each function over alternating blocks (ms)."""
    start = time.perf_counter()
    first()
    second()
    per_step = time.perf_counter() - start
    n = max(2, int(0.05 / per_step))
    best = [float("inf"), float("inf")]
    deadline = time.perf_counter() + budget_s
    while time.perf_counter() < deadline or min(best) == float("inf"):
        for i, fn in enumerate((first, second)):
            t = time.perf_counter()
            for _ in range(n):
                fn()
            best[i] = min(best[i], (time.perf_counter() - t) / n)
    return best[0] * 1e3, best[1] * 1e3


@pytest.fixture(scope="module", autouse=True)
def threads() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("FAIROPT_BENCH_THREADS", "1")))
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def summary(request: pytest.FixtureRequest) -> Iterator[dict[tuple[str, str], tuple[float, float]]]:
    rows: dict[tuple[str, str], tuple[float, float]] = {}
    yield rows
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None or not rows:
        return
    with capture.global_and_fixture_disabled():  # teardown output is captured otherwise
        reporter.write_sep("-", f"constrained vs plain step (interleaved minima, {torch.get_num_threads()} thread(s))")
        reporter.write_line(
            f"{'model':32s} {'variant':44s} {'plain ms':>9s} {'step ms':>9s} {'overhead ms':>12s} {'ratio':>6s}"
        )
        for (model_name, variant), (plain, step) in rows.items():
            reporter.write_line(
                f"{model_name:32s} {variant:44s} {plain:9.3f} {step:9.3f} {step - plain:12.3f} {step / plain:6.2f}"
            )


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("model_name", list(MODELS))
def test_step_time(benchmark, summary, model_name: str, variant: str) -> None:
    benchmark.group = model_name
    benchmark.extra_info["impl"] = "plain_step" if variant == "plain" else variant  # see benchmarks/conftest.py
    step = make_step(model_name, variant)
    for _ in range(3):  # warm-up (and, for +compile, the one-time compilation)
        step()
    start = time.perf_counter()
    step()
    rounds = int(min(300, max(20, 1.5 / (time.perf_counter() - start))))
    benchmark.pedantic(step, rounds=rounds, warmup_rounds=3)
    if variant != "plain":
        summary[(model_name, variant)] = interleaved_ms(make_step(model_name, "plain"), step)
