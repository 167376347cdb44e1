"""Shared synthetic data for the tests of fairopt.validation (not a test module)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fairopt.stats import COLUMNS, GroupStats


@dataclass
class Data:
    x: Tensor  # (N, D) float32 features
    y: Tensor  # (N,) float32 labels in {0, 1}
    g: Tensor  # (N,) int64 group ids
    w: Tensor  # (N,) float64 weights

    def tensors(self, weighted: bool = True) -> tuple[Tensor, ...]:
        return (self.x, self.y, self.g, self.w) if weighted else (self.x, self.y, self.g)


def make_data(n: int, num_groups: int, seed: int, features: int = 4, label_noise: float = 0.25) -> Data:
    """Labels depend on the first feature and the group; weights in [0.2, 3)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=gen)
    g = torch.randint(0, num_groups, (n,), generator=gen)
    logit = 1.5 * x[:, 0] + 0.4 * (g.float() - num_groups / 2)
    y = (torch.rand(n, generator=gen) < torch.sigmoid(logit)).float()
    flip = torch.rand(n, generator=gen) < label_noise
    y = torch.where(flip, 1.0 - y, y)
    w = 0.2 + 2.8 * torch.rand(n, generator=gen, dtype=torch.float64)
    return Data(x, y, g, w)


def linear_model(features: int = 4, seed: int = 0) -> torch.nn.Linear:
    torch.manual_seed(seed)
    model = torch.nn.Linear(features, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.2, -0.3, 0.2, 0.0]])[:, :features])
        model.bias.fill_(-0.1)
    return model


def stats_from_cells(cells: np.ndarray | list[list[float]]) -> GroupStats:
    """A ``GroupStats`` whose hard cells are ``cells`` (G, 4) as (tn, fp, fn, tp); proxies equal the hard cells."""
    cells_t = torch.as_tensor(np.asarray(cells, dtype=np.float64))
    table = torch.zeros(cells_t.shape[0], len(COLUMNS), dtype=torch.float64)
    table[:, :4] = cells_t
    table[:, 4:8] = cells_t
    return GroupStats(table)


def binomial_cells(rng: np.random.Generator, sizes, base, tpr, fpr, sims: int) -> np.ndarray:
    """``sims`` simulated (G, 4) confusion tables with known group sizes, base rates, TPRs and FPRs."""
    sizes, base, tpr, fpr = (np.asarray(a, dtype=np.float64) for a in (sizes, base, tpr, fpr))
    pos = rng.binomial(sizes.astype(int), base, size=(sims, len(sizes)))
    neg = sizes - pos
    tp = rng.binomial(pos, tpr)
    fp = rng.binomial(neg.astype(int), fpr)
    return np.stack([neg - fp, fp, pos - tp, tp], axis=-1).astype(np.float64)


def elementwise_model(x: Tensor) -> Tensor:
    """A model whose scores do not depend on the batching.

    float64 and no matmul: scores (and their sigmoid proxies) agree to ~1e-16 for any batch size, whereas float32
    kernels round differently in vectorized bodies and tails (~1e-7).
    """
    x = x.double()
    return 1.5 * x[:, 0] - 0.4 * x[:, 1] - 0.1


def all_reduce_worker(rank: int, world: int, store: str, out: str) -> None:
    """One rank of a torch.distributed run: evaluate a shard with all_reduce=True and write the report as JSON.

    Lives here rather than in a test module so that each spawned process imports only this light module.
    """
    import torch.distributed as dist

    import fairopt as fo
    from fairopt.validation import evaluate

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        data = make_data(600, 3, seed=6).tensors()
        shard = tuple(t[rank::world] for t in data)
        report = evaluate(elementwise_model, shard, fo.EqualOpportunity(0.05), num_groups=3, all_reduce=True)
        report.to_json(f"{out}/rank{rank}.json")
        # both ranks finish before gloo tears down (a rank exiting early aborts the other at exit); only on
        # success, so that a failing rank cannot leave the other waiting in the barrier
        dist.barrier()
    finally:
        dist.destroy_process_group()
