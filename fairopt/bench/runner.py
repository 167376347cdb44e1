"""Train one (model, method, seed) of a study and measure its constraint on train, held-out and test data.

A run is three steps, each a function with plain inputs and outputs, which :func:`run_one` composes:

1. :func:`train_model` -> :class:`TrainedModel`: the trained model, its constrained optimizer (with the iterate
   records), the history of expression values per split, the training time and the end-of-training check;
2. :func:`select_models` -> :class:`Selection`: the final model(s) chosen from the records (:func:`select_final`),
   and for the post-processing methods group thresholds fitted on validation data (:func:`fit_thresholds`);
3. :func:`evaluate_models` -> one :class:`RunResult` per final model: a report per split (:func:`split_reports`).

Every table is measured by :func:`fairopt.validation.collect_stats` (:func:`split_stats` for the per-step history
and the records, :meth:`FinalModel.tables` for the reports). The final model of the proxy-Lagrangian methods is a
distribution over recorded iterates (the shrinking linear program of Cotter, Jiang, Sridharan, ALT 2019); its rates
are reported *exactly in expectation*: the table of a randomized classifier is the probability-weighted sum of its
candidates' tables (:func:`fairopt.optim.stochastic.expected_tables`), so no sampling noise is added.

The image bench (:mod:`fairopt.bench.images`) runs through the same three steps with two hooks: ``build_model``
(an image model, channels-last) and ``forward`` (a batch's inputs to float32 logits: device move, autocast), which
every forward pass of a run goes through: training batches, held-out dual batches and group-threshold scores.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator, Mapping
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
from fairopt.postprocessing import GroupThresholds, InfeasibleFitWarning
from fairopt.stats import GroupStats
from fairopt.validation import FairnessReport, SecondMoments, collect_stats
from fairopt.validation.measure.batches import default_unpack, iterate_batches, move_to
from fairopt.validation.measure.evaluate import eval_mode
from fairopt.validation.report.fairness_report import constant_label

from .config import StudyConfig

__all__ = [
    "DATA_SPLIT",
    "HELDOUT_METHODS",
    "POSTPROCESSED",
    "SPLITS",
    "BuildModel",
    "FinalModel",
    "Forward",
    "RunResult",
    "Selection",
    "TrainedModel",
    "below_majority",
    "constant_prediction",
    "eval_mode",
    "evaluate_models",
    "fit_thresholds",
    "heldout_batch",
    "majority_baseline",
    "plain_forward",
    "run_one",
    "select_final",
    "select_models",
    "split_reports",
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

# forward(model, x) -> (B,) float32 logits on the model's device, ``x`` a batch's inputs as the split's loader yields
# them (on the CPU): the one place a run's forward passes differ between tables and images (device move, layout,
# autocast). The caller chooses the mode: training batches in train mode, held-out and threshold batches in eval mode.
Forward = Callable[[nn.Module, Any], Tensor]
# build_model(model_name, seed) -> the untrained model on the study's device, ready to train.
BuildModel = Callable[[str, int], nn.Module]


def plain_forward(model: nn.Module, x: Any) -> Tensor:
    """The tabular :data:`Forward`: ``model(x)`` with ``x`` moved to the model's device (a no-op where it is)."""
    return model(move_to(x, next(model.parameters()).device))


