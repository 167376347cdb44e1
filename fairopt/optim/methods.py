r"""The constrained methods as objects: each carries its own options and declares what it needs.

A method answers three questions for :class:`~fairopt.optim.ConstrainedOptimizer`: which scalar the model descends
on, how the constraint weights λ move, and which of the optimizer's features apply to it. Each answer is written on
its class, in the manner of cooper's formulations (which declare ``expects_multiplier``,
``expects_penalty_coefficient``), so the optimizer reads flags instead of comparing method names:

============================  ==========================  ====================  =====================  =====
class                         ``name``                    primal objective      λ update (hard ``g``)  flags
============================  ==========================  ====================  =====================  =====
:class:`Lagrangian`           ``"lagrangian"``            ``f + λᵀ g̃``          ``[λ + η g]_+``        H
:class:`AugmentedLagrangian`  ``"augmented_lagrangian"``  ``f + ψ_ρ(λ, g̃)``     same                   H, R
:class:`ProxyLagrangian`      ``"proxy_lagrangian"``      ``λ_0 f + λᵀ g̃``      simplex (regret)       H
:class:`Penalty`              ``"penalty"``               ``f + cᵀ max(0, g̃)``  none (fixed ``c``)     R
============================  ==========================  ====================  =====================  =====

(H: ``supports_heldout_duals``; R: ``reads_proxy_value``; every method but :class:`Penalty` ``has_dual_player``.
The math, options and sources are on each class.)
``method="proxy_lagrangian"`` (a name of :data:`METHODS`; hyphens and capitals accepted) is the object with default
options (:func:`resolve_method`). Option values are checked when the object is built, where the mistake is made.

Adding a method: subclass :class:`Method` as a frozen dataclass, declare ``name`` and the three flags, implement
:meth:`Method.build` (return a :class:`~fairopt.optim.DualPlayer`); pass an instance as ``method=``. Appending the
class to ``_METHOD_CLASSES`` also gives it a string name.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from cooper.formulations import AugmentedLagrangian as CooperAugmentedLagrangian
from cooper.formulations import Lagrangian as CooperLagrangian
from cooper.penalty_coefficients import MultiplicativePenaltyCoefficientUpdater
from torch import Tensor

from fairopt.optim.base import DualPlayer, check_positive
from fairopt.optim.constraint_set import ConstraintSet
from fairopt.optim.cooper_problem import FairnessCMP
from fairopt.optim.lagrangian import DualOptimizerFactory, LagrangianPlayer, check_dual_optimizer, make_dual_optimizer
from fairopt.optim.penalty import PenaltyPlayer
from fairopt.optim.proxy_lagrangian import REGRETS, UPDATES, ProxyLagrangianPlayer

__all__ = [
    "METHODS",
    "AugmentedLagrangian",
    "Lagrangian",
    "Method",
    "Penalty",
    "ProxyLagrangian",
    "canonical_method",
    "resolve_method",
]


@dataclasses.dataclass(frozen=True, repr=False)
class Method(abc.ABC):
    """Base class of the constrained methods (:class:`Lagrangian`, :class:`AugmentedLagrangian`,
    :class:`ProxyLagrangian`, :class:`Penalty`): a frozen set of options plus the flags below.

    Attributes:
        name: the canonical method name (``ConstrainedOptimizer.method``, saved in its state_dict).
        has_dual_player: the constraint weights are learned (a dual step exists); False for fixed weights, which
            then have nothing for ``update_duals`` or a dual schedule to move.
        supports_heldout_duals: the dual player may read held-out statistics (``dual_source="heldout"``,
            ``heldout=``; Cotter et al., ICML 2019).
        reads_proxy_value: the primal objective depends on the proxy values ``g̃`` themselves, not only on their
            gradient (e.g. ``max(0, g̃)``): such a method needs a proxy whose value tracks the rate (the sigmoid),
            see the ``proxy`` argument of :class:`~fairopt.optim.ConstrainedOptimizer`.
    """

    name: ClassVar[str]
    has_dual_player: ClassVar[bool]
    supports_heldout_duals: ClassVar[bool]
    reads_proxy_value: ClassVar[bool]
    # the deprecated ConstrainedOptimizer keyword -> this class's field (one deprecation cycle)
    _legacy_keywords: ClassVar[Mapping[str, str]] = {}

    @abc.abstractmethod
    def build(
        self, constraint_set: ConstraintSet, optimizer: torch.optim.Optimizer, dual_lr: float
    ) -> tuple[DualPlayer, FairnessCMP | None]:
        """The λ-player of this method for ``constraint_set`` (and, for the cooper-based methods, the cooper problem
        holding its multipliers; else None).

        Args:
            constraint_set: the m constraint entries; the dual state takes its dtype.
            optimizer: the user's optimizer; the dual state lives on the device of its first parameter.
            dual_lr: the dual step size η > 0.

        Raises:
            ValueError: an option that only the constraints can check (e.g. the number of penalty coefficients), a dual
                optimizer that does not maximize.
        """

    def options(self) -> dict[str, Any]:
        """The options that differ from their defaults, by field name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) != f.default}

    def __repr__(self) -> str:
        # Only the options given, so the repr is the shortest call that builds this object (the deprecation
        # messages print it as the replacement to write).
        given = ", ".join(f"{key}={value!r}" for key, value in self.options().items())
        return f"{type(self).__name__}({given})"


