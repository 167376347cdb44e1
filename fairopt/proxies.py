r"""Differentiable surrogates ("proxies") for the indicator of a positive prediction.

A rate such as a true positive rate counts thresholded predictions ``1{s > t}``; its gradient is zero almost
everywhere. Training therefore uses a smooth *proxy* in the primal player while the true (hard) rate stays the
quantity that is constrained (Cotter, Jiang, Gupta, Wang, Narayan, You, Sridharan, "Optimization with
Non-Differentiable Constraints with Applications to Fairness, Recall, Churn, and Other Goals", JMLR 20(172),
2019, Section 2 and Section 5).

A :class:`Proxy` gives two elementwise functions of the margin ``m = s - t`` (scores are logits):

- ``positive(m)``, the proxy of ``1{m > 0}`` (a positive prediction), and
- ``negative(m)``, the proxy of ``1{m <= 0}`` (a negative prediction).

They are kept separate because for a non-normalized proxy such as the hinge, ``positive(m) + negative(m) != 1``;
using ``negative`` for "at most" and ``positive`` for "at least" statements is what lets a rate expression be
bounded from the correct side (see :mod:`fairopt.rates`).

==========  ==========================================  ===============================  =============
name        positive(m)                                 negative(m)                      upper bound?
==========  ==========================================  ===============================  =============
hard        ``1{m > 0}`` (no gradient)                  ``1 - positive(m)``              exact
sigmoid     ``sigmoid(m / temperature)``                ``sigmoid(-m / temperature)``    no
hinge       ``max(0, 1 + m / temperature)`` (TFCO)      ``max(0, 1 - m / temperature)``  yes
softplus    ``softplus(m / temperature) / ln 2``        ``softplus(-m / temperature)/ln 2``  yes
==========  ==========================================  ===============================  =============

"upper bound?" means ``positive(m) >= 1{m > 0}`` and ``negative(m) >= 1{m <= 0}`` for every ``m``, which makes the
proxy value of a linear, ``abs``, ``max`` or ``min`` rate expression an upper bound of its hard value.
``temperature`` is in logit units: as it goes to 0 the sigmoid proxy converges to the hard indicator (away from
``m = 0``); larger temperatures give smoother, flatter surrogates.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["PROXIES", "Proxy", "as_proxy"]

ElementwiseFn = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Proxy:
    """A pair of elementwise surrogates for positive and negative predictions.

    Args:
        name: A short name used in reports, e.g. ``"hinge"``.
        positive: Elementwise function of the margin ``m = score - threshold`` (logit units) approximating
            ``1{m > 0}``. Must map a ``(N,)`` floating tensor to a ``(N,)`` tensor of the same dtype.
        negative: Elementwise function approximating ``1{m <= 0}``. If ``None``, ``positive(-m)`` is used.
        upper_bound: Whether both functions upper-bound their indicators (documents the guarantee; not checked).
        normalized: Whether ``positive(m) + negative(m) == 1`` for every ``m`` (sigmoid, hard). Then the negative
            proxy counts are derived from the positive ones and the label counts, saving a pass over the batch.

    Use :meth:`from_function` to wrap a user function and the module-level names (``"sigmoid"``, ``"hinge"``,
    ``"softplus"``, ``"hard"``) for the built-ins; :func:`as_proxy` accepts either.
    """

    name: str
    positive: ElementwiseFn
    negative: ElementwiseFn | None = None
    upper_bound: bool = False
    normalized: bool = False

    def negative_fn(self, margin: Tensor) -> Tensor:
        """Proxy of ``1{margin <= 0}``: ``negative(margin)``, or ``positive(-margin)`` when unset."""
        if self.negative is not None:
            return self.negative(margin)
        return self.positive(-margin)

    @classmethod
    def from_function(cls, fn: ElementwiseFn, name: str | None = None) -> Proxy:
        """Wrap an elementwise ``fn(margin) -> proxy of 1{margin > 0}``; the negative proxy is ``fn(-margin)``."""
        return cls(name=name or getattr(fn, "__name__", "custom"), positive=fn)

    @classmethod
    def sigmoid(cls, temperature: float = 1.0) -> Proxy:
        """``sigmoid(m / temperature)``; normalized (positive + negative = 1), not an upper bound."""
        _check_temperature(temperature)
        return cls(
            name=f"sigmoid(T={temperature:g})" if temperature != 1.0 else "sigmoid",
            positive=partial(_sigmoid, sign=1.0, temperature=temperature),
            negative=partial(_sigmoid, sign=-1.0, temperature=temperature),
            normalized=True,
        )

    @classmethod
    def hinge(cls, temperature: float = 1.0) -> Proxy:
        """``max(0, 1 + m / temperature)``: TFCO's default proxy; an upper bound of the indicator."""
        _check_temperature(temperature)
        return cls(
            name=f"hinge(T={temperature:g})" if temperature != 1.0 else "hinge",
            positive=partial(_hinge, sign=1.0, temperature=temperature),
            negative=partial(_hinge, sign=-1.0, temperature=temperature),
            upper_bound=True,
        )

    @classmethod
    def softplus(cls, temperature: float = 1.0) -> Proxy:
        """``softplus(m / temperature) / ln 2`` (= ``log2(1 + e^(m/T))``): smooth, an upper bound."""
        _check_temperature(temperature)
        return cls(
            name=f"softplus(T={temperature:g})" if temperature != 1.0 else "softplus",
            positive=partial(_softplus, sign=1.0, temperature=temperature),
            negative=partial(_softplus, sign=-1.0, temperature=temperature),
            upper_bound=True,
        )

    @classmethod
    def hard(cls) -> Proxy:
        """The indicator itself: proxy columns equal the hard ones and carry no gradient."""
        return cls(
            name="hard",
            positive=_hard_positive,
            negative=_hard_negative,
            upper_bound=True,
            normalized=True,
        )


