r"""fairopt constraints as a cooper :class:`~cooper.ConstrainedMinimizationProblem`.

For users who already drive training with cooper, :class:`FairnessCMP` registers one cooper
:class:`~cooper.constraints.Constraint` per fairopt constraint (an inequality ``g ≤ 0`` with ``m_k`` entries) and
fills cooper's :class:`~cooper.ConstraintState` the way proxy constraints require (Cotter et al., JMLR 2019):

.. math::
    \text{violation} = \tilde g(θ) \ \text{(proxy, differentiable: the primal Lagrangian)}, \qquad
    \text{strict\_violation} = g(θ) \ \text{(hard rates: the multiplier update)}.

With cooper's :class:`~cooper.formulations.Lagrangian` this gives
``L_primal = f + λᵀ g̃`` and ``L_dual = λᵀ g``; with :class:`~cooper.formulations.AugmentedLagrangian` the
primal term becomes ``(‖relu(λ + ρ g̃)‖² − ‖λ‖²) / (2ρ)`` (Nocedal & Wright 2006, eq. 17.65), evaluated in the
cancellation-free form of :func:`augmented_lagrangian_term` (:class:`StableAugmentedLagrangian`). The multipliers
are :class:`~fairopt.optim.multipliers.FairnessMultiplier` s, so undefined entries do not move them.

Example (cooper's own loop; the forward pass happens before ``roll``)::

    cmp = FairnessCMP([fairopt.EqualizedOdds(0.05)], num_groups=2)
    dual = torch.optim.SGD(cmp.dual_parameters(), lr=1e-2, maximize=True)
    coop = cooper.optim.SimultaneousOptimizer(cmp, primal_optimizers=adam, dual_optimizers=dual)
    logits = model(x).squeeze(-1)
    coop.roll(compute_cmp_state_kwargs=dict(loss=F.binary_cross_entropy_with_logits(logits, y),
                                            scores=logits, labels=y, groups=a))

Optimizers that evaluate the problem twice per step (cooper's ``AlternatingPrimalDualOptimizer``,
``ExtrapolationConstrainedOptimizer``) need the forward pass inside the CMP: subclass and override
:meth:`FairnessCMP.compute_cmp_state` / :meth:`FairnessCMP.compute_violations` to run the model, then call
:meth:`FairnessCMP.state_from_batch`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import cooper
import torch
from cooper import CMPState, ConstraintState
from cooper.formulations import AugmentedLagrangian, ContributionStore, Formulation, Lagrangian
from cooper.multipliers import Multiplier
from cooper.penalty_coefficients import DensePenaltyCoefficient, PenaltyCoefficient
from cooper.utils import ConstraintType
from torch import Tensor

from fairopt._deprecation import renamed_kwargs
from fairopt.constraints import Constraint, ConstraintValue
from fairopt.optim.base import observed_values
from fairopt.optim.constraint_set import ConstraintSet
from fairopt.optim.multipliers import FairnessMultiplier
from fairopt.proxies import Proxy
from fairopt.stats import GroupStats

__all__ = ["FairnessCMP", "StableAugmentedLagrangian", "augmented_lagrangian_term"]


def augmented_lagrangian_term(multiplier: Tensor, penalty: Tensor, violation: Tensor) -> Tensor:
    r"""The augmented-Lagrangian term of inequality constraints, summed over entries, without cancellation.

    .. math::
        \sum_i \frac{\operatorname{relu}(λ_i + ρ_i g_i)^2 - λ_i^2}{2ρ_i}
        = \sum_i \begin{cases} λ_i g_i + \tfrac12 ρ_i g_i^2 & λ_i + ρ_i g_i \ge 0 \\
                                -λ_i^2 / (2ρ_i) & \text{otherwise} \end{cases}

    (Nocedal & Wright, *Numerical Optimization*, 2006, eq. 17.65, in the ``g <= 0`` convention). The left form,
    cooper's, subtracts two numbers of size ``λ²`` and divides the difference by ``2ρ``: at ``ρ = 1e-12`` it is off
    by about 1e-5 for ``λ, g`` of order 0.1. Both branches of the right form are exact products, so the term keeps
    full relative precision for any ``ρ > 0``. Same value and the same gradient, ``∂/∂g_i = relu(λ_i + ρ_i g_i)``;
    continuous at the switch ``g_i = -λ_i/ρ_i``.

    Args:
        multiplier: ``(m,)`` λ >= 0 (detached here: the primal player does not move λ).
        penalty: ``(m,)`` penalty coefficients ρ > 0 (or a scalar).
        violation: ``(m,)`` constraint values ``g`` (differentiable; e.g. the proxy values ``g̃``).

    Returns:
        ``()`` the sum over the m entries, differentiable w.r.t. ``violation`` and ``penalty``.
    """
    lam = multiplier.detach()
    active = lam + penalty * violation >= 0
    return torch.where(active, lam * violation + 0.5 * penalty * violation**2, -(lam**2) / (2 * penalty)).sum()


class StableAugmentedLagrangian(AugmentedLagrangian):
    """cooper's :class:`~cooper.formulations.AugmentedLagrangian` with the primal term of inequality constraints
    computed by :func:`augmented_lagrangian_term` (same value and gradient, no cancellation at small ρ). The dual
    Lagrangian, ``λᵀ g``, and equality constraints are cooper's. :class:`FairnessCMP` uses it whenever it is given
    ``AugmentedLagrangian``."""

    def compute_contribution_to_primal_lagrangian(
        self, constraint_state: ConstraintState, multiplier: Multiplier, penalty_coefficient: PenaltyCoefficient
    ) -> ContributionStore | None:
        if self.constraint_type != ConstraintType.INEQUALITY or not constraint_state.contributes_to_primal_update:
            return super().compute_contribution_to_primal_lagrangian(constraint_state, multiplier, penalty_coefficient)
        violation, multiplier_value, penalty_value = self._prepare_kwargs_for_lagrangian_contribution(
            constraint_state=constraint_state,
            multiplier=multiplier,
            penalty_coefficient=penalty_coefficient,
            primal_or_dual="primal",
        )
        assert multiplier_value is not None and penalty_value is not None  # both expected by this formulation
        term = augmented_lagrangian_term(multiplier_value, penalty_value, violation)
        return ContributionStore(term, multiplier_value, penalty_value)


class FairnessCMP(cooper.ConstrainedMinimizationProblem):
    """A cooper problem whose constraints are fairopt constraints (one cooper constraint per fairopt constraint).

    Args:
        constraints: a :class:`~fairopt.optim.ConstraintSet`, or fairopt constraint(s) (then ``num_groups`` is
            required).
        num_groups: G (ignored when a ConstraintSet is given, except that it must agree).
        formulation_type: a cooper formulation class: ``cooper.formulations.Lagrangian`` (default),
            ``AugmentedLagrangian`` (replaced by its cancellation-free subclass :class:`StableAugmentedLagrangian`)
            or ``QuadraticPenalty``.
        proxy, threshold: as :class:`~fairopt.optim.ConstraintSet` (only when constraints are given).
        multiplier_bound: optional upper bound on every multiplier.
        penalty_coefficient: ρ > 0 for formulations with a penalty coefficient (default 1.0).
        device: device of the multipliers (and penalty coefficients). Their dtype is the constraint set's.

    Attributes:
        constraint_set: the :class:`~fairopt.optim.ConstraintSet` (entry order = multiplier order).
        multiplier_modules: the :class:`~fairopt.optim.FairnessMultiplier` of each constraint, in entry order (empty
            for a formulation without multipliers).

    Raises:
        ValueError: ``num_groups`` disagrees with a given ConstraintSet; ``penalty_coefficient <= 0``.
    """

    def __getattr__(self, name: str) -> Any:
        # cooper's __getattr__ reads self._constraints, which copy.deepcopy and pickle look up (as __setstate__,
        # __deepcopy__, ...) on an object built without __init__: without this guard the lookup recursed until
        # RecursionError, so a ConstrainedOptimizer could be neither deep-copied nor pickled (torch.save(opt))
        if name == "_constraints":
            raise AttributeError(name)
        return super().__getattr__(name)

    def __init__(
        self,
        constraints: ConstraintSet | Constraint | Sequence[Constraint],
        num_groups: int | None = None,
        *,
        formulation_type: type[Formulation] = Lagrangian,
        proxy: str | Proxy | Callable[[Tensor], Tensor] = "sigmoid",
        threshold: float = 0.0,
        multiplier_bound: float | None = None,
        penalty_coefficient: float | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if isinstance(constraints, ConstraintSet):
            if num_groups is not None and num_groups != constraints.num_groups:
                raise ValueError(f"num_groups={num_groups} but the ConstraintSet has G={constraints.num_groups}")
            constraint_set = constraints
        else:
            if num_groups is None:
                raise ValueError("num_groups is required when passing constraints (G, fixed up front)")
            constraint_set = ConstraintSet(constraints, num_groups, proxy=proxy, threshold=threshold)
        rho = 1.0 if penalty_coefficient is None else float(penalty_coefficient)
        if not rho > 0:
            raise ValueError(f"penalty_coefficient must be > 0, got {penalty_coefficient!r}")
        self.constraint_set = constraint_set
        dtype = constraint_set.dtype
        if formulation_type is AugmentedLagrangian:  # cooper's primal term cancels catastrophically at small ρ
            formulation_type = StableAugmentedLagrangian
        for index, entries in enumerate(constraint_set.slices):
            size = entries.stop - entries.start
            multiplier = None
            if formulation_type.expects_multiplier:
                multiplier = FairnessMultiplier(size, bound=multiplier_bound, device=device, dtype=dtype)
            coefficient = None
            if formulation_type.expects_penalty_coefficient:
                coefficient = DensePenaltyCoefficient(torch.full((size,), rho, dtype=dtype, device=device))
            constraint = cooper.Constraint(
                constraint_type=cooper.ConstraintType.INEQUALITY,
                formulation_type=formulation_type,
                multiplier=multiplier,
                penalty_coefficient=coefficient,
            )
            setattr(self, f"constraint_{index}", constraint)  # registered by cooper's __setattr__
        # fixed from here on; constraints() is a generator over cooper's registry, a few µs a call, and the multipliers
        # are read several times a training step
        self.multiplier_modules: tuple[FairnessMultiplier, ...] = tuple(
            c.multiplier for c in self.constraints() if c.multiplier is not None
        )

    @property
    def has_multipliers(self) -> bool:
        """False for penalty-only formulations (``QuadraticPenalty``)."""
        return next(iter(self.constraints())).multiplier is not None

    def multiplier_values(self) -> Tensor:
        """``(m,)`` all multipliers in entry order (a detached copy)."""
        weights = [m.weight.detach() for m in self.multiplier_modules]
        return weights[0].clone() if len(weights) == 1 else torch.cat(weights)  # cat copies already

    # cooper states --------------------------------------------------------------------------------------------
    def constraint_states(
        self,
        value: ConstraintValue,
        *,
        dual_value: ConstraintValue | None = None,
        primal: bool = True,
        dual: bool = True,
        mask_multipliers: bool = True,
    ) -> dict[cooper.Constraint, ConstraintState]:
        """cooper constraint states for one measurement.

        Args:
            value: the batch's values; ``value.proxy`` is the primal ``violation``.
            dual_value: values the multiplier update reads (e.g. held-out statistics); default ``value``. Its hard
                entries are the ``strict_violation``; undefined or non-finite entries are masked on the multipliers.
            primal, dual: cooper's ``contributes_to_primal_update`` / ``contributes_to_dual_update``.
            mask_multipliers: with ``dual``, tell each multiplier which entries the coming dual step may move
                (:meth:`~fairopt.optim.FairnessMultiplier.mask_next_update`); False once the step is taken.
        """
        dual = dual and self.has_multipliers
        hard, defined = observed_values(value if dual_value is None else dual_value)
        states: dict[cooper.Constraint, ConstraintState] = {}
        for constraint, entries in zip(self.constraints(), self.constraint_set.slices):
            if dual and mask_multipliers:
                constraint.multiplier.mask_next_update(defined[entries])
            states[constraint] = ConstraintState(
                violation=value.proxy[entries] if primal else hard[entries],
                strict_violation=hard[entries],
                contributes_to_primal_update=primal,
                contributes_to_dual_update=dual,
            )
        return states

    @renamed_kwargs(validate="validate_args")
    def state_from_batch(
        self,
        loss: Tensor | None,
        scores: Tensor,
        *,
        groups: Tensor,
        labels: Tensor | None = None,
        weights: Tensor | None = None,
        example_losses: Tensor | None = None,
        dual_stats: GroupStats | None = None,
        validate_args: bool | None = None,
    ) -> CMPState:
        """Measure a batch and package it as a cooper :class:`~cooper.CMPState` (``misc["stats"]`` holds the table).

        ``dual_stats``: optional table the multipliers read instead of the batch (e.g. held-out statistics,
        Cotter et al., ICML 2019). With ``loss=None`` only the hard values are packaged (for ``compute_violations``).
        """
        cs = self.constraint_set
        grad_context = torch.enable_grad() if loss is not None else torch.no_grad()
        with grad_context:
            stats = cs.measure(
                scores,
                groups=groups,
                labels=labels,
                weights=weights,
                example_losses=example_losses,
                validate_args=validate_args,
            )
            value = cs.evaluate(stats)
        dual_value = None if dual_stats is None else cs.evaluate(dual_stats.detach())
        states = self.constraint_states(value, dual_value=dual_value, primal=loss is not None)
        return CMPState(loss=loss, observed_constraints=states, misc={"stats": stats.detach()})

    @renamed_kwargs(validate="validate_args")
    def compute_cmp_state(  # type: ignore[override]
        self,
        loss: Tensor,
        scores: Tensor,
        *,
        groups: Tensor,
        labels: Tensor | None = None,
        weights: Tensor | None = None,
        example_losses: Tensor | None = None,
        dual_stats: GroupStats | None = None,
        validate_args: bool | None = None,
    ) -> CMPState:
        """cooper's hook: see :meth:`state_from_batch` (``loss`` is the scalar objective)."""
        return self.state_from_batch(
            loss,
            scores,
            groups=groups,
            labels=labels,
            weights=weights,
            example_losses=example_losses,
            dual_stats=dual_stats,
            validate_args=validate_args,
        )
