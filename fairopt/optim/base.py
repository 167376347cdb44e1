r"""The dual (λ) player: what every constrained method has in common.

A constrained method is a two-player game between the model parameters θ (the primal player, which minimizes)
and weights λ on the constraints (the dual player). Each method answers two questions:

* :meth:`DualPlayer.primal_objective`: which scalar does θ descend on? It is built from the objective ``f``
  and the *proxy* constraint values ``g̃`` (differentiable). E.g. the Lagrangian ``f + Σ_i λ_i g̃_i``.
* :meth:`DualPlayer.update`: how does λ move? It reads only the *hard* constraint values ``g`` and the
  ``defined`` mask (Cotter, Jiang, Gupta, Wang, Narayan, You, Sridharan, JMLR 2019, "proxy constraints":
  the dual player must see the true rates, the primal player their surrogate).

``update`` is a deterministic function of ``(g, defined)``, which are a function of one ``(G, K)`` table: under DDP,
all-reduce the table, then every rank applies the same update and holds the same λ.

Undefined entries (a rate with a zero denominator) carry ``defined=False``; :func:`observed_values` also treats a
non-finite hard value as undefined. An undefined entry never moves its multiplier.
"""

from __future__ import annotations

import abc
import enum
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fairopt._validation import finite
from fairopt.constraints import ConstraintValue

__all__ = [
    "DualPlayer",
    "as_margin",
    "as_score_vector",
    "check_positive",
    "load_plain_optimizer_state",
    "observed_values",
    "plain_optimizer_state",
]