@dataclass
class RunResult:
    """One trained configuration.

    Attributes:
        model, method, seed: what was run.
        reports: split name (:data:`SPLITS`: ``train``, ``validation``, ``held-out``, ``test``) →
            :class:`~fairopt.validation.FairnessReport`.
        history: one dict per recorded point: ``step``, ``epoch`` and the largest expression value (max over
            entries of ``expr``, the quantity compared with the tolerance) on each split.
        dual_window: the dual table's last window in batches (:attr:`~fairopt.ConstrainedOptimizer.dual_window`).
        warnings: what the end-of-training check found (:meth:`~fairopt.ConstrainedOptimizer.check`), and a final
            model less accurate on test than the majority label (:func:`below_majority`); a model that predicts one
            label for every row is in its reports' warnings.
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
    """Hard/proxy ``(G, K)`` float64 table of ``model`` on a whole split, for the per-step history, the iterate
    records, the margins and the end-of-training check: :func:`fairopt.validation.collect_stats` with the split as one
    batch (one forward pass, as a tabular split fits in memory), no loss column and no input checks (the split's
    labels and ids are checked at loading). The final reports use :meth:`FinalModel.tables`, which adds the loss and
    the second moments."""
    stats, _ = collect_stats(
        model,
        split.tensors(),
        num_groups,
        batch_size=max(1, len(split)),
        loss_fn=None,
        progress=False,
        validate_args=False,
    )
    return stats


def _cycle(split: DatasetSplit, batch_size: int, seed: int) -> Iterator[tuple[Tensor, ...]]:
    """Shuffled ``(x, y, group)`` batches of ``split`` without end, epoch ``e`` seeded ``seed * 1000 + e``."""
    epoch = 0
    while True:
        yield from split.loader(batch_size=batch_size, shuffle=True, seed=seed * 1000 + epoch)
        epoch += 1


def heldout_batch(
    model: nn.Module, batches: Iterator[tuple[Tensor, ...]], forward: Forward = plain_forward
) -> dict[str, Tensor]:
    """The next validation batch for the held-out duals (``ConstrainedOptimizer(heldout=...)``): ``scores`` ``(B,)``
    float32 from ``forward`` in eval mode (:func:`eval_mode`), ``labels`` and ``groups`` on the model's device."""
    x, y, a = next(batches)
    with eval_mode(model):
        scores = forward(model, x)
    device = scores.device
    return {"scores": scores, "labels": y.to(device), "groups": a.to(device)}


