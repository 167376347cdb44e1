"""Train an image classifier under equalized odds, with the λ-player on validation batches (the recipe of the image
bench, written out as a loop of your own).

The data are the embedded coloured digits (scikit-learn's 1,797 real 8x8 handwritten digits drawn in red or green,
the colour correlated with the label: semi-synthetic, nothing downloads); swap in your own images with
``fairopt.datasets.load_image_csv`` or ``load_celeba``, which give the same :class:`~fairopt.datasets.ImageDataset`,
e.g. ``load_image_csv("meta.csv", "images/", "path", "diagnosis", "sex", positive_label="malignant",
image_size=128, audit_fraction=0.5)`` (the path column is an argument; images are resized to 224 pixels unless
``image_size`` says otherwise, slow on a CPU; a numeric sensitive column needs ``bins=``; ``audit_fraction`` makes
the audit split).
The model is a pre-activation ResNet-18 of width k from ``fairopt.vision.create_image_model`` (any timm name or
``torchvision:<name>`` works the same). Three things matter for images and are done here:

* the held-out batches the dual player reads are scored in eval mode (``fairopt.validation.eval_mode``), so that
  validation images never move the batch-norm statistics of the model they judge;
* the final model is the best iterate recorded on the validation split (feasible first, with a margin of 1.645
  standard errors, capped at half the tolerance on so few images), not the last one;
* the honest estimate for new data comes from the *audit* split, which neither trained nor selected the model, and
  reads beside train and test.

What to expect on the digits: 225 validation images cannot certify a 5-point bound, so ``check`` and ``export_best``
warn (an entry violated or within two standard errors, multipliers not settled, no iterate certified with its
margin) and the table reads "cannot tell" or "violated" on held-out and test: the gaps shrink from about 0.5 without
a constraint (``fairopt bench --dataset digits``) to about 0.1-0.2, at about 10 points of accuracy. That is the
paper's setting, small data and a wide net, not a misuse; on your own data, more validation rows buy the margin.

    python examples/train_images.py [--epochs N] [--width K] [--dual-lr ETA] [--device cuda]
"""

from __future__ import annotations

import argparse
import itertools
import math
from collections.abc import Iterator

import numpy as np
import torch
from torch.nn import functional as F

import fairopt
from fairopt.datasets import load_colored_digits
from fairopt.validation import eval_mode, generalization_gap
from fairopt.vision import create_image_model, move_images, prepare_model


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--width", type=int, default=4, help="k of preact-resnet18-w{k}")
    parser.add_argument("--dual-lr", type=float, default=0.1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    data = load_colored_digits(audit_fraction=0.5, seed=0)  # train / validation / audit / test
    device = torch.device(args.device)
    # channels-last on CUDA, channels-first on the CPU (prepare_model's and move_images' default)
    model = prepare_model(create_image_model(f"preact-resnet18-w{args.width}", seed=0), device=device)
    constraint = fairopt.EqualizedOdds(tolerance=0.05)

    # --- the fairopt part: wrap the optimizer; feed the dual player validation batches in eval mode --------------
    def validation_batches() -> Iterator[tuple[torch.Tensor, ...]]:  # reshuffled each pass; nothing kept in memory
        for epoch in itertools.count():
            yield from data.loader("validation", batch_size=64, shuffle=True, seed=1000 + epoch)

    heldout = validation_batches()

    def heldout_batch() -> dict[str, torch.Tensor]:
        x, y, a = next(heldout)
        with eval_mode(model):
            scores = model(move_images(x, device))
        return {"scores": scores, "labels": y.to(device), "groups": a.to(device)}

    optimizer = fairopt.ConstrainedOptimizer(
        torch.optim.Adam(model.parameters(), lr=3e-3),
        constraints=[constraint],
        num_groups=data.num_groups,
        dual_lr=args.dual_lr,
        dual_source="heldout",
        heldout=heldout_batch,
        # the dual table spans at most one pass over the validation split (dual_min_count=100 examples per group
        # and label would otherwise sum the same 225 images several times over)
        dual_max_window=math.ceil(len(data.validation) / 64),
        records=fairopt.optim.IterateRecords(keep_states=True),
    )
    print("one multiplier per constraint entry:", "; ".join(optimizer.entry_names(data.group_names)))
    # --------------------------------------------------------------------------------------------------------------
    for epoch in range(args.epochs):
        model.train()
        for x, y, a in data.loader("train", batch_size=64, seed=epoch):
            logits = model(move_images(x, device))
            y, a = y.to(device), a.to(device)
            optimizer.zero_grad()
            optimizer.step(loss=F.binary_cross_entropy_with_logits(logits, y), scores=logits, labels=y, groups=a)
        # record this epoch's model on the whole validation split (streamed in eval mode), with a margin from its
        # estimation error
        validation, _ = fairopt.validation.collect_stats(
            model, data.loader("validation", batch_size=256), num_groups=data.num_groups, device=device
        )
        # (225 validation images: 1.645 standard errors exceed the tolerance, which no model meets; capped at half
        # of it, as the margin warning suggests, and checked on the audit split below)
        margin = 1.645 * optimizer.constraint_set.standard_errors(validation)
        optimizer.margin = np.minimum(margin, 0.5 * constraint.tolerance)
        optimizer.record(validation, model=model)
        print(f"epoch {epoch + 1}: multipliers " + ", ".join(f"{v:.3f}" for v in optimizer.multipliers.tolist()))
    optimizer.check(validation, group_names=data.group_names)  # warns if violated or not settled
    optimizer.records.export_best(model, rank_objectives=False)  # the best recorded iterate, feasible first

    # every row once (a "train" loader shuffles and drops its last incomplete batch by default)
    splits = {name: data.loader(split, batch_size=256, shuffle=False, drop_last=False) for name, split in
              (("train", "train"), ("held-out", "audit"), ("test", "test"))}  # fmt: skip
    gap = generalization_gap(model, splits, [constraint], group_names=data.group_names, device=device)
    print(gap.to_markdown())
    values = gap.table()
    return {split: float(values[f"{split}_value"].max()) for split in splits}


if __name__ == "__main__":
    main()
