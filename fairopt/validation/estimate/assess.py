r"""An interval and a verdict for every entry of a constraint.

**Which interval** (``ReportOptions.constraint_method="auto"``), per entry, in the units of the expression:

==============================================  ===========================================================
entry (normal form of :mod:`.forms`)            interval
==============================================  ===========================================================
one group rate (``RateBound``)                  Wilson or Clopper-Pearson (``ReportOptions.method``)
one mean loss (``BoundedGroupLoss``)            Student-t interval of a (weighted) mean
difference of two group rates                   Newcombe's hybrid score, method 10 (Newcombe, Stat. Med.
(``tpr(1) - tpr(0)``)                           17:873, 1998)
linear form of independent group rates          MOVER (Zou & Donner, Stat. Med. 27:1693, 2008), which is
(``|tpr[g] - tpr[overall]|``, p%-rule forms)    Newcombe's method generalized; the overall rate is expanded
                                                as the denominator-weighted mean of the group rates
max/min over linear forms (``max_min``          each of the k distinct forms at level ``1 - α/k``
convention, ``|·|``, ``.max()``)                (Bonferroni), then ``[max lower, max upper]``: it covers
                                                the extremum whenever all k cover
anything else, or forms with dependent terms    percentile bootstrap of :mod:`.bootstrap`
(a rate and another rate of the same examples)
==============================================  ===========================================================

Terms are independent when they are rates of different groups, or rates of one group whose denominators are
disjoint sets of examples (TPR and FPR: positives and negatives); then, conditionally on the denominators, they
are independent binomials. Before an analytic interval is used, the point value of the normal form is checked
against ``Constraint.evaluate``; on any mismatch the bootstrap is used instead.

**Verdict** at the report's confidence: ``satisfied`` if the interval's upper end is at or below the tolerance,
``violated`` if its lower end is above it, else ``cannot tell`` (the interval contains the bound, or the entry
is undefined, or no interval is available). The two-sided interval makes each verdict a one-sided statement at
level ``(1 + confidence) / 2``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from fairopt.constraints.base import Constraint
from fairopt.rates import RATES
from fairopt.stats import GroupStats
from fairopt.validation.estimate.bootstrap import bootstrap_constraint_interval
from fairopt.validation.estimate.estimates import RateEstimates, rate_estimates
from fairopt.validation.estimate.forms import Extremum, Form, Linear, RateLookup, extract_forms, form_values
from fairopt.validation.estimate.intervals import mover_interval
from fairopt.validation.measure.moments import SecondMoments
from fairopt.validation.report.options import ReportOptions
from fairopt.validation.report.results import ConstraintResult, EntryResult, Verdict, optional_float

__all__ = ["assess_constraint"]

_EPS = 1e-12
Interval = tuple[float, float, str]
EstimatesFn = Callable[..., RateEstimates]  # (rate, confidence, pooled ids=None) -> per-group or pooled estimates


def _independent(form: Linear) -> bool:
    seen: dict[int, list[frozenset[str]]] = {}
    for (rate, group), _ in form.terms:
        cells = frozenset(RATES[rate].denominator)
        if any(cells & other for other in seen.get(group, [])):
            return False
        seen.setdefault(group, []).append(cells)
    return True


def _linear_interval(form: Linear, estimates: EstimatesFn, confidence: float, method: str) -> Interval | None:
    if not form.terms:
        return form.const, form.const, "constant"
    if form.pooled is not None:  # a + c · rate[pooled groups]: the pooled proportion's own interval
        rate, c, ids = form.pooled
        est = estimates(rate, confidence, ids)
        value, lo, hi = (float(a[0]) for a in (est.value, est.lower, est.upper))
        point = form.const + sum(k * float(estimates(r, confidence).value[g]) for (r, g), k in form.terms)
        shift = point - c * value
        lo, hi = sorted((shift + c * lo, shift + c * hi))
        return lo, hi, ("student-t" if rate == "mean_loss" else method)
    if not _independent(form):
        return None
    thetas, lowers, uppers, coefs = [], [], [], []
    for (rate, group), coef in form.terms:
        est = estimates(rate, confidence)
        thetas.append(est.value[group])
        lowers.append(est.lower[group])
        uppers.append(est.upper[group])
        coefs.append(coef)
    lo, hi = mover_interval(thetas, lowers, uppers, coefs, form.const)
    has_loss = any(rate == "mean_loss" for (rate, _), _ in form.terms)
    if len(form.terms) == 1:
        label = "student-t" if has_loss else method
    else:
        label = "newcombe" if method == "wilson" and not has_loss else "mover"
    return float(lo), float(hi), label


def _has_mirror_pair(items: Sequence[Linear]) -> bool:
    keys = {(i.const, i.terms) for i in items}
    return any((-i.const, tuple((k, -c) for k, c in i.terms)) in keys for i in items if i.terms)


def _extremum_interval(form: Extremum, estimates: EstimatesFn, confidence: float, method: str) -> Interval | None:
    items = [i for i in form.items if i.defined]
    k = max(1, len({i.sign_free_key() for i in items if i.terms}))
    level = 1.0 - (1.0 - confidence) / k
    parts = [_linear_interval(i, estimates, level, method) for i in items]
    if any(p is None for p in parts):
        return None
    lows = [p[0] for p in parts if p is not None]
    highs = [p[1] for p in parts if p is not None]
    labels = sorted({p[2] for p in parts if p is not None and p[2] != "constant"}) or ["constant"]
    if np.isnan(lows).any() or np.isnan(highs).any():  # an item without an interval (e.g. mean loss, no moments)
        return float("nan"), float("nan"), "+".join(labels)
    pick = max if form.how == "max" else min
    lo, hi = pick(lows), pick(highs)
    if _has_mirror_pair(items):  # max(L, -L) = |L| >= 0, min(L, -L) = -|L| <= 0
        lo, hi = (max(lo, 0.0), hi) if form.how == "max" else (lo, min(hi, 0.0))
    label = "+".join(labels) + (f", bonferroni over {k} forms" if k > 1 else "")
    return lo, hi, label


def _form_interval(form: Form, estimates: EstimatesFn, confidence: float, method: str) -> Interval | None:
    if isinstance(form, Linear):
        return _linear_interval(form, estimates, confidence, method)
    return _extremum_interval(form, estimates, confidence, method)


def _analytic_forms(constraint: Constraint, lookup: RateLookup, values: np.ndarray) -> list[Form] | None:
    expr = getattr(constraint, "expr", None)
    if expr is None or not constraint.expression_based:
        return None
    forms = extract_forms(expr, lookup)
    if forms is None or len(forms) != len(values):
        return None
    expected = form_values(forms, lookup)
    same_defined = np.array_equal(np.isnan(expected), np.isnan(values))
    if not same_defined or not np.allclose(expected, values, rtol=1e-9, atol=1e-9, equal_nan=True):
        return None
    return forms


def _missing_rates(form: Form | None, lookup: RateLookup) -> list[tuple[str, int]]:
    """The ``(rate, group)`` terms of ``form`` whose rate is undefined on ``lookup``'s table, in order, once each."""
    missing: list[tuple[str, int]] = []
    items = [] if form is None else ([form] if isinstance(form, Linear) else list(form.items))
    for item in items:
        for (rate, group), _ in item.terms:
            if not lookup(rate)[1][group] and (rate, group) not in missing:
                missing.append((rate, group))
    return missing


