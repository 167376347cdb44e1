r"""The constraints of one problem, measured on one batch: ``scores, labels, groups`` → ``g`` (m entries).

A :class:`ConstraintSet` stacks the entries of several :class:`~fairopt.constraints.Constraint`\ s into one vector

.. math::
    g(T) = \big(g^{(1)}(T), \dots, g^{(c)}(T)\big) \in \mathbb{R}^m, \qquad g \le 0 \text{ wanted},

where ``T`` is a ``(G, K)`` :class:`~fairopt.stats.GroupStats` table. It is the only place where the optimizers
turn tensors into constraint values, so every player (primal or dual) sees the same numbers: the hard values
``g`` for the dual player and the differentiable proxies ``g̃`` for the primal player (Cotter et al., JMLR 2019,
Section 2). Because ``g`` is a function of the table alone, a DDP run can all-reduce ``T`` first and every rank
computes identical values.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.autograd import forward_ad

from fairopt._deprecation import renamed_kwargs
from fairopt._validation import require_tensor, user_stacklevel
from fairopt.constraints import Constraint, ConstraintValue
from fairopt.constraints.device_evaluation import evaluate_device
from fairopt.constraints.evaluation import Linearization, host_table, value_tensors
from fairopt.constraints.expressions import entry_value_ranges
from fairopt.kernels import BACKENDS, resolve_backend
from fairopt.optim.base import as_score_vector
from fairopt.proxies import Proxy, as_proxy
from fairopt.stats import COLUMNS, ExampleTerms, GroupStats, example_terms, group_stats

__all__ = ["EVALUATORS", "ConstraintSet"]

EVALUATORS = ("auto", "numpy", "device")

# Rates that are computed without labels (a selection rate counts predictions only) or from the loss column.
_CELLS = [COLUMNS.index(c) for c in ("tn", "fp", "fn", "tp")]  # the hard confusion cells
_JACOBIAN_CHUNK = 256  # entries per batched backward pass of hard_jacobian (bounds its memory)
_LABEL_FREE_RATES = frozenset({"selection_rate", "mean_loss"})


def require_batch_tensor(name: str, value: object) -> Tensor:
    """``value``, a batch tensor of :meth:`ConstraintSet.measure` (``scores``, ``groups``).

    Raises:
        ValueError: None (the message names the ``step()`` argument). TypeError: not a tensor.
    """
    if value is None:
        raise ValueError(f"{name} is required to measure fairness constraints; pass {name}=... to step()")
    return require_tensor(name, value)


class ConstraintSet:
    r"""Several constraints over G groups, stacked into one vector of ``m`` entries.

    Args:
        constraints: one :class:`~fairopt.constraints.Constraint` or a sequence of them (e.g.
            ``[fairopt.EqualizedOdds(0.05)]``). Entries are stacked in order.
        num_groups: G, fixed up front. Every constraint is checked against it here
            (:meth:`~fairopt.constraints.Constraint.check_num_groups`).
        proxy: surrogate for the proxy columns used by the primal player: ``"sigmoid"`` (default; see
            :class:`~fairopt.optim.ConstrainedOptimizer` for why not the hinge), ``"hinge"`` (TFCO's choice; an
            upper bound of the indicator, so the relaxed constraint is conservative), ``"softplus"``, or a
            :class:`~fairopt.proxies.Proxy` (see :mod:`fairopt.proxies`).
        threshold: decision threshold in logit units; a positive prediction is ``score > threshold``.
        dtype: floating dtype of the statistics table and of every constraint value (float64 by default).
        backend: how :meth:`measure` computes the table (:func:`fairopt.group_stats`'s ``backend``): ``"auto"``
            (default: the fused Triton kernel on CUDA tensors when triton is installed, else the torch path),
            ``"torch"`` or ``"triton"``.
        evaluator: how expression constraints are evaluated on a table: ``"numpy"`` (one host pass in float64,
            :mod:`fairopt.constraints.evaluation`; copies a GPU table to the host), ``"device"`` (torch ops on the
            table's device, no host synchronization, :mod:`fairopt.constraints.device_evaluation`), or ``"auto"``
            (default: NumPy for a CPU table, where it is faster, the device evaluator for any other device). Same
            values and gradients either way (float rounding aside). A :class:`~fairopt.constraints.FunctionConstraint`
            is always evaluated by its own function.

    Attributes:
        num_constraints: m, the total number of entries.
        slices: one ``slice`` of the m entries per constraint.
        needs_labels: False only when every constraint reads label-free rates (selection rate, mean loss).
        needs_example_losses: True when a constraint reads the per-group mean loss (e.g. ``BoundedGroupLoss``).
        linearizable: True when every constraint is an expression constraint, evaluated in one NumPy pass
            (:meth:`linearize`); a :class:`~fairopt.constraints.FunctionConstraint` is evaluated by its function.

    Raises:
        TypeError: an element is not a :class:`~fairopt.constraints.Constraint`.
        ValueError: no constraints; a constraint refers to a group ``>= num_groups``; an expression entry that no
            table of ``num_groups`` groups defines (e.g. a gap between groups with ``num_groups=1``: nothing would
            enforce it); bad ``num_groups``; an unknown ``backend`` or ``evaluator``.
    """

    def __init__(
        self,
        constraints: Constraint | Sequence[Constraint],
        num_groups: int,
        *,
        proxy: str | Proxy | Callable[[Tensor], Tensor] = "sigmoid",
        threshold: float = 0.0,
        dtype: torch.dtype = torch.float64,
        backend: str = "auto",
        evaluator: str = "auto",
    ) -> None:
        swapped = isinstance(num_groups, Constraint) or (
            isinstance(num_groups, Sequence) and not isinstance(num_groups, (str, bytes))
        )
        if isinstance(constraints, numbers.Integral) and swapped:  # (..., 2, [EO(0.05)])
            raise TypeError(
                f"constraints must be a fairopt constraint or a list of them, got the int {int(constraints)}, and "
                f"num_groups got {type(num_groups).__name__}: the two are swapped; pass the constraints first, then "
                "the number of groups (e.g. ConstrainedOptimizer(optimizer, [fairopt.EqualizedOdds(0.05)], 2))"
            )
        readable = True
        if not isinstance(constraints, Constraint):
            try:  # anything tuple() reads (a sequence with __getitem__ only too), but not a string's characters
                iter(constraints)
                readable = not isinstance(constraints, (str, bytes))
            except TypeError:
                readable = False
        if not readable:
            raise TypeError(
                f"constraints must be a fairopt constraint or a list of them, got {type(constraints).__name__}; build "
                "one with e.g. fairopt.DemographicParity(0.05) or fairopt.tpr(1) - fairopt.tpr(0) <= 0.05"
            )
        items = (constraints,) if isinstance(constraints, Constraint) else tuple(constraints)
        if not items:
            raise ValueError("constraints is empty; pass at least one fairopt constraint, e.g. fairopt.EqualizedOdds()")
        for c in items:
            if not isinstance(c, Constraint):
                raise TypeError(
                    f"constraints must be fairopt.Constraint objects, got {type(c).__name__}; build one with e.g. "
                    "fairopt.DemographicParity(0.05) or fairopt.tpr(1) - fairopt.tpr(0) <= 0.05"
                )
        if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
            raise ValueError(f"num_groups must be a positive int (G, fixed up front), got {num_groups!r}")
        for c in items:
            c.check_num_groups(num_groups)
        if not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating dtype, got {dtype}")
        if backend not in BACKENDS:
            raise ValueError(
                f"backend must be one of {BACKENDS} (how the statistics table is computed), got {backend!r}"
            )
        if evaluator not in EVALUATORS:
            raise ValueError(
                f"evaluator must be one of {EVALUATORS} (how constraints are evaluated), got {evaluator!r}"
            )
        self.backend, self.evaluator = backend, evaluator
        self.constraints: tuple[Constraint, ...] = items
        self.num_groups = num_groups
        self.proxy = as_proxy(proxy)
        self.threshold = float(threshold)
        self.dtype = dtype
        sizes = [c.num_entries(num_groups) for c in items]
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        self.slices: tuple[slice, ...] = tuple(slice(s, s + n) for s, n in zip(starts, sizes))
        self.num_constraints = sum(sizes)
        rates = [c.rate_names() for c in items]
        self.needs_labels = any(r is None or not r <= _LABEL_FREE_RATES for r in rates)
        self.needs_example_losses = any(r is not None and "mean_loss" in r for r in rates)
        self.linearizable = all(c.linearizable for c in items)
        self._check_definable()
        self._warn_vacuous()

    def _warn_vacuous(self) -> None:
        """Warn for an expression constraint that no table can violate: every entry's highest value
        (:func:`~fairopt.constraints.expressions.entry_value_ranges`, a sound bound) is at most its tolerance,
        e.g. ``tpr(1) - tpr(0) <= 5`` (rates are in [0, 1]: 0.05 is 5 percentage points). Training with it is
        unconstrained."""
        for c in self.constraints:
            if not c.expression_based:
                continue
            highest = max(hi for _, hi in entry_value_ranges(c.expr, self.num_groups))
            if highest <= c.tolerance:
                # a proxy whose rates can exceed 1 (hinge, softplus) can exceed the bound: methods that read proxy
                # values (the penalty, the augmented Lagrangian, dual_value="proxy") still push on it
                proxy = "" if self.proxy.normalized else (
                    f"; only the {self.proxy.name} proxy's rates, which can exceed 1, can pass it, so methods that "
                    "read proxy values (penalty, augmented_lagrangian, dual_value='proxy') may still push on them"
                )  # fmt: skip
                warnings.warn(
                    f"constraint {c.name!r} can never be violated: its expression is at most {highest:g} on any data "
                    f"and its bound is {c.tolerance:g}, so it constrains nothing (rates are in [0, 1]: a bound of "
                    f"5 percentage points is 0.05){proxy}",
                    UserWarning,
                    stacklevel=user_stacklevel(),
                )

    def _check_definable(self) -> None:
        """Raise ValueError for a constraint with no entries, or an expression entry that no table of G groups
        defines, at G groups (e.g. a pairwise or max - min gap with ``num_groups=1``): it would be skipped at every
        step, and training would be silently unconstrained. An entry counts as definable when one of a few varied
        tables defines it (every cell 1, which leaves no denominator 0 and every group present, and three seeded
        random ones, on which differences of rates, e.g. a denominator ``tpr(1) - tpr(0)``, are not 0)."""
        rng = np.random.default_rng(0)
        tables = [np.ones((self.num_groups, len(COLUMNS)))]
        for _ in range(3):
            table = rng.integers(1, 50, (self.num_groups, len(COLUMNS))).astype(np.float64)
            table[:, 4:8] = table[:, :4]  # proxy sums as the hard counts
            tables.append(table)
        for c, part in zip(self.constraints, self.slices):
            if part.stop == part.start:
                raise ValueError(
                    f"constraint {c.name!r} has no entries with num_groups={self.num_groups} (it compares pairs or "
                    "ranges of groups), so nothing would enforce it; pass the number of groups in the data, or drop it"
                )
            if not c.expression_based:
                continue  # a function's own rules of definedness are not known
            defined = np.zeros(part.stop - part.start, dtype=bool)
            for table in tables:
                defined |= c.linearize(table, gradients=False).defined
            if not defined.all():
                names = [n for n, ok in zip(c.entry_names(self.num_groups), defined.tolist()) if not ok]
                raise ValueError(
                    f"constraint {c.name!r} cannot be computed with num_groups={self.num_groups}: its entries "
                    f"{names} compare more groups than there are (a gap needs at least 2), so nothing would enforce "
                    "them; pass the number of groups in the data, or drop the constraint"
                )

    def __len__(self) -> int:
        return self.num_constraints

    def lowest_values(self) -> np.ndarray:
        """``(m,)`` float64: a bound below every hard value ``g = expr - tolerance`` that each entry can take on any
        table (:func:`~fairopt.constraints.expressions.entry_value_ranges`: e.g. ``-tolerance`` for a gap
        ``max - min``); ``-inf`` for a :class:`~fairopt.constraints.FunctionConstraint` (nothing is known of its
        function). An entry asked to meet ``g <= -margin`` with ``-margin`` below this bound asks for the
        impossible."""
        lowest: list[float] = []
        for c, part in zip(self.constraints, self.slices):
            if c.expression_based:
                lowest += [lo - c.tolerance for lo, _ in entry_value_ranges(c.expr, self.num_groups)]
            else:
                lowest += [-np.inf] * (part.stop - part.start)
        return np.array(lowest, dtype=np.float64)

    def unreachable_margins(self, margin: np.ndarray) -> np.ndarray:
        """Indices of the entries whose target ``g <= -margin`` (``margin``: ``(m,)`` float64) no model or policy can
        meet on any data: ``-margin`` below :meth:`lowest_values` (for a gap ``max - min``, a margin above the
        tolerance), beyond rounding (a margin equal to the room, e.g. 0.2 for ``0.8 - tpr >= -0.19999999999999996``,
        is reachable)."""
        lowest = self.lowest_values()
        beyond = (-margin < lowest) & ~np.isclose(-margin, lowest, rtol=1e-9, atol=1e-12)
        return np.flatnonzero((margin > 0.0) & beyond)

    def entry_names(self, group_names: Sequence[str] | None = None) -> list[str]:
        """One readable name per entry, ``"<constraint name>: <entry>"`` (group ids are used when no names)."""
        names = self.num_groups if group_names is None else list(group_names)
        return [f"{c.name}: {e}" for c in self.constraints for e in c.entry_names(names)]

    # measurement --------------------------------------------------------------------------------------------
    @renamed_kwargs(validate="validate_args")
    def measure(
        self,
        scores: Tensor,
        *,
        groups: Tensor,
        labels: Tensor | None = None,
        weights: Tensor | None = None,
        example_losses: Tensor | None = None,
        validate_args: bool | None = None,
        terms: bool = False,
    ) -> GroupStats | ExampleTerms:
        """Reduce one batch to its ``(G, K)`` table with this set's proxy, threshold and dtype.

        Args:
            scores: ``(N,)`` logits, or ``(N, 1)`` (e.g. ``nn.Linear(d, 1)``'s output; read as ``(N,)``). The graph
                is kept: the proxy columns are differentiable.
            groups: ``(N,)`` integer group ids in ``[0, G)``.
            labels: ``(N,)`` 0/1 labels; may be omitted only when :attr:`needs_labels` is False.
            weights: optional ``(N,)`` example weights. example_losses: optional ``(N,)`` per-example losses
                (required when :attr:`needs_example_losses`).
            validate_args: value checks of :func:`fairopt.group_stats` (None: the global default; ``validate=``
                is its deprecated name).
            terms: return :class:`~fairopt.stats.ExampleTerms` (the table without a graph, and the per-example terms
                with theirs, :func:`fairopt.stats.example_terms`) instead of a differentiable table; only where
                :meth:`measures_terms`.

        Raises:
            ValueError: a tensor that a constraint needs is missing (the message names the constraint); scores of
                another shape than ``(N,)`` / ``(N, 1)``; plus everything :func:`fairopt.group_stats` raises.
        """
        require_batch_tensor("scores", scores)
        require_batch_tensor("groups", groups)
        scores = as_score_vector(scores)
        if labels is None:
            if self.needs_labels:
                raise ValueError(
                    f"labels are required by {self._names_needing('labels')}; pass labels=... (0/1, shape (N,))"
                )
            labels = torch.zeros(scores.shape[0], dtype=torch.bool, device=scores.device)
        if example_losses is None and self.needs_example_losses:
            raise ValueError(
                f"{self._names_needing('loss')} reads per-group mean losses; pass example_losses="
                "F.binary_cross_entropy_with_logits(scores, labels, reduction='none') (shape (N,))"
            )
        batch = {"labels": labels, "groups": groups, "weights": weights, "example_losses": example_losses}
        common = {"num_groups": self.num_groups, "proxy": self.proxy, "threshold": self.threshold, "dtype": self.dtype}
        if terms:
            return example_terms(scores, **batch, **common, validate_args=validate_args)
        return group_stats(scores, **batch, **common, backend=self.backend, validate_args=validate_args)

    def measures_terms(self, scores: Tensor) -> bool:
        """Whether :meth:`measure` can return :class:`~fairopt.stats.ExampleTerms` for ``scores``: the torch backend
        computes the table (``backend="auto"`` on a CPU tensor, or ``"torch"``) and nothing is being compiled."""
        return resolve_backend(self.backend, scores.device) == "torch" and not torch.compiler.is_compiling()

    def _names_needing(self, what: str) -> str:
        names = []
        for c in self.constraints:
            rates = c.rate_names()
            if what == "loss" and rates is not None and "mean_loss" in rates:
                names.append(c.name)
            if what == "labels" and (rates is None or not rates <= _LABEL_FREE_RATES):
                names.append(c.name)
        return ", ".join(repr(n) for n in names)

    # evaluation ---------------------------------------------------------------------------------------------
    def on_device(self, device: torch.device) -> bool:
        """Whether :meth:`evaluate` uses the device evaluator for a table on ``device`` (:attr:`evaluator`, with
        ``"auto"`` resolved: NumPy on the CPU, the device evaluator elsewhere); always False with a function
        constraint in the set."""
        if not self.linearizable or self.evaluator == "numpy":
            return False
        return self.evaluator == "device" or device.type != "cpu"

    def evaluate(self, stats: GroupStats) -> ConstraintValue:
        """All m entries on one table: ``hard (m,)`` (no gradient), ``proxy (m,)`` (differentiable w.r.t. the
        table: first order with the NumPy evaluator, any order with the device evaluator), ``defined``; in
        :attr:`dtype` on the table's device. With the device evaluator (:meth:`on_device`) nothing is read on the
        host.

        Raises:
            ValueError: the table has another number of groups than G.
        """
        self._check_table(stats)
        table = stats.table
        if table.dtype != self.dtype:  # a no-op Tensor.to still costs several µs
            table = table.to(self.dtype)
        if self.on_device(table.device):
            return self._evaluate_device(table)
        if self.linearizable:
            lin = self._linearize(host_table(stats), gradients=table.requires_grad)
            return ConstraintValue(*value_tensors(lin, table))
        values = [c.evaluate(GroupStats(table)) for c in self.constraints]
        if len(values) == 1:
            return values[0]
        return ConstraintValue(*(torch.cat([getattr(v, f) for v in values]) for f in ("hard", "proxy", "defined")))

    def evaluate_device(self, stats: GroupStats) -> ConstraintValue:
        """:meth:`evaluate` by the device evaluator whatever :attr:`evaluator` says
        (:func:`fairopt.constraints.device_evaluation.evaluate_device`, then ``- tolerance`` per constraint): torch
        ops on the table's device only, no host synchronization; ``proxy`` is differentiable w.r.t. the table by
        autograd.

        Raises:
            TypeError: a constraint is a :class:`~fairopt.constraints.FunctionConstraint` (no expression to walk).
            ValueError: the table has another number of groups than G.
        """
        if not self.linearizable:
            raise TypeError("the device evaluator walks expressions; a FunctionConstraint has none (use evaluate())")
        self._check_table(stats)
        return self._evaluate_device(stats.table.to(self.dtype))

    def _evaluate_device(self, table: Tensor, *, hard_gradients: bool = False) -> ConstraintValue:
        """All m entries with the device evaluator; ``hard_gradients``: the hard values differentiable w.r.t. the
        hard columns too (:meth:`hard_jacobian`)."""
        parts = [
            evaluate_device(c.expr, table, offset=c.tolerance, hard_gradients=hard_gradients) for c in self.constraints
        ]
        if len(parts) == 1:
            return ConstraintValue(parts[0].hard, parts[0].proxy_upper, parts[0].defined)
        return ConstraintValue(  # dim -1: the entries (a table may carry batch dimensions)
            torch.cat([p.hard for p in parts], dim=-1),
            torch.cat([p.proxy_upper for p in parts], dim=-1),
            torch.cat([p.defined for p in parts], dim=-1),
        )

    def linearize(self, stats: GroupStats, *, gradients: bool = True) -> Linearization:
        """All m entries at one table in NumPy (float64), with the VJP of the proxy values w.r.t. the flattened
        table (:attr:`Linearization.vjp <fairopt.constraints.evaluation.Linearization>`; None with
        ``gradients=False``). Only when :attr:`linearizable`.

        Raises:
            TypeError: a constraint is a :class:`~fairopt.constraints.FunctionConstraint`. ValueError: another G.
        """
        self._check_table(stats)
        return self._linearize(host_table(stats), gradients)

    def _linearize(self, table: np.ndarray, gradients: bool) -> Linearization:
        parts = [c.linearize(table, gradients=gradients) for c in self.constraints]
        if len(parts) == 1:
            return parts[0]
        vjp = None
        if gradients:
            bounds = np.cumsum([0] + [p.hard.shape[-1] for p in parts])

            def vjp(c_upper: np.ndarray | None, c_lower: np.ndarray | None) -> np.ndarray:
                return sum(  # type: ignore[return-value]
                    p.vjp(None if c_upper is None else c_upper[lo:hi], None if c_lower is None else c_lower[lo:hi])
                    for p, lo, hi in zip(parts, bounds[:-1], bounds[1:])
                )

        return Linearization(  # axis -1: the entries (a stack of tables has leading batch dimensions)
            hard=np.concatenate([p.hard for p in parts], axis=-1),
            proxy_upper=np.concatenate([p.proxy_upper for p in parts], axis=-1),
            proxy_lower=np.concatenate([p.proxy_lower for p in parts], axis=-1),
            defined=np.concatenate([p.defined for p in parts], axis=-1),
            vjp=vjp,
        )

    def standard_errors(self, stats: GroupStats) -> np.ndarray:
        r"""Standard errors ``(m,)`` float64 of the hard values on ``stats``, as estimates of their values on new data.

        Delta method on the four confusion cells of every group, each treated as a Poisson count (so the cells of a
        multinomial sample, to first order): :math:`\operatorname{SE}(g_i)^2 = \sum_{g,c} (\partial g_i/\partial
        T_{g,c})^2\, T_{g,c}`. For a rate this is exactly the binomial :math:`r(1-r)/n`; for a gap between two
        groups it is the sum of their variances; a rate pooled over groups (``vs_overall``) is correlated with its
        parts and the Jacobian accounts for it. A max/min takes its active branch (the selection of the largest
        gap is not corrected for); at a tie ``max`` takes the first entry and ``min`` the last, so ``max_g r_g -
        min_g r_g`` (the built-in gaps) over tied rates gets the standard error of the difference of two of them,
        as ``|r_1 - r_0|`` does for two groups (see :meth:`hard_jacobian`). Weighted tables are read as counts.
        Undefined entries get ``inf``.

        Used to leave a margin against estimation error when choosing or training a model on held-out data
        ("plan to overfit the constraints", Cotter et al., JMLR 20(172), 2019, Section 7.2).

        Raises:
            TypeError: a constraint is a :class:`~fairopt.constraints.FunctionConstraint` (no expression to
                differentiate). ValueError: another G.
        """
        jacobian, counts, defined = self.hard_jacobian(stats)
        variance = (jacobian**2 * counts[None]).sum(axis=(1, 2))
        return np.where(defined, np.sqrt(variance), np.inf)

    def hard_jacobian(self, stats: GroupStats) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Derivatives of the hard values w.r.t. every group's confusion cells, by autograd.

        The hard values evaluated by :func:`~fairopt.constraints.device_evaluation.evaluate_device` with
        ``hard_gradients=True`` on the float64 table, differentiated in reverse mode (backward passes batched over
        the ``m`` entries, 256 at a time) when ``m <= 4G``, else in forward mode (one pass per cell, ``4G`` of them).
        Each pass costs what one evaluation does, O(G) for most expressions (O(m) for ``pairwise``), so the
        whole is O(min(m, 4G) x one evaluation), with memory for one chunk; central differences over ``8G`` perturbed
        tables, stacked, cost O(G^2) memory. A hard value is a ratio of counts, smooth away from the kinks of ``abs``
        and ``max``/``min``; at a kink the derivative is the one of the branch or entry the value takes: at a tie of
        ``|r_a - r_b|`` that of ``r_a - r_b`` (a central difference averaged it to 0); at a tie ``max`` takes the
        first entry and ``min`` the last, so ``max_g r_g - min_g r_g`` over tied rates differentiates as ``r_first -
        r_last`` (a central difference gives 0 there, a first entry for both would too: a standard error of 0 for a
        gap that new data would show).

        Works under ``torch.no_grad()`` and ``torch.inference_mode()`` (it differentiates a table of its own).

        Returns:
            ``(jacobian, cells, defined)``: ``(m, G, 4)`` float64 ``∂g_i/∂T[g, c]`` for the cells ``tn, fp, fn, tp``;
            the ``(G, 4)`` cells themselves (negative weighted counts clipped to 0); the ``(m,)`` defined mask.
            Undefined entries, and entries that do not depend on the table (constants), have a zero row.

        Raises:
            TypeError: a constraint is a :class:`~fairopt.constraints.FunctionConstraint`. ValueError: another G.
        """
        if not self.linearizable:
            raise TypeError(
                "standard errors (hard-value derivatives) need expression constraints, and a FunctionConstraint has "
                "none: write it with rate expressions (e.g. fairopt.tpr(1) - fairopt.tpr(0) <= 0.05), or choose a "
                "margin yourself (one number, or one per entry)"
            )
        self._check_table(stats)
        table = host_table(stats)
        num_groups = table.shape[0]
        # Plain autograd, not torch.func: the evaluator caches constants it builds, which must not be built inside a
        # functorch transform (they would be its wrapped tensors).
        with torch.inference_mode(False), torch.enable_grad():  # a table of its own, whatever the caller's mode
            cells = torch.from_numpy(table.copy())
            m = self.num_constraints
            jacobian = torch.zeros((m, num_groups, 4), dtype=torch.float64)
            if m <= 4 * num_groups:  # reverse mode: a cotangent per entry
                leaf = cells.requires_grad_()
                value = self._evaluate_device(leaf, hard_gradients=True)
                hard, defined = value.hard, value.defined
                if hard.requires_grad:  # else no entry depends on the table (constant expressions)
                    for lo in range(0, m, _JACOBIAN_CHUNK):
                        k = min(_JACOBIAN_CHUNK, m - lo)
                        rows = torch.zeros((k, m), dtype=hard.dtype)  # rows lo..lo+k of the identity, no (m, m) eye
                        rows[torch.arange(k), torch.arange(lo, lo + k)] = 1.0
                        (grad,) = torch.autograd.grad(hard, leaf, rows, retain_graph=True, is_grads_batched=True)
                        jacobian[lo : lo + k] = grad[..., _CELLS]
            else:  # forward mode: a tangent per cell
                defined = self._evaluate_device(cells, hard_gradients=True).defined
                for g in range(num_groups):
                    for j, column in enumerate(_CELLS):
                        tangent = torch.zeros_like(cells)
                        tangent[g, column] = 1.0
                        with forward_ad.dual_level():
                            dual = self._evaluate_device(forward_ad.make_dual(cells, tangent), hard_gradients=True)
                            derivative = forward_ad.unpack_dual(dual.hard).tangent
                        if derivative is not None:
                            jacobian[:, g, j] = derivative
        counts = np.maximum(table[:, _CELLS], 0.0)  # (G, 4)
        return jacobian.numpy(), counts, defined.numpy()

    def _check_table(self, stats: GroupStats) -> None:
        if not isinstance(stats, GroupStats):
            raise TypeError(f"expected a fairopt.GroupStats table, got {type(stats).__name__}")
        if stats.num_groups != self.num_groups:
            raise ValueError(
                f"the statistics have {stats.num_groups} groups but the constraints use G={self.num_groups}"
            )

    def split(self, values: Tensor) -> list[Tensor]:
        """Cut an ``(m,)`` tensor into one piece per constraint."""
        return [values[s] for s in self.slices]

    def __repr__(self) -> str:
        names = ", ".join(c.name for c in self.constraints)
        return (
            f"ConstraintSet([{names}], num_groups={self.num_groups}, m={self.num_constraints}, proxy={self.proxy.name})"
        )

    def describe(self) -> dict[str, Any]:
        """A plain summary (strings and numbers only), e.g. to store next to a checkpoint.

        Keys: ``constraints`` (names, with their tolerance), ``entries`` (one list per constraint of its entries'
        names, e.g. ``"max_g tpr[g] - min_g tpr[g]"``: what each multiplier weighs, without the tolerance),
        ``num_constraints`` (m), ``num_groups`` (G), ``proxy``, ``threshold``.
        """
        return {
            "constraints": [c.name for c in self.constraints],
            "entries": [list(c.entry_names(self.num_groups)) for c in self.constraints],
            "num_constraints": self.num_constraints,
            "num_groups": self.num_groups,
            "proxy": self.proxy.name,
            "threshold": self.threshold,
        }
