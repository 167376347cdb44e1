r"""Confidence intervals for proportions, means, and linear combinations of independent estimates.

All functions are vectorized over numpy arrays (any broadcastable shapes) and return ``(lower, upper)`` float64
arrays. A trial count of 0 gives NaN bounds (the callers in :mod:`fairopt.validation` map NaN to "undefined").

==================  ==========================================================================================
interval            source
==================  ==========================================================================================
Wilson score        Wilson, "Probable inference, the law of succession, and statistical inference", JASA 22
                    (1927); recommended by Brown, Cai, DasGupta, "Interval Estimation for a Binomial
                    Proportion", Statistical Science 16 (2001) and Agresti & Coull, Am. Stat. 52 (1998).
Clopper-Pearson     Clopper & Pearson, Biometrika 26 (1934): exact tail inversion via Beta quantiles;
                    conservative (coverage >= nominal).
Newcombe hybrid     Newcombe, "Interval estimation for the difference between independent proportions:
score               comparison of eleven methods", Stat. Med. 17:873-890 (1998), method 10: a difference of
                    two independent proportions, built from their Wilson intervals.
MOVER               Zou & Donner, "Construction of confidence limits about effect measures: a general
                    approach", Stat. Med. 27:1693-1702 (2008): "method of variance estimates recovery", the
                    generalization of Newcombe's method 10 to any linear combination of independent estimates.
==================  ==========================================================================================

**Weighted counts.** With example weights a count is not binomial. :func:`effective_counts` turns a weighted
proportion into the ``(successes, trials)`` of a binomial with the same estimate and the same (linearization)
variance, ``n* = p(1 - p) / Var(p)``, the effective sample size of Korn & Graubard, "Confidence intervals for
proportions with small expected number of positive counts estimated from survey data", Survey Methodology 24
(1998); where ``p`` is 0 or 1 Kish's ``(sum w)^2 / sum w^2`` is used. Without weights ``n* = n`` exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

__all__ = [
    "INTERVAL_METHODS",
    "clopper_pearson_interval",
    "effective_counts",
    "mean_interval",
    "mover_interval",
    "newcombe_interval",
    "proportion_interval",
    "wilson_interval",
]

INTERVAL_METHODS = ("wilson", "clopper-pearson")

ArrayLike = float | np.ndarray | Sequence[float]


def _z(confidence: float) -> float:
    """Two-sided standard normal quantile, e.g. 1.95996 for 0.95 (the standard library's, without scipy)."""
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def _check_confidence(confidence: float) -> None:
    if not (0.0 < confidence < 1.0):
        raise ValueError(f"confidence must be in (0, 1), e.g. 0.95, got {confidence!r}")


def _counts(successes: ArrayLike, trials: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    x, n = np.broadcast_arrays(np.asarray(successes, dtype=np.float64), np.asarray(trials, dtype=np.float64))
    if np.any(n < 0) or np.any(x < 0) or np.any(x > n * (1 + 1e-12) + 1e-12):
        raise ValueError("need 0 <= successes <= trials for a proportion interval")
    return np.minimum(x, n), n


def wilson_interval(successes: ArrayLike, trials: ArrayLike, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    r"""Wilson score interval for a binomial proportion ``successes / trials``.

    .. math:: \frac{x + z^2/2}{n + z^2} \pm \frac{z}{n + z^2}\sqrt{\frac{x(n - x)}{n} + \frac{z^2}{4}}

    Args:
        successes, trials: arrays of counts (real-valued effective counts are accepted), ``0 <= x <= n``.
        confidence: two-sided level in (0, 1).

    Returns:
        ``(lower, upper)`` float64 arrays in [0, 1]; NaN where ``trials == 0``.

    Raises:
        ValueError: confidence outside (0, 1), or counts with ``x < 0`` or ``x > n``.
    """
    _check_confidence(confidence)
    x, n = _counts(successes, trials)
    z2 = _z(confidence) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        center = (x + z2 / 2.0) / (n + z2)
        half = np.sqrt(z2) / (n + z2) * np.sqrt(np.maximum(x * (n - x) / n, 0.0) + z2 / 4.0)
        lower, upper = np.clip(center - half, 0.0, 1.0), np.clip(center + half, 0.0, 1.0)
    empty = n <= 0
    return np.where(empty, np.nan, lower), np.where(empty, np.nan, upper)


def clopper_pearson_interval(
    successes: ArrayLike, trials: ArrayLike, confidence: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    r"""Clopper-Pearson ("exact") interval: ``Beta(α/2; x, n-x+1)`` and ``Beta(1-α/2; x+1, n-x)`` quantiles.

    Coverage is at least ``confidence`` for every true proportion (hence usually above it). Real-valued effective
    counts are accepted (the Beta quantiles are continuous in their parameters).

    Returns:
        ``(lower, upper)`` float64 arrays; lower is 0 where ``x == 0`` and upper is 1 where ``x == n``; NaN where
        ``trials == 0``.

    Raises:
        ValueError: as :func:`wilson_interval`.
    """
    _check_confidence(confidence)
    x, n = _counts(successes, trials)
    alpha = 1.0 - confidence
    from scipy import stats as sps  # imported when first needed: `import fairopt` stays light

    with np.errstate(invalid="ignore", divide="ignore"):
        lower = np.where(x <= 0, 0.0, sps.beta.ppf(alpha / 2.0, np.maximum(x, 1e-300), n - x + 1.0))
        upper = np.where(x >= n, 1.0, sps.beta.ppf(1.0 - alpha / 2.0, x + 1.0, np.maximum(n - x, 1e-300)))
    empty = n <= 0
    return np.where(empty, np.nan, lower), np.where(empty, np.nan, upper)


def proportion_interval(
    successes: ArrayLike, trials: ArrayLike, confidence: float = 0.95, method: str = "wilson"
) -> tuple[np.ndarray, np.ndarray]:
    """Dispatch to :func:`wilson_interval` or :func:`clopper_pearson_interval` by ``method`` name.

    Raises:
        ValueError: an unknown method (the message lists :data:`INTERVAL_METHODS`).
    """
    if method == "wilson":
        return wilson_interval(successes, trials, confidence)
    if method == "clopper-pearson":
        return clopper_pearson_interval(successes, trials, confidence)
    raise ValueError(f"unknown interval method {method!r}; choose one of {INTERVAL_METHODS}")


def mean_interval(
    mean: ArrayLike,
    standard_error: ArrayLike,
    df: ArrayLike = np.inf,
    confidence: float = 0.95,
    *,
    lower_bound: ArrayLike | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Student-t interval ``mean ± t_{df} * standard_error`` for a mean (e.g. a group's mean loss).

    ``df = inf`` gives the normal (CLT) interval; use ``n - 1`` (or the Kish effective size minus one with
    weights) for a sample mean of ``n`` examples.

    Args:
        mean, standard_error, df: broadcastable arrays (``mean`` and ``standard_error`` in the units of the mean).
        confidence: two-sided level in (0, 1).
        lower_bound: a bound every averaged value is known to respect (e.g. ``0.0`` for non-negative losses),
            broadcastable; both ends are clipped to ``>= lower_bound`` (a mean of values ``>= b`` is ``>= b``).
            NaN entries and ``None`` (default): no clipping.

    Returns:
        ``(lower, upper)`` float64 arrays (units of ``mean``); NaN where an input is NaN or ``df <= 0``.

    Raises:
        ValueError: confidence outside (0, 1), or a ``mean`` below its ``lower_bound`` (then the bound is wrong).
    """
    _check_confidence(confidence)
    m, se, dof = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (mean, standard_error, df)))
    from scipy import stats as sps

    with np.errstate(invalid="ignore"):
        q = np.where(dof > 0, sps.t.ppf(0.5 + confidence / 2.0, np.where(dof > 0, dof, 1.0)), np.nan)
    lower, upper = m - q * se, m + q * se
    if lower_bound is None:
        return lower, upper
    bound = np.broadcast_to(np.asarray(lower_bound, dtype=np.float64), m.shape)
    slack = 1e-12 * np.maximum(1.0, np.abs(bound))  # float rounding of a mean that equals its bound
    below = ~np.isnan(bound) & ~np.isnan(m) & (m < bound - slack)
    if below.any():
        raise ValueError(
            f"a mean is below its lower_bound ({m[below].tolist()} < {bound[below].tolist()}): the values averaged "
            "do not all respect the bound, so it must not be used to clip the interval"
        )
    clip = ~np.isnan(bound)
    return np.where(clip, np.maximum(lower, bound), lower), np.where(clip, np.maximum(upper, bound), upper)


def effective_counts(
    successes: ArrayLike, trials: ArrayLike, successes_sq: ArrayLike, trials_sq: ArrayLike
) -> tuple[np.ndarray, np.ndarray]:
    r"""Binomial-equivalent ``(x*, n*)`` of a weighted proportion ``p = Σ_S w / Σ_T w`` (see the module docstring).

    ``Var(p) = [(1-p)^2 Σ_S w^2 + p^2 Σ_{T∖S} w^2] / (Σ_T w)^2`` (linearization of the ratio), ``n* = p(1-p)/Var(p)``,
    or Kish's ``(Σ_T w)^2 / Σ_T w^2`` where ``p ∈ {0, 1}``; ``x* = p n*``. Unweighted counts (``w = 1``) give
    ``(x, n)`` back exactly.

    Args:
        successes: ``Σ_S w`` (weighted count of the event). trials: ``Σ_T w`` (weighted count of the condition).
        successes_sq: ``Σ_S w²``. trials_sq: ``Σ_T w²``. All arrays, broadcastable.

    Returns:
        ``(x*, n*)`` float64 arrays; ``n* = 0`` where ``trials == 0``.
    """
    s, t, s2, t2 = (np.asarray(a, dtype=np.float64) for a in (successes, trials, successes_sq, trials_sq))
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.clip(np.where(t > 0, s / t, 0.0), 0.0, 1.0)
        var_num = (1.0 - p) ** 2 * s2 + p**2 * np.maximum(t2 - s2, 0.0)
        n_design = np.where(var_num > 0, p * (1.0 - p) * t**2 / var_num, 0.0)
        n_kish = np.where(t2 > 0, t**2 / t2, 0.0)
        n_eff = np.where((p > 0) & (p < 1) & (var_num > 0), n_design, n_kish)
    n_eff = np.where(t > 0, n_eff, 0.0)
    return p * n_eff, n_eff


def mover_interval(
    estimates: Sequence[ArrayLike],
    lowers: Sequence[ArrayLike],
    uppers: Sequence[ArrayLike],
    coefficients: Sequence[float],
    constant: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    r"""MOVER interval for ``θ = c_0 + Σ_k c_k θ_k`` from intervals ``[l_k, u_k]`` of *independent* estimates ``θ̂_k``.

    With ``[L_k, U_k]`` the interval of ``c_k θ_k`` (``c_k [l_k, u_k]``, flipped when ``c_k < 0``):

    .. math::
        L = θ̂ - \sqrt{\sum_k (c_k θ̂_k - L_k)^2}, \qquad U = θ̂ + \sqrt{\sum_k (U_k - c_k θ̂_k)^2}

    (Zou & Donner 2008, eq. 6-7). One term gives back its own interval; two proportions with Wilson intervals and
    ``c = (1, -1)`` give Newcombe's hybrid score interval (method 10).

    Args:
        estimates, lowers, uppers: one array per term (broadcastable to a common shape), each at the target level.
        coefficients: one float per term. constant: ``c_0``.

    Returns:
        ``(lower, upper)`` float64 arrays of the combination's interval.

    Raises:
        ValueError: the four sequences differ in length.
    """
    if not (len(estimates) == len(lowers) == len(uppers) == len(coefficients)):
        raise ValueError("mover_interval needs one estimate, lower, upper and coefficient per term")
    point = np.asarray(constant, dtype=np.float64)
    below = np.asarray(0.0)
    above = np.asarray(0.0)
    for theta, lo, hi, c in zip(estimates, lowers, uppers, coefficients):
        theta, lo, hi = (np.asarray(a, dtype=np.float64) for a in (theta, lo, hi))
        value = c * theta
        low, high = (c * lo, c * hi) if c >= 0 else (c * hi, c * lo)
        point = point + value
        below = below + (value - low) ** 2
        above = above + (high - value) ** 2
    return point - np.sqrt(below), point + np.sqrt(above)


def newcombe_interval(
    successes_1: ArrayLike,
    trials_1: ArrayLike,
    successes_2: ArrayLike,
    trials_2: ArrayLike,
    confidence: float = 0.95,
) -> tuple[np.ndarray, np.ndarray]:
    r"""Newcombe's hybrid score interval (1998, method 10) for ``p_1 - p_2`` of two independent proportions.

    .. math::
        L = \hat p_1 - \hat p_2 - \sqrt{(\hat p_1 - l_1)^2 + (u_2 - \hat p_2)^2}, \quad
        U = \hat p_1 - \hat p_2 + \sqrt{(u_1 - \hat p_1)^2 + (\hat p_2 - l_2)^2}

    with ``[l_i, u_i]`` the Wilson intervals of ``p_i`` at the same level.

    Returns:
        ``(lower, upper)`` float64 arrays in [-1, 1]; NaN where either trial count is 0.
    """
    x1, n1 = _counts(successes_1, trials_1)
    x2, n2 = _counts(successes_2, trials_2)
    l1, u1 = wilson_interval(x1, n1, confidence)
    l2, u2 = wilson_interval(x2, n2, confidence)
    with np.errstate(invalid="ignore", divide="ignore"):
        p1, p2 = x1 / n1, x2 / n2
    return mover_interval([p1, p2], [l1, l2], [u1, u2], [1.0, -1.0])
