"""Write a custom constraint with the rate algebra and train under it (ProPublica COMPAS, race).

Constraints, written by hand from rates (each entry must be <= 0 after subtracting its bound):
  * equalized odds between African-American and Caucasian defendants: |TPR gap| and |FPR gap| <= 0.05;
  * recall (TPR) of the two groups pooled at least 0.5.

    python examples/custom_constraint.py [--epochs N]

A logistic regression without race among its features cannot close the TPR gap to 0.05 here: the kept iterate
still violates it on test data, and the report says so (with the interval and verdict of every entry).
"""

from __future__ import annotations

import argparse

import torch
from torch.nn import functional as F

import fairopt
from fairopt import concat, fpr, tpr
from fairopt.datasets import load_compas


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    data = load_compas(sensitive=("race",))
    names = list(data.group_names)
    pooled = tuple(names.index(f"race={r}") for r in ("African-American", "Caucasian"))

    aa, cau = pooled
    odds = abs(concat(tpr(aa) - tpr(cau), fpr(aa) - fpr(cau))) <= 0.05  # two entries
    recall_floor = tpr(pooled) >= 0.5  # one entry: the two groups' counts pooled, then the ratio
    print("entries:", odds.entry_names(names) + recall_floor.entry_names(names))

    model = fairopt.create_model("logistic", data.num_features, seed=0)
    optimizer = fairopt.ConstrainedOptimizer(
        torch.optim.Adam(model.parameters(), lr=1e-2),
        constraints=[odds, recall_floor],
        num_groups=data.num_groups,
        method="lagrangian",
        dual_lr=0.05,
        proxy="sigmoid",
        records=fairopt.IterateRecords(),  # candidates for the final model, measured on validation data
    )
    for epoch in range(args.epochs):
        for x, y, a in data.loader("train", batch_size=256, seed=epoch):
            logits = model(x)
            optimizer.zero_grad()
            optimizer.step(loss=F.binary_cross_entropy_with_logits(logits, y), scores=logits, labels=y, groups=a)
        val = fairopt.validation.collect_stats(model, data.tensors("validation"), data.num_groups)[0]
        optimizer.record(val, model=model)  # objective: validation error rate; constraints on validation data
    # Gradient descent-ascent oscillates: keep the best recorded iterate (feasible first, then most accurate).
    best = optimizer.records.export_best(model)
    print(f"kept the iterate of epoch {best + 1} of {args.epochs}")

    report = fairopt.evaluate(model, data.tensors("test"), [odds, recall_floor], group_names=names, split="test")
    print(report.to_markdown())
    # the same two constraints written as one expression with concat(), evaluated on a GroupStats table directly
    both = concat(abs(concat(tpr(aa) - tpr(cau), fpr(aa) - fpr(cau))) - 0.05, 0.5 - tpr(pooled)) <= 0
    stats = report.stats
    return {"max_value": float(both.evaluate(stats).hard.max()), "multipliers": optimizer.multipliers.sum().item()}


if __name__ == "__main__":
    main()
