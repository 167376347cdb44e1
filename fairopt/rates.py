r"""Group rates from a :class:`~fairopt.stats.GroupStats` table: hard values, proxy bounds, a defined-mask.

Every rate is a ratio of sums of confusion-matrix cells (``tn, fp, fn, tp``; weighted counts):

=========================  ==================  ===========================  ==============================
rate (aliases)             numerator           denominator                  definition
=========================  ==================  ===========================  ==============================
selection_rate (ppr)       fp + tp             tn + fp + fn + tp            P(ŷ=1)
true_positive_rate (tpr,   tp                  fn + tp                      P(ŷ=1 | y=1)
recall)
false_positive_rate (fpr)  fp                  tn + fp                      P(ŷ=1 | y=0)
true_negative_rate (tnr)   tn                  tn + fp                      P(ŷ=0 | y=0)
false_negative_rate (fnr)  fn                  fn + tp                      P(ŷ=0 | y=1)
error_rate                 fp + fn             all                          P(ŷ≠y)
accuracy                   tn + tp             all                          P(ŷ=y)
precision (ppv)            tp                  fp + tp                      P(y=1 | ŷ=1)
negative_predictive_value  tn                  tn + fn                      P(y=0 | ŷ=0)
(npv)
base_rate                  fn + tp             all                          P(y=1)
mean_loss                  loss                all                          E[loss]
=========================  ==================  ===========================  ==============================

(Hardt, Price, Srebro 2016 for TPR/FPR; Calders & Verwer 2010 for the selection rate; standard confusion-matrix
definitions otherwise.) Conditioning sets are weighted by the example weights.

**Undefined rates.** A rate whose denominator is 0 in a group (e.g. TPR of a group with no positive labels) is
*undefined*: :class:`RateValue` carries a ``defined`` mask, and the value at undefined entries is a placeholder
0.0 with zero gradient (never NaN, never a silent 0: the mask always travels with it).

**Proxy bounds.** For rates conditioned on labels only (selection rate, TPR, FPR, TNR, FNR, error rate,
accuracy), two differentiable versions are given: ``proxy_upper`` counts the event with the positive/negative proxy
of each prediction, ``proxy_lower`` is one minus the proxy count of the complementary event. When the proxy
upper-bounds the indicators (hinge, softplus) ``lower <= hard <= upper``; for a normalized proxy (sigmoid)
``lower == upper``. Constraint expressions use ``upper`` where the rate enters with a positive sign and
``lower`` where it enters negatively, so that e.g. "TPR >= 0.8" is relaxed conservatively (Cotter et al.,
JMLR 2019, Section 5). For precision and NPV (denominators that depend on predictions) and the base rate,
``upper == lower`` is the plain proxy ratio (no bound).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fairopt._deprecation import renamed_attribute as _renamed
from fairopt.stats import GroupStats

__all__ = ["ALIASES", "RATES", "RateValue", "canonical_rate_name", "compute_rate", "rate_table"]

_CELLS = ("tn", "fp", "fn", "tp")


@dataclass(frozen=True)
class _RateSpec:
    numerator: tuple[str, ...]
    denominator: tuple[str, ...]
    description: str


RATES: dict[str, _RateSpec] = {
    "selection_rate": _RateSpec(("fp", "tp"), _CELLS, "P(prediction = 1)"),
    "true_positive_rate": _RateSpec(("tp",), ("fn", "tp"), "P(prediction = 1 | label = 1)"),
    "false_positive_rate": _RateSpec(("fp",), ("tn", "fp"), "P(prediction = 1 | label = 0)"),
    "true_negative_rate": _RateSpec(("tn",), ("tn", "fp"), "P(prediction = 0 | label = 0)"),
    "false_negative_rate": _RateSpec(("fn",), ("fn", "tp"), "P(prediction = 0 | label = 1)"),
    "error_rate": _RateSpec(("fp", "fn"), _CELLS, "P(prediction != label)"),
    "accuracy": _RateSpec(("tn", "tp"), _CELLS, "P(prediction = label)"),
    "precision": _RateSpec(("tp",), ("fp", "tp"), "P(label = 1 | prediction = 1)"),
    "negative_predictive_value": _RateSpec(("tn",), ("tn", "fn"), "P(label = 0 | prediction = 0)"),
    "base_rate": _RateSpec(("fn", "tp"), _CELLS, "P(label = 1)"),
    "mean_loss": _RateSpec(("loss",), _CELLS, "E[loss]"),
}

ALIASES: dict[str, str] = {
    "ppr": "selection_rate",
    "positive_prediction_rate": "selection_rate",
    "tpr": "true_positive_rate",
    "recall": "true_positive_rate",
    "fpr": "false_positive_rate",
    "tnr": "true_negative_rate",
    "fnr": "false_negative_rate",
    "error": "error_rate",
    "ppv": "precision",
    "npv": "negative_predictive_value",
}

# Denominators that depend on labels only: there the complement of a prediction event is well defined.
_LABEL_ONLY = {frozenset(_CELLS), frozenset(("fn", "tp")), frozenset(("tn", "fp"))}
# A prediction cell's proxy column and the cell with the opposite prediction and the same label.
_FLIP = {"tn": "fp", "fp": "tn", "fn": "tp", "tp": "fn"}


def canonical_rate_name(name: str) -> str:
    """Resolve an alias (``"tpr"``) to its canonical rate name (``"true_positive_rate"``).

    Raises:
        ValueError: for an unknown name (the message lists the valid ones).
    """
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in RATES:
        raise ValueError(f"unknown rate {name!r}; choose one of {sorted(RATES)} or aliases {sorted(ALIASES)}")
    return key


@dataclass(frozen=True)
class RateValue:
    """One rate for each row of a table.

    Attributes:
        value: ``(G,)`` hard rate (no gradient), unitless in [0, 1] (mean_loss: loss units).
        proxy_upper: ``(G,)`` differentiable proxy rate, an upper bound of ``value`` for upper-bounding proxies.
        proxy_lower: ``(G,)`` differentiable proxy rate, a lower bound of ``value`` for upper-bounding proxies.
        defined: ``(G,)`` bool, False where the denominator is 0 (then the three values are a placeholder 0).
        denominator: ``(G,)`` hard denominator (weighted count), e.g. for confidence intervals.
    """

    value: Tensor
    proxy_upper: Tensor
    proxy_lower: Tensor
    defined: Tensor
    denominator: Tensor

    @property
    def upper(self) -> Tensor:
        """Deprecated name of :attr:`proxy_upper` (``lower``/``upper`` name interval ends; see the glossary)."""
        return _renamed(self, "upper", "proxy_upper")

    @property
    def lower(self) -> Tensor:
        """Deprecated name of :attr:`proxy_lower`."""
        return _renamed(self, "lower", "proxy_lower")


def _safe_ratio(num: Tensor, den: Tensor, defined: Tensor) -> Tensor:
    # Dividing by 1 where undefined keeps values and gradients finite; the placeholder is then zeroed.
    return torch.where(defined, num / torch.where(defined, den, torch.ones_like(den)), torch.zeros_like(num))


_MIXERS: dict[tuple[str, torch.dtype, torch.device], Tensor] = {}


def mixer_matrix(spec: _RateSpec) -> np.ndarray:
    """``(K, 5)`` 0/1 matrix of a rate's column sums: ``table @ W`` gives [hard denominator, hard numerator, proxy
    numerator, proxy count of the complementary event (same labels, other prediction), proxy denominator].

    The proxy columns are only meaningful for rates with a proxy (not the base rate or mean loss)."""
    index = {name: i for i, name in enumerate(GroupStats.COLUMNS)}
    w = np.zeros((len(GroupStats.COLUMNS), 5))
    for c in spec.denominator:
        w[index[c], 0] = 1.0
        w[index[f"{c}_proxy"], 4] = 1.0
    for c in spec.numerator:
        if c == "loss":
            continue
        w[index[c], 1] = 1.0
        w[index[f"{c}_proxy"], 2] = 1.0
        w[index[f"{_FLIP[c]}_proxy"], 3] = 1.0
    return w


def is_label_conditioned(spec: _RateSpec) -> bool:
    """True for rates whose denominator counts labels only and that have a proxy (the bounds of the module
    docstring apply): selection rate, TPR, FPR, TNR, FNR, error rate, accuracy."""
    return spec.numerator not in (("loss",), ("fn", "tp")) and frozenset(spec.denominator) in _LABEL_ONLY


def _mixer(spec: _RateSpec, dtype: torch.dtype, device: torch.device) -> Tensor:
    """:func:`mixer_matrix` as a cached tensor: a handful of tensor ops per rate instead of ~25 (this runs every
    step)."""
    key = (spec.description, dtype, device)
    if key not in _MIXERS:
        _MIXERS[key] = torch.from_numpy(mixer_matrix(spec)[:, :4]).to(dtype=dtype, device=device)
    return _MIXERS[key]


def _label_conditioned(stats: GroupStats, spec: _RateSpec) -> RateValue:
    """A rate whose denominator counts labels only: hard value, proxy upper bound (proxy count of the event) and
    lower bound (one minus the proxy count of the complementary event), see the module docstring."""
    sums = stats.table @ _mixer(spec, stats.dtype, stats.device)  # (G, 4)
    den = sums[:, 0].detach()
    defined = den > 0
    ratios = sums[:, 1:] / torch.where(defined, den, torch.ones_like(den)).unsqueeze(1)
    ratios = torch.where(defined.unsqueeze(1), ratios, torch.zeros_like(ratios))
    lower = torch.where(defined, 1.0 - ratios[:, 2], torch.zeros_like(den))
    return RateValue(ratios[:, 0].detach(), ratios[:, 1], lower, defined, den)


def compute_rate(stats: GroupStats, name: str) -> RateValue:
    """Compute rate ``name`` (canonical or alias, see :data:`RATES`) for every row of ``stats``.

    Args:
        stats: a ``(G, K)`` table; use ``stats.overall()`` for the pooled rate.
        name: e.g. ``"tpr"``, ``"selection_rate"``.

    Returns:
        :class:`RateValue` of ``(G,)`` tensors.

    Raises:
        ValueError: unknown rate name.
    """
    spec = RATES[canonical_rate_name(name)]
    if is_label_conditioned(spec):
        return _label_conditioned(stats, spec)
    col = stats.column
    den = sum(col(c) for c in spec.denominator).detach()
    defined = den > 0
    if spec.numerator == ("loss",):
        value = _safe_ratio(col("loss"), den, defined)
        return RateValue(value.detach(), value, value, defined, den)
    if spec.numerator == ("fn", "tp"):  # base rate: depends on labels only, no proxy involved
        hard = _safe_ratio(col("fn") + col("tp"), den, defined).detach()
        return RateValue(hard, hard, hard, defined, den)
    hard = _safe_ratio(sum(col(c) for c in spec.numerator), den, defined).detach()
    proxy_num = sum(col(f"{c}_proxy") for c in spec.numerator)
    proxy_den = sum(col(f"{c}_proxy") for c in spec.denominator)
    proxy_defined = defined & (proxy_den > 0)
    ratio = _safe_ratio(proxy_num, proxy_den, proxy_defined)
    return RateValue(hard, ratio, ratio, defined, den)


def rate_table(stats: GroupStats, names: tuple[str, ...] | list[str] | None = None) -> dict[str, RateValue]:
    """Several rates at once, keyed by canonical name (default: all of :data:`RATES`)."""
    return {canonical_rate_name(n): compute_rate(stats, n) for n in (names or RATES)}
