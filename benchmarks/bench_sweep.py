"""A tolerance sweep in one vectorized run vs the same members trained one after another, in the same run.

Run::

    python benchmarks/bench_sweep.py            # 8 tolerances, the 50-unit MLP on UCI Adult, 5 epochs
    python benchmarks/bench_sweep.py --epochs 2 --repeats 1

Both sides train the bench's recommended method (``proxy-lagrangian``: swap-regret proxy-Lagrangian, sigmoid proxy,
dual table of at least 100 examples per group and label, ``dual_lr`` 0.2, Adam at 3e-3) on the ``fairopt bench``
default data (Adult, groups by sex, 2,000 training rows, batches of 64, 32 steps per epoch), equalized odds at 8
tolerances, seed 0, on the same pre-drawn batches:

* ``sequential``: 8 runs of :class:`fairopt.ConstrainedOptimizer` (``validate_args=False``), one per tolerance;
* ``sweep``: one :class:`fairopt.sweep.SweepTrainer` holding the 8 members (``torch.func`` ``vmap``).

Only the training steps are timed (no records, no evaluation; the batches are drawn before the clock starts). The
two are interleaved ``--repeats`` times; the minimum of each (robust to load drifting on a shared machine) and the
median of the per-repeat ratios (each from two runs next to each other in time) are printed; the ratio is
sequential / sweep. It also prints the largest parameter difference between a swept member and the same
member trained alone (float rounding only). ``FAIROPT_BENCH_THREADS`` sets torch's thread count (default 1, as the
other benchmarks: on a shared 2-core machine 2 OpenMP threads make small-op timings swing by 10x).
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

import fairopt
from fairopt.bench.config import StudyConfig
from fairopt.bench.study import load_study_data
from fairopt.models import create_model
from fairopt.sweep import Member, SweepTrainer

TOLERANCES = (0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1)
OPTIONS = {"lr": 3e-3, "dual_lr": 0.2, "dual_min_count": 100.0}


def draw_batches(epochs: int) -> tuple[list[tuple[torch.Tensor, ...]], int, int]:
    """The bench's default data and batch order for seed 0: ``(batches, num_features, steps_per_epoch)``."""
    config = StudyConfig(models=("mlp",), seeds=(0,))
    data = load_study_data(config, seed=0)
    batch_size = config.batch_size_for(len(data.train))
    batches = [b for e in range(epochs) for b in data.train.loader(batch_size=batch_size, shuffle=True, seed=e)]
    return batches, data.num_features, -(-len(data.train) // batch_size)


def sequential(batches: list[tuple[torch.Tensor, ...]], d: int, window: int) -> tuple[float, list[torch.nn.Module]]:
    models, seconds = [], 0.0
    for t in TOLERANCES:
        model = create_model("mlp", d, seed=0)
        opt = fairopt.ConstrainedOptimizer(
            torch.optim.Adam(model.parameters(), lr=OPTIONS["lr"]),
            [fairopt.EqualizedOdds(t)],
            2,
            method="proxy_lagrangian",
            dual_lr=OPTIONS["dual_lr"],
            dual_min_count=OPTIONS["dual_min_count"],
            dual_max_window=window,
            validate_args=False,
        )
        start = time.perf_counter()
        for x, y, a in batches:
            scores = model(x)
            opt.zero_grad()
            opt.step(loss=F.binary_cross_entropy_with_logits(scores, y), scores=scores, labels=y, groups=a)
        seconds += time.perf_counter() - start
        models.append(model)
    return seconds, models


def swept(batches: list[tuple[torch.Tensor, ...]], d: int, window: int) -> tuple[float, SweepTrainer]:
    members = [Member("proxy_lagrangian", t, seed=0) for t in TOLERANCES]
    models = [create_model("mlp", d, seed=0) for _ in members]
    trainer = SweepTrainer(models, members, fairopt.EqualizedOdds(0.05), 2, dual_max_window=window, **OPTIONS)  # type: ignore[arg-type]
    m = len(members)
    start = time.perf_counter()
    for x, y, a in batches:  # every member reads the same batch (one seed)
        trainer.step(x.expand(m, *x.shape), y.expand(m, -1), a.expand(m, -1))
    return time.perf_counter() - start, trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("FAIROPT_BENCH_THREADS", "1")))
    batches, d, window = draw_batches(args.epochs)
    steps = len(batches)
    times: dict[str, list[float]] = {"sequential": [], "sweep": []}
    for _ in range(args.repeats):
        t_seq, alone = sequential(batches, d, window)
        t_sweep, trainer = swept(batches, d, window)
        times["sequential"].append(t_seq)
        times["sweep"].append(t_sweep)
    best = {k: min(v) for k, v in times.items()}
    ratios = sorted(s / w for s, w in zip(times["sequential"], times["sweep"]))
    median_ratio = ratios[len(ratios) // 2] if len(ratios) % 2 else sum(ratios[len(ratios) // 2 - 1 :][:2]) / 2
    diff = max(
        (trainer.model.member_state(j)[n] - p.detach()).abs().max().item()
        for j, model in enumerate(alone)
        for n, p in model.named_parameters()
    )
    print(f"{len(TOLERANCES)} tolerances x 1 seed, mlp on adult, {steps} steps of {batches[0][0].shape[0]} rows")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), best of {args.repeats}")
    for name, t in best.items():
        print(f"  {name:<10} {t:8.3f} s  {t / steps * 1e3:7.3f} ms/step")
    print(f"  ratio sequential / sweep: {best['sequential'] / best['sweep']:.2f}x")
    print(f"  median of the {args.repeats} per-repeat ratios: {median_ratio:.2f}x")
    print(f"  largest parameter difference, swept vs alone: {diff:.2e}")


if __name__ == "__main__":
    main()
