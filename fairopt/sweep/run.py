"""``fairopt.sweep``: K tolerances x S seeds of one model in one vectorized run, and the frontier chosen on held-out
data, re-checked on test.

The recipe is the bench's ``proxy-lagrangian`` (the recommended in-training method; options, data and margins of
:class:`~fairopt.bench.config.StudyConfig`) with one difference that the frontier needs: every member's final iterate
is chosen on the *validation* split (best recorded iterate that meets its bound with a margin of ``margin_z``
standard errors there, else the least violating: :meth:`~fairopt.optim.IterateRecords.best_index`), so that the
*audit* split estimates it honestly. The fixed-weight penalty (:class:`~fairopt.optim.Penalty`) is swept over its
penalty coefficient at the strictest tolerance as the baseline, and keeps its last iterate (as in ``fairopt bench``).
"""

from __future__ import annotations

import itertools
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fairopt.models import create_model
from fairopt.optim import ConstraintSet
from fairopt.stats import GroupStats
from fairopt.validation import FairnessReport

from .frontier import FrontierPoint, SplitEstimate, SweepResult, pick_member
from .trainer import Member, SweepTrainer

if TYPE_CHECKING:  # the bench and the datasets (pandas) load when a sweep runs, not with `import fairopt`
    from fairopt.bench.config import StudyConfig
    from fairopt.datasets import DatasetSplit, TabularDataset

__all__ = ["DEFAULT_PENALTY_COEFFICIENTS", "check_tolerances", "sweep"]

DEFAULT_PENALTY_COEFFICIENTS = (0.25, 1.0, 4.0, 16.0)


def check_tolerances(tolerances: Sequence[float], what: str = "tolerances") -> tuple[float, ...]:
    """The tolerances as floats, refused with what to change when empty, not finite and > 0, or repeated.

    Raises:
        ValueError: an empty list, a value <= 0 or not finite, a repeated value.
    """
    values = tuple(tolerances)
    if not values:
        raise ValueError(f"{what} is empty: give at least one, e.g. --tolerances 0.02,0.05,0.1")
    out = []
    for t in values:
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise ValueError(f"{what} must be finite numbers > 0 (constraint units, 0.05 = 5 points), got {t!r}")
        out.append(float(t))
    repeated = sorted({t for t in out if out.count(t) > 1})
    if repeated:
        raise ValueError(f"{what} repeats {', '.join(f'{t:g}' for t in repeated)}: each member needs its own value")
    return tuple(out)


def _members(
    tolerances: tuple[float, ...], seeds: tuple[int, ...], penalty_coefficients: tuple[float, ...]
) -> list[Member]:
    strictest = min(tolerances)
    out = [Member("proxy_lagrangian", t, seed=s) for s in seeds for t in tolerances]
    out += [Member("penalty", strictest, seed=s, penalty_coefficient=w) for s in seeds for w in penalty_coefficients]
    return out


def _margins(trainer: SweepTrainer, tables: torch.Tensor, z: float) -> np.ndarray | None:
    """``(M, m)``: ``z`` standard errors of each member's entries on its table (``ConstraintSet.standard_errors``)."""
    if z == 0:
        return None
    cs = ConstraintSet([trainer.constraint], trainer.num_groups)
    return np.stack([z * cs.standard_errors(GroupStats(t)) for t in tables.cpu()])