def _make_optimizer(
    config: StudyConfig,
    method: str,
    model: nn.Module,
    constraint: Constraint,
    data: TabularDataset,
    seed: int,
    forward: Forward = plain_forward,
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
        options.update(
            dual_source="heldout",
            heldout=partial(heldout_batch, model, _cycle(data.validation, batch_size, seed), forward),
        )
    else:
        options["dual_max_window"] = max(1, -(-len(data.train) // batch_size))
    return base, ConstrainedOptimizer(base, [constraint], data.num_groups, **options)


def _largest_value(constraint: Constraint, stats: GroupStats) -> float:
    """The largest expression value ``g + tolerance`` over the defined entries (NaN when none is defined)."""
    values = constraint.expression_values(stats)
    return float(np.nanmax(values)) if not np.isnan(values).all() else float("nan")


def _margin(config: StudyConfig, constraint_set: ConstraintSet, stats: GroupStats) -> np.ndarray | None:
    """``margin_z`` standard errors of each entry on the selection split (0 where undefined), or None."""
    if not config.margin_z:
        return None
    errors = constraint_set.standard_errors(stats)
    return config.margin_z * np.where(np.isfinite(errors), errors, 0.0)


@dataclass(frozen=True)
class TrainedModel:
    """What training gives (:func:`train_model`).

    Attributes:
        model: the trained model (the last iterate).
        constrained: its :class:`~fairopt.ConstrainedOptimizer` with the iterate records, None when unconstrained.
        history: one dict per recorded point: ``step``, ``epoch`` and the largest expression value ``g + tolerance``
            (:meth:`~fairopt.constraints.Constraint.expression_values`) on each split.
        seconds: training wall time in seconds (the history's evaluation excluded).
        warnings: what the end-of-training check found on the selection split
            (:meth:`~fairopt.ConstrainedOptimizer.check`; none for unconstrained and penalty training).
    """

    model: nn.Module
    constrained: ConstrainedOptimizer | None
    history: list[dict[str, float]]
    seconds: float
    warnings: tuple[str, ...] = ()


def train_model(
    config: StudyConfig,
    data: TabularDataset,
    constraint: Constraint,
    model_name: str,
    method: str,
    seed: int,
    *,
    build_model: BuildModel | None = None,
    forward: Forward = plain_forward,
) -> TrainedModel:
    """Train one configuration (``method`` a training method: a post-processing method's is
    ``POSTPROCESSED[method]``), recording the history of expression values per split, the iterate records on the
    selection split (validation for :data:`HELDOUT_METHODS`, else train) and the end-of-training check.

    ``build_model(model_name, seed)`` gives the untrained model on the study's device (default: the tabular
    :func:`fairopt.models.create_model` over ``data.num_features``); ``forward(model, x)`` its float32 logits for a
    batch's inputs (:data:`Forward`; default :func:`plain_forward`), for the training batches (train mode) and the
    held-out dual batches (eval mode). An epoch is one pass of the training split's loader (image training splits
    drop a last incomplete batch). The margins', history's and records' evaluation is excluded from ``seconds``.
    """
    torch.manual_seed(seed)
    device = torch.device(config.device)
    if build_model is None:
        model = create_model(model_name, data.num_features, seed=seed).to(device)
    else:
        model = build_model(model_name, seed)
    optimizer, constrained = _make_optimizer(config, method, model, constraint, data, seed, forward)
    epochs = config.epochs_for(model_name)
    batch_size = config.batch_size_for(len(data.train))

    def epoch_batches(epoch: int) -> Any:
        return data.train.loader(batch_size=batch_size, shuffle=True, seed=seed * 1000 + epoch)

    first = epoch_batches(0)
    steps_per_epoch = max(1, len(first))
    total_steps = epochs * steps_per_epoch
    record_every = max(1, total_steps // config.records_per_run)
    records = constrained.records if constrained is not None else None
    record_split = data.validation if method in HELDOUT_METHODS else data.train
    with_margin = constrained is not None and method != "penalty"
    history: list[dict[str, float]] = []
    step = 0

    def measure(initial: bool = False) -> None:
        """The margin from the current rates; after a step also a history point and an iterate record."""
        record_stats = None
        if with_margin or records is not None:  # one pass over the selection split serves both
            record_stats = split_stats(model, record_split, data.num_groups)
        if with_margin:  # the margin follows the current rates (their standard errors)
            assert constrained is not None and record_stats is not None
            with warnings.catch_warnings():  # an out-of-reach margin is one of the run's warnings (_check)
                warnings.filterwarnings("ignore", message="margin too large", category=UserWarning)
                constrained.margin = _margin(config, constrained.constraint_set, record_stats)
        if initial:
            return
        point: dict[str, float] = {"step": float(step), "epoch": step / steps_per_epoch}
        for name in SPLITS:
            split = data.split(DATA_SPLIT[name])
            known = record_stats is not None and split is record_split  # the same model: the same table
            stats = record_stats if known else split_stats(model, split, data.num_groups)
            point[name] = _largest_value(constraint, stats)  # type: ignore[arg-type]
        history.append(point)
        if records is not None:
            assert constrained is not None and record_stats is not None
            constrained.record(record_stats, model=model)

    start = time.perf_counter()
    evaluation_time = 0.0
    if with_margin:  # the first margin, from the untrained model's rates
        measure(initial=True)
        evaluation_time += time.perf_counter() - start
    model.train()
    for epoch in range(epochs):
        for x, y, a in first if epoch == 0 else epoch_batches(epoch):
            scores = forward(model, x)
            y, a = y.to(scores.device, non_blocking=True), a.to(scores.device, non_blocking=True)
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
                measure()
                evaluation_time += time.perf_counter() - t0
    seconds = time.perf_counter() - start - evaluation_time
    return TrainedModel(model, constrained, history, seconds, _check(constrained, model, data, method))


@dataclass(frozen=True)
class FinalModel:
    """A chosen final model: candidate ``states`` mixed with ``probabilities`` (no states: the model as it stands
    after selection), the indices of the records it uses, how it was chosen, and for a post-processing method the
    group thresholds applied to the model's scores (``policy``), and what the run's report must say about the choice
    (``warnings``: it was made without the margin that no candidate met)."""

    states: list[dict[str, Tensor]]
    probabilities: Tensor
    support: list[int]
    selection: str
    policy: GroupThresholds | None = None
    warnings: tuple[str, ...] = ()

    def tables(
        self, model: nn.Module, split: DatasetSplit, num_groups: int, forward: Forward = plain_forward
    ) -> tuple[GroupStats, SecondMoments | None]:
        """The final model's ``(G, K)`` table on ``split`` (float64, CPU) and its second moments (None: intervals
        from the counts) for the reports, ``model`` being the trained architecture: with states, the expected table
        of the randomized classifier over them (:class:`~fairopt.optim.StochasticClassifier` in
        :func:`~fairopt.validation.collect_stats`; intervals then treat the expected counts as counts of N
        examples); with a policy, its expected table on the model's scores (:meth:`GroupThresholds.stats`); else
        the model's own table and moments. ``forward``: the run's :data:`Forward`, for the policy's scores."""
        if self.policy is not None:
            return self.policy.stats(_scores(model, split, forward), labels=split.y, groups=split.groups), None
        if self.states:
            device = next(model.parameters()).device
            mixture = StochasticClassifier(model, self.states, self.probabilities).to(device)
            return collect_stats(mixture, split.tensors(), num_groups, progress=False)[0], None
        return collect_stats(model, split.tensors(), num_groups, progress=False)


def select_final(model: nn.Module, constrained: ConstrainedOptimizer | None, method: str) -> dict[str, FinalModel]:
    """The final models of a run, by method name: the proxy-Lagrangian methods give the shrinking-LP distribution
    (under their own name) and the best single iterate (``"<method> (best iterate)"``, deterministic); the other
    methods with records the best single iterate; the rest the last iterate. Both selections read the records'
    constraint values plus the margin, ``values + margin``, and fall back to the plain values when no candidate meets
    the margin (said in the description). The best iterate is feasible-first: the lowest objective among candidates
    that meet the constraints, else the least violating."""
    records = None if constrained is None else constrained.records
    if records is None or len(records) == 0:
        return {method: FinalModel([], torch.ones(1), [0], "last iterate")}
    source = "validation" if method in HELDOUT_METHODS else "train"

    def note() -> str:
        return " with margin" if records.margin_used else (" (margin not met)" if records.margin_missed else "")

    def fallback() -> tuple[str, ...]:
        if not records.margin_missed:
            return ()
        return (margin_not_met("no recorded iterate meets the bound with its margin", "chosen", source),)

    out = {}
    with warnings.catch_warnings():  # reported in the selection text instead
        warnings.simplefilter("ignore", UserWarning)
        if method.startswith("proxy-lagrangian"):
            probabilities = torch.as_tensor(records.best_distribution())
            support = [i for i in range(len(records)) if probabilities[i] > 0]
            text = f"shrinking LP on {source}{note()} ({len(support)} of {len(records)} iterates)"
            states = [records[i].state for i in support]
            chosen = probabilities[support] / probabilities[support].sum()
            out[method] = FinalModel(states, chosen, support, text, warnings=fallback())  # type: ignore[arg-type]
            method = f"{method} (best iterate)"
        best = records.best_index(rank_objectives=False)
    text = f"best iterate on {source}{note()} (step {records[best].step} of {constrained.num_steps})"  # type: ignore[union-attr]
    out[method] = FinalModel([records[best].state], torch.ones(1), [best], text, warnings=fallback())  # type: ignore[list-item]
    return out


def margin_not_met(why: str, done: str, split: str) -> str:
    """The warning of a final model chosen (``done``: "chosen", "fitted") on ``split`` ("train", "validation")
    without the margin that ``why`` says no candidate met there."""
    rows = "training rows (a larger --train-size, where it caps them)" if split == "train" else f"{split} rows"
    return (
        f"{why} on {split}: the final model was {done} without it, so the bound has no room for estimation error on "
        f"new data (its held-out and test values may exceed it); more {rows}, or a smaller --margin-z, let a margin "
        "be met"
    )


def _check(
    constrained: ConstrainedOptimizer | None, model: nn.Module, data: TabularDataset, method: str
) -> tuple[str, ...]:
    if constrained is None or method == "penalty":
        return ()
    split = data.validation if method in HELDOUT_METHODS else data.train
    stats = split_stats(model, split, data.num_groups)
    found = constrained.check(stats, group_names=data.group_names, warn=False)
    # the library's advice is in Python terms; on the command line the margin's multiple is --margin-z
    return tuple(f"{w} (fairopt bench: {MARGIN_HINT})" if w.startswith("margin too large") else w for w in found)


MARGIN_HINT = "--margin-z sets the multiple of the standard error, e.g. --margin-z 1, or --margin-z 0 for none"


def constant_prediction(stats: GroupStats, split: str = "test") -> str | None:
    """A warning when a model predicts the same label for every row of ``split`` (its ``(G, K)`` hard table
    ``stats``; for a randomized classifier, the expected table: every candidate predicts that label), else None.

    A constant classifier has equal selection rates, TPRs and FPRs in every group by construction, so parity
    constraints on them look met while it learns nothing: its constraint values must not pass for a fair model.
    """
    if (label := constant_label(stats)) is None:
        return None
    return (
        f"the final model predicts {label} for every {split} row (a constant classifier): its parity constraints "
        "are met trivially and it learned nothing; train longer (--epochs), change --lr or loosen --tolerance"
    )


def majority_baseline(stats: GroupStats) -> tuple[float, int] | None:
    """``(accuracy, label)`` of predicting the more frequent label for every row of a ``(G, K)`` table (None for
    an empty table): the constant classifier that meets every parity constraint trivially, which a constrained
    model must beat to be worth having."""
    overall = stats.overall()
    positives, rows = float(overall.label_pos.sum()), float(overall.count.sum())
    if rows == 0:
        return None
    return max(positives, rows - positives) / rows, int(positives > rows - positives)


def below_majority(stats: GroupStats, split: str = "test") -> str | None:
    """A warning when a model that does not predict one label for everyone (see :func:`constant_prediction`) is
    still less accurate on ``split`` than the constant prediction of the majority label, else None."""
    baseline = majority_baseline(stats)
    if baseline is None or constant_prediction(stats, split) is not None:
        return None
    overall = stats.overall()
    accuracy = 1.0 - float(overall.errors.sum()) / float(overall.count.sum())
    majority, label = baseline
    if accuracy >= majority:
        return None
    return (
        f"the final model's {split} accuracy {accuracy:.4f} is below {majority:.4f}, that of predicting {label} for "
        f"every {split} row (a constant classifier, which meets parity constraints trivially): the model is worth "
        "less than that; under a constraint, a small group's noisy rates may drive it (pool small groups, train "
        "longer or loosen --tolerance)"
    )


def _scores(model: nn.Module, split: DatasetSplit, forward: Forward = plain_forward) -> Tensor:
    """``(N,)`` float64 CPU logits of ``model`` on ``split``, in the split's order, for fitting and applying group
    thresholds (which need the scores themselves, not a table): streamed over ``split.tensors()`` (a tabular split
    or in-memory images: one batch of the whole split; images on disk: its evaluation loader, batch by batch) through
    ``forward``, in eval mode and without gradients, the model's mode restored after."""
    data = split.tensors()
    batches, _ = iterate_batches(data, max(1, len(split)))
    parts = []
    with torch.no_grad(), eval_mode(model):
        for batch in batches:
            x, _, _, _ = default_unpack(batch)
            parts.append(forward(model, x).double().cpu())
    if not parts:
        raise ValueError(f"the {split.name} split has no rows: there are no scores to fit or apply thresholds on")
    return torch.cat(parts)


def fit_thresholds(
    config: StudyConfig,
    model: nn.Module,
    data: TabularDataset,
    constraint: Constraint,
    forward: Forward = plain_forward,
) -> tuple[GroupThresholds, str, tuple[str, ...]]:
    """Randomized group thresholds for ``model`` fitted on the validation split's scores (from ``forward``, streamed:
    :func:`_scores`) with ``margin_z`` standard errors of margin (without it, and saying so, when no policy meets
    it). Returns the policy, a description and the warnings for the run's report (the margin not met)."""
    v = data.validation
    scores = _scores(model, v, forward)
    margin = _margin(config, ConstraintSet([constraint], data.num_groups), split_stats(model, v, data.num_groups))
    fit = partial(
        GroupThresholds.fit, scores, labels=v.y, groups=v.groups, constraints=constraint, num_groups=data.num_groups
    )
    with warnings.catch_warnings():  # a margin not met is handled below: fitted again without, and reported
        warnings.simplefilter("ignore", InfeasibleFitWarning)
        policy = fit(margin=margin)
    note, problems = ("" if margin is None else " with margin"), ()  # --margin-z 0: none asked
    if not policy.feasible and margin is not None:
        policy, note = fit(), " (margin not met)"
        problems = (margin_not_met("no group thresholds meet the bound with its margin", "fitted", "validation"),)
    kind = "randomized" if policy.randomized else "deterministic"
    return policy, f"group thresholds on validation{note} ({kind}, Hardt et al. 2016)", problems


@dataclass(frozen=True)
class Selection:
    """The final model(s) of a run by method name (:func:`select_models`) and the seconds the choice took."""

    finals: dict[str, FinalModel]
    seconds: float


def select_models(
    config: StudyConfig,
    data: TabularDataset,
    constraint: Constraint,
    trained: TrainedModel,
    method: str,
    forward: Forward = plain_forward,
) -> Selection:
    """Choose the final model(s) of ``method`` from its training: :func:`select_final` on the records; for a
    post-processing method (:data:`POSTPROCESSED`), group thresholds fitted on the validation split
    (:func:`fit_thresholds`, scores from ``forward``) on its training's deterministic final model, which is loaded
    into ``trained.model``."""
    t0 = time.perf_counter()
    trained_as = POSTPROCESSED.get(method, method)
    finals = select_final(trained.model, trained.constrained, trained_as)
    if method in POSTPROCESSED:  # group thresholds on the deterministic final model
        base = finals.get(f"{trained_as} (best iterate)", finals[trained_as])
        if base.states:
            trained.model.load_state_dict(base.states[0])
        policy, text, problems = fit_thresholds(config, trained.model, data, constraint, forward)
        prefix = "" if trained_as == "unconstrained" else f"{base.selection}, then "
        # the base model's own fallback is not this model's: the thresholds are fitted again, with the margin
        finals = {method: FinalModel([], torch.ones(1), [0], prefix + text, policy, problems)}
    return Selection(finals, time.perf_counter() - t0)


def split_reports(
    data: TabularDataset,
    constraint: Constraint,
    tables: Callable[[DatasetSplit], tuple[GroupStats, SecondMoments | None]],
    metadata: Mapping[str, Any],
) -> dict[str, FairnessReport]:
    """A :class:`~fairopt.validation.FairnessReport` per study split (:data:`SPLITS`), from ``tables(split) ->
    (stats, moments or None)``; ``metadata`` (model, method, seed) is stored in each."""
    reports = {}
    for name in SPLITS:
        stats, moments = tables(data.split(DATA_SPLIT[name]))
        reports[name] = FairnessReport.from_stats(
            stats, [constraint], moments=moments, group_names=data.group_names, split=name, metadata=dict(metadata)
        )
    return reports


def evaluate_models(
    data: TabularDataset,
    constraint: Constraint,
    trained: TrainedModel,
    selection: Selection,
    model_name: str,
    seed: int,
    forward: Forward = plain_forward,
) -> list[RunResult]:
    """One :class:`RunResult` per final model of ``selection``: its reports on every split
    (:meth:`FinalModel.tables`; a policy's scores from ``forward``), the training's history, multipliers and
    warnings, and a model less accurate on test than the majority label (:func:`below_majority`; a constant
    prediction is among the reports' own warnings). Each wall time is the training time plus the selection."""
    constrained = trained.constrained
    multipliers = [] if constrained is None else [float(v) for v in constrained.multipliers.reshape(-1).tolist()]
    results = []
    for name, final in selection.finals.items():
        metadata = {"model": model_name, "method": name, "seed": seed}
        tables = partial(final.tables, trained.model, num_groups=data.num_groups, forward=forward)
        reports = split_reports(data, constraint, tables, metadata)
        test = reports["test"].stats
        # (a constant prediction is the reports' own warning, per split: FairnessReport)
        problem = below_majority(test)
        problems = [] if problem is None else [problem]
        results.append(
            RunResult(
                model=model_name,
                method=name,
                seed=seed,
                reports=reports,
                history=trained.history,
                selection=final.selection,
                support=len(final.support),
                multipliers=multipliers,
                wall_time=trained.seconds + selection.seconds,
                dual_window=None if constrained is None else constrained.dual_window,
                warnings=(*trained.warnings, *final.warnings, *problems),
            )
        )
    return results


def run_one(
    config: StudyConfig,
    data: TabularDataset,
    constraint: Constraint,
    model_name: str,
    method: str,
    seed: int,
    *,
    build_model: BuildModel | None = None,
    forward: Forward = plain_forward,
) -> list[RunResult]:
    """Train one configuration, choose its final model(s) and evaluate each on every split: train -> select ->
    evaluate (:func:`train_model`, :func:`select_models`, :func:`evaluate_models`). ``build_model`` and ``forward``:
    the hooks of :func:`train_model` (the image bench's :func:`fairopt.bench.images.run_image_one` passes its own).

    Returns one :class:`RunResult` per final model (two for the proxy-Lagrangian methods).
    """
    trained_as = POSTPROCESSED.get(method, method)
    trained = train_model(
        config, data, constraint, model_name, trained_as, seed, build_model=build_model, forward=forward
    )
    selection = select_models(config, data, constraint, trained, method, forward)
    return evaluate_models(data, constraint, trained, selection, model_name, seed, forward)
