"""Train one (model, method, seed) of a study and measure its constraint on train, held-out and test data.

The final model of the proxy-Lagrangian methods is a distribution over recorded iterates (the shrinking linear
program of Cotter, Jiang, Sridharan, ALT 2019). Its rates are reported *exactly in expectation*: the GroupStats
table of a randomized classifier is the probability-weighted sum of its candidates' tables (tables are additive),
so no sampling noise is added to the measurement.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from fairopt.constraints import Constraint
from fairopt.datasets import DatasetSplit, TabularDataset
from fairopt.models import create_model
from fairopt.optim import ConstrainedOptimizer, ConstraintSet, IterateRecords, Penalty, StochasticClassifier
from fairopt.postprocessing import GroupThresholds
from fairopt.stats import GroupStats, group_stats
from fairopt.validation import FairnessReport
from fairopt.validation.measure.evaluate import collect_stats

from .config import StudyConfig

__all__ = [
    "DATA_SPLIT",
    "HELDOUT_METHODS",
    "POSTPROCESSED",
    "SPLITS",
    "FinalModel",
    "RunResult",
    "constant_prediction",
    "fit_thresholds",
    "run_one",
    "select_final",
    "split_stats",
    "train_model",
]

SPLITS = ("train", "validation", "held-out", "test")
# Report split name -> dataset split name. "validation" drives the held-out duals and chooses the final model;
# "held-out" is the audit split (TabularDataset.with_audit), used for nothing but the estimate for new data.
DATA_SPLIT = {"train": "train", "validation": "validation", "held-out": "audit", "test": "test"}
# Methods whose duals read validation batches and whose final model is chosen on the validation split.
HELDOUT_METHODS = ("lagrangian-heldout", "proxy-lagrangian-heldout")
# Post-processing methods -> the training they finish (group thresholds fitted on the validation split).
POSTPROCESSED = {"thresholds": "unconstrained", "proxy-lagrangian+thresholds": "proxy-lagrangian"}


@dataclass
class RunResult:
    """One trained configuration.

    Attributes:
        model, method, seed: what was run.
        reports: split name (``train``, ``held-out``, ``test``) → :class:`~fairopt.validation.FairnessReport`.
        history: one dict per recorded point: ``step``, ``epoch`` and the largest constraint value (max over
            entries of ``expr``, the quantity compared with the tolerance) on each split.
        dual_window: the dual table's last window in batches (:attr:`~fairopt.ConstrainedOptimizer.dual_window`).
        warnings: what the end-of-training check found (:meth:`~fairopt.ConstrainedOptimizer.check`), and a final
            model that predicts one label for every test row (:func:`constant_prediction`).
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
    dual_window: int | None = None
    warnings: tuple[str, ...] = ()


