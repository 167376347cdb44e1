"""Held-out validation of a fairness constraint, with a report and plots (UCI Adult, sex).

An over-parameterized MLP trained on 2,000 rows nearly memorizes them: the equal-opportunity gap on its own
training data shrinks while the held-out and test gaps stay (Cherepanova et al. 2021). A FairnessMonitor records
the constraint on held-out and training data during training; at the end a generalization-gap table, a test
report with intervals, and three PNG figures are written to --out.

    python examples/heldout_report.py [--epochs N] [--every K] [--out DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.nn import functional as F

import fairopt
from fairopt.datasets import load_adult
from fairopt.validation import FairnessMonitor, generalization_gap


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("fairopt-runs/heldout-report"))
    parser.add_argument("--every", type=int, default=200, help="monitor every k training steps")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    data = load_adult(sensitive=("sex",)).subsample_train(2000, seed=0)
    model = fairopt.create_model("mlp-large", data.num_features, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    constraint = fairopt.EqualOpportunity(tolerance=0.05)
    monitor = FairnessMonitor(
        [constraint], {"held-out": data.tensors("validation")}, group_names=data.group_names, every=args.every
    )
    step = 0
    for epoch in range(args.epochs):
        for x, y, _groups in data.loader("train", batch_size=64, seed=epoch):
            logits = model(x)
            optimizer.zero_grad()
            F.binary_cross_entropy_with_logits(logits, y).backward()
            optimizer.step()
            step += 1
            # the training side of the history: the constraint on the whole (small) training split
            if step % monitor.every == 0:
                train_stats = fairopt.validation.collect_stats(model, data.tensors("train"), data.num_groups)[0]
                monitor.update(step, model, train_stats=train_stats)

    splits = {"train": data.tensors("train"), "held-out": data.tensors("validation"), "test": data.tensors("test")}
    gap = generalization_gap(model, splits, [constraint], group_names=data.group_names)
    print(gap.to_markdown())
    test = gap.reports["test"]
    print(test.to_markdown())
    for warning in gap.reports["train"].warnings:
        print("train:", warning)

    from fairopt.validation import plots  # needs matplotlib: pip install "fairopt[plots]"

    args.out.mkdir(parents=True, exist_ok=True)
    plots.plot_group_rates(test, path=args.out / "test_group_rates.png")
    plots.plot_constraint_history(monitor, path=args.out / "violation_vs_step.png")
    plots.plot_generalization_gap(gap, path=args.out / "generalization_gap.png")
    test.to_json(args.out / "test_report.json")
    print(f"wrote test_group_rates.png, violation_vs_step.png, generalization_gap.png, test_report.json to {args.out}")
    table = gap.table()
    return {split: float(table[f"{split}_value"].max()) for split in splits}


if __name__ == "__main__":
    main()
