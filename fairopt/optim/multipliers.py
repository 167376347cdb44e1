r"""Lagrange multipliers for fairness constraints: cooper's dense multiplier with a safe projection.

After each dual optimizer step, cooper calls :meth:`~cooper.multipliers.Multiplier.post_step_` to project the
multipliers (for inequality constraints onto ``λ >= 0``). :class:`FairnessMultiplier` extends that projection:

.. math::
    λ \leftarrow \min\big(\max(λ, 0),\ λ_{\max}\big) \quad\text{on observed, finite entries;}\qquad
    λ \leftarrow λ_{\text{before the step}} \quad\text{elsewhere.}

so a multiplier never becomes negative, NaN or infinite, stays below an optional bound, and an entry that was
undefined in the statistics the dual read (a zero-denominator rate) does not move, whatever the dual optimizer's
internal state (momentum, nuPI's error average) would otherwise do.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from cooper.multipliers import DenseMultiplier
from cooper.utils import ConstraintType
from torch import Tensor

from fairopt._validation import finite

__all__ = ["FairnessMultiplier"]


class FairnessMultiplier(DenseMultiplier):
    """A :class:`cooper.multipliers.DenseMultiplier` that is non-negative, finite, optionally bounded, and frozen
    at entries that were not observed.

    Args:
        num_constraints: m, the number of entries.
        init: optional ``(m,)`` non-negative initial values (default zeros).
        bound: optional upper bound ``λ_max > 0`` on every entry (e.g. TFCO's ``maximum_multiplier_radius``
            bounds the l1 norm instead; a per-entry bound keeps entries independent).
        device, dtype: of the weight (``(m,)``).

    Raises:
        ValueError: ``bound`` not a finite number > 0; negative or non-finite ``init``.
    """

    def __init__(
        self,
        num_constraints: int | None = None,
        init: Tensor | None = None,
        *,
        bound: float | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        if bound is not None and not (isinstance(bound, (int, float)) and math.isfinite(bound) and bound > 0):
            raise ValueError(f"multiplier bound must be a finite number > 0, got {bound!r}")
        if init is not None and not bool(torch.isfinite(init).all() and (init >= 0).all()):
            raise ValueError("initial multipliers must be finite and >= 0")
        super().__init__(num_constraints=num_constraints, init=init, device=device, dtype=dtype)
        self.bound = None if bound is None else float(bound)
        self._before: Tensor | None = None
        self._observed: Tensor | None = None

    def mask_next_update(self, observed: Tensor) -> None:
        """Remember the current values; the next :meth:`post_step_` restores entries where ``observed`` is False.

        Args:
            observed: ``(m,)`` bool, True for entries the coming dual step may move.
        """
        self._before = self.weight.detach().clone()
        self._observed = observed.detach().to(device=self.weight.device, dtype=torch.bool)

    @torch.no_grad()
    def sgd_ascent_(self, grad: Tensor, lr: float, observed: Tensor) -> None:
        """One step of ``torch.optim.SGD(lr=lr, maximize=True)`` (no momentum, no weight decay) followed by the
        projection of :meth:`post_step_`, with the operation of torch's single-tensor SGD (``w.add_(-grad,
        alpha=-lr)``), so the numbers are the same bit for bit, without the optimizer's per-step machinery (used by
        :class:`~fairopt.optim.LagrangianPlayer` for a plain SGD dual optimizer).

        Args:
            grad: ``(m,)`` the ascent direction (the hard values ``g``), in the weight's dtype.
            lr: the step size η > 0.
            observed: ``(m,)`` bool, True for entries the step may move (as :meth:`mask_next_update`).
        """
        weight = self.weight.data
        new = weight.add(-grad, alpha=-lr)
        # the weight has not moved yet: it is the value an unobserved or non-finite entry keeps
        self._project_(new, weight, finite(new) & observed.to(device=weight.device, dtype=torch.bool))

    def sgd_ascent_host_(self, grad: Tensor, lr: float, observed: np.ndarray) -> None:
        """:meth:`sgd_ascent_` for a CPU weight, with the projection in NumPy on views of the same storage (~1 µs
        per operation instead of ~5 µs per tensor operation on a few entries): the same numbers bit for bit.

        The step itself stays torch's SGD operation, ``w + lr * g`` as ``Tensor.add(grad, alpha=lr)`` (equal to
        SGD's ``w.add(-g, alpha=-lr)``: ``(-lr)(-g) = lr g`` exactly, fused or not), whose rounding NumPy would not
        reproduce where torch fuses the multiply-add. ``where(ok, new, keep)`` and the clamp are selections and
        comparisons, exact in both (the clamp as ``where(x < 0, 0, x)``: the same result as torch's for ``-0.0`` and
        NaN too; a Python-float bound is cast to the weight's dtype first, as by torch). No ``torch.no_grad``
        needed: ``grad`` is a constant, ``weight.data`` carries no graph.

        Args:
            grad: ``(m,)`` CPU tensor, the ascent direction, in the weight's dtype (float32 or float64).
            lr: the step size η > 0.
            observed: ``(m,)`` NumPy bool, True for entries the step may move.
        """
        weight = self.weight.data
        keep = weight.numpy()  # the weight's storage; it has not moved yet: unobserved, non-finite entries keep it
        new = weight.add(grad, alpha=lr).numpy()
        # in place, selections only: w = where(finite(new) & observed, new, w), then clamp(w) as where(w < 0, 0, w);
        # the weight keeps its storage (optimizer state, CUDA graphs)
        np.copyto(keep, new, where=np.isfinite(new) & observed)
        bound = self.bound
        if self.constraint_type == ConstraintType.INEQUALITY:
            np.copyto(keep, 0.0, where=keep < 0.0)
            if bound is not None:
                np.copyto(keep, bound, where=keep > bound)
        elif bound is not None:
            np.copyto(keep, -bound, where=keep < -bound)
            np.copyto(keep, bound, where=keep > bound)
        if self._before is not None or self._observed is not None:  # nn.Module.__setattr__ costs ~5 µs a call
            self._before = self._observed = None

    @torch.no_grad()
    def post_step_(self) -> None:
        """Project after a dual step: unobserved or non-finite entries keep their previous value; then clamp to
        ``[0, bound]`` for inequality constraints (cooper's projection, plus the bound)."""
        new = self.weight.data
        ok = finite(new)
        if self._observed is not None:
            ok = ok & self._observed
        self._project_(new, torch.zeros_like(new) if self._before is None else self._before, ok)

    def _project_(self, new: Tensor, keep: Tensor, ok: Tensor) -> None:
        new = torch.where(ok, new, keep)
        if self.constraint_type == ConstraintType.INEQUALITY:
            new = new.clamp(min=0.0, max=self.bound)
        elif self.bound is not None:
            new = new.clamp(min=-self.bound, max=self.bound)
        self.weight.data.copy_(new)  # in place: the weight keeps its storage (optimizer state, CUDA graphs)
        self._before = self._observed = None