@dataclasses.dataclass(frozen=True, repr=False, kw_only=True)
class _MultiplierMethod(Method):
    """Options shared by the two cooper-based methods, whose multipliers move by a torch optimizer."""

    dual_optimizer: str | DualOptimizerFactory = "sgd"
    dual_optimizer_kwargs: Mapping[str, Any] | None = dataclasses.field(default=None, hash=False)
    multiplier_bound: float | None = None

    has_dual_player: ClassVar[bool] = True
    supports_heldout_duals: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_dual_optimizer(self.dual_optimizer)
        kwargs = self.dual_optimizer_kwargs
        if kwargs is not None:
            if not isinstance(kwargs, Mapping):
                raise TypeError(
                    "dual_optimizer_kwargs must be a mapping of keyword arguments for SGD / nuPI, e.g. "
                    f"{{'momentum': 0.9}} or {{'Kp': 1.0}}, got {type(kwargs).__name__}"
                )
            object.__setattr__(self, "dual_optimizer_kwargs", dict(kwargs))  # a copy: later edits do not leak in
        bound = self.multiplier_bound
        # the condition and message of FairnessMultiplier, which checks again when the multipliers are built
        if bound is not None and not (isinstance(bound, (int, float)) and math.isfinite(bound) and bound > 0):
            raise ValueError(f"multiplier bound must be a finite number > 0, got {bound!r}")

    def _build_cooper(
        self,
        constraint_set: ConstraintSet,
        optimizer: torch.optim.Optimizer,
        dual_lr: float,
        *,
        augmented: bool,
        penalty: float | None = None,
        penalty_growth: float | None = None,
    ) -> tuple[DualPlayer, FairnessCMP]:
        problem = FairnessCMP(
            constraint_set,
            formulation_type=CooperAugmentedLagrangian if augmented else CooperLagrangian,
            multiplier_bound=self.multiplier_bound,
            penalty_coefficient=penalty,
            device=_device_of(optimizer),
        )
        dual = make_dual_optimizer(problem.dual_parameters(), self.dual_optimizer, dual_lr, self.dual_optimizer_kwargs)
        updater = None
        if penalty_growth is not None:
            updater = MultiplicativePenaltyCoefficientUpdater(growth_factor=float(penalty_growth))
        return LagrangianPlayer(problem, optimizer, dual, penalty_updater=updater), problem


