"""Train one (model, method, seed) of a study and measure its constraint on train, held-out and test data.

The final model of the proxy-Lagrangian methods is a distribution over recorded iterates (the shrinking linear
program of Cotter, Jiang, Sridharan, ALT 2019). Its rates are reported *exactly in expectation*: the GroupStats
table of a randomized classifier is the probability-weighted sum of its candidates' tables (tables are additive),
so no sampling noise is added to the measurement.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional as F

from fairopt.constraints import Constraint
from fairopt.datasets import DatasetSplit, TabularDataset
from fairopt.models import create_model
from fairopt.optim import ConstrainedOptimizer, IterateRecords
from fairopt.stats import GroupStats, group_stats
from fairopt.validation import FairnessReport
from fairopt.validation.evaluate import collect_stats

from .config import StudyConfig

__all__ = ["DATA_SPLIT", "SPLITS", "RunResult", "run_one", "split_stats"]

SPLITS = ("train", "held-out", "test")
# Report split name -> dataset split name (the held-out split is the dataset's validation split).
DATA_SPLIT = {"train": "train", "held-out": "validation", "test": "test"}


@dataclass
class RunResult:
    """One trained configuration.

    Attributes:
        model, method, seed: what was run.
        reports: split name (``train``, ``held-out``, ``test``) → :class:`~fairopt.validation.FairnessReport`.
        history: one dict per recorded point: ``step``, ``epoch`` and the largest constraint value (max over
            entries of ``expr``, the quantity compared with the tolerance) on each split.
        selection: how the final model was chosen; support: its number of iterates.
        multipliers: the final multipliers (empty for methods without a dual player).
        wall_time: seconds spent training and selecting (evaluation excluded).
    """

    model: str
    method: str
    seed: int
    reports: dict[str, FairnessReport]
    history: list[dict[str, float]]
    selection: str
    support: int
    multipliers: list[float]
    wall_time: float


def split_stats(model: nn.Module, split: DatasetSplit, num_groups: int) -> GroupStats:
    """Hard/proxy table of ``model`` on a whole split (no gradient, float64), for the per-step history and the
    iterate records (the final reports use :func:`fairopt.validation.collect_stats`, which adds the moments)."""
    device = next(model.parameters()).device
    with torch.no_grad():
        was_training = model.training
        model.eval()
        scores = model(split.X.to(device)).double()
        model.train(was_training)
    return group_stats(scores, split.y.to(device), split.groups.to(device), num_groups, validate=False)


def _batches(
    split: DatasetSplit, batch_size: int, seed: int, device: torch.device
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    for x, y, a in split.loader(batch_size=batch_size, shuffle=True, seed=seed):
        yield x.to(device), y.to(device), a.to(device)


def _cycle(split: DatasetSplit, batch_size: int, seed: int, device: torch.device) -> Iterator[tuple[Tensor, ...]]:
    epoch = 0
    while True:
        yield from _batches(split, batch_size, seed * 1000 + epoch, device)
        epoch += 1


def _make_optimizer(
    config: StudyConfig, method: str, model: nn.Module, constraint: Constraint, data: TabularDataset, seed: int
) -> tuple[torch.optim.Optimizer, ConstrainedOptimizer | None]:
    base = torch.optim.Adam(model.parameters(), lr=config.lr)
    if method == "unconstrained":
        return base, None
    options: dict[str, Any] = {"proxy": config.proxy, "validate": False}
    if method == "penalty":
        options.update(method="penalty", penalty=config.penalty)
    elif method == "lagrangian":
        options.update(method="lagrangian", dual_lr=config.dual_lr)
    else:  # the proxy-Lagrangian methods keep iterate records for the shrinking LP
        options.update(method="proxy_lagrangian", dual_lr=config.dual_lr, records=IterateRecords())
    if method == "proxy-lagrangian-heldout":
        heldout_batches = _cycle(data.validation, config.batch_size, seed, torch.device(config.device))

        def heldout() -> Mapping[str, Tensor]:
            x, y, a = next(heldout_batches)
            return {"scores": model(x), "labels": y, "groups": a}

        options.update(dual_source="heldout", heldout=heldout)
    return base, ConstrainedOptimizer(base, [constraint], data.num_groups, **options)


def _largest_value(constraint: Constraint, stats: GroupStats) -> float:
    value = constraint.evaluate(stats)
    if not bool(value.defined.any()):
        return float("nan")
    return float((value.hard[value.defined] + constraint.tolerance).max())


def _mixture_stats(
    model: nn.Module, states: list[dict[str, Tensor]], weights: Tensor, split: DatasetSplit, num_groups: int
) -> GroupStats:
    """Expected table of the randomized classifier: the weighted sum of its candidates' tables (exact)."""
    total: GroupStats | None = None
    device = next(model.parameters()).device
    for state, p in zip(states, weights.tolist()):
        on_device = {k: v.to(device) for k, v in state.items()}

        def candidate(x: Tensor, state: dict[str, Tensor] = on_device) -> Tensor:
            return functional_call(model, state, (x.to(device),))

        stats, _ = collect_stats(candidate, (split.X, split.y, split.groups), num_groups, progress=False)
        total = stats * p if total is None else total + stats * p
    assert total is not None
    return total


