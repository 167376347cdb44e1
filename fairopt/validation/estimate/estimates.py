"""Per-group rate estimates with confidence intervals, from a ``GroupStats`` table (and its second moments).

A rate of :mod:`fairopt.rates` that is a ratio of confusion cells is a (weighted) proportion: its interval is a
Wilson or Clopper-Pearson interval on the binomial-equivalent counts of :func:`~fairopt.validation.intervals.
effective_counts` (the raw counts when there are no weights). ``mean_loss`` is a mean: its interval is the
Student-t interval with the weighted-mean standard error ``sqrt(Σ w²(l - m)² · n/(n-1)) / Σ w`` and Kish's
effective size minus one as degrees of freedom, which needs the loss moments of
:class:`~fairopt.validation.measure.moments.SecondMoments` (unavailable: NaN bounds).

**Ranges.** Proportion intervals lie in [0, 1]. A mean-loss interval is clipped at 0 only where the caller says
every loss summed into the row is ``>= 0`` (``loss_nonnegative``): fairopt does not guarantee it, because the
per-example loss is the user's ``loss_fn`` (only checked to be finite; the default
:func:`~fairopt.validation.log_loss` is ``>= 0``), and the table's sums cannot tell. Without that knowledge the
Student-t interval is reported as is, and may reach below 0 for small or skewed groups.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fairopt.rates import RATES, canonical_rate_name, compute_rate
from fairopt.stats import GroupStats
from fairopt.validation.estimate.intervals import effective_counts, mean_interval, proportion_interval
from fairopt.validation.measure.moments import SecondMoments

__all__ = ["RateEstimates", "rate_estimates"]


@dataclass(frozen=True)
class RateEstimates:
    """One rate for each row of a table, with intervals; all ``(G,)`` float64 numpy arrays (host).

    Attributes:
        rate: canonical rate name.
        value: point estimate (the hard rate of :func:`fairopt.compute_rate`); NaN where undefined.
        lower, upper: interval bounds; NaN where undefined or unavailable.
        defined: bool, False where the denominator is 0.
        denominator: weighted denominator count (examples, or weight units).
        effective_n: binomial-equivalent sample size behind the interval (= denominator without weights);
            for ``mean_loss`` the Kish effective size.
    """

    rate: str
    value: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    defined: np.ndarray
    denominator: np.ndarray
    effective_n: np.ndarray


def _cells(stats: GroupStats) -> dict[str, np.ndarray]:
    table = stats.table.detach().cpu().double().numpy()
    return {name: table[:, i] for i, name in enumerate(stats.COLUMNS)}


def rate_estimates(
    stats: GroupStats,
    rate: str,
    *,
    moments: SecondMoments | None = None,
    confidence: float = 0.95,
    method: str = "wilson",
    loss_nonnegative: bool | Sequence[bool] | np.ndarray = False,
) -> RateEstimates:
    """Estimate ``rate`` for every row of ``stats`` with a ``confidence`` interval.

    Args:
        stats: a ``(G, K)`` table (``stats.overall()`` for the pooled row).
        rate: a rate name or alias of :mod:`fairopt.rates`.
        moments: the matching :class:`SecondMoments` (``moments.overall()`` for the pooled row). ``None`` treats
            the weighted counts as plain counts (exact for unweighted data) and leaves mean-loss bounds NaN.
        confidence: two-sided level in (0, 1).
        method: ``"wilson"`` or ``"clopper-pearson"`` for proportions (mean loss always uses the Student-t interval).
        loss_nonnegative: whether every per-example loss summed into a row is ``>= 0`` (one bool, or one per row,
            shape ``(G,)``); where True the mean-loss interval is clipped to ``[0, inf)``. Default False (no
            clipping): fairopt accepts any finite loss. Pass True for :func:`~fairopt.validation.log_loss` or any
            loss bounded below by 0, or the per-group observation "no loss < 0" from collecting the data.

    Returns:
        :class:`RateEstimates` of ``(G,)`` arrays.

    Raises:
        ValueError: unknown rate or method, confidence outside (0, 1), moments with another number of groups,
            ``loss_nonnegative`` of another length than the rows, or True where the mean loss is negative.
    """
    name = canonical_rate_name(rate)
    if moments is not None and moments.num_groups != stats.num_groups:
        raise ValueError(f"moments have {moments.num_groups} groups but stats have {stats.num_groups}")
    rv = compute_rate(stats, name)
    defined = rv.defined.detach().cpu().numpy().astype(bool)
    value = np.where(defined, rv.value.detach().cpu().double().numpy(), np.nan)
    denominator = rv.denominator.detach().cpu().double().numpy()
    if name == "mean_loss":
        floor = _loss_floor(loss_nonnegative, value)
        lower, upper, n_eff = _mean_interval(value, denominator, moments, confidence, floor)
    else:
        spec, cells = RATES[name], _cells(stats)
        successes = sum(cells[c] for c in spec.numerator)
        if moments is None:
            x, n = successes, denominator
        else:
            x, n = effective_counts(
                successes,
                denominator,
                sum(moments.column(f"w2_{c}") for c in spec.numerator),
                sum(moments.column(f"w2_{c}") for c in spec.denominator),
            )
        lower, upper = proportion_interval(np.minimum(x, n), n, confidence, method)
        n_eff = n
    lower, upper = np.where(defined, lower, np.nan), np.where(defined, upper, np.nan)
    return RateEstimates(name, value, lower, upper, defined, denominator, np.where(defined, n_eff, 0.0))


def _loss_floor(loss_nonnegative: bool | Sequence[bool] | np.ndarray, mean: np.ndarray) -> np.ndarray:
    """``(G,)`` lower bounds of the mean loss ``mean (G,)``: 0 where the losses are non-negative, else NaN (none).

    Raises:
        ValueError: flags of another length than ``mean``, or a flagged row whose mean loss is negative.
    """
    rows = mean.shape[0]
    flags = np.asarray(loss_nonnegative, dtype=bool)
    if flags.ndim > 1 or (flags.ndim == 1 and flags.shape[0] != rows):
        raise ValueError(f"loss_nonnegative must be one bool or one per row ({rows},), got shape {flags.shape}")
    flags = np.broadcast_to(flags, (rows,))
    negative = flags & (np.nan_to_num(mean) < -1e-12)
    if negative.any():
        raise ValueError(
            f"loss_nonnegative is True for rows {np.flatnonzero(negative).tolist()}, but their mean loss is negative "
            f"({mean[negative].tolist()}): some losses there are < 0, so the interval must not be clipped at 0"
        )
    return np.where(flags, 0.0, np.nan)


def _mean_interval(
    mean: np.ndarray,
    weight: np.ndarray,
    moments: SecondMoments | None,
    confidence: float,
    floor: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if moments is None:
        nan = np.full_like(mean, np.nan)
        return nan, nan, weight
    w2 = sum(moments.column(f"w2_{c}") for c in ("tn", "fp", "fn", "tp"))
    s1, s2, n = moments.column("w2_loss"), moments.column("w2_loss2"), moments.column("examples")
    with np.errstate(invalid="ignore", divide="ignore"):
        m = np.nan_to_num(mean)
        spread = np.maximum(s2 - 2.0 * m * s1 + m * m * w2, 0.0) * n / (n - 1.0)
        se = np.where(n > 1, np.sqrt(spread) / weight, np.nan)
        n_kish = np.where(w2 > 0, weight**2 / w2, 0.0)
    lower, upper = mean_interval(mean, se, n_kish - 1.0, confidence, lower_bound=floor)
    return lower, upper, n_kish