@dataclasses.dataclass(frozen=True, repr=False, kw_only=True)
class Lagrangian(_MultiplierMethod):
    r"""Gradient descent–ascent on the Lagrangian with proxy constraints (cooper's ``Lagrangian`` formulation).

    .. math::
        \min_θ\ f(θ) + \sum_{i=1}^m λ_i \tilde g_i(θ), \qquad λ \leftarrow \Pi_{[0, λ_{\max}]}\big(λ + η\, g(θ)\big)

    ``g̃`` the proxy values (differentiable), ``g`` the hard ones: the multipliers read the true rates (Cotter,
    Jiang, Gupta, Wang, Narayan, You, Sridharan, JMLR 20(172), 2019, Algorithm 2). The ascent step is the dual
    optimizer's: plain SGD (the update above) or cooper's nuPI (Sohrabi et al., ICML 2024), which damps oscillations.

    Args:
        dual_optimizer: ``"sgd"`` (default), ``"nupi"``, or a callable ``params -> torch.optim.Optimizer`` that
            builds one with ``maximize=True`` (the ``dual_lr`` of the optimizer is then not used).
        dual_optimizer_kwargs: extra keyword arguments for SGD / nuPI, e.g. ``{"momentum": 0.9}``, ``{"Kp": 1.0}``.
        multiplier_bound: optional upper bound ``λ_max > 0`` on every multiplier.

    Raises:
        ValueError: an unknown ``dual_optimizer`` name; ``multiplier_bound`` not a finite number > 0; (when built)
            a callable dual optimizer without ``maximize=True``. TypeError: ``dual_optimizer_kwargs`` not a mapping.
    """

    name: ClassVar[str] = "lagrangian"
    reads_proxy_value: ClassVar[bool] = False
    _legacy_keywords: ClassVar[Mapping[str, str]] = {
        "dual_optimizer": "dual_optimizer",
        "dual_optimizer_kwargs": "dual_optimizer_kwargs",
        "multiplier_bound": "multiplier_bound",
    }

    def build(
        self, constraint_set: ConstraintSet, optimizer: torch.optim.Optimizer, dual_lr: float
    ) -> tuple[DualPlayer, FairnessCMP | None]:
        """A :class:`~fairopt.optim.LagrangianPlayer` and its :class:`~fairopt.optim.FairnessCMP` (see
        :meth:`Method.build`)."""
        return self._build_cooper(constraint_set, optimizer, dual_lr, augmented=False)


