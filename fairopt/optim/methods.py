r"""From a method name and its options to a λ-player: the one place that knows which option fits which method.

==========================  ==================================================  ===================================
method                      λ-player                                            options
==========================  ==================================================  ===================================
``"lagrangian"``            :class:`~fairopt.optim.LagrangianPlayer` (cooper    ``dual_optimizer``,
                            ``Lagrangian``)                                     ``dual_optimizer_kwargs``,
                                                                                ``multiplier_bound``
``"augmented_lagrangian"``  :class:`~fairopt.optim.LagrangianPlayer` (cooper    the above, ``penalty`` (ρ, default
                            ``AugmentedLagrangian``)                            η), ``penalty_growth``
``"proxy_lagrangian"``      :class:`~fairopt.optim.ProxyLagrangianPlayer`       ``regret``, ``regret_update``
``"penalty"``               :class:`~fairopt.optim.PenaltyPlayer`               ``penalty`` (weights, default 1)
==========================  ==================================================  ===================================

An option given to a method it does not apply to is refused at construction, not silently ignored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from cooper.formulations import AugmentedLagrangian, Lagrangian
from cooper.penalty_coefficients import MultiplicativePenaltyCoefficientUpdater

from fairopt.optim.base import DualPlayer, check_positive
from fairopt.optim.constraint_set import ConstraintSet
from fairopt.optim.cooper_problem import FairnessCMP
from fairopt.optim.lagrangian import DualOptimizerFactory, LagrangianPlayer, make_dual_optimizer
from fairopt.optim.penalty import PenaltyPlayer
from fairopt.optim.proxy_lagrangian import ProxyLagrangianPlayer

__all__ = ["METHODS", "build_player", "canonical_method", "check_options"]

METHODS = ("lagrangian", "augmented_lagrangian", "proxy_lagrangian", "penalty")
_LAGRANGIANS = ("lagrangian", "augmented_lagrangian")
_APPLIES_TO: dict[str, tuple[str, ...]] = {
    "dual_optimizer": _LAGRANGIANS,
    "dual_optimizer_kwargs": _LAGRANGIANS,
    "multiplier_bound": _LAGRANGIANS,
    "penalty": ("augmented_lagrangian", "penalty"),
    "penalty_growth": ("augmented_lagrangian",),
    "regret": ("proxy_lagrangian",),
    "regret_update": ("proxy_lagrangian",),
    "heldout": (*_LAGRANGIANS, "proxy_lagrangian"),
}


def canonical_method(method: str) -> str:
    """``"proxy-Lagrangian"`` → ``"proxy_lagrangian"``.

    Raises:
        ValueError: not one of :data:`METHODS`.
    """
    name = method.strip().lower().replace("-", "_") if isinstance(method, str) else method
    if name not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return name


def check_options(method: str, *, dual_source: str, **options: Any) -> None:
    """Refuse options (given as not None) that ``method`` would ignore.

    Raises:
        ValueError: naming the option and the methods it applies to.
    """
    for name, given in options.items():
        if given is not None and method not in _APPLIES_TO[name]:
            raise ValueError(f"{name}= does not apply to method={method!r} (it applies to {_APPLIES_TO[name]})")
    if method == "penalty" and dual_source != "train":
        raise ValueError("method='penalty' has no dual player; dual_source does not apply")


def build_player(
    method: str,
    constraint_set: ConstraintSet,
    optimizer: torch.optim.Optimizer,
    dual_lr: float,
    *,
    dual_optimizer: str | DualOptimizerFactory | None = None,
    dual_optimizer_kwargs: Mapping[str, Any] | None = None,
    penalty: float | Sequence[float] | None = None,
    penalty_growth: float | None = None,
    regret: str | None = None,
    regret_update: str | None = None,
    multiplier_bound: float | None = None,
) -> tuple[DualPlayer, FairnessCMP | None]:
    """The λ-player of ``method`` (and, for the Lagrangian methods, the cooper problem holding its multipliers).

    The dual state lives on the device of the optimizer's first parameter, in the constraint set's dtype.

    Raises:
        ValueError: bad option values (see the players), ``penalty_growth <= 1``.
    """
    m, dtype, device = constraint_set.num_constraints, constraint_set.dtype, _device_of(optimizer)
    if method == "proxy_lagrangian":
        player = ProxyLagrangianPlayer(
            m, lr=dual_lr, regret=regret or "swap", update=regret_update or "multiplicative", device=device, dtype=dtype
        )
        return player, None
    if method == "penalty":
        return PenaltyPlayer(m, 1.0 if penalty is None else penalty, device=device, dtype=dtype), None
    augmented = method == "augmented_lagrangian"
    rho = (dual_lr if penalty is None else float(penalty)) if augmented else None  # type: ignore[arg-type]
    problem = FairnessCMP(
        constraint_set,
        formulation_type=AugmentedLagrangian if augmented else Lagrangian,
        multiplier_bound=multiplier_bound,
        penalty_coefficient=rho,
        device=device,
    )
    dual = make_dual_optimizer(problem.dual_parameters(), dual_optimizer or "sgd", dual_lr, dual_optimizer_kwargs)
    updater = None
    if penalty_growth is not None:
        if not check_positive("penalty_growth", penalty_growth) > 1.0:
            raise ValueError(f"penalty_growth must be > 1, got {penalty_growth!r}")
        updater = MultiplicativePenaltyCoefficientUpdater(growth_factor=float(penalty_growth))
    return LagrangianPlayer(problem, optimizer, dual, penalty_updater=updater), problem


def _device_of(optimizer: torch.optim.Optimizer) -> torch.device:
    for group in optimizer.param_groups:
        for param in group["params"]:
            return param.device
    return torch.device("cpu")