def undefined_because(rate: str) -> str:
    """Why ``rate`` is undefined in a group, e.g. ``"no examples with label = 1"`` for the TPR."""
    description = RATES[rate].description
    return f"no examples with {description.split('|')[1].strip().rstrip(')')}" if "|" in description else "no examples"


def _excluded(form: Form | None, lookup: RateLookup, names: Sequence[str]) -> tuple[str, ...]:
    """Names of the groups an extremum entry left out (a rate it compares is undefined there)."""
    if not isinstance(form, Extremum):
        return ()
    return tuple(names[g] for g in sorted({g for _, g in _missing_rates(form, lookup)}))


def _undefined_reason(form: Form | None, lookup: RateLookup, names: Sequence[str]) -> str:
    missing = _missing_rates(form, lookup)
    detail = ", ".join(f"{rate}[{names[g]}]: {undefined_because(rate)}" for rate, g in missing)
    if (isinstance(form, Extremum) and not form.enough) or (isinstance(form, Linear) and not missing):
        return (
            f"undefined: it compares groups, and too few have the rates it needs ({detail or 'one group'}); "
            "a gap over one group would be 0 whatever the others do, so it can be neither satisfied nor violated"
        )
    detail = f" ({detail})" if detail else ""
    return (
        f"undefined: a rate it needs has a zero denominator{detail}; "
        "it can be neither satisfied nor violated on these data"
    )


def nonnegative_losses(stats: GroupStats, options: ReportOptions) -> np.ndarray:
    """``(G,)`` bool: rows whose mean-loss interval is clipped at 0 (``options.loss_nonnegative``, and a loss sum
    that is not negative: a negative sum proves that some loss is)."""
    return np.asarray(options.loss_nonnegative & (stats.column("loss").detach().cpu().double().numpy() >= 0))


def _verdict(lo: float | None, hi: float | None, tol: float, conf: float) -> tuple[Verdict, str]:
    if lo is None or hi is None:
        return Verdict.CANNOT_TELL, "no interval is available for this entry (e.g. mean loss without its moments)"
    level = f"{conf:.0%}"
    if hi <= tol + _EPS:
        return Verdict.SATISFIED, f"the {level} interval [{lo:.4g}, {hi:.4g}] lies at or below the bound {tol:g}"
    if lo > tol + _EPS:
        return Verdict.VIOLATED, f"the {level} interval [{lo:.4g}, {hi:.4g}] lies above the bound {tol:g}"
    return Verdict.CANNOT_TELL, f"the {level} interval [{lo:.4g}, {hi:.4g}] contains the bound {tol:g}"


