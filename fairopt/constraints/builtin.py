r"""Built-in group-fairness constraints, each a rate expression ``<= tolerance``.

Conventions for comparing a rate ``r`` across groups (argument ``convention``):

``"max_min"`` (default)
    one entry ``max_g r_g - min_g r_g <= tolerance``; the quantity fairlearn reports as
    ``*_difference(method="between_groups")``.
``"vs_overall"``
    ``G`` entries ``|r_g - r| <= tolerance``, each group against the overall (pooled) rate ``r``: the
    comparison of fairlearn's reductions moments (Agarwal, Beygelzimer, Dudík, Langford, Wallach, "A Reductions
    Approach to Fair Classification", ICML 2018), with the two signed inequalities folded into one ``abs``.
``"pairwise"``
    ``G(G-1)/2`` entries ``|r_a - r_b| <= tolerance``, one multiplier per pair of groups.

Groups whose rate is undefined (zero denominator) are skipped: see :mod:`fairopt.constraints.base`. Every convention
compares groups, so with fewer than two groups that have the rate its entries are undefined (never 0, "satisfied").
"""

from __future__ import annotations

from fairopt._validation import require_number
from fairopt.constraints.base import Constraint
from fairopt.constraints.expressions import Expr, RateRef, compares_groups, concat, pairwise
from fairopt.rates import canonical_rate_name

__all__ = [
    "CONVENTIONS",
    "BoundedGroupLoss",
    "DemographicParity",
    "DisparateImpact",
    "EqualOpportunity",
    "EqualizedOdds",
    "ErrorRateParity",
    "FalsePositiveRateParity",
    "PredictiveParity",
    "RateBound",
    "rate_parity",
]

CONVENTIONS = ("max_min", "vs_overall", "pairwise")


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")


def _check_tolerance(tolerance: float) -> float:
    tolerance = require_number("tolerance", tolerance, "a rate difference in [0, 1], e.g. 0.05")
    if not (0.0 <= tolerance <= 1.0):
        raise ValueError(f"tolerance is a rate difference and must be in [0, 1], got {tolerance}")
    return tolerance


def _check_p(p: float) -> float:
    p = require_number("p", p, "the p%-rule ratio in (0, 1], e.g. 0.8")
    if not (0.0 < p <= 1.0):
        raise ValueError(f"p (the p%-rule ratio) must be in (0, 1], got {p}")
    return p


def rate_parity(rate: str, convention: str = "max_min") -> Expr:
    """The expression whose value is bounded by a parity constraint on ``rate`` under ``convention``."""
    _check_convention(convention)
    per_group = RateRef(rate).per_group()
    if convention == "max_min":
        return per_group.max() - per_group.min()
    if convention == "vs_overall":  # undefined when one group has the rate: it is then the overall rate
        return compares_groups(abs(per_group - RateRef(rate)()), per_group)
    return abs(pairwise(per_group, symmetric=True))


class _Parity(Constraint):
    rates: tuple[str, ...] = ()

    def __init__(self, tolerance: float = 0.0, *, convention: str = "max_min") -> None:
        tolerance = _check_tolerance(tolerance)
        parts = [rate_parity(r, convention) for r in self.rates]
        expr = parts[0] if len(parts) == 1 else concat(*parts)
        self.convention = convention
        super().__init__(expr, tolerance, name=f"{type(self).__name__}(tolerance={tolerance:g}, {convention})")


class DemographicParity(_Parity):
    """Demographic (statistical) parity: selection rates ``P(ŷ=1 | a)`` within ``tolerance`` across groups.

    Source: Calders & Verwer, "Three naive Bayes approaches for discrimination-free classification", 2010;
    Dwork et al., "Fairness through awareness", ITCS 2012. See the module docstring for ``convention``.
    """

    rates = ("selection_rate",)


class EqualOpportunity(_Parity):
    """Equal opportunity: true positive rates ``P(ŷ=1 | y=1, a)`` within ``tolerance`` across groups.

    Source: Hardt, Price, Srebro, "Equality of Opportunity in Supervised Learning", NeurIPS 2016, Definition 2.
    """

    rates = ("true_positive_rate",)


class EqualizedOdds(_Parity):
    """Equalized odds: TPR *and* FPR within ``tolerance`` across groups (entries: TPR part, then FPR part).

    Source: Hardt, Price, Srebro, NeurIPS 2016, Definition 1. With ``convention="max_min"`` the largest entry
    equals fairlearn's ``equalized_odds_difference``.
    """

    rates = ("true_positive_rate", "false_positive_rate")


class FalsePositiveRateParity(_Parity):
    """False positive rate parity (predictive equality): FPR within ``tolerance`` across groups.

    Source: Chouldechova, "Fair prediction with disparate impact", Big Data 2017; Hardt et al. 2016.
    """

    rates = ("false_positive_rate",)