def split_stats(model: nn.Module, split: DatasetSplit, num_groups: int) -> GroupStats:
    """Hard/proxy table of ``model`` on a whole split (no gradient, float64), for the per-step history and the
    iterate records (the final reports use :func:`fairopt.validation.collect_stats`, which adds the moments)."""
    device = next(model.parameters()).device
    with torch.no_grad():
        was_training = model.training
        model.eval()
        scores = model(split.X.to(device)).double()
        model.train(was_training)
    return group_stats(
        scores, labels=split.y.to(device), groups=split.groups.to(device), num_groups=num_groups, validate_args=False
    )


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
    options: dict[str, Any] = {"proxy": config.proxy, "validate_args": False, "dual_min_count": config.dual_min_count}
    batch_size = config.batch_size_for(len(data.train))
    if method == "penalty":
        options.update(method=Penalty(coefficients=config.penalty))
    elif method == "lagrangian":
        options.update(method="lagrangian", dual_lr=config.dual_lr)
    elif method == "lagrangian-heldout":  # keeps records to choose the best single iterate
        options.update(method="lagrangian", dual_lr=config.dual_lr, records=IterateRecords())
    else:  # the proxy-Lagrangian methods keep iterate records for the shrinking LP
        options.update(method="proxy_lagrangian", dual_lr=config.dual_lr, records=IterateRecords())
    if method in HELDOUT_METHODS:
        # the window never spans more than one pass over the validation split
        options["dual_max_window"] = max(1, -(-len(data.validation) // batch_size))
        heldout_batches = _cycle(data.validation, batch_size, seed, torch.device(config.device))

        def heldout() -> Mapping[str, Tensor]:
            x, y, a = next(heldout_batches)
            return {"scores": model(x), "labels": y, "groups": a}

        options.update(dual_source="heldout", heldout=heldout)
    else:
        options["dual_max_window"] = max(1, -(-len(data.train) // batch_size))
    return base, ConstrainedOptimizer(base, [constraint], data.num_groups, **options)


def _largest_value(constraint: Constraint, stats: GroupStats) -> float:
    values = constraint.evaluate(stats).expression_values(constraint.tolerance)
    return float(np.nanmax(values)) if not np.isnan(values).all() else float("nan")


def _mixture_stats(
    model: nn.Module, states: list[dict[str, Tensor]], weights: Tensor, split: DatasetSplit, num_groups: int
) -> GroupStats:
    """Expected table of the randomized classifier: the weighted sum of its candidates' tables (exact; see
    :func:`fairopt.validation.collect_stats`)."""
    device = next(model.parameters()).device
    mixture = StochasticClassifier(model, states, weights).to(device)
    stats, _ = collect_stats(mixture, (split.X, split.y, split.groups), num_groups, progress=False)
    return stats


def _margin(config: StudyConfig, constraint_set: ConstraintSet, stats: GroupStats) -> np.ndarray | None:
    """``margin_z`` standard errors of each entry on the selection split (0 where undefined), or None."""
    if not config.margin_z:
        return None
    errors = constraint_set.standard_errors(stats)
    return config.margin_z * np.where(np.isfinite(errors), errors, 0.0)


def train_model(
    config: StudyConfig, data: TabularDataset, constraint: Constraint, model_name: str, method: str, seed: int
) -> tuple[nn.Module, ConstrainedOptimizer | None, list[dict[str, float]], float]:
    """Train one configuration; returns the model, its constrained optimizer (None when unconstrained), the history
    of constraint values per split and the training wall time (history evaluation excluded)."""
    torch.manual_seed(seed)
    device = torch.device(config.device)
    model = create_model(model_name, data.num_features, seed=seed).to(device)
    optimizer, constrained = _make_optimizer(config, method, model, constraint, data, seed)
    epochs = config.epochs_for(model_name)
    batch_size = config.batch_size_for(len(data.train))
    steps_per_epoch = max(1, -(-len(data.train.y) // batch_size))
    total_steps = epochs * steps_per_epoch
    record_every = max(1, total_steps // config.records_per_run)
    records = constrained.records if constrained is not None else None
    record_split = data.validation if method in HELDOUT_METHODS else data.train
    with_margin = constrained is not None and method != "penalty"
    history: list[dict[str, float]] = []
    step = 0
    start = time.perf_counter()
    evaluation_time = 0.0
    if with_margin:
        assert constrained is not None
        constrained.margin = _margin(
            config, constrained.constraint_set, split_stats(model, record_split, data.num_groups)
        )
    for epoch in range(epochs):
        for x, y, a in _batches(data.train, batch_size, seed * 1000 + epoch, device):
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
                record_stats = None
                if with_margin or records is not None:  # one pass over the selection split serves both
                    record_stats = split_stats(model, record_split, data.num_groups)
                if with_margin:  # the margin follows the current rates (their standard errors)
                    assert constrained is not None and record_stats is not None
                    constrained.margin = _margin(config, constrained.constraint_set, record_stats)
                t0 = time.perf_counter()
                point: dict[str, float] = {"step": float(step), "epoch": step / steps_per_epoch}
                for name in SPLITS:
                    split = data.split(DATA_SPLIT[name])
                    point[name] = _largest_value(constraint, split_stats(model, split, data.num_groups))
                history.append(point)
                evaluation_time += time.perf_counter() - t0
                if records is not None:
                    assert constrained is not None and record_stats is not None
                    constrained.record(record_stats, model=model)
    return model, constrained, history, time.perf_counter() - start - evaluation_time


@dataclass(frozen=True)
class FinalModel:
    """A chosen final model: candidate ``states`` mixed with ``probabilities`` (no states: the model as trained),
    the indices of the records it uses, and how it was chosen."""

    states: list[dict[str, Tensor]]
    probabilities: Tensor
    support: list[int]
    selection: str


def select_final(model: nn.Module, constrained: ConstrainedOptimizer | None, method: str) -> dict[str, FinalModel]:
    """The final models of a run, by method name: the proxy-Lagrangian methods give the shrinking-LP distribution
    (under their own name) and the best single iterate (``"<method> (best iterate)"``, deterministic); the other
    methods with records the best single iterate; the rest the last iterate. Both selections read
    ``violations + margin`` and fall back to the plain violations when no candidate meets the margin (said in the
    description). The best iterate is feasible-first: the lowest objective among candidates that meet the
    constraints, else the least violating."""
    records = None if constrained is None else constrained.records
    if records is None or len(records) == 0:
        return {method: FinalModel([], torch.ones(1), [0], "last iterate")}
    source = "validation" if method in HELDOUT_METHODS else "train"

    def note() -> str:
        return " with margin" if records.margin_used else (" (margin not met)" if records.margins().any() else "")

    out = {}
    with warnings.catch_warnings():  # reported in the selection text instead
        warnings.simplefilter("ignore", UserWarning)
        if method.startswith("proxy-lagrangian"):
            weights = torch.as_tensor(records.best_distribution())
            support = [i for i in range(len(records)) if weights[i] > 0]
            text = f"shrinking LP on {source}{note()} ({len(support)} of {len(records)} iterates)"
            states = [records[i].state for i in support]
            out[method] = FinalModel(states, weights[support] / weights[support].sum(), support, text)  # type: ignore[arg-type]
            method = f"{method} (best iterate)"
        best = records.best_index(rank_objectives=False)
    text = f"best iterate on {source}{note()} (step {records[best].step} of {constrained.num_steps})"  # type: ignore[union-attr]
    out[method] = FinalModel([records[best].state], torch.ones(1), [best], text)  # type: ignore[list-item]
    return out


def _warnings(
    constrained: ConstrainedOptimizer | None, model: nn.Module, data: TabularDataset, method: str
) -> tuple[str, ...]:
    if constrained is None or method == "penalty":
        return ()
    split = data.validation if method in HELDOUT_METHODS else data.train
    stats = split_stats(model, split, data.num_groups)
    return tuple(constrained.check(stats, group_names=data.group_names, warn=False))


def constant_prediction(stats: GroupStats, split: str = "test") -> str | None:
    """A warning when a model predicts the same label for every row of ``split`` (its ``(G, K)`` hard table
    ``stats``; for a randomized classifier, the expected table: every candidate predicts that label), else None.

    A constant classifier has equal selection rates, TPRs and FPRs in every group by construction, so parity
    constraints on them look met while it learns nothing: its constraint values must not pass for a fair model.
    """
    overall = stats.overall()
    positives, rows = float(overall.pred_pos.sum()), float(overall.count.sum())
    if rows == 0 or 0 < positives < rows:
        return None
    label = 1 if positives > 0 else 0
    return (
        f"the final model predicts {label} for every {split} row (a constant classifier): its parity constraints "
        "are met trivially and it learned nothing; train longer (--epochs), change --lr or loosen --tolerance"
    )


def _scores(model: nn.Module, split: DatasetSplit) -> Tensor:
    device = next(model.parameters()).device
    with torch.no_grad():
        model.eval()
        return model(split.X.to(device)).double().cpu()


def fit_thresholds(
    config: StudyConfig, model: nn.Module, data: TabularDataset, constraint: Constraint
) -> tuple[GroupThresholds, str]:
    """Randomized group thresholds for ``model`` fitted on the validation split with ``margin_z`` standard errors of
    margin (without it, and saying so, when no policy meets it). Returns the policy and a description."""
    v = data.validation
    scores = _scores(model, v)
    stats = group_stats(scores, labels=v.y, groups=v.groups, num_groups=data.num_groups, validate_args=False)
    margin = _margin(config, ConstraintSet([constraint], data.num_groups), stats)
    fit = partial(
        GroupThresholds.fit, scores, labels=v.y, groups=v.groups, constraints=constraint, num_groups=data.num_groups
    )
    policy = fit(margin=margin)
    note = " with margin"
    if not policy.feasible and margin is not None:
        policy, note = fit(), " (margin not met)"
    kind = "randomized" if policy.randomized else "deterministic"
    return policy, f"group thresholds on validation{note} ({kind}, Hardt et al. 2016)"


def run_one(
    config: StudyConfig, data: TabularDataset, constraint: Constraint, model_name: str, method: str, seed: int
) -> list[RunResult]:
    """Train one configuration, choose its final model(s) (:func:`select_final`) and evaluate each on every split.

    Returns one :class:`RunResult` per final model (two for the proxy-Lagrangian methods). Each wall time is the
    training time plus its own selection.
    """
    trained_as = POSTPROCESSED.get(method, method)
    model, constrained, history, train_time = train_model(config, data, constraint, model_name, trained_as, seed)
    warnings_found = _warnings(constrained, model, data, trained_as)
    t0 = time.perf_counter()
    finals = select_final(model, constrained, trained_as)
    policy = None
    if method in POSTPROCESSED:  # group thresholds on the deterministic final model
        base = finals.get(f"{trained_as} (best iterate)", finals[trained_as])
        if base.states:
            model.load_state_dict(base.states[0])
        policy, text = fit_thresholds(config, model, data, constraint)
        prefix = "" if trained_as == "unconstrained" else f"{base.selection}, then "
        finals = {method: FinalModel([], torch.ones(1), [0], prefix + text)}
    select_time = time.perf_counter() - t0
    multipliers = [] if constrained is None else [float(v) for v in constrained.multipliers.reshape(-1).tolist()]
    results = []
    for name, final in finals.items():
        reports = {}
        for split_name in SPLITS:
            split = data.split(DATA_SPLIT[split_name])
            if policy is not None:
                stats, moments = policy.stats(_scores(model, split), labels=split.y, groups=split.groups), None
            elif final.states:  # intervals then treat the expected counts as counts of N examples
                stats = _mixture_stats(model, final.states, final.probabilities, split, data.num_groups)
                moments = None
            else:
                stats, moments = collect_stats(model, (split.X, split.y, split.groups), data.num_groups, progress=False)
            reports[split_name] = FairnessReport.from_stats(
                stats, [constraint], moments=moments, group_names=data.group_names, split=split_name,
                metadata={"model": model_name, "method": name, "seed": seed},
            )  # fmt: skip
        constant = constant_prediction(reports["test"].stats)
        results.append(
            RunResult(
                model=model_name,
                method=name,
                seed=seed,
                reports=reports,
                history=history,
                selection=final.selection,
                support=len(final.support),
                multipliers=multipliers,
                wall_time=train_time + select_time,
                dual_window=None if constrained is None else constrained.dual_window,
                warnings=warnings_found if constant is None else (*warnings_found, constant),
            )
        )
    return results