def assess_constraint(
    constraint: Constraint,
    stats: GroupStats,
    *,
    moments: SecondMoments | None = None,
    group_names: Sequence[str] | None = None,
    options: ReportOptions | None = None,
) -> ConstraintResult:
    """Evaluate ``constraint`` on ``stats`` with an interval and a verdict per entry (see the module docstring).

    Args:
        constraint: any :class:`~fairopt.constraints.base.Constraint`.
        stats: the ``(G, K)`` table (e.g. of held-out data), moments: its :class:`SecondMoments` (``None``:
            unweighted counts, no mean-loss intervals).
        group_names: G names (default ``"0"``, ``"1"``, ...). options: :class:`ReportOptions` (default ones).

    Returns:
        :class:`~fairopt.validation.report.results.ConstraintResult`; entry values are ``Constraint.evaluate``'s hard
        values plus the tolerance (the expression's value).

    Raises:
        ValueError: the constraint refers to a group id ``>= G``, or ``group_names`` has the wrong length.
    """
    options = options or ReportOptions()
    num_groups = stats.num_groups
    names = [str(i) for i in range(num_groups)] if group_names is None else list(group_names)
    if len(names) != num_groups:
        raise ValueError(f"group_names has {len(names)} names but the statistics have {num_groups} groups")
    constraint.check_num_groups(num_groups)
    stats = stats.detach()
    value = constraint.evaluate(stats)
    defined = value.defined.cpu().numpy().astype(bool)
    values = constraint.expression_values(value)
    lookup = RateLookup(stats)
    forms = _analytic_forms(constraint, lookup, values) if options.constraint_method == "auto" else None

    cache: dict[tuple[str, float, tuple[int, ...] | None], RateEstimates] = {}

    def estimates(rate: str, confidence: float, pooled: tuple[int, ...] | None = None) -> RateEstimates:
        """Per-group estimates, or (``pooled`` ids) the estimate of those groups pooled as one ``(1,)`` row."""
        key = (rate, confidence, pooled)
        if key not in cache:
            table, extra = stats, moments
            if pooled is not None:
                table = GroupStats(stats.table[list(pooled)].sum(dim=0, keepdim=True))
                extra = None if moments is None else SecondMoments(moments.table[list(pooled)].sum(dim=0, keepdim=True))
            cache[key] = rate_estimates(
                table,
                rate,
                moments=extra,
                confidence=confidence,
                method=options.method,
                loss_nonnegative=nonnegative_losses(table, options),
            )
        return cache[key]

    intervals: list[Interval | None] = [
        _form_interval(f, estimates, options.confidence, options.method) if forms is not None and f.defined else None
        for f in (forms or [None] * len(values))
    ]
    if any(iv is None and d for iv, d in zip(intervals, defined)):
        lo_b, hi_b = bootstrap_constraint_interval(
            constraint,
            stats,
            moments=moments,
            confidence=options.confidence,
            n_resamples=options.n_resamples,
            seed=options.seed,
            loss_nonnegative=bool(nonnegative_losses(stats, options).all()),
        )
        intervals = [
            iv if iv is not None or not d else (float(lo_b[i]), float(hi_b[i]), f"bootstrap ({options.n_resamples})")
            for i, (iv, d) in enumerate(zip(intervals, defined))
        ]

    entries = []
    tol = constraint.tolerance
    for i, name in enumerate(constraint.entry_names(names)):
        form = forms[i] if forms is not None else None
        groups = tuple(names[g] for g in sorted(form.groups)) if form is not None else tuple(names)
        excluded = _excluded(form, lookup, names)
        if not defined[i]:
            entries.append(
                EntryResult(
                    name,
                    None,
                    None,
                    None,
                    tol,
                    None,
                    Verdict.CANNOT_TELL,
                    "none",
                    _undefined_reason(form, lookup, names),
                    (),
                    groups,
                    excluded,
                )
            )
            continue
        iv = intervals[i]
        assert iv is not None
        lo, hi = optional_float(iv[0]), optional_float(iv[1])
        val = float(values[i])
        verdict, reason = _verdict(lo, hi, tol, options.confidence)
        if excluded:
            reason += f"; groups left out (a rate they need is undefined): {', '.join(excluded)}"
        entries.append(
            EntryResult(name, val, lo, hi, tol, max(0.0, val - tol), verdict, iv[2], reason, (), groups, excluded)
        )
    label = constraint.label(names)
    return ConstraintResult(
        constraint.name, type(constraint).__name__, tol, tuple(entries), "" if label == constraint.name else label
    )
