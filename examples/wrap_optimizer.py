"""Wrap an existing torch optimizer with an equalized-odds constraint (UCI Adult, sex).

The model, the Adam optimizer and the loop stay yours; fairopt adds a few lines around them. The λ-player reads
held-out (validation) batches, the remedy for constraints that hold on training data only (Cotter et al., ICML
2019). Prints the constraint on train / held-out / test before and after.

    python examples/wrap_optimizer.py [--epochs N]
"""

from __future__ import annotations

import argparse
import itertools

import torch
from torch.nn import functional as F

import fairopt
from fairopt.datasets import load_adult
from fairopt.models import create_model
from fairopt.validation import generalization_gap


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    data = load_adult(sensitive=("sex",), validation_fraction=0.3)
    model = create_model("mlp", data.num_features, seed=0)
    constraint = fairopt.EqualizedOdds(tolerance=0.05)

    # --- the fairopt part: wrap the optimizer; feed the dual player held-out batches -----------------------------
    heldout = itertools.cycle(data.loader("validation", batch_size=512, shuffle=True, seed=1))

    def heldout_batch() -> dict[str, torch.Tensor]:
        x, y, a = next(heldout)
        return {"scores": model(x), "labels": y, "groups": a}

    optimizer = fairopt.ConstrainedOptimizer(
        torch.optim.Adam(model.parameters(), lr=3e-3),
        constraints=[constraint],
        num_groups=data.num_groups,
        method="proxy_lagrangian",
        dual_lr=0.05,
        dual_source="heldout",
        heldout=heldout_batch,
    )
    # --------------------------------------------------------------------------------------------------------------
    for epoch in range(args.epochs):
        for x, y, a in data.loader("train", batch_size=256, seed=epoch):
            logits = model(x)
            optimizer.zero_grad()
            optimizer.step(loss=F.binary_cross_entropy_with_logits(logits, y), scores=logits, labels=y, groups=a)
        weights = ", ".join(f"{v:.3f}" for v in optimizer.multipliers.tolist())
        print(f"epoch {epoch + 1}: proxy-Lagrangian weights of (TPR gap, FPR gap) = {weights}")

    splits = {"train": data.tensors("train"), "held-out": data.tensors("validation"), "test": data.tensors("test")}
    gap = generalization_gap(model, splits, [constraint], group_names=data.group_names)
    print(gap.to_markdown())
    values = gap.table()
    return {split: float(values[f"{split}_value"].max()) for split in splits}


if __name__ == "__main__":
    main()
