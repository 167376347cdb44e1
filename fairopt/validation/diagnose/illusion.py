r"""The illusion-of-fairness check: error-based constraints met on training data the model has memorized.

An over-parameterized network can interpolate its training set. Then every group's training error is about 0,
so TPR is about 1, FPR, FNR and error rate about 0 in every group, and every error-based gap is about 0 *on the
training data*, whatever the model does on new data; the constraint stops pushing during training and a train-set
check says nothing (Cherepanova, Nanda, Goldblum, Dickerson, Goldstein, "Technical Challenges for Training Fair
Neural Networks", ICLR 2021 Workshop on Responsible AI, arXiv:2102.06764).

:func:`flag_illusion` applies to a result measured on training data: an entry whose value depends on a rate that
compares predictions with labels (every rate but the selection rate and the base rate; mean loss too) and whose
groups all have a training error rate ``<= max_train_error`` is not reported as satisfied (or as undecided for
the usual reason): its verdict becomes *cannot tell*, flagged ``"illusion_of_fairness"``, with the reason.
A violated entry stays violated. A function constraint's rates cannot be inspected, so it is treated as error-based.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Sequence
from dataclasses import replace

from fairopt._validation import spelling, user_stacklevel
from fairopt.constraints.base import Constraint
from fairopt.rates import RATES, compute_rate
from fairopt.stats import GroupStats
from fairopt.validation.report.results import ConstraintResult, EntryResult, Verdict

__all__ = ["ERROR_BASED_RATES", "ILLUSION_FLAG", "flag_illusion", "is_training_split", "referenced_rates"]


def is_training_split(split: str | None) -> bool:
    """Whether a report's ``split`` is the training split, which gets the illusion-of-fairness check: ``"train"``
    or ``"training"``, whatever the case, whitespace, ``-``, ``_`` or ``.`` (:func:`fairopt._validation.spelling`).
    Any other name is the caller's own (``"calibration"``, ``"holdout"``, ``"dev-2"``), but one spelled nearly like
    ``"train"`` (``"trian"``, ``"trainig"``) warns (``UserWarning``): a misspelt ``"train"`` would turn the check off
    without a word."""
    if split is None:
        return False
    key = spelling(split)
    if key in ("train", "training"):
        return True
    if difflib.get_close_matches(key, ("train", "training"), n=1, cutoff=0.75):
        warnings.warn(
            f"split {split!r} is not the training split: did you mean 'train'? (only split='train' turns on the "
            "illusion-of-fairness check)",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
    return False


ILLUSION_FLAG = "illusion_of_fairness"
ERROR_BASED_RATES = frozenset(RATES) - {"selection_rate", "base_rate"}


def referenced_rates(constraint: Constraint) -> frozenset[str] | None:
    """The canonical names of the rates a constraint uses; ``None`` when unknown (a function of the table, or a
    subclass that evaluates something else than its expression)."""
    if not constraint.expression_based:
        return None
    return constraint.rate_names()


def _flag(entry: EntryResult, errors: dict[str, float], max_train_error: float) -> EntryResult:
    if entry.verdict is Verdict.VIOLATED or not entry.defined:
        return entry
    involved = {g: errors[g] for g in entry.groups if g in errors}
    if not involved or max(involved.values()) > max_train_error:
        return entry
    shown = ", ".join(f"{g}: {e:.1%}" for g, e in involved.items())
    reason = (
        f"illusion of fairness: the training error is at most {max_train_error:.1%} in every group involved "
        f"({shown}), so error-based rates are near-trivially equal on the training data whatever the model does on "
        "new data (Cherepanova et al. 2021); judge this constraint on held-out data"
    )
    return replace(entry, verdict=Verdict.CANNOT_TELL, reason=reason, flags=(*entry.flags, ILLUSION_FLAG))


def flag_illusion(
    result: ConstraintResult,
    constraint: Constraint,
    stats: GroupStats,
    group_names: Sequence[str],
    max_train_error: float = 0.01,
) -> ConstraintResult:
    """Flag the entries of ``result`` (measured on *training* data ``stats``) that are an illusion of fairness.

    Args:
        result: the constraint's result on the training table (:func:`~fairopt.validation.assess_constraint`).
        constraint: the constraint (its expression tells whether it is error-based).
        stats: the training ``(G, K)`` table. group_names: its G names.
        max_train_error: error-rate threshold (fraction) for "near zero".

    Returns:
        ``result`` with flagged entries replaced (unchanged when the constraint uses no error-based rate).
    """
    rates = referenced_rates(constraint)
    if rates is not None and not (rates & ERROR_BASED_RATES):
        return result
    error = compute_rate(stats, "error_rate")
    errors = {
        name: float(value)
        for name, value, ok in zip(group_names, error.value.tolist(), error.defined.tolist())
        if ok  # groups without training examples tell nothing either way
    }
    entries = tuple(_flag(e, errors, max_train_error) for e in result.entries)
    return replace(result, entries=entries)