class ErrorRateParity(_Parity):
    """Error-rate parity (overall accuracy equality): error rates within ``tolerance`` across groups.

    Source: Agarwal et al., ICML 2018 (fairlearn's ``ErrorRateParity`` moment); Berk et al. 2018.
    """

    rates = ("error_rate",)


class PredictiveParity(_Parity):
    """Predictive parity: precision ``P(y=1 | ŷ=1, a)`` within ``tolerance`` across groups.

    Source: Chouldechova 2017. Precision's denominator depends on predictions, so its proxy is a ratio of proxy
    counts, not a bound (see :mod:`fairopt.rates`).
    """

    rates = ("precision",)


class DisparateImpact(Constraint):
    r"""The p%-rule on a rate (default selection rate): ``min_a r_a / max_a r_a >= p``, written linearly.

    Linear forms (no division, so gradients stay bounded; Zafar et al., AISTATS 2017, Section 3):

    * ``"max_min"``: one entry ``p * max_a r_a - min_a r_a <= 0``;
    * ``"vs_overall"``: ``G`` entries ``p * r - r_a <= 0`` (each group's rate at least ``p`` times the overall);
    * ``"pairwise"``: ``G(G-1)`` entries ``p * r_b - r_a <= 0`` for every ordered pair.

    Source: Feldman, Friedler, Moeller, Scheidegger, Venkatasubramanian, "Certifying and Removing Disparate
    Impact", KDD 2015 (the 80% rule: ``p = 0.8``).

    Raises:
        ValueError: ``p`` not in (0, 1], unknown convention or rate.
    """

    def __init__(self, p: float = 0.8, *, rate: str = "selection_rate", convention: str = "max_min") -> None:
        _check_convention(convention)
        p = _check_p(p)
        rate = canonical_rate_name(rate)
        r = RateRef(rate).per_group()
        if convention == "max_min":
            expr = p * r.max() - r.min()
        elif convention == "vs_overall":
            expr = compares_groups(p * RateRef(rate)() - r, r)
        else:
            expr = pairwise(p * r, r)  # entry (a, b) = p * r_a - r_b
        self.p, self.convention = p, convention
        super().__init__(expr, 0.0, name=f"DisparateImpact(p={p:g}, {rate}, {convention})")


class BoundedGroupLoss(Constraint):
    """Bounded group loss: each group's mean loss ``E[loss | a] <= bound`` (loss units).

    Needs the per-example loss passed to :func:`fairopt.group_stats` (``loss=``). Source: Agarwal, Dudík, Wu,
    "Fair Regression: Quantitative Definitions and Reduction-Based Algorithms", ICML 2019 (fairlearn's
    ``BoundedGroupLoss``).
    """

    def __init__(self, bound: float) -> None:
        self.bound = require_number("bound", bound, "a mean loss per group, in the loss's units")
        super().__init__(RateRef("mean_loss").per_group(), self.bound, name=f"BoundedGroupLoss(bound={self.bound:g})")


class RateBound(Constraint):
    """A per-group floor and/or ceiling on any rate, e.g. ``RateBound("tpr", min=0.8)`` (recall >= 0.8 for each group).

    Entries: ``min - r_g <= 0`` for every group (if ``min`` is given), then ``r_g - max <= 0`` (if ``max``).
    With ``overall=True`` the bound applies to the pooled rate instead (one entry per bound). Source: rate
    constraints of Cotter et al., JMLR 2019 (Section 1, e.g. recall constraints).

    Raises:
        ValueError: neither bound given, or ``min > max``.
    """

    def __init__(self, rate: str, *, min: float | None = None, max: float | None = None, overall: bool = False) -> None:
        if min is None and max is None:
            raise ValueError("RateBound needs min=, max= or both")
        min = None if min is None else require_number("min", min, "a rate in [0, 1], e.g. 0.8")
        max = None if max is None else require_number("max", max, "a rate in [0, 1], e.g. 0.2")
        if min is not None and max is not None and min > max:
            raise ValueError(f"RateBound min={min} is larger than max={max}")
        ref = RateRef(rate)() if overall else RateRef(rate).per_group()
        parts: list[Expr] = []
        if min is not None:
            parts.append(min - ref)
        if max is not None:
            parts.append(ref - max)
        expr = parts[0] if len(parts) == 1 else concat(*parts)
        self.rate, self.min, self.max = canonical_rate_name(rate), min, max
        bounds = ", ".join(f"{k}={v:g}" for k, v in (("min", min), ("max", max)) if v is not None)
        super().__init__(expr, 0.0, name=f"RateBound({rate}, {bounds})")