# Module-level functions (not lambdas) so that a Proxy pickles with a checkpoint.
def _scaled(margin: Tensor, factor: float) -> Tensor:
    # Skip the multiply for the common factor 1 (a full pass over the batch).
    return margin if factor == 1.0 else (-margin if factor == -1.0 else margin * factor)


def _sigmoid(margin: Tensor, sign: float, temperature: float) -> Tensor:
    return torch.sigmoid(_scaled(margin, sign / temperature))


def _hinge(margin: Tensor, sign: float, temperature: float) -> Tensor:
    return torch.relu(_scaled(margin, sign / temperature) + 1.0)


def _softplus(margin: Tensor, sign: float, temperature: float) -> Tensor:
    return F.softplus(_scaled(margin, sign / temperature)) * (1.0 / math.log(2.0))


def _hard_positive(margin: Tensor) -> Tensor:
    return (margin > 0).to(margin.dtype)


def _hard_negative(margin: Tensor) -> Tensor:
    return (margin <= 0).to(margin.dtype)


def _check_temperature(temperature: float) -> None:
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"proxy temperature must be a finite number > 0 (logit units), got {temperature!r}")


PROXIES: dict[str, Callable[[], Proxy]] = {
    "sigmoid": Proxy.sigmoid,
    "hinge": Proxy.hinge,
    "softplus": Proxy.softplus,
    "hard": Proxy.hard,
}


def as_proxy(proxy: str | Proxy | ElementwiseFn) -> Proxy:
    """Resolve ``proxy`` to a :class:`Proxy`.

    Args:
        proxy: One of ``"sigmoid"``, ``"hinge"``, ``"softplus"``, ``"hard"``, a :class:`Proxy`, or an elementwise
            callable ``fn(margin) -> proxy of 1{margin > 0}`` (its negative proxy is ``fn(-margin)``).

    Raises:
        ValueError: for an unknown name. TypeError: for anything else.
    """
    if isinstance(proxy, Proxy):
        return proxy
    if isinstance(proxy, str):
        try:
            return PROXIES[proxy]()
        except KeyError:
            raise ValueError(
                f"unknown proxy {proxy!r}; choose one of {sorted(PROXIES)}, a fairopt.Proxy "
                "(e.g. Proxy.sigmoid(temperature=0.5)), or an elementwise callable"
            ) from None
    if callable(proxy):
        return Proxy.from_function(proxy)
    raise TypeError(f"proxy must be a name, a fairopt.Proxy or a callable, got {type(proxy).__name__}")