@dataclasses.dataclass(frozen=True, repr=False, kw_only=True)
class AugmentedLagrangian(_MultiplierMethod):
    r"""The augmented Lagrangian, or method of multipliers (cooper's ``AugmentedLagrangian``, cancellation-free).

    .. math::
        \min_θ\ f(θ) + \sum_{i=1}^m \frac{\operatorname{relu}(λ_i + ρ_i \tilde g_i)^2 - λ_i^2}{2ρ_i}, \qquad
        λ \leftarrow \Pi_{[0, λ_{\max}]}\big(λ + η\, g(θ)\big)

    (Nocedal & Wright, *Numerical Optimization*, 2006, eq. 17.65; Bertsekas 1982 for ``ρ = η``). The primal term
    depends on the proxy value itself (``reads_proxy_value``). Multiplier update and options as :class:`Lagrangian`.

    Args:
        penalty: the penalty coefficient ρ > 0 of every entry; default None: the ``dual_lr`` of the optimizer
            (the classical method of multipliers).
        penalty_growth: optional factor > 1: ρ of an entry is multiplied by it after each dual step that finds the
            entry violated (cooper's ``MultiplicativePenaltyCoefficientUpdater``).
        dual_optimizer: as :class:`Lagrangian`.
        dual_optimizer_kwargs: as :class:`Lagrangian`.
        multiplier_bound: as :class:`Lagrangian`.

    Raises:
        ValueError: ``penalty`` not a finite number > 0, ``penalty_growth <= 1``, and the errors of
            :class:`Lagrangian`.
    """

    penalty: float | None = None
    penalty_growth: float | None = None

    name: ClassVar[str] = "augmented_lagrangian"
    reads_proxy_value: ClassVar[bool] = True
    _legacy_keywords: ClassVar[Mapping[str, str]] = {
        **Lagrangian._legacy_keywords,
        "penalty": "penalty",
        "penalty_growth": "penalty_growth",
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.penalty is not None:
            object.__setattr__(self, "penalty", check_positive("penalty", self.penalty))
        if self.penalty_growth is not None:
            growth = check_positive("penalty_growth", self.penalty_growth)
            if not growth > 1.0:
                raise ValueError(f"penalty_growth must be > 1, got {self.penalty_growth!r}")
            object.__setattr__(self, "penalty_growth", growth)

    def build(
        self, constraint_set: ConstraintSet, optimizer: torch.optim.Optimizer, dual_lr: float
    ) -> tuple[DualPlayer, FairnessCMP | None]:
        """A :class:`~fairopt.optim.LagrangianPlayer` and its :class:`~fairopt.optim.FairnessCMP`, ρ defaulting to
        ``dual_lr`` (see :meth:`Method.build`)."""
        rho = dual_lr if self.penalty is None else self.penalty
        return self._build_cooper(
            constraint_set, optimizer, dual_lr, augmented=True, penalty=rho, penalty_growth=self.penalty_growth
        )


@dataclasses.dataclass(frozen=True, repr=False, kw_only=True)
class ProxyLagrangian(Method):
    r"""The proxy-Lagrangian game: λ on the simplex over the objective and the m constraints (not in cooper: ours).

    .. math::
        \min_θ\ λ_0 f(θ) + \sum_{i=1}^m λ_i \tilde g_i(θ), \qquad \max_{λ ∈ Δ^{m+1}} \sum_{i=1}^m λ_i g_i(θ)

    The λ-player (:class:`~fairopt.optim.ProxyLagrangianPlayer`) minimizes swap regret: it keeps an ``(m+1)×(m+1)``
    column-stochastic matrix, updates it multiplicatively with ``Δ = (0, g)`` (hard values) and plays its stationary
    distribution (Cotter, Jiang, Sridharan, ALT 2019, Algorithm 2; Cotter et al., JMLR 20(172), 2019, Section 4).
    The guarantee is for the randomized model over the iterates (:func:`~fairopt.optim.best_distribution`).

    Args:
        regret: ``"swap"`` (default, the paper's algorithm) or ``"external"`` (Hedge on λ itself).
        regret_update: ``"multiplicative"`` (default, exponentiated gradient) or ``"additive"`` (projected).

    Raises:
        ValueError: an unknown ``regret`` or ``regret_update``.
    """

    regret: str = "swap"
    regret_update: str = "multiplicative"

    name: ClassVar[str] = "proxy_lagrangian"
    has_dual_player: ClassVar[bool] = True
    supports_heldout_duals: ClassVar[bool] = True
    reads_proxy_value: ClassVar[bool] = False
    _legacy_keywords: ClassVar[Mapping[str, str]] = {"regret": "regret", "regret_update": "regret_update"}

    def __post_init__(self) -> None:
        if self.regret not in REGRETS:
            raise ValueError(f"regret must be one of {REGRETS}, got {self.regret!r}")
        if self.regret_update not in UPDATES:
            raise ValueError(f"regret_update must be one of {UPDATES}, got {self.regret_update!r}")

    def build(
        self, constraint_set: ConstraintSet, optimizer: torch.optim.Optimizer, dual_lr: float
    ) -> tuple[DualPlayer, FairnessCMP | None]:
        """A :class:`~fairopt.optim.ProxyLagrangianPlayer` with step size ``dual_lr``, no cooper problem."""
        player = ProxyLagrangianPlayer(
            constraint_set.num_constraints,
            lr=dual_lr,
            regret=self.regret,
            update=self.regret_update,
            device=_device_of(optimizer),
            dtype=constraint_set.dtype,
        )
        return player, None


@dataclasses.dataclass(frozen=True, repr=False, kw_only=True)
class Penalty(Method):
    r"""Fixed-weight penalty, the "fairness regularizer" baseline of most toolkits: nothing is learned.

    .. math::
        \min_θ\ f(θ) + \sum_{i=1}^m c_i \max\big(0, \tilde g_i(θ)\big)

    an exact l1 penalty (feasible minimizers for ``c`` above the optimal multipliers, Nocedal & Wright 2006,
    Theorem 17.3, but that ``c`` is unknown in advance). No dual player: ``dual_lr``, dual schedules and held-out
    duals do not apply.

    Args:
        coefficients: ``c``: one number for every entry or one per entry (m numbers), each finite and >= 0
            (default 1). ("weights" is kept for example weights, see the glossary.)

    Raises:
        ValueError: a negative, non-finite or non-numeric coefficient; (when built) another number of coefficients
            than 1 or m.
    """

    coefficients: float | Sequence[float] = 1.0

    name: ClassVar[str] = "penalty"
    has_dual_player: ClassVar[bool] = False
    supports_heldout_duals: ClassVar[bool] = False
    reads_proxy_value: ClassVar[bool] = True
    _legacy_keywords: ClassVar[Mapping[str, str]] = {"penalty": "coefficients"}

    def __post_init__(self) -> None:
        given = self.coefficients
        values = given.detach().cpu() if isinstance(given, Tensor) else given
        try:
            array = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            array = None
        if array is None or array.ndim > 1 or isinstance(values, (bool, str)):
            raise ValueError(f"penalty coefficients must be numbers (one, or one per entry), got {given!r}")
        if not (np.isfinite(array).all() and (array >= 0).all()):
            raise ValueError(f"penalty coefficients must be finite and >= 0, got {given!r}")
        # plain floats: hashable, printable and saved as they were given
        object.__setattr__(self, "coefficients", float(array) if array.ndim == 0 else tuple(array.tolist()))

    def build(
        self, constraint_set: ConstraintSet, optimizer: torch.optim.Optimizer, dual_lr: float
    ) -> tuple[DualPlayer, FairnessCMP | None]:
        """A :class:`~fairopt.optim.PenaltyPlayer` (``dual_lr`` is not used)."""
        player = PenaltyPlayer(
            constraint_set.num_constraints, self.coefficients, device=_device_of(optimizer), dtype=constraint_set.dtype
        )
        return player, None


_METHOD_CLASSES: tuple[type[Method], ...] = (Lagrangian, AugmentedLagrangian, ProxyLagrangian, Penalty)
METHODS = tuple(cls.name for cls in _METHOD_CLASSES)
# The keywords ConstrainedOptimizer took before the method objects -> the methods they apply to.
_LEGACY_KEYWORDS = (
    "dual_optimizer",
    "dual_optimizer_kwargs",
    "multiplier_bound",
    "penalty",
    "penalty_growth",
    "regret",
    "regret_update",
)
LEGACY_OPTIONS: dict[str, tuple[str, ...]] = {
    key: tuple(cls.name for cls in _METHOD_CLASSES if key in cls._legacy_keywords) for key in _LEGACY_KEYWORDS
}


def resolve_method(method: str | Method) -> Method:
    """The method object for ``method``: a name of :data:`METHODS` gives its default options
    (``"proxy-Lagrangian"`` → ``ProxyLagrangian()``); a :class:`Method` is returned as it is.

    Raises:
        ValueError: an unknown name or another type; the message lists the names and the classes.
    """
    if isinstance(method, Method):
        return method
    name = method.strip().lower().replace("-", "_") if isinstance(method, str) else method
    for cls in _METHOD_CLASSES:
        if name == cls.name:
            return cls()
    classes = ", ".join(f"fairopt.optim.{cls.__name__}(...)" for cls in _METHOD_CLASSES)
    raise ValueError(f"method must be one of {METHODS} or a method object ({classes}), got {method!r}")


def canonical_method(method: str | Method) -> str:
    """``"proxy-Lagrangian"`` → ``"proxy_lagrangian"``; a :class:`Method` → its ``name``.

    Raises:
        ValueError: not one of :data:`METHODS` (see :func:`resolve_method`).
    """
    return resolve_method(method).name


def method_from_legacy(method: str | Method, options: Mapping[str, Any]) -> tuple[Method, str | None]:
    """``method`` with the deprecated keywords of :class:`~fairopt.optim.ConstrainedOptimizer` applied, and the
    deprecation message to emit (None when none was given).

    A keyword given as None meant "the default" and is accepted for every method (as before).

    Raises:
        ValueError: an option for a method object (the object carries its options); a (not None) option that does
            not apply to the method, naming the methods it applies to; bad option values (the method's checks).
    """
    if not options:
        return resolve_method(method), None
    if isinstance(method, Method):
        names = ", ".join(f"{key}=" for key in options)
        raise ValueError(
            f"{names} given with method={method!r}: a method object carries its options; pass them to it "
            f"({_with_options(method, options)}) and drop the keyword"
        )
    spec = resolve_method(method)
    fields = {}
    for key, value in options.items():
        if value is None:
            continue
        if key not in spec._legacy_keywords:
            raise ValueError(f"{key}= does not apply to method={spec.name!r} (it applies to {LEGACY_OPTIONS[key]})")
        fields[spec._legacy_keywords[key]] = value
    spec = dataclasses.replace(spec, **fields)
    replacement = f"pass method=fairopt.optim.{spec!r}" if fields else "drop them (None is the default)"
    given = ", ".join(f"{key}=..." for key in options)
    message = (
        f"ConstrainedOptimizer({given}) is deprecated and will be removed in fairopt 0.3: the method object carries "
        f"its options; {replacement}"
    )
    return spec, message


def _with_options(method: Method, options: Mapping[str, Any]) -> str:
    """The call that carries ``options`` on ``method``, for the conflict message (a generic hint if they don't fit)."""
    keywords = type(method)._legacy_keywords
    try:
        fields = {keywords[key]: value for key, value in options.items() if value is not None}
        return f"method=fairopt.optim.{dataclasses.replace(method, **fields)!r}"
    except (KeyError, TypeError, ValueError):
        return f"method=fairopt.optim.{type(method).__name__}(...)"


def _device_of(optimizer: torch.optim.Optimizer) -> torch.device:
    for group in optimizer.param_groups:
        for param in group["params"]:
            return param.device
    return torch.device("cpu")
