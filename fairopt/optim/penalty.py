r"""Fixed-weight penalty: the "fairness regularizer" baseline most toolkits offer. Not a constrained method.

.. math::
    \mathcal{L}(θ) = f(θ) + \sum_{i=1}^m c_i \max\big(0, \tilde g_i(θ)\big)

with fixed weights ``c_i >= 0`` (an exact l1 penalty: for ``c`` above the optimal multipliers its minimizers are
feasible, Nocedal & Wright 2006, Theorem 17.3, but the right ``c`` is unknown in advance). Nothing is learned from
the hard constraint values; it is here as the baseline the Lagrangian methods are compared with (e.g. the fairness
penalty of Cherepanova et al., ICLR 2021 RAI workshop). A quadratic penalty is available through
:class:`~fairopt.optim.FairnessCMP` with ``cooper.formulations.QuadraticPenalty``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from fairopt.constraints import ConstraintValue
from fairopt.optim.base import DualPlayer

__all__ = ["PenaltyPlayer"]


class PenaltyPlayer(DualPlayer):
    """A λ-"player" that never moves: fixed penalty coefficients ``c`` (built by :class:`~fairopt.optim.Penalty`).

    Args:
        num_constraints: m.
        weight: the coefficients ``c``: one number for all entries or ``(m,)``, each finite and >= 0 (default 1.0).
        device, dtype: of the coefficients.

    Raises:
        ValueError: another number of coefficients than 1 or m, or a negative / non-finite one.
    """

    def __init__(
        self,
        num_constraints: int,
        weight: float | Sequence[float] | Tensor = 1.0,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        weights = torch.as_tensor(weight, dtype=dtype, device=device).reshape(-1)
        if weights.numel() == 1:
            weights = weights.expand(num_constraints).clone()
        if weights.numel() != num_constraints:
            raise ValueError(
                f"penalty needs 1 or {num_constraints} coefficients (one per entry), got {weights.numel()}"
            )
        if not bool(torch.isfinite(weights).all() and (weights >= 0).all()):
            raise ValueError("penalty coefficients must be finite and >= 0")
        self.num_constraints = int(num_constraints)
        self._weights = weights

    def primal_objective(self, loss: Tensor, value: ConstraintValue) -> Tensor:
        r""":math:`f + \sum_i c_i \max(0, \tilde g_i)`."""
        return loss + (self._weights * value.proxy.clamp(min=0)).sum()

    def update(self, value: ConstraintValue) -> None:
        """Nothing to learn: fixed weights."""

    @property
    def multipliers(self) -> Tensor:
        return self._weights.clone()

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self._weights.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._weights = state["weights"].to(self._weights).clone()
