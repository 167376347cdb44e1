"""Wrap an existing torch optimizer with an equalized-odds constraint (UCI Adult, sex).

The model, the Adam optimizer and the loop stay yours; fairopt adds a few lines around them. The λ-player reads
held-out (validation) batches, the remedy for constraints that hold on training data only (Cotter et al., ICML
2019); the dual table spans enough batches that every group and label has 100 examples (the default
``dual_min_count``); once per epoch the iterate is recorded on the validation split with a margin of 1.645 standard
errors, and the final model is the best of those records (feasible first). Its constraint is then estimated
on an *audit* split that neither trained nor selected it, and ``check`` warns if the game did not settle.

    python examples/wrap_optimizer.py [--epochs N]
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Iterator

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
    data = load_adult(sensitive=("sex",), validation_fraction=0.3).with_audit(0.5, seed=0)
    model = create_model("mlp", data.num_features, seed=0)
    constraint = fairopt.EqualizedOdds(tolerance=0.05)

    # --- the fairopt part: wrap the optimizer; feed the dual player held-out batches -----------------------------
    def validation_batches() -> Iterator[tuple[torch.Tensor, ...]]:  # reshuffled each pass
        for epoch in itertools.count():
            yield from data.loader("validation", batch_size=512, shuffle=True, seed=1000 + epoch)

    heldout = validation_batches()

    def heldout_batch() -> dict[str, torch.Tensor]:
        x, y, a = next(heldout)
        return {"scores": model(x), "labels": y, "groups": a}

    optimizer = fairopt.ConstrainedOptimizer(
        torch.optim.Adam(model.parameters(), lr=3e-3),
        constraints=[constraint],
        num_groups=data.num_groups,
        method="proxy_lagrangian",
        dual_lr=0.2,
        dual_source="heldout",
        heldout=heldout_batch,
        records=fairopt.optim.IterateRecords(),
    )
    xv, yv, av = data.tensors("validation")
    # --------------------------------------------------------------------------------------------------------------
    for epoch in range(args.epochs):
        for x, y, a in data.loader("train", batch_size=256, seed=epoch):
            logits = model(x)
            optimizer.zero_grad()
            optimizer.step(loss=F.binary_cross_entropy_with_logits(logits, y), scores=logits, labels=y, groups=a)
        with torch.no_grad():  # record this epoch's model with a margin from the validation split's estimation error
            validation = fairopt.group_stats(model(xv), labels=yv, groups=av, num_groups=data.num_groups)
        optimizer.margin = 1.645 * optimizer.constraint_set.standard_errors(validation)
        optimizer.record(validation, model=model)
        weights = ", ".join(f"{v:.3f}" for v in optimizer.multipliers.tolist())
        print(f"epoch {epoch + 1}: proxy-Lagrangian weights of (TPR gap, FPR gap) = {weights}, dual window "
              f"{optimizer.dual_window} batches")  # fmt: skip
    optimizer.check(validation, group_names=data.group_names)  # warns if violated or not settled
    # The final model: the best recorded iterate that meets the constraint with its margin (feasible first); the
    # shrinking-LP distribution over the records is optimizer.records.stochastic_classifier(model).
    optimizer.records.export_best(model, rank_objectives=False)

    splits = {"train": data.tensors("train"), "held-out": data.tensors("audit"), "test": data.tensors("test")}
    gap = generalization_gap(model, splits, [constraint], group_names=data.group_names)
    print(gap.to_markdown())
    values = gap.table()
    return {split: float(values[f"{split}_value"].max()) for split in splits}


if __name__ == "__main__":
    main()
