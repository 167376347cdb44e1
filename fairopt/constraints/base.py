r"""A constraint maps a :class:`~fairopt.stats.GroupStats` table to a vector ``g`` with ``g <= 0`` wanted.

Each entry has a hard value (the true rate expression minus its tolerance: what is actually constrained and what
the dual player reads) and a differentiable proxy value (what the primal player descends on), following the
proxy-constraint formulation of Cotter et al., "Optimization with Non-Differentiable Constraints with
Applications to Fairness, Recall, Churn, and Other Goals", JMLR 20(172), 2019.

**Undefined entries.** An entry that needs a rate with a zero denominator (e.g. a TPR of a group with no positive
labels in the table) is *skipped*: ``defined`` is False, its hard and proxy values are 0 with zero gradient, so
it neither pushes the model nor moves a multiplier; reports list it as undefined. It is never NaN.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from fairopt._validation import require_number
from fairopt.constraints.evaluation import Linearization, host_table, linearize, value_tensors
from fairopt.constraints.expressions import Expr, link
from fairopt.rates import RateValue, compute_rate
from fairopt.stats import GroupStats

__all__ = ["Constraint", "ConstraintValue", "FunctionConstraint", "RateView"]


@dataclass(frozen=True)
class ConstraintValue:
    """Values of one constraint's ``m`` entries, ``g <= 0`` wanted.

    Attributes:
        hard: ``(m,)`` true values ``expr - tolerance`` (no gradient); > 0 means violated.
        proxy: ``(m,)`` differentiable surrogate of ``hard`` (for upper-bounding proxies, >= ``hard``).
        defined: ``(m,)`` bool; False entries are skipped (value 0, no gradient).
    """

    hard: Tensor
    proxy: Tensor
    defined: Tensor

    @property
    def violation(self) -> Tensor:
        """``(m,)`` ``max(0, hard)``: how far each entry is from satisfied (0 when undefined)."""
        return self.hard.clamp(min=0)

    def expression_values(self, tolerance: float) -> np.ndarray:
        """The expressions' values ``hard + tolerance`` (undoing the one place the tolerance is subtracted) as a
        float64 host array of the same shape, NaN where undefined: what reports show next to the bound. The one
        place the tolerance is added back; :meth:`Constraint.expression_values` calls it with the constraint's own
        tolerance, so callers that hold the constraint need not pass it."""
        hard = self.hard.detach().cpu().double().numpy()
        return np.where(self.defined.detach().cpu().numpy().astype(bool), hard + tolerance, np.nan)

    @property
    def max_violation(self) -> Tensor:
        """Scalar: the largest violation over defined entries (0 when all are satisfied or undefined)."""
        return self.violation.max() if self.hard.numel() else self.hard.new_zeros(())


class Constraint:
    r"""A vector constraint ``expr - tolerance <= 0`` over group rates.

    Built by comparing a rate expression (``tpr(1) - tpr(0) <= 0.05``), by the built-in classes
    (:class:`~fairopt.constraints.builtin.EqualizedOdds` ...), or directly.

    Args:
        expr: a rate expression (:mod:`fairopt.constraints.expressions`).
        tolerance: the bound, in the units of ``expr`` (rate units, e.g. 0.05 = 5 percentage points).
        name: readable name, default ``str(expr) <= tolerance``.

    Raises:
        TypeError: if ``expr`` is not an expression. ValueError: if ``tolerance`` is not finite.
    """

    def __init__(
        self,
        expr: Expr,
        tolerance: float = 0.0,
        name: str | None = None,
        *,
        describe: tuple[Expr, str, Expr | float] | None = None,
    ) -> None:
        if not isinstance(expr, Expr):
            raise TypeError(f"expr must be a fairopt rate expression, got {type(expr).__name__}")
        tolerance = require_number("tolerance", tolerance, "the bound, in the units of the expression")
        self.expr, self.tolerance = expr, tolerance
        # (left, "<=" or ">=", right) as the comparison was written, to render it with group names (label)
        self._describe = None if name is not None else (describe or (expr, "<=", tolerance))
        self.name = name if name is not None else self.label()

    def label(self, group_names: Sequence[str] | None = None) -> str:
        """The name, with group names in place of ids (``tpr[sex=F] - tpr[sex=M] <= 0.05``) for a constraint named
        after its comparison; a given name (a built-in's holds no ids) as it is."""
        describe = getattr(self, "_describe", None)  # subclasses need not call this __init__
        if describe is None:
            return self.name
        left, op, right = describe
        shown = f"{right:g}" if isinstance(right, float) else right.render(group_names)
        return f"{left.render(group_names)} {op} {shown}"

    def __bool__(self) -> bool:
        # Python runs `lo <= expr <= hi` as `(lo <= expr) and (expr <= hi)`: with a truthy constraint the `and`
        # returns the second one alone, and the lower bound is lost without a word. Refused, as a tensor's is.
        name = getattr(self, "name", type(self).__name__)  # (a subclass need not call __init__)
        raise TypeError(
            f"a constraint has no truth value ({name}): a chained comparison `lo <= expr <= hi` would keep only its "
            "last part; write the two bounds as two constraints, [expr >= lo, expr <= hi], and test an optional "
            "constraint with `is not None`"
        )

    expression_based: ClassVar[bool] = True
    """Whether the constraint's values are its expression's (so :meth:`linearize`, the interval forms and the rate
    list read the expression), or come from its own :meth:`evaluate` (:class:`FunctionConstraint`: False). A subclass
    that overrides ``evaluate`` without saying is declared False when the class is made."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "evaluate" in cls.__dict__ and "expression_based" not in cls.__dict__:
            cls.expression_based = False  # its own evaluate decides its values: never read around it

    @property
    def linearizable(self) -> bool:
        """True when :meth:`linearize` gives this constraint's values (:attr:`expression_based`); otherwise the
        optimizer and the bootstrap call :meth:`evaluate`."""
        return self.expression_based

    def evaluate(self, stats: GroupStats) -> ConstraintValue:
        """Evaluate every entry on a ``(G, K)`` table (one batch, a running table, or a held-out table).

        The proxy values are differentiable w.r.t. ``stats.table`` (first order; see
        :mod:`fairopt.constraints.evaluation`)."""
        lin = self.linearize(host_table(stats), gradients=stats.table.requires_grad)
        return ConstraintValue(*value_tensors(lin, stats.table))

    def linearize(self, table: np.ndarray, *, gradients: bool = True) -> Linearization:
        """Entries ``expr - tolerance`` at a ``(G, K)`` float64 table, with the VJP of their proxy bounds
        (:func:`fairopt.constraints.evaluation.linearize`). With ``gradients=False``, ``table`` may also be a
        ``(B, G, K)`` stack (values ``(B, m)``, e.g. for bootstrap resamples).

        Raises:
            ValueError: the expression refers to a group ``>= G``.
        """
        # offset= is .shifted(tolerance) in one operation on the stacked values (this runs twice a training step)
        return linearize(self.expr, table, gradients=gradients, offset=self.tolerance)

    def expression_values(self, values: GroupStats | ConstraintValue) -> np.ndarray:
        """The value of each entry's expression, ``g + tolerance`` (a gap, a ratio, a rate): what reports compare with
        the bound :attr:`tolerance`, the tolerance being this constraint's own (subtracted in one place, added back
        here: :meth:`ConstraintValue.expression_values`).

        Args:
            values: a ``(G, K)`` :class:`~fairopt.GroupStats` table (evaluated here with :meth:`evaluate`), or this
                constraint's :class:`ConstraintValue` (hard values ``(m,)``, or ``(B, m)`` for a stack of tables).

        Returns:
            float64 host array of the hard values' shape, NaN where an entry is undefined.

        Raises:
            TypeError: ``values`` is neither a table nor a :class:`ConstraintValue`.
        """
        if isinstance(values, GroupStats):
            values = self.evaluate(values)
        if not isinstance(values, ConstraintValue):
            raise TypeError(
                f"expression_values takes a GroupStats table or this constraint's ConstraintValue, got "
                f"{type(values).__name__}"
            )
        return values.expression_values(self.tolerance)

    def num_entries(self, num_groups: int) -> int:
        """m, the number of entries for G = ``num_groups`` groups."""
        return self.expr.size(num_groups)

    def rate_names(self) -> frozenset[str] | None:
        """Canonical names of the rates the constraint reads (``None`` when unknown, e.g. a FunctionConstraint)."""
        return self.expr.rate_names()

    def entry_names(self, group_names: Sequence[str] | int) -> list[str]:
        """A readable name for each entry; ``group_names`` may be G (ids are used as names)."""
        names = [str(i) for i in range(group_names)] if isinstance(group_names, int) else list(group_names)
        return self.expr.entry_names(names)

    def check_num_groups(self, num_groups: int) -> None:
        """Raise ValueError if the constraint refers to a group id ``>= num_groups``."""
        top = self.expr.max_group()
        if top >= num_groups:
            raise ValueError(
                f"constraint {self.name!r} refers to group {top}, but there are only {num_groups} groups "
                f"(ids 0..{num_groups - 1}); fix the group id or num_groups"
            )

    def __repr__(self) -> str:
        if self.name.startswith(f"{type(self).__name__}("):  # a built-in's name is already its constructor call
            return self.name
        return f"{type(self).__name__}({self.name!r})"


class RateView:
    """Rates of a table in one mode (``"hard"`` or ``"proxy"``), for :class:`FunctionConstraint` functions.

    ``view.rate("tpr")`` (or ``view.tpr``) is a ``(G,)`` tensor, NaN where undefined (zero denominator; see
    ``view.defined("tpr")``), so any entry computed from an undefined rate is NaN and then skipped by
    :class:`FunctionConstraint`; ``view.overall("tpr")`` is a ``(1,)`` tensor.
    """

    def __init__(self, stats: GroupStats, proxy: bool) -> None:
        self.stats, self.proxy = stats, proxy
        self._cache: dict[tuple[str, bool], RateValue] = {}

    def _rv(self, name: str, overall: bool) -> RateValue:
        key = (name, overall)
        if key not in self._cache:
            self._cache[key] = compute_rate(self.stats.overall() if overall else self.stats, name)
        return self._cache[key]

    def _pick(self, rv: RateValue) -> Tensor:
        value = rv.proxy_upper if self.proxy else rv.value
        return torch.where(rv.defined, value, torch.full_like(value, float("nan")))

    def rate(self, name: str) -> Tensor:
        return self._pick(self._rv(name, False))

    def overall(self, name: str) -> Tensor:
        return self._pick(self._rv(name, True))

    def defined(self, name: str) -> Tensor:
        return self._rv(name, False).defined

    def __getattr__(self, name: str) -> Tensor:
        if name.startswith("_"):
            raise AttributeError(name)
        return self.rate(name)


class FunctionConstraint(Constraint):
    """Escape hatch: any function of the table, ``fn(view) -> (m,) tensor`` with ``g <= tolerance`` wanted.

    ``fn`` is called twice per evaluation, with a hard :class:`RateView` and with a proxy one (proxy rates use the
    ``upper`` bound of :mod:`fairopt.rates`). Undefined rates are NaN in the view; entries that come out
    non-finite are undefined (skipped), and ``fn`` may also return ``(values, defined)``.

    Raises:
        ValueError: at evaluation, when ``fn`` returns another number of entries than ``num_entries``.

    Args:
        fn: the function. num_entries: m (an int, or a callable of G). tolerance, name: as :class:`Constraint`.
        names: optional entry names (a list, or a callable of the group names).
    """

    expression_based = False

    def __init__(
        self,
        fn: Callable[[RateView], Tensor | tuple[Tensor, Tensor]],
        num_entries: int | Callable[[int], int],
        tolerance: float = 0.0,
        name: str | None = None,
        names: Sequence[str] | Callable[[Sequence[str]], list[str]] | None = None,
    ) -> None:
        self.fn, self._num_entries, self._names = fn, num_entries, names
        self.tolerance = require_number("tolerance", tolerance, "the bound, in the units of fn's values")
        self.name = name or getattr(fn, "__name__", "custom")

    def _call(self, stats: GroupStats, proxy: bool) -> tuple[Tensor, Tensor]:
        out = self.fn(RateView(stats, proxy))
        values, defined = out if isinstance(out, tuple) else (out, None)
        values = torch.as_tensor(values, device=stats.device).reshape(-1)
        finite = torch.isfinite(values)
        defined = finite if defined is None else defined.reshape(-1).to(torch.bool) & finite
        return torch.where(defined, values, torch.zeros_like(values)), defined

    def evaluate(self, stats: GroupStats) -> ConstraintValue:
        hard, defined = self._call(stats, proxy=False)
        proxy, proxy_defined = self._call(stats, proxy=True)
        expected = self.num_entries(stats.num_groups)
        if hard.numel() != expected or proxy.numel() != expected:
            raise ValueError(
                f"{self.name}: fn returned {hard.numel()} hard and {proxy.numel()} proxy entries for G = "
                f"{stats.num_groups}, but num_entries says {expected}; fix fn or pass num_entries=lambda G: ..."
            )
        zero = torch.zeros_like(hard)
        defined = defined & proxy_defined
        return ConstraintValue(
            torch.where(defined, hard - self.tolerance, zero).detach(),
            torch.where(defined, proxy - self.tolerance, zero),
            defined,
        )

    def num_entries(self, num_groups: int) -> int:
        return self._num_entries(num_groups) if callable(self._num_entries) else int(self._num_entries)

    def entry_names(self, group_names: Sequence[str] | int) -> list[str]:
        names = [str(i) for i in range(group_names)] if isinstance(group_names, int) else list(group_names)
        if callable(self._names):
            return list(self._names(names))
        if self._names is not None:
            return list(self._names)
        return [f"{self.name}[{i}]" for i in range(self.num_entries(len(names)))]

    def linearize(self, table: np.ndarray, *, gradients: bool = True) -> Linearization:
        raise TypeError(f"{self.name!r} is a FunctionConstraint: evaluate it on a GroupStats table instead")

    def check_num_groups(self, num_groups: int) -> None:
        return None

    def rate_names(self) -> frozenset[str] | None:
        return None


link("Constraint", Constraint)
