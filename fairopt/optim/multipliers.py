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

from fairopt._tensors import ViewCache, numpy_views
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
        ValueError: ``bound`` not a finite number > 0, or above the largest value of ``dtype``; negative or
            non-finite ``init``.
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
        if bound is not None and bound > torch.finfo(dtype).max:  # torch's clamp could not convert it
            raise ValueError(
                f"multiplier bound {bound!r} exceeds the largest {dtype} ({torch.finfo(dtype).max:g}); pass a smaller "
                "bound, or no bound, or dtype=torch.float64"
            )
        if init is not None and not bool(torch.isfinite(init).all() and (init >= 0).all()):
            raise ValueError("initial multipliers must be finite and >= 0")
        super().__init__(num_constraints=num_constraints, init=init, device=device, dtype=dtype)
        self.bound = None if bound is None else float(bound)
        self._before: Tensor | None = None
        self._observed: Tensor | None = None
        self._host = ViewCache()  # of numpy_views(weight): see host_view

    def host_view(self) -> tuple[Tensor, np.ndarray, np.ndarray] | None:
        """``(weight.data, a NumPy view of it, a read-only one)`` of a CPU weight of a dtype NumPy reads (float32,
        float64); None otherwise. The same objects from step to step (a view costs ~2 µs, and the multipliers are read
        several times a training step) while the weight keeps its storage, shape and dtype
        (:func:`~fairopt._tensors.numpy_views`); a copy or a pickle of the multiplier starts with no view
        (:class:`~fairopt._tensors.ViewCache`)."""
        return numpy_views(self._host, self._parameters["weight"])  # Module.__getattr__ costs ~1.5 µs a lookup

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

    def sgd_ascent_floats_(self, hard: list[float], defined: list[bool], lr: float) -> None:
        """``weight.grad = g`` and :meth:`sgd_ascent_` for a CPU weight of a few entries given as Python floats (see
        :class:`~fairopt.optim.LagrangianPlayer`): ``g`` is the observed hard values, 0 where an entry is undefined or
        not finite, as :func:`~fairopt.optim.base.observed_values`. The same numbers bit for bit, at a handful of
        calls instead of a tensor operation (~5 µs) per step of the projection.

        The step itself stays torch's SGD operation, ``w + lr * g`` as ``Tensor.add(grad, alpha=lr)`` (equal to
        SGD's ``w.add(-g, alpha=-lr)``: ``(-lr)(-g) = lr g`` exactly, fused or not), whose rounding Python would not
        reproduce where torch fuses the multiply-add. The rest are selections and comparisons, exact on floats: an
        entry keeps its value unless it is observed and its new value finite, then the clamp (``x < 0`` is False for
        ``-0.0`` and NaN, as in torch's). The weight is written in place through a NumPy view: it keeps its storage
        (optimizer state, CUDA graphs); a clamped float32 entry gets the bound rounded to float32, as torch's clamp
        (no float32 lies strictly between a bound and its rounding, so comparing with either gives the same value).

        Args:
            hard: ``m`` hard values (``hard.tolist()`` of a float32/float64 tensor).
            defined: ``m`` flags, True (nonzero) for entries defined in the statistics the dual step read.
            lr: the step size η > 0.

        Raises:
            ValueError: the weight is not a float32 or float64 CPU tensor (:meth:`sgd_ascent_` takes any).
        """
        host = self.host_view()
        if host is None:
            raise ValueError("sgd_ascent_floats_ needs a float32 or float64 weight on the CPU")
        data, keep, _ = host  # keep: the weight's storage; it has not moved yet: unobserved, non-finite entries keep it
        observed = [bool(d) and h - h == 0.0 for h, d in zip(hard, defined)]  # h - h: 0 unless inf or NaN
        values = [h if ok else 0.0 for h, ok in zip(hard, observed)]
        # float64: the same numbers through NumPy at a third of torch.tensor's cost; float32 rounds in torch.tensor
        # (NumPy's cast would warn where a float64 value overflows float32)
        grad = (
            torch.from_numpy(np.array(values, dtype=np.float64))
            if keep.dtype == np.float64
            else torch.tensor(values, dtype=data.dtype)
        )
        self._parameters["weight"].grad = grad
        high = self.bound  # compared as a float64; written as the weight's dtype (rounded as torch casts it)
        low = 0.0 if self.constraint_type == ConstraintType.INEQUALITY else None if high is None else -high
        out = []
        for old, new, ok in zip(keep.tolist(), data.add(grad, alpha=lr).tolist(), observed):
            value = new if ok and new - new == 0.0 else old
            if low is not None and value < low:
                value = low
            if high is not None and value > high:
                value = high
            out.append(value)
        keep[:] = out  # the weight's own values, exactly; a bound, rounded to the weight's dtype
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
