r"""The user-facing constrained optimizer: wrap any torch optimizer with fairness constraints.

.. code-block:: python

    opt = fairopt.ConstrainedOptimizer(
        torch.optim.Adam(model.parameters(), lr=1e-3),
        constraints=[fairopt.EqualizedOdds(tolerance=0.05)],
        num_groups=2,
        method="proxy_lagrangian",  # or a method object with options: fairopt.ProxyLagrangian(regret="external")
        dual_lr=0.05,
    )
    for x, y, a in train_loader:
        logits = model(x).squeeze(-1)
        opt.zero_grad()
        opt.step(loss=F.binary_cross_entropy_with_logits(logits, y), scores=logits, labels=y, groups=a)

One :meth:`ConstrainedOptimizer.step` follows one batch along the data path:

1. ``scores, labels, groups`` → a ``(G, K)`` table (:meth:`~fairopt.optim.ConstraintSet.measure`)
   → constraint values: hard ``g`` and proxy ``g̃``, with their vector-Jacobian product (one NumPy pass,
   :meth:`~fairopt.optim.ConstraintSet.linearize`; a set with a function constraint uses the differentiable
   :meth:`~fairopt.optim.ConstraintSet.evaluate`);
2. the primal player descends on the method's objective, e.g. the Lagrangian ``f + λᵀ g̃``
   (:meth:`~fairopt.optim.DualPlayer.primal_objective`), with the user's optimizer; when the objective is linear in
   ``g̃`` (Lagrangian, proxy-Lagrangian: :meth:`~fairopt.optim.DualPlayer.primal_weights`) its constraint term is
   built as ``W · T`` with ``W = μᵀ ∂g̃/∂T``, same value and gradient; on the CPU the gradient ``W · ∂T/∂θ`` is taken
   per example (:class:`~fairopt.stats.ExampleTerms`: a gather and a dot product), so the table has no graph;
3. every ``dual_every`` steps the dual player steps on the hard values ``g`` of the dual table: this batch, the
   batches since the last dual step, or held-out statistics (:mod:`fairopt.optim.dual_stats`), before the primal
   step (``dual_update="alternating"``) or after it (``"simultaneous"``).

Methods (:mod:`fairopt.optim.methods`; each class carries its options and declares what it needs):
:class:`~fairopt.optim.Lagrangian` and :class:`~fairopt.optim.AugmentedLagrangian` (cooper formulations; SGD or nuPI
multiplier updates), :class:`~fairopt.optim.ProxyLagrangian` (swap- or external-regret λ-player, Cotter, Jiang,
Sridharan, ALT 2019), :class:`~fairopt.optim.Penalty` (fixed weights, a baseline). The user's optimizer, scheduler and
model stay theirs: LR schedulers are attached to the wrapped optimizer as usual.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np
import torch
from torch import Tensor, nn

from fairopt._step_count import StepCount
from fairopt._tensors import detached
from fairopt._validation import probability_hint, probability_op, user_stacklevel, validate_args_enabled
from fairopt.constraints import Constraint, ConstraintValue
from fairopt.constraints.evaluation import Linearization, attach, host_table, value_tensors
from fairopt.constraints.expressions import upgrade_pooled_names
from fairopt.optim.base import as_margin, check_positive, load_plain_optimizer_state, plain_optimizer_state
from fairopt.optim.constraint_set import ConstraintSet, require_batch_tensor
from fairopt.optim.distributed import StatsReducer, accumulated_step
from fairopt.optim.dual_stats import DUAL_SOURCES, DualStatistics
from fairopt.optim.lagrangian import LagrangianPlayer
from fairopt.optim.methods import LEGACY_OPTIONS, METHODS, Method, method_from_legacy, resolve_method
from fairopt.optim.proxy_lagrangian import ProxyLagrangianPlayer
from fairopt.optim.records import IterateRecords
from fairopt.proxies import Proxy
from fairopt.rates import compute_rate
from fairopt.stats import ExampleTerms, GroupStats, RunningGroupStats

__all__ = ["DUAL_UPDATES", "DUAL_VALUES", "METHODS", "ConstrainedOptimizer", "StepResult"]

DUAL_UPDATES = ("simultaneous", "alternating")
DUAL_VALUES = ("hard", "proxy")
# 2: constraint entries stored for the identity check, margin as a tensor, plain (weights_only) optimizer states.
_STATE_FORMAT = 2
_STATE_FORMATS = (1, 2)  # format 1 (before the entries were stored) still loads: constraints are matched by name
_TRACE_LENGTH = 200  # dual steps kept for check()'s settling test
_STEP_PROBABILITY_HINT = probability_hint("pass scores=torch.logit(p, eps=1e-6), p the probabilities")

HeldoutFn = Callable[[], "GroupStats | Mapping[str, Tensor]"]


class _MultiplierTrace:
    """The multipliers after each of the last ``length`` dual steps, for :meth:`ConstrainedOptimizer.check`: a
    ``(length, m)`` ring on the multipliers' device, written in place (one ``copy_`` per dual step, no host sync).

    A ring rather than a growing container: under ``torch.compile`` a list or deque that grows every step is guarded
    on its length, so the compiled step would be compiled again at every dual step. The write count is a
    :class:`~fairopt._step_count.StepCount`: a compiled dual step writes its slot through a device index, so no
    graph takes the count as an integer input (CUDA graphs would record a new graph for each value)."""

    def __init__(self, length: int) -> None:
        self.length = length
        # entries written since the ring was (re)allocated; the newest is in slot (count - 1) % length
        self.count = StepCount()
        self._ring: Tensor | None = None

    def append(self, multipliers: Tensor) -> None:
        ring = self._ring
        # the first dual step, or multipliers moved to another device or dtype (what was kept moves with them), or of
        # another shape (what was kept is dropped: it describes other constraints)
        moved = ring is not None and (ring.dtype != multipliers.dtype or ring.device != multipliers.device)
        if ring is None or moved or ring.shape[1:] != multipliers.shape:
            kept = self.stacked() if ring is not None and ring.shape[1:] == multipliers.shape else None
            # a normal tensor even when the first dual step runs under torch.inference_mode (e.g. update_duals in an
            # evaluation loop): an inference tensor could not be written by the training steps after it
            with torch.inference_mode(False):
                ring = self._ring = torch.zeros(
                    (self.length, *multipliers.shape), dtype=multipliers.dtype, device=multipliers.device
                )
            self.count.set(0 if kept is None else len(kept))
            if kept is not None and len(kept):
                ring[: len(kept)] = kept.to(ring)
        # through a device index while compiling, and eagerly once compiled steps have counted on the device (an
        # int slot would read that count: a host sync on a GPU); a Python slot otherwise (cheaper on the CPU)
        if torch.compiler.is_compiling() or self.count.device is not None:
            slot = self.count.as_tensor(ring.device).remainder_(self.length)
            ring.index_copy_(0, slot, multipliers.detach().unsqueeze(0))
        else:
            ring[int(self.count) % self.length].copy_(detached(multipliers))
        self.count.increment(ring)

    def __len__(self) -> int:
        return min(int(self.count), self.length)

    def __iter__(self) -> Iterator[Tensor]:
        """The kept multipliers, oldest first (copies)."""
        return iter(self.state())

    def stacked(self) -> Tensor:
        """``(len(self), m)``, oldest first (a copy)."""
        if self._ring is None:
            return torch.zeros((0, 0))
        n, start = len(self), int(self.count) % self.length
        order = torch.arange(start, start + n, device=self._ring.device) % self.length if n == self.length else None
        return self._ring[:n].clone() if order is None else self._ring.index_select(0, order)

    def state(self) -> list[Tensor]:
        """The kept multipliers as a list of ``(m,)`` tensors, oldest first (the format of ``multiplier_trace``)."""
        return list(self.stacked().unbind(0)) if len(self) else []

    def load(self, tensors: Iterable[Tensor]) -> None:
        kept = list(tensors)[-self.length :]
        self._ring = None
        self.count.set(0)
        for t in kept:
            self.append(t)


@dataclass(frozen=True)
class StepResult:
    """What one :meth:`ConstrainedOptimizer.step` did (all tensors detached).

    Attributes:
        loss: ``()`` the objective ``f`` of the batch.
        objective: ``()`` the scalar the primal player descended on (e.g. the Lagrangian).
        value: the batch's constraint values, ``(m,)`` hard / proxy / defined.
        multipliers: ``(m,)`` constraint weights after the step.
        dual_value: the values the dual step read, or None when no dual step was taken.
    """

    loss: Tensor
    objective: Tensor
    value: ConstraintValue
    multipliers: Tensor
    dual_value: ConstraintValue | None


def _detached(value: ConstraintValue) -> ConstraintValue:
    if not (value.proxy.requires_grad or value.hard.requires_grad):  # NumPy evaluator values: constants already
        return value
    return ConstraintValue(detached(value.hard), detached(value.proxy), value.defined)


def _describe(summary: Mapping[str, Any]) -> str:
    """A :meth:`~fairopt.optim.ConstraintSet.describe` summary in one line, for error messages."""
    names = list(summary["constraints"])
    if "entries" in summary:
        names = [
            f"{name} ({len(entries)} entries: {', '.join(entries)})" for name, entries in zip(names, summary["entries"])
        ]
    return f"[{'; '.join(names)}] (num_constraints={summary['num_constraints']}, num_groups={summary['num_groups']})"


class ConstrainedOptimizer:
    r"""Wrap a torch optimizer so that each step trains under group-fairness constraints.

    Solves ``min_θ f(θ)`` s.t. ``g_i(θ) <= 0`` (``g`` the stacked entries of ``constraints``, e.g. equalized-odds
    gaps minus their tolerance) as a two-player game: the wrapped optimizer moves θ on the method's primal
    objective built from proxy rates ``g̃``; a dual player moves constraint weights λ from the hard rates ``g``
    (proxy constraints, Cotter, Jiang, Gupta, Wang, Narayan, You, Sridharan, JMLR 20(172), 2019). The method, its
    objective, dual update, options and sources are on its class: :class:`~fairopt.optim.Lagrangian`,
    :class:`~fairopt.optim.AugmentedLagrangian`, :class:`~fairopt.optim.ProxyLagrangian`,
    :class:`~fairopt.optim.Penalty`. Held-out dual updates: Cotter, Gupta, Jiang, Srebro, Sridharan, Wang,
    Woodworth, You, ICML 2019.

    Args:
        optimizer: the user's torch optimizer over the model parameters (stepped here; its scheduler stays theirs).
        constraints: fairopt constraint(s), e.g. ``[fairopt.EqualizedOdds(0.05)]``; m entries in total.
        num_groups: G. Constraints are checked against it here.
        method: a method object with its options, e.g. ``fairopt.optim.ProxyLagrangian(regret="external")``,
            ``fairopt.optim.Penalty(coefficients=2.0)``; or a name of :data:`~fairopt.optim.METHODS` for the default
            options: ``"lagrangian"`` (default), ``"augmented_lagrangian"``, ``"proxy_lagrangian"``, ``"penalty"``
            (hyphens and capitals accepted). :attr:`method` is the name, :attr:`method_spec` the object.
        dual_lr: the dual step size η > 0 (multiplier learning rate, or the proxy-Lagrangian's step). Default 0.01.
        dual_update: ``"simultaneous"`` (default: the dual steps on the same measurement after the primal step) or
            ``"alternating"`` (the dual steps first; the primal step then uses the new λ; same cost).
        proxy: the primal surrogate: ``"sigmoid"`` (default), ``"hinge"`` (TFCO's default, an upper bound),
            ``"softplus"``, or a :class:`~fairopt.Proxy`. Why not hinge by default: the conservative hinge
            relaxation of a rate is ``upper - lower = mean max(1, |s|) >= 1`` wide, so a two-sided constraint's
            proxy value (e.g. a parity gap) is always >= 1 - tolerance. Its gradient points the right way, which is
            all a (proxy-)Lagrangian with hard duals uses; but the methods with ``reads_proxy_value`` (penalty,
            augmented Lagrangian) and ``dual_value="proxy"`` read the proxy value itself and would see every such
            constraint as violated.
            The sigmoid is normalized (``upper == lower``), so its value tracks the true rate.
        threshold: decision threshold in logit units (a positive prediction is ``score > threshold``).
        dual_value: what the dual player reads: ``"hard"`` (default, the true rates: proxy constraints) or
            ``"proxy"`` (the surrogate, as a plain Lagrangian would; over-constrains with an upper-bounding proxy,
            Cotter et al., JMLR 2019, Section 6).
        dual_source: ``"train"`` (default) or ``"heldout"`` (the dual reads only statistics given by ``heldout``,
            :meth:`observe_heldout` or :meth:`update_duals`). Without ``heldout``, :meth:`step` raises at the second
            scheduled dual step if no held-out statistics have arrived by then (the multipliers would never move).
        dual_every: take a dual step every k primal steps (>= 1) on the tables pending since the last one; None: no
            scheduled dual steps, the duals move only when :meth:`update_duals` is called (e.g. once per epoch on a
            full validation pass).
        heldout: with ``dual_source="heldout"``: a callable returning a :class:`~fairopt.GroupStats` or a mapping
            of :meth:`observe_heldout` arguments (e.g. the next validation batch's ``scores/labels/groups``),
            called under ``torch.no_grad`` at each step that takes a dual step, before the primal update (a model
            with dropout or batch norm: compute the scores inside ``with fairopt.validation.eval_mode(model):``,
            which restores its mode after).
        dual_min_count: the dual player reads the most recent tables (training batches, or the held-out batches it
            was given) until every group holds at least this many examples of each label, or ``dual_max_window``
            tables (a :class:`~fairopt.RunningGroupStats` in mode ``"count"``): every rate it reads then has a
            standard error of at most ``0.5 / sqrt(dual_min_count)`` (0.05 at the default 100) where the data allow.
            A small batch holds few examples of a rare group, and a gap of noisy rates is biased upward, so a dual
            player reading single batches over-constrains and the model collapses toward one class (see
            :class:`~fairopt.RunningGroupStats`). The window it chose is :attr:`dual_window`. ``None``: read each
            table alone, as the textbook algorithms do.
        dual_max_window: the cap on that window, in tables (>= 1; default 100).
        margin: optional ``(m,)`` (or one number for all entries) safety margin in constraint units, >= 0: the dual
            player reads ``g + margin``, so training drives each entry to ``g <= -margin`` on the dual's data, and
            :meth:`record` stores it for the selection of the final model ("plan to overfit the constraints",
            Cotter et al., JMLR 20(172), 2019, Section 7.2). Derive it from the estimation error of the data the
            duals read, e.g. ``1.645 * opt.constraint_set.standard_errors(heldout_stats)`` (one-sided 95%; an
            undefined entry's ``inf`` becomes 0); may be reassigned (:attr:`margin`) between steps, e.g. after each
            full held-out pass.
        running: optional :class:`~fairopt.RunningGroupStats` (EMA, window or count) the dual table is folded into;
            it replaces the one ``dual_min_count`` would build (``dual_min_count`` is then ignored).
        sync: optional ``fn(stats) -> stats`` applied to the dual table first; under DDP pass
            ``fairopt.GroupStats.all_reduce`` (a sum over ranks): every rank then takes the same dual step and keeps
            identical multipliers. The primal step still reads this rank's table; for a DDP step equal to one process
            on the global batch use ``stats_reducer`` instead (not both).
        stats_reducer: optional :class:`~fairopt.optim.distributed.AllReduceStats` (DDP): each step all-reduces the
            batch's table once, as counts, and the constraints, their gradient ``W`` and the dual step read the global
            table, with the constraint gradient scaled by the world size against DDP's average
            (:mod:`fairopt.optim.distributed`). Tables given to the optimizer (``heldout()`` returning a
            :class:`~fairopt.GroupStats`, :meth:`update_duals`) are taken as global; :meth:`observe_heldout` batches
            are all-reduced.
        records: optional :class:`~fairopt.optim.IterateRecords` filled by :meth:`record` (saved in state_dict).
        grad_scaler: optional ``torch.amp.GradScaler`` for float16 mixed precision: the primal objective is scaled
            before ``backward`` and the step goes through ``scaler.step``/``scaler.update`` (bfloat16 autocast
            needs none). The scaler's state is the user's to save, like a scheduler's.
        max_grad_norm: optional clipping of the total gradient norm of the wrapped optimizer's parameters before
            its step (``torch.nn.utils.clip_grad_norm_``; after unscaling when a ``grad_scaler`` is given).
        dtype: dtype of the statistics and of the dual state (float64 default).
        backend: how the statistics table is computed (:func:`fairopt.group_stats`): ``"auto"`` (default: the fused
            Triton kernel for CUDA tensors when triton is installed, else the torch path), ``"torch"``, ``"triton"``.
        evaluator: how the constraints are evaluated (:class:`~fairopt.optim.ConstraintSet`): ``"auto"`` (default:
            NumPy on the host for CPU tables, where it is faster; torch ops on the device elsewhere), ``"numpy"`` or
            ``"device"``. With ``"device"`` and ``validate_args=False`` a step never reads a tensor on the host
            (statistics, constraint values, primal objective and dual update stay in the device queue).
        validate_args: value checks (labels, group ids, finite scores and loss); None uses the global default
            (:class:`fairopt.set_validate_args`); each check costs one host synchronization. ``validate=`` is its
            deprecated name.
        **legacy_options: deprecated (removed in fairopt 0.3): the method options as keywords, ``dual_optimizer``,
            ``dual_optimizer_kwargs``, ``multiplier_bound``, ``penalty``, ``penalty_growth``, ``regret``,
            ``regret_update``, with a method name. Each builds the same method object and emits a
            ``DeprecationWarning`` naming it, e.g. ``regret="external"`` with ``method="proxy_lagrangian"`` is
            ``method=fairopt.optim.ProxyLagrangian(regret="external")``; ``penalty`` is ``AugmentedLagrangian(
            penalty=...)`` or ``Penalty(coefficients=...)``.

    Attributes:
        optimizer: the wrapped ``torch.optim`` optimizer (schedulers attach to it).
        constraint_set: the :class:`~fairopt.optim.ConstraintSet` built from ``constraints``: its ``constraints``,
            ``entry_names()``, ``standard_errors(stats)`` (for a :attr:`margin`), ``measure`` and ``evaluate``.
        records: the :class:`~fairopt.optim.IterateRecords` given (filled by :meth:`record`), or None.
        dual_statistics: what the dual player reads (pending tables, the count window) and when (its schedule).
        player: the dual player (the multipliers and their update); :attr:`multipliers` reads them.

    Properties: :attr:`method`, :attr:`num_steps`, :attr:`num_constraints`, :attr:`multipliers`,
    :attr:`objective_weight`, :attr:`margin` (settable), :attr:`dual_window`, :attr:`dual_optimizer`.

    Raises:
        ValueError: an unknown method name, ``dual_lr <= 0`` (or not finite), ``dual_every`` neither None nor an int
            >= 1, a bad method option (see the method classes), a deprecated option that does not apply to the method
            or given with a method object, ``dual_source="heldout"`` or ``heldout`` for a method without held-out
            duals (``Penalty``), ``heldout`` without ``dual_source="heldout"`` or with ``dual_every=None`` (it would
            never be called), a constraint referring to a group ``>= num_groups``, a dual optimizer without
            ``maximize=True``, both ``sync`` and ``stats_reducer``.
        TypeError: ``optimizer`` is not a ``torch.optim.Optimizer``, a constraint is not a fairopt constraint, an
            unknown keyword argument.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        constraints: Constraint | Sequence[Constraint],
        num_groups: int,
        *,
        method: str | Method = "lagrangian",
        dual_lr: float = 0.01,
        dual_update: str = "simultaneous",
        proxy: str | Proxy | Callable[[Tensor], Tensor] = "sigmoid",
        threshold: float = 0.0,
        dual_value: str = "hard",
        dual_source: str = "train",
        dual_every: int | None = 1,
        heldout: HeldoutFn | None = None,
        dual_min_count: float | None = 100.0,
        dual_max_window: int = 100,
        margin: float | Sequence[float] | np.ndarray | None = None,
        running: RunningGroupStats | None = None,
        sync: Callable[[GroupStats], GroupStats] | None = None,
        stats_reducer: StatsReducer | None = None,
        records: IterateRecords | None = None,
        grad_scaler: torch.amp.GradScaler | None = None,
        max_grad_norm: float | None = None,
        dtype: torch.dtype = torch.float64,
        backend: str = "auto",
        evaluator: str = "auto",
        validate_args: bool | None = None,
        **legacy_options: Any,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if "validate" in legacy_options:  # the name before the glossary (docs/glossary.md)
            if validate_args is not None:
                raise TypeError("ConstrainedOptimizer() got both validate= (deprecated) and validate_args=")
            warnings.warn(
                "ConstrainedOptimizer(validate=...) is deprecated; pass validate_args= (same meaning)",
                DeprecationWarning,
                stacklevel=2,
            )
            validate_args = legacy_options.pop("validate")
        for key in legacy_options:
            if key not in LEGACY_OPTIONS:
                raise TypeError(f"ConstrainedOptimizer() got an unexpected keyword argument {key!r}")
        spec, deprecation = method_from_legacy(method, legacy_options)
        if deprecation is not None:
            warnings.warn(deprecation, DeprecationWarning, stacklevel=2)
        self.dual_lr = check_positive("dual_lr", dual_lr)
        for name, given, allowed in (
            ("dual_update", dual_update, DUAL_UPDATES),
            ("dual_value", dual_value, DUAL_VALUES),
            ("dual_source", dual_source, DUAL_SOURCES),  # before the heldout= checks, which name its values
        ):
            if given not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {given!r}")
        if heldout is not None and not callable(heldout):
            raise TypeError(
                f"heldout must be a callable that returns one held-out batch each time it is called, got "
                f"{type(heldout).__name__}; wrap it: heldout=lambda: {{'scores': model(x_val).squeeze(-1), "
                "'labels': y_val, 'groups': a_val}"
            )
        if not spec.supports_heldout_duals:
            if heldout is not None:
                held = tuple(name for name in METHODS if resolve_method(name).supports_heldout_duals)
                raise ValueError(f"heldout= does not apply to method={spec.name!r} (it applies to {held})")
            if dual_source != "train":
                what = "has no dual player" if not spec.has_dual_player else "reads training statistics only"
                raise ValueError(f"method={spec.name!r} {what}; dual_source does not apply")
        if heldout is not None and dual_source != "heldout":
            raise ValueError("heldout= feeds the dual player; it needs dual_source='heldout'")
        if sync is not None and stats_reducer is not None:  # the dual table would be summed over ranks twice
            raise ValueError("pass stats_reducer= or sync=, not both: stats_reducer already all-reduces the dual table")
        if heldout is not None and dual_every is None:
            raise ValueError(
                "heldout= is called at the scheduled dual steps, and dual_every=None schedules none; pass dual_every=k "
                "(a dual step every k primal steps), or drop heldout= and call update_duals(stats) yourself"
            )
        self.optimizer = optimizer
        self._method = spec
        self.dual_update, self.dual_value = dual_update, dual_value
        self.validate_args, self.heldout, self.records = validate_args, heldout, records
        self.stats_reducer = stats_reducer
        self.grad_scaler = grad_scaler
        self.max_grad_norm = None if max_grad_norm is None else check_positive("max_grad_norm", max_grad_norm)
        self.constraint_set = ConstraintSet(
            constraints, num_groups, proxy=proxy, threshold=threshold, dtype=dtype, backend=backend, evaluator=evaluator
        )
        if isinstance(dual_max_window, bool) or not isinstance(dual_max_window, int) or dual_max_window < 1:
            raise ValueError(f"dual_max_window must be an int >= 1 (tables), got {dual_max_window!r}")
        if dual_min_count is not None and (
            isinstance(dual_min_count, bool) or not isinstance(dual_min_count, (int, float)) or not dual_min_count > 0
        ):
            raise ValueError(
                f"dual_min_count must be a number > 0 (examples per group and label) or None, got {dual_min_count!r}"
            )
        if running is None and dual_min_count is not None:
            running = RunningGroupStats(num_groups, mode="count", window=dual_max_window, min_count=dual_min_count)
        if running is not None and evaluator == "device":  # the device path throughout, on the CPU too
            running.host_bookkeeping = False
        self.dual_statistics = DualStatistics(
            num_groups, source=dual_source, every=dual_every, running=running, sync=sync
        )
        self.player, self.problem = spec.build(self.constraint_set, optimizer, self.dual_lr)
        if isinstance(self.player, ProxyLagrangianPlayer):  # host arithmetic where the values are read there anyway
            self.player.host_arithmetic = evaluator != "device"
        self._linear_primal = self.player.primal_weights() is not None  # structural: fixed by the method
        self._margin_warned = False
        self._set_margin(margin)
        # primal steps taken (num_steps), and how many since the last scheduled dual step (0 <= phase < dual_every):
        # the schedule reads the phase, a Python int with at most dual_every values, never the count itself, so a
        # compiled step takes no integer input that grows with the step (see StepCount)
        self._steps = StepCount()
        self._phase = 0
        self._scores_checked = False  # the once-only look at how the scores were computed (see step)
        self._grads_checked = False  # the once-only look for gradients already in .grad (see step)
        # multipliers after recent dual steps (device tensors: no host sync), for check()
        self._trace = _MultiplierTrace(_TRACE_LENGTH)
        self._dual_multipliers: Tensor | None = None  # those the last dual step stored (for StepResult)

    # properties ---------------------------------------------------------------------------------------------
    @property
    def method(self) -> str:
        """The method's canonical name, e.g. ``"proxy_lagrangian"`` (``method_spec.name``; saved in the state)."""
        return self._method.name

    @property
    def method_spec(self) -> Method:
        """The method object with its options, e.g. ``ProxyLagrangian(regret="external")`` (read-only: the λ-player
        was built from it; :attr:`method` stays the name, which the state and user code compare)."""
        return self._method

    @property
    def num_steps(self) -> int:
        """Primal steps taken. After steps compiled with ``torch.compile`` the count is partly on the device, and
        reading it waits for the device (a host sync on a GPU): read it between epochs, not inside a step loop that
        must not synchronize."""
        return int(self._steps)

    @num_steps.setter
    def num_steps(self, value: int) -> None:
        self._steps.set(value)
        every = self.dual_statistics.every
        self._phase = 0 if every is None else int(value) % every

    @property
    def num_constraints(self) -> int:
        """m, the number of constraint entries (and multipliers)."""
        return self.constraint_set.num_constraints

    @property
    def multipliers(self) -> Tensor:
        """``(m,)`` current constraint weights (λ; for the proxy-Lagrangian the constraint part of the simplex)."""
        return self.player.multipliers

    @property
    def objective_weight(self) -> Tensor:
        """Weight of the objective in the primal objective (1, or the proxy-Lagrangian's λ_0)."""
        return self.player.objective_weight

    @property
    def margin(self) -> np.ndarray | None:
        """``(m,)`` float64 margin the dual player adds to the hard values (see the ``margin`` argument), or None."""
        return self._margin

    @margin.setter
    def margin(self, value: float | Sequence[float] | np.ndarray | None) -> None:
        """Raises ValueError for a margin of another size, NaN or < 0, TypeError for text or booleans; warns (once
        per optimizer) when an entry's dual target ``g <= -margin`` is out of reach (see :meth:`check`)."""
        self._set_margin(value)

    def _set_margin(self, value: float | Sequence[float] | np.ndarray | None) -> None:
        """:attr:`margin`'s setter; its warning names the user's line (an assignment, the constructor or
        ``load_state_dict``)."""
        self._margin_tensor: Tensor | None = None
        if value is None:
            self._margin = None
            return
        self._margin = as_margin(value, self.num_constraints)
        # (getattr: an optimizer pickled before this flag existed)
        if not getattr(self, "_margin_warned", False) and (problem := self._unreachable_margin()) is not None:
            self._margin_warned = True  # once per optimizer: a loop that reassigns the margin every epoch
            warnings.warn(problem, UserWarning, stacklevel=user_stacklevel())

    def _unreachable_margin(self) -> str | None:
        """The problem with entries whose dual target ``g <= -margin`` no model can meet (``-margin`` below the
        lowest value ``g`` can take, :meth:`~fairopt.optim.ConstraintSet.lowest_values`: for a gap ``max - min``, a
        margin above the tolerance), or None. Training towards it pushes the model toward one class for everyone,
        whose rates are all 0 (or 1): the only models that then meet the margin on any data."""
        margin = self._margin
        # hard values only: a proxy can be below the lowest hard value (a max - min picks rows by hard value, and a
        # proxy dual reads the proxy gap there); a method without a dual player (the penalty) reads no margin
        if margin is None or self.dual_value == "proxy" or not self.method_spec.has_dual_player:
            return None
        unreachable = self.constraint_set.unreachable_margins(margin)
        if unreachable.size == 0:
            return None
        lowest = self.constraint_set.lowest_values()
        names = self.constraint_set.entry_names()
        shown = "; ".join(
            f"{names[i]}: margin {margin[i]:.3g}, but g = expr - tolerance is never below {lowest[i]:.3g}"
            for i in unreachable[:5].tolist()
        )
        more = f" (and {unreachable.size - 5} more)" if unreachable.size > 5 else ""
        return (
            f"margin too large on {unreachable.size} entr{'y' if unreachable.size == 1 else 'ies'} ({shown}{more}): "
            "the dual player asks for g <= -margin, which no model meets (for a gap such as max - min, a margin "
            "above the tolerance): its multipliers keep growing, pushing the model toward predicting one class for "
            "everyone (how far depends on dual_lr and the number of steps), and the records can certify no other "
            "model. A margin this large says that the data it was estimated on is too small to certify this "
            "tolerance (a rate's standard error is about 0.5 / sqrt(examples per group and label)): estimate it on "
            "more rows, use a smaller multiple of the standard error, or cap it (e.g. np.minimum(margin, 0.5 * "
            "tolerance)), checking the result on held-out data"
        )

    @property
    def dual_window(self) -> int | None:
        """How many tables the last dual step read (``dual_min_count``'s adaptive window; None without one or before
        the first dual step). Reading it waits for the device once: use it for logging, not every step."""
        running = self.dual_statistics.running
        if running is None or running.mode != "count" or running.last_window is None:
            return None
        return int(running.last_window)

    @property
    def dual_optimizer(self) -> torch.optim.Optimizer | None:
        """The multipliers' torch optimizer (Lagrangian methods), e.g. to attach an LR scheduler; else None."""
        return self.player.dual_optimizer if isinstance(self.player, LagrangianPlayer) else None

    def entry_names(self, group_names: Sequence[str] | None = None) -> list[str]:
        """One readable name per constraint entry (the order of :attr:`multipliers`)."""
        return self.constraint_set.entry_names(group_names)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the gradients of the wrapped optimizer's parameters."""
        self.optimizer.zero_grad(set_to_none=set_to_none)

    # the step -----------------------------------------------------------------------------------------------
    def step(
        self,
        *,
        loss: Tensor,
        scores: Tensor,
        groups: Tensor,
        labels: Tensor | None = None,
        weights: Tensor | None = None,
        example_losses: Tensor | None = None,
    ) -> StepResult:
        """One constrained training step: measure, (dual step,) primal backward + step, (dual step).

        Calls ``backward`` itself (then clips and steps, see ``grad_scaler`` / ``max_grad_norm``): do not call
        ``loss.backward()`` before. Gradients already in ``.grad`` are accumulated into, as with a plain
        ``loss.backward(); optimizer.step()``.

        Every argument is keyword-only, so two tensors of the same shape and kind (``labels`` and ``groups`` are
        both ``(N,)`` small integers) can never be swapped by position without an error. Swapped by keyword
        (``labels=a, groups=y``) they pass every check where both hold 0/1 (two groups): no check can tell.

        Args:
            loss: scalar objective ``f`` (e.g. mean cross-entropy), differentiable.
            scores: ``(N,)`` logits of the same batch (keep the graph: the proxies are differentiable); an ``(N, 1)``
                column, as ``nn.Linear(d, 1)`` gives, is read as ``(N,)``.
            groups: ``(N,)`` integer group ids in ``[0, G)``.
            labels: ``(N,)`` 0/1 labels (optional only when every constraint is label-free, e.g. demographic parity).
            weights: optional ``(N,)`` example weights for the rates.
            example_losses: ``(N,)`` per-example losses, required by loss-based constraints (``BoundedGroupLoss``).

        Returns:
            :class:`StepResult`.

        Raises:
            TypeError: ``loss`` is not a tensor; ``scores`` are not floating point (e.g. bool predictions); an
                argument passed by position. ValueError: ``loss`` is not a scalar, does not require grad, or is
                NaN/inf (when validation is on); ``scores`` carry no autograd graph (detached: the constraints
                could not reach the model); a tensor a constraint needs is missing; scores of another shape than
                ``(N,)`` or ``(N, 1)``; invalid scores, labels or group ids (see :func:`fairopt.group_stats`); invalid
                ``heldout()`` batches. A step that raises before its backward is done leaves the optimizer as it was
                (with ``dual_update="alternating"``, a failed backward leaves the dual step it took before).
            RuntimeError: ``dual_source="heldout"`` without ``heldout=``, and this is the second scheduled dual step
                with no held-out statistics ever given (:meth:`observe_heldout` / :meth:`update_duals`): the
                multipliers would stay at their initial values, i.e. training would be unconstrained. One such step
                is tolerated, for loops that observe a held-out batch right after each step.
        """
        self._check_loss(loss)
        require_batch_tensor("scores", scores)  # before scores.device is read below (measure checks it too)
        if not scores.is_floating_point():  # before the graph check: bool predictions have no graph either
            raise TypeError(
                f"scores must be floating point logits, got {scores.dtype}: pass the model's output itself "
                "(scores=model(x).squeeze(-1)), not predictions thresholded or rounded from it"
            )
        if not scores.requires_grad:  # the constraints' gradient could not reach the model: training unconstrained
            raise ValueError(
                "scores carry no autograd graph (detached, or computed under torch.no_grad()): the constraints' "
                "gradient could not reach the model, which would train unconstrained while the multipliers grow; "
                "pass the model's output itself (scores=model(x).squeeze(-1), not .detach())"
            )
        if not torch.compiler.is_compiling():
            self._check_earlier_gradients()
        dual_stats = self.dual_statistics
        due = self.method_spec.has_dual_player and dual_stats.due(self._phase + 1)
        unfed = due and self.heldout is None and dual_stats.source == "heldout" and not dual_stats.has_observed
        if unfed and dual_stats.num_unfed >= 1:
            self._raise_no_heldout(dual_stats.num_unfed + 1)
        cs = self.constraint_set
        # Expression constraints: values in one NumPy pass, gradients by its reverse pass; the proxy gradient enters
        # the objective below (see _primal_objective). Function constraints, and the device evaluator (no host
        # round trip, cs.on_device): a differentiable evaluation.
        linearized = cs.linearizable and not cs.on_device(scores.device)
        # ... and where the objective is linear in the proxy values, through the per-example terms of the table
        # rather than the table (ExampleTerms: no Python autograd node on the step's graph)
        by_terms = linearized and self._linear_primal and self.stats_reducer is None and cs.measures_terms(scores)
        measured = cs.measure(
            scores,
            groups=groups,
            labels=labels,
            weights=weights,
            example_losses=example_losses,
            validate_args=self.validate_args,
            terms=by_terms,
        )
        # once, on the first batch measured without an error (from the autograd graph, no sync); an eager-mode check:
        # torch.compile cannot read grad_fn
        if not self._scores_checked and not torch.compiler.is_compiling():
            self._scores_checked = True
            if (op := probability_op(scores)) is not None:
                warnings.warn(
                    f"the scores come out of a {op}: they look like probabilities. {_STEP_PROBABILITY_HINT}",
                    stacklevel=2,
                )
        terms = measured if isinstance(measured, ExampleTerms) else None
        stats = measured if terms is None else terms.stats
        if self.stats_reducer is not None:  # DDP: the global table, whose gradient is this rank's (world_size x)
            stats = self.stats_reducer.primal_table(stats)
        lin = cs.linearize(stats) if linearized else None
        if lin is None:
            value = cs.evaluate(stats)
        else:  # constants (of a detached table): the proxy gradient enters through _primal_objective
            table = detached(stats.table)
            value = ConstraintValue(*value_tensors(lin, table if table.dtype == cs.dtype else table.to(cs.dtype)))
        # A step that fails before its backward is done (a bad heldout() batch, the user's own loss.backward()
        # before step()) leaves the optimizer as it was, so that it can be retried: the count and phase are taken
        # back, held-out batches are checked and measured before the backward, and the dual player's tables and the
        # multipliers change only after it (simultaneous updates, the default; an alternating dual step reads this
        # batch before the backward, so a failed backward there has moved the multipliers). The count moves before
        # heldout(), which sees the number of the step in progress.
        batch = None if lin is None else (stats, value)  # a dual table equal to this one reuses its values
        alternating = self.dual_update == "alternating"
        if not alternating:  # the multipliers it reads are the ones before this step's dual step
            objective, descended = self._primal_objective(loss, stats, value, lin, terms)
        phase = self._phase
        self._steps.increment(scores)
        if dual_stats.every is not None and dual_stats.every > 1:
            self._phase = (self._phase + 1) % dual_stats.every
        heldout = None
        if due and self.heldout is not None:  # measured at the same θ as the batch, before the primal step
            try:
                with torch.no_grad():
                    heldout = self._heldout_stats(self.heldout())
            except BaseException:
                self._take_back_step(phase)
                raise
        dual_value = None
        if alternating:
            self._observe_step(stats, unfed, heldout)
            dual_value = self._dual_step(value, batch) if due else None
            objective, descended = self._primal_objective(loss, stats, value, lin, terms)
        self._primal_step(descended, phase)
        if not alternating:
            self._observe_step(stats, unfed, heldout)
            dual_value = self._dual_step(value, batch) if due else None
        # the multipliers after the step: those the dual step just read (the trace has copied them into its ring)
        multipliers = self.player.multipliers if dual_value is None else self._dual_multipliers
        return StepResult(loss.detach(), objective, _detached(value), multipliers, dual_value)

    def _observe_step(self, stats: GroupStats, unfed: bool, heldout: GroupStats | None) -> None:
        """What the dual player reads of one step: its training table (a method without a dual player, the
        penalty, never reads it) and the held-out table (``heldout``: :meth:`_heldout_stats` of what ``heldout()``
        returned this step, or None)."""
        dual_stats = self.dual_statistics
        if dual_stats.source == "train" and not dual_stats.passthrough and self.method_spec.has_dual_player:
            dual_stats.observe(stats)
        if unfed:
            dual_stats.num_unfed += 1
        if heldout is not None:
            dual_stats.observe(heldout)

    def _take_back_step(self, phase: int) -> None:
        """Undo a failed step's count and dual phase (``phase``: the one before the step)."""
        self._steps.set(int(self._steps) - 1)
        self._phase = phase

    def _check_earlier_gradients(self) -> None:
        """Once per optimizer, before its first step (:meth:`step` or :meth:`step_accumulated`): warn when gradients
        are in ``.grad`` already, mostly a ``loss.backward(retain_graph=True)`` before ``step()``, which calls backward
        itself, so the loss's gradient would count twice. On the CPU only nonzero gradients count
        (``zero_grad(set_to_none=False)`` leaves zeros); elsewhere reading them would wait for the device, so any
        gradient tensor does."""
        # (getattr: an optimizer pickled before this flag existed has stepped already)
        if getattr(self, "_grads_checked", True):
            return
        self._grads_checked = True
        grads = [p.grad for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        if any(not g.is_cpu or bool(g.any()) for g in grads):
            warnings.warn(
                "the first step() found gradients in .grad already: step() calls backward itself, so after your own "
                "loss.backward() the loss's gradient counts twice; remove that call and run opt.zero_grad() before "
                "each step (to add another loss's gradient or accumulate micro-batches on purpose, ignore this "
                "warning or use opt.step_accumulated)",
                stacklevel=user_stacklevel(),
            )

    def step_accumulated(
        self,
        micro_batches: Iterable[Any],
        forward: Callable[[Any], Mapping[str, Any]],
        *,
        no_sync: Callable[[], AbstractContextManager[Any]] | None = None,
    ) -> StepResult:
        """One step on the union of ``micro_batches`` (gradient accumulation), equal to :meth:`step` on the whole
        batch: the constraints and their gradient are evaluated once, at the whole batch's table.

        ``forward(micro_batch)`` returns :meth:`step`'s keyword arguments for one micro-batch (``loss`` its mean
        loss); it is called twice per micro-batch (the table first, without a graph; then forward and backward):

        .. code-block:: python

            def forward(batch):
                x, y, a = batch
                scores = model(x).squeeze(-1)
                loss = F.binary_cross_entropy_with_logits(scores, y)
                return {"loss": loss, "scores": scores, "labels": y, "groups": a}

            opt.zero_grad()
            opt.step_accumulated(list(zip(x.split(64), y.split(64), a.split(64))), forward)

        Details, ``no_sync`` (a DDP model's ``model.no_sync``) and errors:
        :func:`fairopt.optim.distributed.accumulated_step`.
        """
        return accumulated_step(self, micro_batches, forward, no_sync=no_sync)

    def _raise_no_heldout(self, dual_steps: int) -> NoReturn:
        raise RuntimeError(
            f"dual_source='heldout' but the dual player has received no held-out statistics in {dual_steps} scheduled "
            f"dual steps (one every dual_every={self.dual_statistics.every} primal steps): the multipliers would stay "
            "at their initial values and training would be unconstrained. Pass heldout=lambda: {'scores': "
            "model(x_val).squeeze(-1), 'labels': y_val, 'groups': a_val} to ConstrainedOptimizer, or call "
            "opt.observe_heldout(scores=..., labels=..., groups=...) before the dual steps; to move the duals only "
            "through opt.update_duals(stats), build the optimizer with dual_every=None"
        )

    def _primal_objective(
        self,
        loss: Tensor,
        stats: GroupStats,
        value: ConstraintValue,
        lin: Linearization | None,
        terms: ExampleTerms | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The method's primal objective: ``(value, descended)``, its value (detached) and a scalar with its gradient
        w.r.t. the model (through ``loss`` and ``stats.table``, or ``terms``), to ``backward`` on.

        With a linearization and a player whose objective is linear in the proxy values, ``w_0 f + μᵀ g̃(T)``, only
        ``W = μᵀ ∂g̃/∂T`` (a ``(G, K)`` array, one vector-Jacobian product) is needed: the objective is
        ``w_0 f + W · (T - T.detach()) + μᵀg̃``. Same value and gradient as the generic path, three tensor operations
        instead of a differentiable evaluation; with ``terms`` (:class:`~fairopt.stats.ExampleTerms`) the gradient
        ``W · ∂T/∂θ`` is taken per example (a gather and a dot product), and the table has no graph at all.
        """
        if lin is None:
            objective = self.player.primal_objective(loss, value)
            return objective.detach(), objective
        weights = self.player.primal_weights()
        vjp = lin.vjp
        assert vjp is not None
        if weights is None:
            differentiable = value_tensors(lin, stats.table.to(self.constraint_set.dtype))
            objective = self.player.primal_objective(loss, ConstraintValue(*differentiable))
            return objective.detach(), objective
        w0, mu = weights
        gradient = vjp(mu, None)  # W = ∂(μᵀg̃)/∂T, (G*K,)
        weighted = loss if w0 == 1.0 else w0 * loss
        if terms is not None:
            constant = torch.from_numpy(np.asarray(mu @ lin.proxy_upper))  # float64
            if constant.dtype != stats.dtype:  # a no-op Tensor.to still costs several µs
                constant = constant.to(stats.dtype)
            return weighted.detach() + constant, weighted + terms.linear_term(gradient.reshape(stats.table.shape))
        # One autograd node: the value μᵀg̃ exactly, the gradient W·∂T/∂θ (attach's VJP of a linear map, c · W).
        objective = weighted + attach(np.asarray(mu @ lin.proxy_upper), lambda c: c * gradient, stats.table)
        return objective.detach(), objective

    def _primal_step(self, objective: Tensor, phase: int) -> None:
        """``backward`` on the primal objective, optional clipping, the wrapped optimizer's step. A failed backward
        takes back the step's count and its dual phase (``phase``: the one before the step)."""
        scaler = self.grad_scaler
        # the one try of the step, around the backward (torch.compile breaks the graph there, and cannot inside a
        # try that spans a call)
        try:
            (objective if scaler is None else scaler.scale(objective)).backward()
        except BaseException as error:
            self._take_back_step(phase)
            if not (isinstance(error, RuntimeError) and "backward through the graph a second time" in str(error)):
                raise
            raise RuntimeError(
                "step() calls backward itself, and the graph of this batch was already freed: do not call "
                "loss.backward() before opt.step(loss=..., scores=...) (gradients in .grad before step are added "
                "to, as with a plain optimizer); if the scores come from a graph shared with an earlier backward, "
                "pass retain_graph=True there"
            ) from error
        if self.max_grad_norm is not None:
            if scaler is not None:
                scaler.unscale_(self.optimizer)
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        if scaler is None:
            self.optimizer.step()
        else:
            scaler.step(self.optimizer)
            scaler.update()

    def _check_loss(self, loss: Tensor) -> None:
        if not isinstance(loss, Tensor):
            raise TypeError(
                f"loss must be a scalar torch.Tensor (the objective f), got {type(loss).__name__}; "
                "pass the tensor itself, not loss.item()"
            )
        if loss.dim() != 0:
            raise ValueError(f"loss must be a scalar, got shape {tuple(loss.shape)}; reduce it, e.g. loss.mean()")
        if not loss.requires_grad:
            raise ValueError("loss does not require grad: compute it from the model's output, outside torch.no_grad()")
        if validate_args_enabled(self.validate_args) and not math.isfinite(loss.item()):
            raise ValueError(
                f"loss is {loss.item()} (NaN or inf): training diverged or the inputs are invalid; lower the learning "
                "rate or check the data"
            )

    def _dual_step(
        self, batch_value: ConstraintValue, batch: tuple[GroupStats, ConstraintValue] | None = None
    ) -> ConstraintValue | None:
        """One scheduled dual step; returns the values read (None if nothing was pending)."""
        if self.dual_statistics.passthrough:
            return self._apply_dual(_detached(batch_value))
        return self._update_from_pending(batch)

    def _update_from_pending(self, batch: tuple[GroupStats, ConstraintValue] | None = None) -> ConstraintValue | None:
        """A dual step on the pending statistics. ``batch``: this step's table and its values (NumPy evaluator):
        when the dual table has the same hard counts and loss sums (e.g. a ``dual_min_count`` window of this one
        batch), its hard values and defined mask are the batch's, the only ones the dual player reads, and the batch's
        values are reused instead of evaluating the table again (its proxy values may differ from the batch's by
        the rounding of the running sums, ~1e-16 relative)."""
        stats = self.dual_statistics.collect()
        if stats is None:
            return None
        # (on the CPU only; a count window of several batches differs from this one: the batch alone fell short of
        # the counts, so the comparison is skipped)
        running = self.dual_statistics.running
        if (
            batch is not None
            and self.dual_value == "hard"
            and stats.table.is_cpu
            and not (running is not None and running.last_window is not None and int(running.last_window) > 1)
        ):
            table, value = host_table(batch[0]), batch[1]
            dual_table = host_table(stats)
            if np.array_equal(dual_table[:, :4], table[:, :4]) and np.array_equal(dual_table[:, 8], table[:, 8]):
                return self._apply_dual(_detached(value))
        # no graph: a detached table (the running ones have none already)
        return self._apply_dual(self.constraint_set.evaluate(stats.detach() if stats.table.requires_grad else stats))

    def _apply_dual(self, dual: ConstraintValue) -> ConstraintValue:
        if self.dual_value == "proxy":
            dual = ConstraintValue(dual.proxy.detach(), dual.proxy.detach(), dual.defined)
        if self._margin is not None:
            shift = self._margin_tensor
            if shift is None or shift.device != dual.hard.device or shift.dtype != dual.hard.dtype:
                shift = torch.as_tensor(self._margin, device=dual.hard.device, dtype=dual.hard.dtype)
                self._margin_tensor = shift  # one host-to-device copy per margin, not per step
            dual = ConstraintValue(dual.hard + torch.where(dual.defined, shift, 0.0), dual.proxy, dual.defined)
        self.player.update(dual)
        self._dual_multipliers = self.player.multipliers  # a copy (the player's contract)
        self._trace.append(self._dual_multipliers)
        return dual

    # held-out statistics --------------------------------------------------------------------------------------
    def observe_heldout(
        self,
        *,
        scores: Tensor,
        groups: Tensor,
        labels: Tensor | None = None,
        weights: Tensor | None = None,
        example_losses: Tensor | None = None,
    ) -> GroupStats:
        """Add one held-out batch to the statistics the next dual step reads (``dual_source="heldout"``).

        Call it e.g. with a validation batch every few steps; the dual steps (every ``dual_every`` primal steps)
        read the sum of the tables observed since the previous dual step. Arguments as :meth:`step` (``scores``
        ``(N,)`` or ``(N, 1)``). Returns the batch's table; with a ``stats_reducer`` (DDP) the batch is this rank's
        and the table returned is its sum over the ranks (give a ``DistributedSampler``'s padding rows weight 0, or
        use ``update_duals(collect_stats(..., all_reduce=True)[0])``, which drops them).

        Raises:
            ValueError: the optimizer was built with ``dual_source="train"``; invalid inputs.
        """
        if self.dual_statistics.source != "heldout":
            raise ValueError("observe_heldout() needs dual_source='heldout' (the dual player reads training batches)")
        stats = self._heldout_table(scores, groups, labels, weights, example_losses)
        self.dual_statistics.observe(stats)
        return stats

    def _heldout_table(
        self,
        scores: Tensor,
        groups: Tensor,
        labels: Tensor | None,
        weights: Tensor | None,
        example_losses: Tensor | None,
    ) -> GroupStats:
        """One held-out batch measured (checked) and, with a ``stats_reducer`` (DDP), summed over the ranks."""
        with torch.no_grad():
            stats = self.constraint_set.measure(
                scores,
                groups=groups,
                labels=labels,
                weights=weights,
                example_losses=example_losses,
                validate_args=self.validate_args,
            )
        if self.stats_reducer is not None:  # a batch is this rank's; a table given to update_duals is global
            stats = self.stats_reducer.reduce(stats)
        return stats

    def _heldout_stats(self, data: GroupStats | Mapping[str, Tensor]) -> GroupStats:
        """The table of what ``heldout()`` returned: a :class:`GroupStats` as it is, a batch mapping measured."""
        if isinstance(data, GroupStats):
            return data
        if isinstance(data, Mapping):
            batch = {k: data.get(k) for k in ("labels", "weights", "example_losses")}
            unknown = set(data) - {"scores", "groups", *batch}
            if unknown or "scores" not in data or "groups" not in data:
                raise TypeError(
                    "heldout() must return a mapping with scores=, groups= (and labels=, weights=, example_losses= "
                    f"where needed), got the keys {sorted(data)}"
                )
            return self._heldout_table(data["scores"], data["groups"], **batch)
        raise TypeError(
            "heldout() must return a fairopt.GroupStats or a mapping with scores/groups/labels, "
            f"got {type(data).__name__}"
        )

    def update_duals(self, stats: GroupStats | None = None) -> ConstraintValue | None:
        """Take one dual step now, on ``stats`` plus anything pending (e.g. a full validation pass).

        For duals that move only here (e.g. once per epoch on the whole validation split), build the optimizer with
        ``dual_source="heldout", dual_every=None``: with a schedule and nothing observed, :meth:`step` refuses to
        train unconstrained from its second scheduled dual step on.

        The step is a function of the table only (after ``sync`` and the running estimate), so under DDP every
        rank computes the same multipliers. Returns the constraint values read, or None if there was nothing.

        Raises:
            ValueError: the method has no dual player (:class:`~fairopt.optim.Penalty`).
        """
        if not self.method_spec.has_dual_player:
            raise ValueError(f"method={self.method!r} has fixed weights and no dual player to update")
        if stats is not None:
            self.dual_statistics.observe(stats)
        return self._update_from_pending()

    # evaluation and records -----------------------------------------------------------------------------------
    def evaluate(self, stats: GroupStats) -> ConstraintValue:
        """Constraint values ``(m,)`` on any table (e.g. held-out or test statistics), without gradient."""
        with torch.no_grad():
            return _detached(self.constraint_set.evaluate(stats.detach()))

    def record(
        self,
        stats: GroupStats,
        *,
        model: nn.Module | None = None,
        objective: float | Tensor | None = None,
        margin: float | Sequence[float] | np.ndarray | None = None,
    ) -> None:
        """Record the current iterate in :attr:`records` with its held-out constraint values.

        Args:
            stats: held-out statistics of the current model.
            model: the model (its state is copied when the records keep states).
            objective: the iterate's objective; default the overall error rate of ``stats`` (hard, 0-1 loss).
            margin: the selection margin of this record (``(m,)`` or one number, >= 0; default :attr:`margin`):
                selection then asks ``g + margin <= 0`` (:class:`~fairopt.optim.IterateRecords`).

        Raises:
            ValueError: no ``records`` were given at construction.
        """
        if self.records is None:
            raise ValueError("pass records=fairopt.optim.IterateRecords() to the optimizer to record iterates")
        value = self.evaluate(stats)
        if objective is None:
            objective = compute_rate(stats.detach().overall(), "error_rate").value[0]
        if margin is None:
            margin = self._margin
        self.records.record(self.num_steps, objective, value.hard, defined=value.defined, model=model, margin=margin)

    def check(self, stats: GroupStats, *, group_names: Sequence[str] | None = None, warn: bool = True) -> list[str]:
        """End-of-training check: is the constraint met on ``stats`` (e.g. the whole held-out split), and have the
        multipliers settled? Returns the problems found as sentences (empty when none) and, with ``warn``, issues
        each as a ``UserWarning``.

        * *violated*: an entry is above its bound by more than two standard errors of ``stats``
          (:meth:`~fairopt.optim.ConstraintSet.standard_errors`): not a sampling accident. Usual fixes: a larger
          ``dual_lr``, more epochs, or a looser tolerance.
        * *cannot tell*: an entry is above its bound, but within two standard errors: these rows cannot tell
          whether it is met (more rows, or a margin).
        * *empty groups*: a group has no examples in ``stats`` (e.g. ``num_groups`` larger than the data's).
        * *undefined*: an entry cannot be computed on ``stats`` (e.g. a group without positives): nothing enforced it.
        * *not settled*: over the last dual steps (up to 200), the mean multipliers of the last quarter differ from
          those of the quarter before by more than 25% (and 0.05): the game is still moving; train longer or lower
          ``dual_lr``, and choose the final model from :attr:`records` rather than the last iterate.
        * *margin too large*: the current :attr:`margin` asks an entry for ``g <= -margin`` below the lowest value
          ``g`` can take (for a gap ``max - min``: a margin above the tolerance), so training was driven toward
          a constant prediction; estimate the margin on more rows, or cap it.

        Raises:
            ValueError: the table has another number of groups.
        """
        value = self.evaluate(stats)
        hard, defined = value.hard.cpu().numpy(), value.defined.cpu().numpy()
        errors = self.constraint_set.standard_errors(stats) if self.constraint_set.linearizable else np.zeros_like(hard)
        names = self.entry_names(group_names)
        names_of = list(range(stats.num_groups)) if group_names is None else list(group_names)
        problems = []
        for name, g, se, ok in zip(names, hard, errors, defined):
            if not ok:
                problems.append(f"constraint entry {name} is undefined on these statistics: nothing enforced it")
            elif g > 2 * se and g > 0:
                # the delta method gives 0 where every rate is exactly 0 or 1 (often a few rows per group)
                shown = f"standard error {se:.4f}" if se > 0 else (
                    "standard error 0 by the delta method, whose rates are all exactly 0 or 1 here: no measure of "
                    "the uncertainty, which on few rows is large"
                )  # fmt: skip
                problems.append(
                    f"constraint entry {name} is violated by {g:.4f} ({shown}) at the end of training; raise dual_lr, "
                    "train longer or loosen the tolerance"
                )
            elif g > 0:  # silence would read as "met"
                problems.append(
                    f"constraint entry {name} is above its bound by {g:.4f} at the end of training, within two "
                    f"standard errors ({se:.4f}) of these statistics: they cannot tell whether it is met; check on "
                    "more rows, or train with a margin (opt.margin) so that the bound holds with room"
                )
        empty = [str(names_of[g]) for g in (stats.count == 0).nonzero().flatten().tolist()]
        if empty:  # e.g. num_groups larger than the data's: entries over groups skip them without a word
            problems.append(
                f"group(s) {', '.join(empty)} have no examples in these statistics (num_groups="
                f"{self.constraint_set.num_groups}): nothing constrains them; if the data have fewer groups, pass "
                "their number as num_groups"
            )
        if (unreachable := self._unreachable_margin()) is not None:
            problems.append(unreachable)
        if len(self._trace) >= 8:
            trace = self._trace.stacked().double().cpu().numpy()
            quarter = len(trace) // 4
            last, before = trace[-quarter:].mean(axis=0), trace[-2 * quarter : -quarter].mean(axis=0)
            change = np.abs(last - before)
            moving = (change > 0.25 * np.maximum(np.abs(before), np.abs(last))) & (change > 0.05)
            if moving.any():
                which = ", ".join(n for n, m in zip(names, moving) if m)
                problems.append(
                    f"the multipliers have not settled ({which} moved by up to {change.max():.3f} over the last "
                    f"{2 * quarter} dual steps); train longer or lower dual_lr, and pick the final model from records"
                )
        if warn:
            for problem in problems:
                warnings.warn(problem, UserWarning, stacklevel=2)
        return problems

    # state ----------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit for bit: the wrapped optimizer, the dual player (multipliers, dual
        optimizer, penalty coefficients, or the proxy-Lagrangian state), pending and running statistics, records,
        the margin, the multiplier trace :meth:`check` reads, the step counter, and the constraints' description
        (:meth:`~fairopt.optim.ConstraintSet.describe`) that :meth:`load_state_dict` checks. (The model and LR
        schedulers are saved by the user, as usual.)

        Only tensors, strings, numbers, bools, None and lists/dicts of them (enum hyper-parameters of the optimizers,
        e.g. nuPI's, are stored as their values), so ``torch.load(path, weights_only=True)``, torch's default since
        2.6, loads it."""
        return {
            "format": _STATE_FORMAT,
            "method": self.method,
            "constraints": self.constraint_set.describe(),
            "num_steps": self.num_steps,
            "optimizer": plain_optimizer_state(self.optimizer),
            "player": self.player.state_dict(),
            "dual_statistics": self.dual_statistics.state_dict(),
            "records": None if self.records is None else self.records.state_dict(),
            "margin": None if self._margin is None else torch.from_numpy(self._margin.copy()),
            "multiplier_trace": self._trace.state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`. Every check runs before anything is restored.

        The constraints must be the ones the state was saved with: the same entries (what each multiplier weighs,
        e.g. ``"max_g tpr[g] - min_g tpr[g]"``), in the same order, on the same number of groups; a different
        tolerance, proxy or threshold is accepted. A state of the previous format (1), which stored only the
        constraints' names, is matched by name, tolerance included.

        Raises:
            ValueError: an unknown format; the state is for another method or for other constraints (the message
                lists the saved constraints and this optimizer's).
        """
        if state.get("format") not in _STATE_FORMATS:
            raise ValueError(
                f"unknown state_dict format {state.get('format')!r} (this version reads {_STATE_FORMATS}); was it "
                "saved by ConstrainedOptimizer.state_dict() of a newer fairopt?"
            )
        if state["method"] != self.method:
            raise ValueError(f"state_dict is for method={state['method']!r}, this optimizer uses {self.method!r}")
        self._check_constraints(state["constraints"])
        load_plain_optimizer_state(self.optimizer, state["optimizer"])
        self.player.load_state_dict(state["player"])
        self.dual_statistics.load_state_dict(state["dual_statistics"])
        if state["records"] is not None:
            if self.records is None:
                self.records = IterateRecords()
            self.records.load_state_dict(state["records"])
        self.num_steps = int(state["num_steps"])
        if "margin" in state:  # states saved before margins existed keep the constructor's
            self._set_margin(state["margin"])
        self._trace.load(state.get("multiplier_trace", []))

    def _check_constraints(self, saved: Mapping[str, Any]) -> None:
        """Refuse a state saved for other constraints, before cooper's multipliers meet a state of another size."""
        mine = self.constraint_set.describe()
        same = all(saved[key] == mine[key] for key in ("num_constraints", "num_groups"))
        # names saved before pooled groups were shown as sets (tpr[0 + 2]) compare in today's form (tpr[{0, 2}])
        if "entries" in saved:
            entries = [[upgrade_pooled_names(name) for name in names] for names in saved["entries"]]
            same = same and entries == mine["entries"]
        else:  # format 1 stored the names only
            same = same and [upgrade_pooled_names(name) for name in saved["constraints"]] == mine["constraints"]
        if not same:
            raise ValueError(
                f"state_dict was saved for the constraints {_describe(saved)}, but this optimizer has "
                f"{_describe(mine)}; build the optimizer with the constraints (and num_groups) the state was saved with"
            )

    def __repr__(self) -> str:
        return (
            f"ConstrainedOptimizer(method={self.method!r}, m={self.num_constraints}, "
            f"G={self.constraint_set.num_groups}, dual_lr={self.dual_lr:g}, dual_update={self.dual_update!r}, "
            f"dual_source={self.dual_statistics.source!r}, dual_every={self.dual_statistics.every}, "
            f"optimizer={type(self.optimizer).__name__})"
        )