def check_positive(name: str, value: float) -> float:
    """``float(value)`` if it is a finite number > 0, else ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def as_margin(value: Any, num_entries: int) -> np.ndarray:
    """A margin as ``(m,)`` float64: one number broadcast or one per entry, >= 0; ``inf`` (the standard error
    :meth:`~fairopt.optim.ConstraintSet.standard_errors` gives an undefined entry) becomes 0, no margin.

    Raises:
        TypeError: text or booleans (``"0.01"`` would read as 0.01 and ``True`` as 1.0: neither is a margin).
        ValueError: another number of entries, NaN or a negative value.
    """
    raw = np.asarray(value.cpu() if isinstance(value, Tensor) else value)
    if raw.dtype.kind not in "iuf":  # no str, bool, object or complex (np.asarray(..., float64) would parse "0.01")
        raise TypeError(
            f"margin must be a number or numbers (constraint units, e.g. 0.02 or opt.constraint_set.standard_errors"
            f"(stats)), got {value!r} ({type(value).__name__}, dtype {raw.dtype})"
        )
    margin = raw.astype(np.float64).reshape(-1)
    if margin.size == 1:
        margin = np.repeat(margin, num_entries)
    if margin.shape != (num_entries,):
        raise ValueError(
            f"margin must be one number or have {num_entries} entries (shape ({num_entries},)), got {margin.size}"
        )
    if np.isnan(margin).any() or (margin < 0).any():
        raise ValueError(f"margin must be >= 0 (constraint units), got {margin.tolist()}")
    return np.where(np.isinf(margin), 0.0, margin)


def as_score_vector(scores: Tensor) -> Tensor:
    """Scores as one logit per example, ``(N,)``: an ``(N, 1)`` column (``nn.Linear(d, 1)``'s output) is squeezed.

    Squeezing here, and only the trailing unit dimension, keeps a ``(N, 1)`` column from ever meeting ``(N,)``
    labels in an elementwise operation, which would broadcast to ``(N, N)`` without an error. Anything that is not a
    tensor is returned unchanged (the measurement names the type).

    Raises:
        ValueError: any other shape, e.g. ``()`` or a two-column ``(N, 2)`` head; the message names the shape and
            how to get ``(N,)``.
    """
    if not isinstance(scores, Tensor) or scores.dim() == 1:
        return scores
    if scores.dim() == 2 and scores.shape[1] == 1:
        return scores.squeeze(-1)
    shape = tuple(scores.shape)
    hint = "pass scores.squeeze(-1) or scores.reshape(-1) (one logit per example)"
    if scores.dim() == 2 and scores.shape[1] == 2:
        hint = "for a two-logit softmax head pass scores=logits[:, 1] - logits[:, 0] (the positive class's logit)"
    raise ValueError(f"scores must have shape (N,) or (N, 1), one logit per example, got {shape}; {hint}")


def plain_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` with :class:`enum.Enum` hyper-parameters replaced by their ``.value``.

    ``torch.load`` refuses any class that is not on its allow-list with ``weights_only=True`` (the default since
    torch 2.6), e.g. cooper's ``nuPIInitType`` in nuPI's param groups; plain values load everywhere.
    :func:`load_plain_optimizer_state` restores the enums. The tensors are shared with the optimizer, as in
    ``state_dict()``.
    """
    state = optimizer.state_dict()
    groups = [{k: v.value if isinstance(v, enum.Enum) else v for k, v in g.items()} for g in state["param_groups"]]
    return {**state, "param_groups": groups}


def load_plain_optimizer_state(optimizer: torch.optim.Optimizer, state: Mapping[str, Any]) -> None:
    """``optimizer.load_state_dict(state)`` for a :func:`plain_optimizer_state` (or a plain ``state_dict()``).

    A saved hyper-parameter whose live counterpart is an :class:`enum.Enum` is converted back to that enum type:
    torch's loader copies the saved param-group values over the live ones, so a bare ``0`` would otherwise replace
    e.g. ``nuPIInitType.ZEROS``, and nuPI would silently take its other branch.

    Raises:
        ValueError: a saved value is not a member of the live enum; torch's errors for another number of groups
            or parameters.
    """
    groups = []
    for index, saved in enumerate(state["param_groups"]):
        live = optimizer.param_groups[index] if index < len(optimizer.param_groups) else {}
        group = dict(saved)
        for key, value in live.items():
            if isinstance(value, enum.Enum) and key in group and not isinstance(group[key], enum.Enum):
                group[key] = type(value)(group[key])
        groups.append(group)
    optimizer.load_state_dict({**state, "param_groups": groups})


def observed_values(value: ConstraintValue) -> tuple[Tensor, Tensor]:
    """``(hard, defined)`` for the dual player: detached, with non-finite entries marked undefined and zeroed.

    Returns:
        ``hard (m,)`` with 0 at undefined entries, ``defined (m,)`` bool. No host synchronization.
    """
    hard = value.hard.detach()
    defined = value.defined.to(torch.bool) & finite(hard)
    return torch.where(defined, hard, torch.zeros_like(hard)), defined


class DualPlayer(abc.ABC):
    """Base class of the λ-players (:class:`~fairopt.optim.LagrangianPlayer`,
    :class:`~fairopt.optim.ProxyLagrangianPlayer`, :class:`~fairopt.optim.PenaltyPlayer`).

    Attributes:
        num_constraints: m, the number of constraint entries.
    """

    num_constraints: int

    @abc.abstractmethod
    def primal_objective(self, loss: Tensor, value: ConstraintValue) -> Tensor:
        """The scalar the primal player minimizes at the current λ (λ carries no gradient).

        Args:
            loss: scalar objective ``f`` (differentiable w.r.t. θ).
            value: the batch's constraint values; only ``value.proxy (m,)`` enters (differentiable).
        """

    def primal_weights(self) -> tuple[float, np.ndarray] | None:
        r"""``(w_0, μ)`` when :meth:`primal_objective` is linear in the proxy values, ``w_0 f + Σ_i μ_i g̃_i`` at the
        current state (a float and an ``(m,)`` float64 array on the host, possibly a view of the state: read it before
        the next :meth:`update`); None otherwise (the default). The
        optimizer then builds the objective's gradient from ``Σ_i μ_i ∂g̃_i/∂T`` directly
        (:mod:`fairopt.constraints.evaluation`)."""
        return None

    @abc.abstractmethod
    def update(self, value: ConstraintValue) -> None:
        """One dual step from the hard values ``value.hard (m,)`` and ``value.defined (m,)`` only."""

    @property
    @abc.abstractmethod
    def multipliers(self) -> Tensor:
        """``(m,)`` current weights of the constraints (a detached copy)."""

    @property
    def objective_weight(self) -> Tensor:
        """Weight of the objective in :meth:`primal_objective` (1 except for the proxy-Lagrangian's λ_0)."""
        return torch.ones((), dtype=self.multipliers.dtype)

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything :meth:`load_state_dict` needs to continue bit for bit."""

    @abc.abstractmethod
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`."""
