r"""The proxy-Lagrangian λ-player (swap-regret and external-regret variants). Not in cooper: ours.

Cotter, Jiang, Sridharan, "Two-Player Games for Efficient Non-Convex Constrained Optimization", ALT 2019
(Definition 2, Algorithm 2) and Cotter et al., JMLR 20(172), 2019 (Section 4). The two players optimize
*different* functions of a weight vector ``λ`` on the simplex ``Δ^{m+1}`` (coordinate 0 weighs the objective):

.. math::
    \mathcal{L}_θ(θ, λ) = λ_0\, f(θ) + \sum_{i=1}^m λ_i\, \tilde g_i(θ) \quad\text{(minimized by θ; proxy constraints)}

    \mathcal{L}_λ(θ, λ) = \sum_{i=1}^m λ_i\, g_i(θ) \quad\text{(maximized by λ; hard constraints)}

so the λ-player's gradient is ``Δ = (0, g_1, …, g_m)``, built from the *true* rates.

**Swap regret** (the paper's algorithm). The λ-player keeps an ``(m+1)×(m+1)`` column-stochastic matrix ``M`` and
plays its stationary distribution ``λ = Mλ``; each step

.. math::
    M \leftarrow \operatorname{colnorm}\big(M \odot \exp(η\, Δ λ^\top)\big)

(element ``(i, j)`` multiplied by ``exp(η Δ_i λ_j)``), computed in log space, with entries kept above a floor so
``M`` stays positive (:func:`~fairopt.optim.simplex.multiplicative_step`). ``"additive"`` updates take
``M ← Π(M + η Δ λᵀ)`` instead (column-wise Euclidean projection).

**External regret**: ``λ ← normalize(λ ⊙ exp(η Δ))`` (Hedge), or the projected additive step.

The guarantees hold for a *randomized* model over the iterates: select it with
:func:`~fairopt.optim.best_distribution` on held-out records.

Undefined entries (``defined=False``, or a non-finite hard value) get no gradient and their rows of the state are
frozen; the other rows are renormalized within the mass they had (with swap regret, λ — a fixed point of the whole
matrix — may still shift). Hard values are clipped to ``±MAX_VIOLATION`` (1e6) so that ``η Δ`` cannot overflow.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fairopt.constraints import ConstraintValue
from fairopt.optim.base import DualPlayer, check_positive, observed_values
from fairopt.optim.simplex import additive_step, multiplicative_step, stationary_distribution

__all__ = ["REGRETS", "UPDATES", "ProxyLagrangianPlayer"]

REGRETS = ("swap", "external")
# Constraint values are rates or mean losses; larger hard values are clipped so that η·Δ stays far from overflow.
MAX_VIOLATION = 1e6
UPDATES = ("multiplicative", "additive")


class ProxyLagrangianPlayer(DualPlayer):
    """λ-player of the proxy-Lagrangian formulation.

    Args:
        num_constraints: m.
        lr: the λ-player's step size η > 0 (attribute ``lr``, may be changed between steps).
        regret: ``"swap"`` (default, stationary distribution of a stochastic matrix) or ``"external"``.
        update: ``"multiplicative"`` (default, exponentiated gradient in log space) or ``"additive"``.
        minimum_weight: multiplicative only: the floor γ in (0, 1); every entry stays ``>= γ/(m+1)`` (default 1e-3,
            TFCO's ``minimum_multiplier_radius``).
        initial_weight: total initial weight on the constraints (each gets ``initial_weight/(m+1)``); defaults to
            ``minimum_weight`` (multiplicative) or 0 (additive), i.e. start with all weight on the objective.
        device, dtype: of the state (float64 by default).

    Raises:
        ValueError: a bad ``regret``/``update`` name, ``lr <= 0``, ``minimum_weight`` out of range or given with
            additive updates, ``initial_weight`` out of range.
    """

    def __init__(
        self,
        num_constraints: int,
        *,
        lr: float,
        regret: str = "swap",
        update: str = "multiplicative",
        minimum_weight: float | None = None,
        initial_weight: float | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        if regret not in REGRETS:
            raise ValueError(f"regret must be one of {REGRETS}, got {regret!r}")
        if update not in UPDATES:
            raise ValueError(f"update must be one of {UPDATES}, got {update!r}")
        check_positive("dual learning rate", lr)
        if update == "additive":
            if minimum_weight is not None:
                raise ValueError("minimum_weight applies to multiplicative updates only")
            floor, initial = 0.0, 0.0 if initial_weight is None else float(initial_weight)
        else:
            floor = 1e-3 if minimum_weight is None else float(minimum_weight)
            if not 0.0 < floor < 1.0:
                raise ValueError(f"minimum_weight must be in (0, 1), got {minimum_weight!r}")
            initial = floor if initial_weight is None else float(initial_weight)
        if not floor <= initial <= 1.0:
            raise ValueError(f"initial_weight must be in [{floor:g}, 1], got {initial_weight!r}")
        self.num_constraints = int(num_constraints)
        self.lr, self.regret, self.update_type, self.floor = float(lr), regret, update, floor
        n = self.num_constraints + 1
        column = torch.full((n,), initial / n, dtype=dtype, device=device)
        column[0] = 1.0 - initial * (n - 1) / n
        state = column[:, None].expand(n, n if regret == "swap" else 1).clone()
        self._state = state.log() if update == "multiplicative" else state
        self._lam = column.clone()

    # the game ---------------------------------------------------------------------------------------------------
    def primal_objective(self, loss: Tensor, value: ConstraintValue) -> Tensor:
        r""":math:`λ_0 f + \sum_i λ_i \tilde g_i` at the current λ (no gradient to λ)."""
        lam = self._lam
        return lam[0] * loss + (lam[1:] * value.proxy).sum()

    def primal_weights(self) -> tuple[float, np.ndarray]:
        """``(λ_0, λ_{1:})``: the primal objective is linear in the proxy values."""
        lam = self._lam.detach().cpu().double().numpy()
        return float(lam[0]), lam[1:]

    def update(self, value: ConstraintValue) -> None:
        """One λ step from ``Δ = (0, g)`` with the hard values (undefined entries frozen)."""
        hard, defined = observed_values(value)
        hard = hard.to(self._state).clamp(-MAX_VIOLATION, MAX_VIOLATION)
        defined = defined.to(self._state.device)
        delta = torch.cat([hard.new_zeros(1), hard])
        mask = torch.cat([defined.new_ones(1), defined])
        gradient = delta[:, None] * self._lam[None, :] if self.regret == "swap" else delta[:, None]
        # In place: the state keeps its storage from step to step, as a captured CUDA graph needs (it replays on the
        # addresses it was captured with).
        if self.update_type == "multiplicative":
            self._state.copy_(multiplicative_step(self._state, gradient, self.lr, mask, self.floor))
        else:
            self._state.copy_(additive_step(self._state, gradient, self.lr, mask))
        self._lam.copy_(self._distribution())

    def _distribution(self) -> Tensor:
        if self.regret == "swap":
            if self.update_type == "multiplicative":  # a positive matrix: unique stationary distribution
                return stationary_distribution(self._state.exp())
            return stationary_distribution(self._state, init=self._lam)
        matrix = self._state.exp() if self.update_type == "multiplicative" else self._state
        column = matrix[:, 0].clamp(min=0)
        return column / column.sum()

    # views ------------------------------------------------------------------------------------------------------
    @property
    def distribution(self) -> Tensor:
        """``(m+1,)`` λ on the simplex: ``[objective weight, constraint weights...]`` (a copy)."""
        return self._lam.clone()

    @property
    def matrix(self) -> Tensor:
        """The column-stochastic state: ``(m+1, m+1)`` (swap regret) or ``(m+1, 1)`` (external regret)."""
        return self._state.exp() if self.update_type == "multiplicative" else self._state.clone()

    @property
    def multipliers(self) -> Tensor:
        return self._lam[1:].clone()

    @property
    def objective_weight(self) -> Tensor:
        return self._lam[0].clone()

    # state ------------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "regret": self.regret,
            "update": self.update_type,
            "floor": self.floor,
            "lr": self.lr,
            "state": self._state.clone(),
            "lam": self._lam.clone(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for key, mine in (("regret", self.regret), ("update", self.update_type)):
            if state[key] != mine:
                raise ValueError(f"state_dict has {key}={state[key]!r} but this player has {mine!r}")
        if tuple(state["state"].shape) != tuple(self._state.shape):
            raise ValueError(
                f"state_dict is for {state['lam'].numel() - 1} constraints, this player has {self.num_constraints}"
            )
        self.floor, self.lr = float(state["floor"]), float(state["lr"])
        self._state = state["state"].to(self._state).clone()
        self._lam = state["lam"].to(self._lam).clone()
