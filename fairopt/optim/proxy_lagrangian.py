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

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fairopt._tensors import ViewCache, numpy_views
from fairopt.constraints import ConstraintValue
from fairopt.optim.base import DualPlayer, check_positive, observed_values
from fairopt.optim.simplex import TREE_STATES, additive_step, multiplicative_step, stationary_distribution, tree_weights

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

    Attributes:
        host_arithmetic: multiplicative updates of a CPU state (float32/float64) with every entry defined: take the step
            with the elementwise arithmetic in NumPy on views of the same tensors, and only the transcendental
            functions, the reductions and the solve (of more than 3 states) as tensor operations (7 instead of ~50; the
            same operations on the same numbers, so the same state bit for bit). It reads the values on the host, so it
            is off by default: a :class:`~fairopt.ConstrainedOptimizer` whose constraints are evaluated on the host (the
            NumPy evaluator: ``not constraint_set.on_device(device)``) can switch it on; with ``evaluator="device"`` the
            step must read nothing on the host (``tests/test_no_sync.py``). Frozen (undefined) entries, additive updates
            and other devices take the tensor path.

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
        self._lam_view = ViewCache()  # of numpy_views(λ): see primal_weights
        self.host_arithmetic = False
        # constants of the tensor path, built once for the state's dtype and device: the first entries of Δ and of
        # the mask, and the eye and ones of the stationary distribution (a tensor operation each, every step)
        self._constants: tuple[Tensor, Tensor, Tensor, Tensor] | None = None
        # host path constants, built on first use for the state's dtype and floor (see _host_constants)
        self._host_cache = ViewCache()  # of _HostBuffers

    # the game ---------------------------------------------------------------------------------------------------
    def primal_objective(self, loss: Tensor, value: ConstraintValue) -> Tensor:
        r""":math:`λ_0 f + \sum_i λ_i \tilde g_i` at the current λ (no gradient to λ)."""
        lam = self._lam
        return lam[0] * loss + (lam[1:] * value.proxy).sum()

    def primal_weights(self) -> tuple[float, np.ndarray]:
        """``(λ_0, λ_{1:})``: the primal objective is linear in the proxy values."""
        lam = self._lam
        # a read-only view, the same from step to step (λ is written in place by every update)
        host = numpy_views(self._lam_view, lam, (torch.float64,))
        view = lam.cpu().double().numpy() if host is None else host[2]
        return float(view[0]), view[1:]

    def update(self, value: ConstraintValue) -> None:
        """One λ step from ``Δ = (0, g)`` with the hard values (undefined entries frozen)."""
        state = self._state  # contiguous, as built: the tensor operations then see the layout they see below
        if self.host_arithmetic and self.update_type == "multiplicative" and state.is_cpu and state.is_contiguous():
            hard_host = self._observed_host(value)
            if hard_host is not None:
                self._update_host(hard_host)
                return
        hard, defined = observed_values(value)
        hard = hard.to(self._state).clamp(-MAX_VIOLATION, MAX_VIOLATION)
        defined = defined.to(self._state.device)
        zero, true, _, _ = self._tensor_constants()
        delta = torch.cat([zero, hard])
        mask = torch.cat([true, defined])  # bool already (observed_values)
        gradient = delta[:, None] * self._lam[None, :] if self.regret == "swap" else delta[:, None]
        # In place: the state keeps its storage from step to step, as a captured CUDA graph needs (it replays on the
        # addresses it was captured with).
        if self.update_type == "multiplicative":
            self._state.copy_(multiplicative_step(self._state, gradient, self.lr, mask, self.floor))
        else:
            self._state.copy_(additive_step(self._state, gradient, self.lr, mask))
        self._lam.copy_(self._distribution())

    def _observed_host(self, value: ConstraintValue) -> np.ndarray | None:
        """The clipped hard values of :meth:`update` as a NumPy array in the state's dtype when every entry is defined
        and finite and the host path applies; None otherwise (the tensor path then handles it)."""
        hard, defined = value.hard, value.defined
        dtype = self._state.dtype
        if not (hard.is_cpu and defined.is_cpu) or (dtype != torch.float64 and dtype != torch.float32):
            return None
        if (hard.dtype != torch.float64 and hard.dtype != torch.float32) or defined.dtype != torch.bool:
            return None
        h = hard.detach().numpy()
        if not (defined.detach().numpy().all() and np.isfinite(h).all()):
            return None  # frozen rows: the masked algorithm, on tensors
        # observed_values leaves every entry as it is; then .to(state dtype) (round to nearest, as astype) and the
        # clamp to ±MAX_VIOLATION (min/max: a tie is the same number; np.clip's wrapper costs ~8 µs more)
        with np.errstate(over="ignore"):  # float64 -> float32 overflows to inf as torch's .to does, which is silent
            h = h.astype(self._host_constants().state_np.dtype, copy=False)
        return np.minimum(np.maximum(h, -MAX_VIOLATION), MAX_VIOLATION)

    def _host_constants(self) -> _HostBuffers:
        """The constants and buffers of the host path (:class:`_HostBuffers`), built again when the state tensors are
        replaced (:meth:`load_state_dict`) or the floor changes."""
        cache = self._host_cache.value
        if cache is None or cache.state is not self._state or cache.lam is not self._lam or cache.floor != self.floor:
            cache = self._host_cache.value = _HostBuffers(self._state, self._lam, self.floor)
        return cache

    def _update_host(self, hard: np.ndarray) -> None:
        """:meth:`update` with every entry defined, on a CPU state (see :attr:`host_arithmetic`): the operations of
        :func:`~fairopt.optim.simplex.multiplicative_step` and :func:`~fairopt.optim.simplex.stationary_distribution`
        in the same order, the elementwise ones (exact in NumPy as in torch) on NumPy views, exp/log/logaddexp, the
        sums (whose order torch chooses) and the solve as the same tensor operations on tensors of the same shapes
        (written into preallocated tensors: ``out=`` and in-place variants run the same kernels); a chain of up to 3
        states takes :func:`~fairopt.optim.simplex.tree_weights` on Python floats (float64) or NumPy scalars
        (float32): exact in the state's dtype, as the elementwise tensor operations. Without frozen rows the frozen
        mass is 0, so ``log_free = log(1) = 0`` and adding it changes nothing."""
        b = self._host_constants()
        b.delta[1:] = hard
        lam = b.lam_np
        gradient = b.delta[:, None] * lam[None, :] if self.regret == "swap" else b.delta[:, None]
        logits = b.state_np + self.lr * gradient
        np.subtract(logits, logits.max(axis=0, keepdims=True), out=b.shifted)
        torch.exp(b.shifted_t, out=b.work_t)
        torch.sum(b.work_t, dim=-2, keepdim=True, out=b.total_t)
        b.total_t.log_()
        np.subtract(b.shifted, b.total, out=b.mixed)  # the normalized log-columns
        if b.log_share is None:
            np.copyto(b.state_np, b.mixed)
        else:  # in place into the state: it keeps its storage (CUDA graphs, see update)
            np.add(b.mixed, math.log1p(-self.floor), out=b.mixed)
            torch.logaddexp(b.mixed_t, b.log_share_expanded, out=self._state)
        torch.exp(self._state, out=b.work_t)
        matrix = b.work
        column = b.column
        n = column.shape[0]
        tree = self.regret == "swap" and n <= TREE_STATES
        if tree:  # stationary_distribution(matrix): its tree weights, sums of products of exp() values (never < 0)
            # on Python floats for float64 (the same IEEE operations as NumPy's float64 scalars), else NumPy scalars
            # of the state's dtype
            entries = matrix.tolist() if matrix.dtype == np.float64 else matrix
            column[:] = tree_weights(lambda i, j: entries[i][j], n)
        elif self.regret == "swap":  # stationary_distribution(matrix): solve (I - M + 1 1ᵀ) λ = 1
            np.subtract(b.eye, matrix, out=b.system)
            np.add(b.system, 1.0, out=b.system)
            np.copyto(column, torch.linalg.solve_ex(b.system_t, b.ones).result.numpy())
        else:  # _distribution's first column
            np.copyto(column, matrix[:, 0])
        if not tree:  # clamp(min=0), -0.0 and all (a no-op on tree weights: none is below 0, NaN is not)
            np.copyto(column, 0.0, where=column < 0.0)
        # external regret: _distribution's column.sum(), the same reduction over the one dimension
        torch.sum(b.column_t, dim=-1, keepdim=True, out=b.column_total_t)
        np.divide(column, b.column_total, out=lam)

    def _tensor_constants(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(0, True, eye, ones)`` in the state's dtype and device (``(1,)``, ``(1,)``, ``(n, n)``, ``(n,)``)."""
        constants = self._constants
        state = self._state
        if constants is None or constants[0].dtype != state.dtype or constants[0].device != state.device:
            n = state.shape[0]
            zero = torch.zeros(1, dtype=state.dtype, device=state.device)
            true = torch.ones(1, dtype=torch.bool, device=state.device)
            eye = torch.eye(n, dtype=state.dtype, device=state.device)
            constants = self._constants = (zero, true, eye, torch.ones(n, dtype=state.dtype, device=state.device))
        return constants

    def _distribution(self) -> Tensor:
        if self.regret == "swap":
            _, _, eye, ones = self._tensor_constants()
            if self.update_type == "multiplicative":  # a positive matrix: unique stationary distribution
                return stationary_distribution(self._state.exp(), eye=eye, ones=ones)
            return stationary_distribution(self._state, init=self._lam, eye=eye)
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


class _HostBuffers:
    """Constants and preallocated arrays of :meth:`ProxyLagrangianPlayer._update_host`, for one state: NumPy arrays
    and tensors sharing their memory (``x`` and ``x_t``), so that no step allocates or converts.

    ``delta`` holds ``Δ`` (its first entry stays 0); ``log_share`` is the ``(1, k)`` term that
    :func:`~fairopt.optim.simplex.multiplicative_step` mixes in when no row is frozen, built with its tensor
    operations (``log(1 - 0) - log(n) + log(γ)``), None without a floor.
    """

    def __init__(self, state: Tensor, lam: Tensor, floor: float) -> None:
        self.state, self.lam, self.floor = state, lam, floor
        n, k = state.shape
        dtype = state.dtype
        self.state_np, self.lam_np = state.numpy(), lam.numpy()
        np_dtype = self.state_np.dtype
        self.log_share: Tensor | None = None
        if floor > 0:
            free_mass = 1.0 - torch.zeros((1, k), dtype=dtype).sum(dim=-2, keepdim=True)
            log_free = torch.log(free_mass.clamp(min=torch.finfo(dtype).tiny))
            free_rows = torch.full((1, 1), n, dtype=torch.int64).to(dtype)
            self.log_share = log_free - torch.log(free_rows) + math.log(floor)
        self.log_share_expanded = None if self.log_share is None else self.log_share.expand(n, k)
        self.delta = np.zeros(n, dtype=np_dtype)
        self.eye = np.eye(n, dtype=np_dtype)
        self.ones = torch.ones((n,), dtype=dtype)
        self.shifted, self.shifted_t = _pair((n, k), np_dtype)
        self.work, self.work_t = _pair((n, k), np_dtype)
        self.total, self.total_t = _pair((1, k), np_dtype)
        self.mixed, self.mixed_t = _pair((n, k), np_dtype)
        self.system, self.system_t = _pair((n, n), np_dtype)
        self.column, self.column_t = _pair((n,), np_dtype)
        self.column_total, self.column_total_t = _pair((1,), np_dtype)


def _pair(shape: tuple[int, ...], dtype: np.dtype) -> tuple[np.ndarray, Tensor]:
    """A zero array and a tensor on the same memory."""
    array = np.zeros(shape, dtype=dtype)
    return array, torch.from_numpy(array)