def run_one(
    config: StudyConfig, data: TabularDataset, constraint: Constraint, model_name: str, method: str, seed: int
) -> RunResult:
    """Train one configuration and evaluate it; see the module docstring for how the final model is chosen."""
    torch.manual_seed(seed)
    device = torch.device(config.device)
    model = create_model(model_name, data.num_features, seed=seed).to(device)
    optimizer, constrained = _make_optimizer(config, method, model, constraint, data, seed)
    epochs = config.epochs_for(model_name)
    steps_per_epoch = max(1, -(-len(data.train.y) // config.batch_size))
    total_steps = epochs * steps_per_epoch
    record_every = max(1, total_steps // config.records_per_run)
    records = constrained.records if constrained is not None else None
    record_split = data.validation if method == "proxy-lagrangian-heldout" else data.train
    history: list[dict[str, float]] = []
    step = 0
    start = time.perf_counter()
    evaluation_time = 0.0
    for epoch in range(epochs):
        for x, y, a in _batches(data.train, config.batch_size, seed * 1000 + epoch, device):
            scores = model(x)
            loss = F.binary_cross_entropy_with_logits(scores, y)
            if constrained is None:
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            else:
                constrained.zero_grad()
                constrained.step(loss=loss, scores=scores, labels=y, groups=a)
            step += 1
            if step % record_every == 0 or step == total_steps:
                t0 = time.perf_counter()
                point: dict[str, float] = {"step": float(step), "epoch": step / steps_per_epoch}
                for name in SPLITS:
                    split = data.split(DATA_SPLIT[name])
                    point[name] = _largest_value(constraint, split_stats(model, split, data.num_groups))
                history.append(point)
                evaluation_time += time.perf_counter() - t0
                if records is not None:
                    stats = split_stats(model, record_split, data.num_groups)
                    constrained.record(stats, model=model)
    # Final model.
    if records is not None and len(records) > 0:
        weights = torch.as_tensor(records.best_distribution())
        support = [i for i in range(len(records)) if weights[i] > 0]
        states = [records[i].state for i in support]
        probabilities = weights[support] / weights[support].sum()
        source = "validation" if method == "proxy-lagrangian-heldout" else "train"
        selection = f"shrinking LP on {source} ({len(support)} of {len(records)} iterates)"
    else:
        states, probabilities, support = [], torch.ones(1), [0]
        selection = "last iterate"
    wall_time = time.perf_counter() - start - evaluation_time
    reports = {}
    for name in SPLITS:
        split = data.split(DATA_SPLIT[name])
        if states:  # intervals then treat the expected counts as counts of N examples
            stats, moments = _mixture_stats(model, states, probabilities, split, data.num_groups), None  # type: ignore[arg-type]
        else:
            stats, moments = collect_stats(model, (split.X, split.y, split.groups), data.num_groups, progress=False)
        reports[name] = FairnessReport.from_stats(
            stats, [constraint], moments=moments, group_names=data.group_names, split=name,
            metadata={"model": model_name, "method": method, "seed": seed},
        )  # fmt: skip
    multipliers = [] if constrained is None else [float(v) for v in constrained.multipliers.reshape(-1).tolist()]
    return RunResult(
        model=model_name,
        method=method,
        seed=seed,
        reports=reports,
        history=history,
        selection=selection,
        support=len(support),
        multipliers=multipliers,
        wall_time=wall_time,
    )
