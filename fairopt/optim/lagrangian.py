r"""The Lagrangian and augmented-Lagrangian λ-players, built on cooper-optim.

Lagrangian (gradient descent–ascent with proxy constraints; Cotter et al., JMLR 2019, Algorithm 2):

.. math::
    \mathcal{L}_{\text{primal}}(θ, λ) = f(θ) + \sum_{i=1}^m λ_i\, \tilde g_i(θ), \qquad
    λ \leftarrow \Pi_{[0, λ_{\max}]}\big(λ + η\, g(θ)\big),

where ``g̃`` are proxy (differentiable) constraint values and ``g`` the hard ones. With the augmented Lagrangian
(:class:`~fairopt.optim.AugmentedLagrangian`, cooper's ``AugmentedLagrangian`` formulation) the primal term of each
entry is cooper's ``(relu(λ_i + ρ g̃_i)² − λ_i²) / (2ρ)`` (Nocedal & Wright, *Numerical Optimization*, 2006,
eq. 17.65) and the multiplier step is the same ascent on ``λᵀ g``; ``ρ = η`` gives the classical method of multipliers
(Bertsekas 1982). The dual optimizer is any ``maximize=True`` torch optimizer: plain SGD (the update above) or
cooper's nuPI controller (Sohrabi, Ramirez, Zhang, Lacoste-Julien, Gallego-Posada, ICML 2024), which damps the
oscillation of multipliers.

cooper supplies the formulations (the Lagrangian terms), the multipliers and their projection
(:class:`~fairopt.optim.multipliers.FairnessMultiplier`), the penalty-coefficient updater, nuPI, and the dual step
(:meth:`cooper.optim.ConstrainedOptimizer.dual_step`); this module only decides which table the dual step reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import cooper
import numpy as np
import torch
import torch.optim.optimizer as _optimizer_module
from cooper import CMPState
from cooper.formulations import Lagrangian
from cooper.penalty_coefficients import PenaltyCoefficientUpdater
from torch import Tensor

from fairopt.constraints import ConstraintValue
from fairopt.optim.base import DualPlayer, load_plain_optimizer_state, observed_values, plain_optimizer_state
from fairopt.optim.cooper_problem import FairnessCMP

__all__ = ["DUAL_OPTIMIZERS", "LagrangianPlayer", "check_dual_optimizer", "make_dual_optimizer"]

DualOptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]
DUAL_OPTIMIZERS = ("sgd", "nupi")
_CPU = torch.device("cpu")
_HOST_DTYPES = (torch.float32, torch.float64)
# up to this many constraint entries, a plain-SGD dual step on CPU multipliers runs on Python floats (measured in a
# tight loop against the tensor path: 4x faster at 2 entries, 3x at 16, even between 128 and 256, 5x slower at 1024)
_FEW_ENTRIES = 64


def check_dual_optimizer(kind: str | DualOptimizerFactory) -> None:
    """Refuse a dual optimizer that :func:`make_dual_optimizer` cannot build, before any parameter exists.

    Raises:
        ValueError: neither one of :data:`DUAL_OPTIMIZERS` nor a callable.
    """
    if not callable(kind) and kind not in DUAL_OPTIMIZERS:
        raise ValueError(
            f"dual_optimizer must be one of {DUAL_OPTIMIZERS} or a callable params -> optimizer, got {kind!r}"
        )


def make_dual_optimizer(
    params: Iterable[torch.nn.Parameter],
    kind: str | DualOptimizerFactory,
    lr: float,
    options: Mapping[str, Any] | None = None,
) -> torch.optim.Optimizer:
    """Build the optimizer of the multipliers.

    Args:
        params: the multipliers' parameters (``cmp.dual_parameters()``).
        kind: ``"sgd"`` (projected gradient ascent), ``"nupi"`` (cooper's nuPI; pass e.g. ``{"Kp": 1.0}`` in
            ``options``), or a callable ``params -> torch.optim.Optimizer`` that builds one with ``maximize=True``.
        lr: the dual learning rate η (ignored by a callable).
        options: extra keyword arguments for SGD / nuPI (e.g. ``momentum``, ``Kp``, ``Ki``, ``ema_nu``).

    Raises:
        ValueError: an unknown name.
    """
    check_dual_optimizer(kind)
    options = dict(options or {})
    if callable(kind):
        return kind(params)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, maximize=True, **options)
    return cooper.optim.nuPI(params, lr=lr, maximize=True, **options)


def _plain_sgd_lr(optimizer: torch.optim.Optimizer) -> float | None:
    """The learning rate when ``optimizer`` is a plain SGD ascent on CPU multipliers (``torch.optim.SGD`` itself, one
    group, ``maximize=True``, no momentum, weight decay, hooks, LR-scheduler wrapper, foreach/fused or differentiable
    mode), whose step is then taken directly by :meth:`FairnessMultiplier.sgd_ascent_` with torch's own update
    (same operations, same numbers) instead of ``Optimizer.step``'s generic machinery; None otherwise. Read every
    step: a scheduler may change the learning rate, a user may add a hook."""
    if type(optimizer) is not torch.optim.SGD or len(optimizer.param_groups) != 1:
        return None
    if optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks or "step" in vars(optimizer):
        return None
    if _optimizer_module._global_optimizer_pre_hooks or _optimizer_module._global_optimizer_post_hooks:
        return None
    group = optimizer.param_groups[0]
    lr = group["lr"]
    if not group["maximize"] or group["momentum"] != 0 or group["weight_decay"] != 0 or isinstance(lr, Tensor):
        return None
    if group["foreach"] or group["fused"] or group["differentiable"]:
        return None
    for p in group["params"]:  # is_cpu, not device.type: ~0.1 µs instead of ~0.5 µs a parameter
        if not p.is_cpu or p.is_sparse:
            return None
    return float(lr)


class LagrangianPlayer(DualPlayer):
    """λ-player of the (augmented) Lagrangian: cooper formulation + multipliers + dual optimizer.

    Args:
        problem: the :class:`~fairopt.optim.FairnessCMP` holding the multipliers (its formulation must use them).
        primal_optimizer: the user's optimizer (cooper's constrained optimizer holds it; this player never steps it).
        dual_optimizer: an optimizer over ``problem.dual_parameters()`` with ``maximize=True``.
        penalty_updater: optional cooper penalty-coefficient updater (augmented Lagrangian), stepped after each
            dual update with the hard values.

    Raises:
        ValueError: the formulation has no multipliers, or the dual optimizer does not maximize (cooper's check).
    """

    def __init__(
        self,
        problem: FairnessCMP,
        primal_optimizer: torch.optim.Optimizer,
        dual_optimizer: torch.optim.Optimizer,
        *,
        penalty_updater: PenaltyCoefficientUpdater | None = None,
    ) -> None:
        if not problem.has_multipliers:
            raise ValueError("LagrangianPlayer needs a formulation with multipliers (Lagrangian, AugmentedLagrangian)")
        self.problem = problem
        self.dual_optimizer = dual_optimizer
        self.penalty_updater = penalty_updater
        # cooper checks maximize=True here and owns the dual step (optimizer step + multiplier projection).
        self._cooper = cooper.optim.SimultaneousOptimizer(
            problem, primal_optimizers=primal_optimizer, dual_optimizers=dual_optimizer
        )
        self.num_constraints = problem.constraint_set.num_constraints
        self._slices = problem.constraint_set.slices
        self._plain_lagrangian = all(c.formulation_type is Lagrangian for c in problem.constraints())
        self._multipliers = problem.multiplier_modules

    def primal_objective(self, loss: Tensor, value: ConstraintValue) -> Tensor:
        r""":math:`f + \sum_i λ_i \tilde g_i` (or cooper's augmented form)."""
        if self._plain_lagrangian:  # cooper's Lagrangian term, λᵀ g̃, without building its CMPState (~100 µs/step)
            return loss + (self.problem.multiplier_values().to(value.proxy.dtype) * value.proxy).sum()
        states = self.problem.constraint_states(value, dual=False)
        return CMPState(loss=loss, observed_constraints=states).compute_primal_lagrangian().lagrangian

    def primal_weights(self) -> tuple[float, np.ndarray] | None:
        """``(1, λ)`` for the Lagrangian; None for the augmented Lagrangian (quadratic in ``g̃``)."""
        if not self._plain_lagrangian:
            return None
        if len(self._multipliers) == 1 and (host := self._multipliers[0].host_view()) is not None:
            data, _, read_only = host
            if data.dtype == torch.float64:  # a read-only view, read before the next dual step: no copy needed
                return 1.0, read_only
        return 1.0, self.problem.multiplier_values().cpu().double().numpy()

    def update(self, value: ConstraintValue) -> None:
        """One ascent step on cooper's dual Lagrangian ``λᵀ g`` (hard values), then cooper's projection.

        The gradient of ``λᵀ g`` w.r.t. λ is ``g`` (both formulations), so it is written into the multipliers'
        ``.grad`` directly instead of through an autograd pass; cooper's ``dual_step`` then steps the dual optimizer
        and projects (undefined entries keep their value, see :class:`~fairopt.optim.FairnessMultiplier`).
        """
        plain = _plain_sgd_lr(self.dual_optimizer)
        # Plain SGD on a few CPU multipliers: the whole step on Python floats, a handful of calls instead of ~20
        # tensor operations, unless the constraint set is forced onto the device evaluator (evaluator="device": that
        # path must not read tensors on the host, tests/test_no_sync.py). Many entries: tensor operations, whose
        # fixed cost is then small beside the rest of the step.
        hard, defined = value.hard, value.defined
        if (
            plain is not None
            and self.num_constraints <= _FEW_ENTRIES
            and hard.is_cpu
            and defined.is_cpu
            and hard.dtype in _HOST_DTYPES
            and all(m.weight.dtype in _HOST_DTYPES for m in self._multipliers)
            and not self.problem.constraint_set.on_device(_CPU)
        ):
            hard_values, defined_values = hard.tolist(), defined.tolist()
            for multiplier, entries in zip(self._multipliers, self._slices):
                multiplier.sgd_ascent_floats_(hard_values[entries], defined_values[entries], plain)
            if self.penalty_updater is not None:
                states = self.problem.constraint_states(value, primal=False, mask_multipliers=False)
                self.penalty_updater.step(states)
            return
        hard, defined = observed_values(value)
        for multiplier, entries in zip(self._multipliers, self._slices):
            grad = hard[entries].to(multiplier.weight)
            multiplier.weight.grad = grad
            if plain is None:
                multiplier.mask_next_update(defined[entries])
            else:
                multiplier.sgd_ascent_(grad, plain, defined[entries])
        if plain is None:
            self._cooper.dual_step()
        if self.penalty_updater is not None:
            states = self.problem.constraint_states(value, primal=False, mask_multipliers=False)
            self.penalty_updater.step(states)

    @property
    def multipliers(self) -> Tensor:
        return self.problem.multiplier_values()

    def state_dict(self) -> dict[str, Any]:
        """Multipliers, penalty coefficients and the dual optimizer's state: tensors and plain values only (nuPI's
        enum hyper-parameter is stored as its value, :func:`~fairopt.optim.base.plain_optimizer_state`), so it loads
        with ``torch.load(..., weights_only=True)``."""
        return {"problem": self.problem.state_dict(), "dual_optimizer": plain_optimizer_state(self.dual_optimizer)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` (also one saved with nuPI's enum in it, before plain states)."""
        self.problem.load_state_dict(state["problem"])
        load_plain_optimizer_state(self.dual_optimizer, state["dual_optimizer"])
