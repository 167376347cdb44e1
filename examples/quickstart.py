"""Quickstart: measure equalized odds of a model trained on UCI Adult, on train, held-out and test data.

Runs in a few seconds on CPU:  python examples/quickstart.py [--epochs N]
"""

from __future__ import annotations

import argparse

import torch
from torch.nn import functional as F

import fairopt
from fairopt.datasets import load_adult


def evaluate(model: torch.nn.Module, split, num_groups: int) -> fairopt.GroupStats:
    """Stream a split through the model; GroupStats tables of batches add up exactly."""
    stats = fairopt.GroupStats.zeros(num_groups)
    with torch.no_grad():
        for x, y, a in split.loader(batch_size=4096):
            stats = stats + fairopt.group_stats(model(x).squeeze(-1), labels=y, groups=a, num_groups=num_groups)
    return stats


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    data = load_adult(sensitive=("sex",))
    model = torch.nn.Linear(data.num_features, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(args.epochs):
        for x, y, _a in data.loader("train", batch_size=256, seed=0):
            optimizer.zero_grad()
            F.binary_cross_entropy_with_logits(model(x).squeeze(-1), y).backward()
            optimizer.step()

    constraint = fairopt.EqualizedOdds(tolerance=0.05)
    print(f"groups: {data.group_names}; constraint: {constraint.name}")
    print(f"{'split':<11}{'accuracy':>9}{'TPR gap':>9}{'FPR gap':>9}  satisfied")
    gaps = {}
    for name in ("train", "validation", "test"):
        stats = evaluate(model, data.split(name), data.num_groups)
        accuracy = fairopt.compute_rate(stats.overall(), "accuracy").value.item()
        value = constraint.evaluate(stats)
        tpr_gap, fpr_gap = (value.hard + constraint.tolerance).tolist()
        gaps[name] = max(tpr_gap, fpr_gap)
        print(f"{name:<11}{accuracy:9.3f}{tpr_gap:9.3f}{fpr_gap:9.3f}  {bool((value.hard <= 0).all())}")
    return gaps


if __name__ == "__main__":
    main()