def _split_tensors(split: DatasetSplit, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x, y, a = split.tensors()
    return x.to(device), y.to(device), a.to(device)


def _cycle(split: DatasetSplit, batch_size: int, seed: int) -> Iterator[tuple[torch.Tensor, ...]]:
    """Endless shuffled passes over ``split`` (pass ``e`` seeded ``seed * 1000 + e``, as ``fairopt bench``)."""
    for epoch in itertools.count():
        yield from split.loader(batch_size=batch_size, shuffle=True, seed=seed * 1000 + epoch)


def _per_member(
    batches: Sequence[Sequence[torch.Tensor]], seed_of: torch.Tensor, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch per seed -> ``(M, B, ...)`` tensors, member ``j`` reading its seed's batch."""
    x, y, a = (torch.stack([b[k] for b in batches]).to(device)[seed_of] for k in range(3))
    return x, y, a


def sweep(
    tolerances: Sequence[float],
    *,
    seeds: Sequence[int] = (0,),
    penalty_coefficients: Sequence[float] = DEFAULT_PENALTY_COEFFICIENTS,
    bound: float | None = None,
    dataset: str = "adult",
    constraint: str = "equalized_odds",
    model: str = "mlp",
    data: TabularDataset | None = None,
    heldout_duals: bool = False,
    log: Callable[[str], None] | None = None,
    **options: Any,
) -> SweepResult:
    """Train K tolerances x S seeds of one model (plus the penalty baseline) in one vectorized run and return the
    accuracy-fairness frontier chosen on held-out data, re-checked on test.

    Args:
        tolerances: the K bounds of the proxy-Lagrangian members, in the units of the constraint (0.05 = 5 points).
        seeds: the S seeds (initialization and batch order of each member; the splits come from the first seed).
        penalty_coefficients: the fixed weights ``c`` of the penalty baseline, one member per coefficient and seed,
            trained at the strictest tolerance (``()``: no baseline).
        bound: the bound the pick is for: the member must meet it with its held-out upper bound (default: the
            bench's default tolerance, 0.05).
        dataset: as ``fairopt bench --dataset`` (a bundled name or ``"csv:PATH"``).
        constraint: as ``fairopt bench --constraint``; ``p_rule`` is refused: its p sits inside the expression, not in
            the tolerance a sweep varies.
        model: one of ``fairopt bench --models`` (``"logistic"``, ``"mlp"``, ``"mlp-large"``).
        data: an already loaded :class:`~fairopt.datasets.TabularDataset` with an audit split (skips loading).
        heldout_duals: the λ-players read validation batches (the bench's ``proxy-lagrangian-heldout``: Cotter et al.,
            ICML 2019) instead of training batches; their margins then come from the validation split.
        log: optional ``fn(line)`` for progress lines.
        **options: any other :class:`~fairopt.bench.config.StudyConfig` field (``epochs``, ``train_size``, ``lr``,
            ``dual_lr``, ``batch_size``, ``margin_z``, ``dual_min_count``, ``records_per_run``, ``proxy``,
            ``sensitive``, ``device``, ...), with its default and checks.

    Returns:
        :class:`~fairopt.sweep.frontier.SweepResult` (``.to_markdown()``, ``.to_json()``, ``.plot(path)``,
        ``.write(folder)``).

    Raises:
        ValueError: empty, non-positive or repeated tolerances or penalty coefficients < 0; an unknown dataset, model or
            constraint, or a bad option (from :class:`~fairopt.bench.config.StudyConfig`); ``p_rule``; data without
            an audit split; a model that cannot be vmapped (the message says what to change).
    """
    from fairopt.bench.config import StudyConfig, constraint_key, default_tolerance, make_constraint
    from fairopt.bench.provenance import provenance
    from fairopt.bench.runner import constant_prediction
    from fairopt.bench.study import check_groups, data_notes, load_study_data

    tols = check_tolerances(tolerances)
    seed_list = tuple(seeds)
    if not seed_list or len(set(seed_list)) != len(seed_list):
        raise ValueError(f"seeds must be a non-empty list of distinct ints >= 0, got {list(seed_list)}")
    weights = tuple(float(w) for w in penalty_coefficients)
    if any(not math.isfinite(w) or w < 0 for w in weights) or len(set(weights)) != len(weights):
        raise ValueError(f"penalty_coefficients must be distinct finite numbers >= 0, got {list(penalty_coefficients)}")
    if constraint_key(constraint) == "p_rule":
        raise ValueError("a sweep varies the tolerance of one expression; p_rule's p sits inside the expression. "
                         "Sweep demographic_parity (the selection-rate gap) instead")  # fmt: skip
    config = StudyConfig(
        dataset=dataset, constraint=constraint, tolerance=min(tols), models=(model,), seeds=seed_list,
        methods=("proxy-lagrangian",), **options,
    )  # fmt: skip
    bound = default_tolerance(constraint) if bound is None else float(bound)
    say = log or (lambda line: None)
    given = data is not None
    if data is None:
        data = load_study_data(config, seed=seed_list[0])
    recorded = provenance(config.dataset, data, given=given)  # the data file as loaded, before a long training
    if data.audit is None:
        raise ValueError("the data have no audit split: build it with data.with_audit(0.5)")
    check_groups(config, data)  # one group, or nearly one per row: refused before anything trains
    data_warnings = data_notes(config, data)  # e.g. a group with a handful of rows: every gap then swings
    for line in data_warnings:
        say(f"sweep: {line}")
    built = [make_constraint(constraint, t) for t in tols]
    if len({str(c.expr) for c in built}) != 1:
        raise ValueError(f"constraint {constraint!r} changes its expression with the tolerance; a sweep needs one "
                         "expression with varying bounds")  # fmt: skip
    members = _members(tols, seed_list, weights)
    device = torch.device(config.device)
    models = [create_model(model, data.num_features, seed=m.seed).to(device) for m in members]
    batch_size = config.batch_size_for(len(data.train))
    steps_per_epoch = max(1, -(-len(data.train) // batch_size))
    # As fairopt bench: the dual window never spans more than one pass over the split the λ-players read.
    dual_split = data.validation if heldout_duals else data.train
    trainer = SweepTrainer(
        models, members, built[0], data.num_groups, lr=config.lr, dual_lr=config.dual_lr, proxy=config.proxy,
        dual_min_count=config.dual_min_count, dual_max_window=max(1, -(-len(dual_split) // batch_size)),
        dual_source="heldout" if heldout_duals else "train",
    )  # fmt: skip
    epochs = config.epochs_for(model)
    total = epochs * steps_per_epoch
    record_every = max(1, total // config.records_per_run)
    train_t, val_t = _split_tensors(data.train, device), _split_tensors(data.validation, device)
    dual_t = val_t if heldout_duals else train_t  # the margins of the λ-players: standard errors on what they read
    heldout = [_cycle(data.validation, batch_size, s) for s in seed_list] if heldout_duals else None
    seed_of = torch.tensor([seed_list.index(m.seed) for m in members], device=device)
    say(
        f"sweep: {len(members)} members ({len(tols)} tolerances x {len(seed_list)} seeds + {len(weights)} penalty "
        f"coefficients x {len(seed_list)} seeds) of {model}, {epochs} epochs x {steps_per_epoch} steps of {batch_size}"
    )
    start, evaluation = time.perf_counter(), 0.0
    trainer.margin = _margins(trainer, trainer.evaluate(*dual_t), config.margin_z)
    for epoch in range(epochs):
        loaders = [data.train.loader(batch_size=batch_size, shuffle=True, seed=s * 1000 + epoch) for s in seed_list]
        for batches in zip(*loaders):
            x, y, a = _per_member(batches, seed_of, device)
            held = None if heldout is None else _per_member([next(h) for h in heldout], seed_of, device)
            trainer.step(x, y, a, heldout=held)
            if trainer.num_steps % record_every == 0 or trainer.num_steps == total:
                t0 = time.perf_counter()
                trainer.margin = _margins(trainer, trainer.evaluate(*dual_t), config.margin_z)
                val = trainer.evaluate(*val_t)
                trainer.record(val, margin=_margins(trainer, val, config.margin_z))
                evaluation += time.perf_counter() - t0
        say(f"sweep: epoch {epoch + 1}/{epochs}")
    seconds = time.perf_counter() - start - evaluation
    states, selections = [], []
    with warnings.catch_warnings():  # the selection text says when a margin could not be met
        warnings.simplefilter("ignore", UserWarning)
        for m, records in zip(members, trainer.records):
            if m.method == "penalty":
                states.append(records[len(records) - 1].state)
                selections.append("last iterate")
                continue
            best = records.best_index(rank_objectives=False)
            states.append(records[best].state)
            note = " with margin" if records.margin_used else " (margin not met)" if records.margin_missed else ""
            selections.append(f"best iterate on validation{note} (step {records[best].step} of {total})")
    multipliers = trainer.multipliers.cpu().tolist()
    trainer.model.load_member_states(states)  # type: ignore[arg-type]
    reports: dict[str, list[FairnessReport]] = {}
    constant: list[bool] = []
    for split in ("audit", "test"):
        tables = trainer.evaluate(*_split_tensors(data.split(split), device)).cpu()
        if split == "audit":
            constant = [constant_prediction(GroupStats(t.double())) is not None for t in tables]
            audit_table = GroupStats(tables[0].double())
        reports[split] = [
            FairnessReport.from_stats(GroupStats(tables[j].double()), [make_constraint(constraint, m.tolerance)],
                                      group_names=data.group_names, split=split, rates=("accuracy",))
            for j, m in enumerate(members)
        ]  # fmt: skip
    points = [
        FrontierPoint(m.label, m.method, m.tolerance, m.seed, m.penalty_coefficient, selections[j],
                      SplitEstimate.from_report(reports["audit"][j]), SplitEstimate.from_report(reports["test"][j]),
                      tuple(multipliers[j]), constant[j])
        for j, m in enumerate(members)
    ]  # fmt: skip
    picked = pick_member(points, bound)
    notes = [
        f"{len(data.train)} training, {len(data.validation)} validation, {len(data.audit)} held-out (audit), "
        f"{len(data.test)} test rows; groups {', '.join(data.group_names)}; {epochs} epochs x {steps_per_epoch} "
        f"steps of {batch_size} rows",
        f"penalty members train at the strictest tolerance ({min(tols):g}) and keep their last iterate"
        if weights
        else "no penalty baseline",
        *data_warnings,
    ]
    if any(constant):
        notes.append(f"{sum(constant)} member(s) predict one label for every held-out row (marked constant, never "
                     "picked): their parity constraints are met trivially")  # fmt: skip
    notes += _below_majority_notes(points, audit_table, picked)
    if picked is None:
        notes.append(f"no member's held-out upper bound meets the bound {bound:g}")
    say(f"sweep: trained in {seconds:.1f} s")
    settings = {**_config_dict(config, tols, weights), "heldout_duals": heldout_duals}
    return SweepResult(points, bound, picked, str(built[0].expr), config=settings, seconds=seconds, notes=notes,
                       provenance=recorded)  # fmt: skip


def _below_majority_notes(points: Sequence[FrontierPoint], audit: GroupStats, picked: int | None) -> list[str]:
    """A note on the members whose held-out accuracy is below predicting the majority label for every held-out
    row (``audit``: a member's held-out table; the labels are the same for all): a constant prediction meets every
    parity constraint and would be the better model (typical when a group holds a handful of rows, whose rates then
    swing the gaps)."""
    from fairopt.bench.runner import majority_baseline

    baseline = majority_baseline(audit)
    if baseline is None:
        return []
    majority, label = baseline
    below = [p for p in points if not p.constant and p.audit.accuracy is not None and p.audit.accuracy < majority]
    if not below:
        return []
    notes = [
        f"{len(below)} member(s) have a held-out accuracy below {majority:.3f}, that of predicting {label} for every "
        f"held-out row (a constant classifier meets parity constraints trivially): {', '.join(p.label for p in below)}"
    ]
    if picked is not None and points[picked] in below:
        notes.append("the pick is one of them: look at the group sizes above (a group with few rows makes every "
                     "gap noisy), pool small groups, or loosen the bound")  # fmt: skip
    return notes


def _config_dict(config: StudyConfig, tols: tuple[float, ...], weights: tuple[float, ...]) -> dict[str, Any]:
    """The settings a sweep ran with (written to sweep.json), as :func:`sweep`'s arguments, so that
    ``sweep(settings.pop("tolerances"), bound=..., **settings)`` runs it again: a csv dataset's label column and
    positive values too, the sensitive columns actually used (the bundled default when none was given) and the
    split fractions."""
    keep = ("dataset", "constraint", "epochs", "epochs_large", "seeds", "lr", "dual_lr", "proxy", "train_size",
            "batch_size", "margin_z", "dual_min_count", "records_per_run", "device", "validation_fraction",
            "audit_fraction")  # fmt: skip
    out = {k: getattr(config, k) for k in keep}
    (out["model"],) = config.models
    out["sensitive"] = config.sensitive_attributes()
    if config.dataset.startswith("csv:"):  # absolute: a rerun from another working directory reads the same file
        out.update(dataset=f"csv:{Path(config.dataset[4:]).resolve()}", csv_target=config.csv_target,
                   csv_positive_label=config.csv_positive_label)  # fmt: skip
    out.update(tolerances=list(tols), penalty_coefficients=list(weights))
    return out
