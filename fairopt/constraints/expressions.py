r"""An expression algebra over group rates, for writing custom constraints.

Rate references are built from the names of :mod:`fairopt.rates`::

    from fairopt import tpr, fpr, selection_rate
    tpr(1) - tpr(0) <= 0.05                   # one entry: TPR gap between group 1 and group 0
    abs(tpr.per_group() - tpr()) <= 0.05      # G entries: each group's TPR within 5 points of the overall TPR
    tpr.per_group().max() - tpr.per_group().min() <= 0.05
    selection_rate.per_group() >= 0.8 * selection_rate()      # p%-rule against the overall rate

``rate(g)`` is group ``g``'s rate (one entry), ``rate()`` the overall (pooled) rate, ``rate.per_group()`` a
vector with one entry per group. Arithmetic broadcasts one-entry expressions against vectors; ``.max()`` and
``.min()`` reduce a vector to one entry; ``maximum``/``minimum`` are elementwise; :func:`pairwise` forms
``a[i] - b[j]`` for every ordered pair ``i != j``. Comparing with ``<=``/``>=`` gives a
:class:`~fairopt.constraints.base.Constraint` ``g <= 0``.

**Evaluation** (:mod:`fairopt.constraints.evaluation`). An expression evaluates a :class:`~fairopt.stats.GroupStats`
table to :class:`Bounds`: the hard value, differentiable proxy ``upper``/``lower`` bounds, and a ``defined`` mask, all
``(m,)``. Bounds are
propagated by interval arithmetic (a rate entering with a minus sign contributes its ``lower`` proxy to the upper
bound; ``abs``, ``max`` and ``min`` take the branch or entry that is active for the *true* values and keep its
bounds), so for an upper-bounding proxy (hinge, softplus) the upper bound of a linear, ``abs``, ``max`` or ``min``
expression is >= its hard value: the relaxation used by the primal player is conservative (Cotter et al., JMLR
2019, Section 5), and its gradient acts on the side of the constraint that is actually binding.

**Undefined entries.** An entry that uses an undefined rate (zero denominator) is undefined. ``max``/``min`` reduce
over the defined entries only and are undefined when fewer than ``min_defined`` are defined. By default that is 2
for a vector with one entry per group (or per pair of groups: any vector whose length depends on G), since such an
extremum compares groups, and over one group ``max_g r_g - min_g r_g`` would be 0 whatever the excluded groups do (a
gap that "looks satisfied" because the groups that could violate it were dropped); for a vector of fixed length
(e.g. ``concat(tpr_gap, fpr_gap).max()``) it is 1. Reports list the groups an entry excluded
(:class:`~fairopt.validation.EntryResult` ``excluded``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np
from torch import Tensor

from fairopt._deprecation import renamed_attribute as _renamed
from fairopt._validation import as_number
from fairopt.rates import canonical_rate_name
from fairopt.stats import GroupStats

if TYPE_CHECKING:
    from fairopt.constraints.base import Constraint

__all__ = [
    "Abs",
    "BinOp",
    "Bounds",
    "Concat",
    "Const",
    "Elementwise",
    "Expr",
    "ExprVisitor",
    "Guard",
    "Pairwise",
    "RateRef",
    "Reduce",
    "as_expr",
    "compares_groups",
    "concat",
    "entry_value_ranges",
    "maximum",
    "minimum",
    "pairwise",
    "value_range",
]

Number = int | float
T = TypeVar("T")


@dataclass(frozen=True)
class Bounds:
    """The value of an expression: ``(m,)`` tensors.

    Attributes:
        hard: the true value (no gradient).
        proxy_upper: differentiable proxy upper bound (used by the primal player).
        proxy_lower: differentiable proxy lower bound.
        defined: bool; False where a rate in the entry had a zero denominator.
    """

    hard: Tensor
    proxy_upper: Tensor
    proxy_lower: Tensor
    defined: Tensor

    @property
    def upper(self) -> Tensor:
        """Deprecated name of :attr:`proxy_upper` (``lower``/``upper`` name interval ends; see the glossary)."""
        return _renamed(self, "upper", "proxy_upper")

    @property
    def lower(self) -> Tensor:
        """Deprecated name of :attr:`proxy_lower`."""
        return _renamed(self, "lower", "proxy_lower")


class Expr:
    """Base class of rate expressions; subclasses implement ``size`` and ``entry_names`` (evaluation:
    :mod:`fairopt.constraints.evaluation`)."""

    def evaluate(self, stats: GroupStats) -> Bounds:
        """Evaluate on a ``(G, K)`` table (:func:`fairopt.constraints.evaluation.evaluate_expr`). Undefined entries
        hold 0 with zero gradient."""
        return _linked("evaluate_expr")(self, stats)

    def accept(self, visitor: ExprVisitor[T]) -> T:
        """``visitor.visit_<node>(self)``: the one way every walker (the evaluator, the interval forms, ...) reads a
        node. A subclass of a node type is read as that type; another :class:`Expr` subclass goes to
        :meth:`ExprVisitor.visit_unknown`."""
        return visitor.visit_unknown(self)

    def size(self, num_groups: int) -> int:
        """Number of entries m for a table with ``num_groups`` rows."""
        raise NotImplementedError

    def render(self, group_names: Sequence[str] | None = None) -> str:
        """``str(self)`` with group names in place of ids (``tpr[sex=F] - tpr[sex=M]``); ids without names."""
        token = _GROUP_NAMES.set(None if group_names is None else tuple(group_names))
        try:
            return str(self)
        finally:
            _GROUP_NAMES.reset(token)

    def entry_names(self, group_names: Sequence[str]) -> list[str]:
        """A readable name for each entry, e.g. ``"tpr[sex=F] - tpr[overall]"``."""
        raise NotImplementedError

    def max_group(self) -> int:
        """The largest explicit group id referenced (-1 if none), to validate against G."""
        return max((c.max_group() for c in self._children()), default=-1)

    def rate_names(self) -> frozenset[str]:
        """The canonical names of the rates the expression reads (e.g. to tell error-based constraints apart)."""
        return frozenset().union(*(c.rate_names() for c in self._children()))

    def _children(self) -> tuple[Expr, ...]:
        return ()

    # arithmetic ---------------------------------------------------------------------------------------------
    def __add__(self, other: Expr | Number) -> Expr:
        return BinOp("+", self, as_expr(other))

    def __radd__(self, other: Number) -> Expr:
        return BinOp("+", as_expr(other), self)

    def __sub__(self, other: Expr | Number) -> Expr:
        return BinOp("-", self, as_expr(other))

    def __rsub__(self, other: Number) -> Expr:
        return BinOp("-", as_expr(other), self)

    def __mul__(self, other: Expr | Number) -> Expr:
        return BinOp("*", self, as_expr(other))

    def __rmul__(self, other: Number) -> Expr:
        return BinOp("*", as_expr(other), self)

    def __truediv__(self, other: Expr | Number) -> Expr:
        return BinOp("/", self, as_expr(other))

    def __rtruediv__(self, other: Number) -> Expr:
        return BinOp("/", as_expr(other), self)

    def __neg__(self) -> Expr:
        return BinOp("-", Const(0.0), self)

    def __abs__(self) -> Expr:
        return Abs(self)

    def max(self, *, min_defined: int | None = None) -> Expr:
        """Largest defined entry (one entry); undefined when fewer than ``min_defined`` entries are defined.

        The default (None) is 2 when the vector's length depends on the number of groups (``rate.per_group()``,
        ``pairwise``...), so that a gap ``r.max() - r.min()`` over one remaining group is undefined instead of 0,
        and 1 for a vector of fixed length. Pass ``min_defined=1`` for "the largest of whatever is defined" (e.g. a
        ceiling on the worst group).

        Raises:
            ValueError: ``min_defined`` < 1.
        """
        return Reduce("max", self, min_defined)

    def min(self, *, min_defined: int | None = None) -> Expr:
        """Smallest defined entry (one entry); undefined when fewer than ``min_defined`` entries are defined
        (see :meth:`max`)."""
        return Reduce("min", self, min_defined)

    # comparisons give constraints ---------------------------------------------------------------------------
    def __le__(self, other: Expr | Number) -> Constraint:  # type: ignore[override]
        Constraint = _linked("Constraint")
        if (number := as_number(other)) is not None:
            return Constraint(self, tolerance=number, describe=(self, "<=", number))
        return Constraint(self - as_expr(other), describe=(self, "<=", as_expr(other)))

    def __ge__(self, other: Expr | Number) -> Constraint:  # type: ignore[override]
        Constraint = _linked("Constraint")
        other_expr = as_expr(other)
        number = as_number(other)
        return Constraint(other_expr - self, describe=(self, ">=", other_expr if number is None else number))

    __hash__ = object.__hash__


# This module is the bottom of the constraints package and imports nothing above it: the classes that build on
# expressions link themselves in when they load (fairopt.constraints imports them all), so comparisons can return a
# Constraint and Expr.evaluate can reach the evaluator without an import circle.
_LINKS: dict[str, Any] = {}


def link(name: str, value: Any) -> None:
    """Register ``Constraint`` or ``evaluate_expr`` for the expression methods that return or call them."""
    _LINKS[name] = value


def _linked(name: str) -> Any:
    try:
        return _LINKS[name]
    except KeyError:
        raise ImportError(f"{name} is not linked yet: import fairopt.constraints (it loads every part)") from None


class ExprVisitor(Generic[T]):
    """The extension protocol of expression trees: one method per node type, reached by ``node.accept(visitor)``
    (:meth:`visit`). A walker over expressions (the NumPy evaluator of :mod:`fairopt.constraints.evaluation`, the
    normal forms of :mod:`fairopt.validation.estimate.forms`, a device-side evaluator) subclasses this and
    implements every ``visit_*``; a new node type adds one ``accept`` and one ``visit_*`` here, so a walker that
    lacks it fails with a clear ``NotImplementedError`` instead of misreading the node.

    Node types: :class:`Const`, :class:`RateRef` (a rate of a group, pooled groups, every group or overall),
    :class:`BinOp` (``+ - * /``), :class:`Abs`, :class:`Reduce` (``max``/``min`` over a vector, with its
    :meth:`Reduce.needed` defined entries), :class:`Guard` (:func:`compares_groups`), :class:`Elementwise`
    (``maximum``/``minimum``), :class:`Pairwise` and :class:`Concat`.
    """

    def visit(self, node: Expr) -> T:
        return node.accept(self)

    def visit_const(self, node: Const) -> T:
        raise NotImplementedError(f"{type(self).__name__} does not read {type(node).__name__} nodes")

    visit_rate = visit_binop = visit_abs = visit_reduce = visit_guard = visit_const  # type: ignore[assignment]
    visit_elementwise = visit_pairwise = visit_concat = visit_const  # type: ignore[assignment]

    def visit_unknown(self, node: Expr) -> T:
        """A node that is none of the types above (default: ``TypeError``)."""
        raise TypeError(
            f"cannot evaluate expression type {type(node).__name__}: build expressions from rates, numbers and the "
            "operators of fairopt.constraints.expressions (or implement accept() and an ExprVisitor method), or use "
            "a FunctionConstraint"
        )


def as_expr(value: Expr | Number) -> Expr:
    """Wrap a number (:func:`fairopt._validation.as_number`: a Python or NumPy one, a 0-d tensor) as a constant
    expression; pass expressions through."""
    if isinstance(value, Expr):
        return value
    if (number := as_number(value)) is not None:
        return Const(number)
    raise TypeError(f"expected a rate expression or a number, got {type(value).__name__}")


class Const(Expr):
    """A constant (one entry, always defined)."""

    def accept(self, visitor: ExprVisitor[T]) -> T:
        return visitor.visit_const(self)

    def __init__(self, value: float) -> None:
        self.value = float(value)

    def size(self, num_groups: int) -> int:
        return 1

    def entry_names(self, group_names: Sequence[str]) -> list[str]:
        return [f"{self.value:g}"]

    def __str__(self) -> str:
        return f"{self.value:g}"


_SHORT = {
    "selection_rate": "selection_rate",
    "true_positive_rate": "tpr",
    "false_positive_rate": "fpr",
    "true_negative_rate": "tnr",
    "false_negative_rate": "fnr",
    "error_rate": "error_rate",
    "accuracy": "accuracy",
    "precision": "precision",
    "negative_predictive_value": "npv",
    "base_rate": "base_rate",
    "mean_loss": "mean_loss",
}

PER_GROUP = "per_group"
# The group names that str() of a rate reference shows while Expr.render runs (None: ids).
_GROUP_NAMES: ContextVar[tuple[str, ...] | None] = ContextVar("fairopt_group_names", default=None)


class RateRef(Expr):
    """A reference to one rate.

    ``RateRef("tpr")(g)`` is group ``g``'s rate, ``(g1, g2, ...)`` the rate of those groups pooled (e.g. a
    marginal group such as "race=Black" out of intersectional ``sex x race`` ids: counts are summed, then the ratio
    is taken), ``()`` the overall rate, ``.per_group()`` every group. The module-level objects ``fairopt.tpr`` etc.
    are references to the overall rate that can also be called.

    Raises:
        ValueError: a negative or non-integer group id (a group *name* included: use ``Groups.id(name)``), or an empty
            tuple of ids.
    """

    def accept(self, visitor: ExprVisitor[T]) -> T:
        return visitor.visit_rate(self)

    def __init__(self, rate: str, group: int | tuple[int, ...] | None = None) -> None:
        self.rate = canonical_rate_name(rate)
        if isinstance(group, (list, tuple)):
            group = tuple(group)
            if not group:
                raise ValueError("a pooled group needs at least one group id")
            if len(set(group)) != len(group):
                raise ValueError(f"a pooled group lists an id twice (it would be counted twice): {group}")
            for g in group:
                _check_group_id(g)
        elif group not in (None, PER_GROUP):
            _check_group_id(group)
        self.group = group

    def __call__(self, group: int | tuple[int, ...] | list[int] | None = None) -> RateRef:
        return RateRef(self.rate, group)

    def per_group(self) -> RateRef:
        """This rate for every group (``G`` entries)."""
        return RateRef(self.rate, PER_GROUP)

    def size(self, num_groups: int) -> int:
        return num_groups if self.group == PER_GROUP else 1

    def entry_names(self, group_names: Sequence[str]) -> list[str]:
        short = _SHORT[self.rate]
        if self.group is None:
            return [f"{short}[overall]"]
        if self.group == PER_GROUP:
            return [f"{short}[{n}]" for n in group_names]
        ids = self.group if isinstance(self.group, tuple) else (self.group,)
        names = [group_names[g] if g < len(group_names) else str(g) for g in ids]  # type: ignore[operator]
        return [f"{short}[{_pooled(names)}]"]

    def max_group(self) -> int:
        if isinstance(self.group, tuple):
            return max(self.group)
        return self.group if isinstance(self.group, int) else -1

    def rate_names(self) -> frozenset[str]:
        return frozenset((self.rate,))

    def __str__(self) -> str:
        short, names = _SHORT[self.rate], _GROUP_NAMES.get()

        def shown(g: int) -> str:
            return names[g] if names is not None and g < len(names) else str(g)

        if isinstance(self.group, tuple):
            return f"{short}[{_pooled(map(shown, self.group))}]"
        if isinstance(self.group, int):
            return f"{short}[{shown(self.group)}]"
        return f"{short}[overall]" if self.group is None else f"{short}[g]"


def _pooled(names: Iterable[str]) -> str:
    """The groups a rate is over: one as itself, several (pooled) as their set, ``tpr[{0, 2}]`` (``0 + 2`` would
    read as group 2)."""
    shown = list(names)
    return shown[0] if len(shown) == 1 else "{" + ", ".join(shown) + "}"


_LEGACY_POOLED = re.compile(r"\[([^\[\]{}]+?(?: \+ [^\[\]{}]+?)+)\]")


def upgrade_pooled_names(name: str) -> str:
    """A name written before pooled groups were shown as a set (``tpr[0 + 2]``, up to 2026-12) in today's form,
    ``tpr[{0, 2}]``; other names unchanged. For comparing names stored in checkpoints with today's."""
    return _LEGACY_POOLED.sub(lambda m: f"[{_pooled(m.group(1).split(' + '))}]", name)


def _check_group_id(group: object) -> None:
    if isinstance(group, str):
        raise ValueError(
            f"rates take group ids, not names ({group!r}): pass the id of the fairopt.Groups that encoded the data, "
            f"e.g. tpr(groups.id({group!r})) (entry names in reports then show the group names)"
        )
    if isinstance(group, bool) or not isinstance(group, int) or group < 0:
        raise ValueError(f"group must be a non-negative int id, a tuple of ids, or None for overall; got {group!r}")


def broadcast_sizes(a: int, b: int, what: str) -> int:
    if a == b or b == 1:
        return a
    if a == 1:
        return b
    raise ValueError(f"cannot combine expressions with {a} and {b} entries in {what}; use .max()/.min() or pairwise()")


def _broadcast_names(na: list[str], nb: list[str]) -> tuple[list[str], list[str]]:
    m = max(len(na), len(nb))
    return (na * m if len(na) == 1 else na), (nb * m if len(nb) == 1 else nb)


class BinOp(Expr):
    def accept(self, visitor: ExprVisitor[T]) -> T:
        return visitor.visit_binop(self)

    def __init__(self, op: str, a: Expr, b: Expr) -> None:
        self.op, self.a, self.b = op, a, b

    def _children(self) -> tuple[Expr, ...]:
        return (self.a, self.b)

    def size(self, num_groups: int) -> int:
        return broadcast_sizes(self.a.size(num_groups), self.b.size(num_groups), str(self))

    def entry_names(self, group_names: Sequence[str]) -> list[str]:
        na, nb = _broadcast_names(self.a.entry_names(group_names), self.b.entry_names(group_names))
        if isinstance(self.a, Const) and self.a.value == 0.0 and self.op == "-":
            return [f"-({y})" for y in nb]
        return [f"{_paren(x, self.a)} {self.op} {_paren(y, self.b, right=True)}" for x, y in zip(na, nb)]

    def __str__(self) -> str:
        if isinstance(self.a, Const) and self.a.value == 0.0 and self.op == "-":
            return f"-({self.b})"
        return f"{_paren(str(self.a), self.a)} {self.op} {_paren(str(self.b), self.b, right=True)}"


def _paren(text: str, node: Expr, right: bool = False) -> str:
    return f"({text})" if isinstance(node, BinOp) and (right or node.op in "+-") and not text.startswith("-(") else text


class Abs(Expr):
    def accept(self, visitor: ExprVisitor[T]) -> T:
        return visitor.visit_abs(self)

    def __init__(self, a: Expr) -> None:
        self.a = a

    def _children(self) -> tuple[Expr, ...]:
        return (self.a,)

    def size(self, num_groups: int) -> int:
        return self.a.size(num_groups)

    def entry_names(self, group_names: Sequence[str]) -> list[str]:
        return [f"|{n}|" for n in self.a.entry_names(group_names)]

    def __str__(self) -> str:
        return f"|{self.a}|"


class Reduce(Expr):
    def accept(self, visitor: ExprVisitor[T]) -> T:
        return visitor.visit_reduce(self)

    def __init__(self, how: str, a: Expr, min_defined: int | None = None) -> None:
        if min_defined is not None and (
            isinstance(min_defined, bool) or not isinstance(min_defined, int) or min_defined < 1
        ):
            raise ValueError(f"min_defined must be an int >= 1 (defined entries needed) or None, got {min_defined!r}")
        self.how, self.a, self.min_defined = how, a, min_defined

    def needed(self) -> int:
        """How many defined entries the reduction needs: ``min_defined``, or by default 2 for a vector whose length
        depends on the number of groups (it compares groups) and 1 for a vector of fixed length."""
        if self.min_defined is not None:
            return self.min_defined
        # a walk over the operand (~3 µs, twice per reduction and step): remembered for this operand
        cached = self.__dict__.get("_needed")
        if cached is None or cached[0] is not self.a:
            cached = self._needed = (self.a, 2 if self.a.size(2) != self.a.size(3) else 1)
        return cached[1]

    def _children(self) -> tuple[Expr, ...]:
        return (self.a,)

    def size(self, num_groups: int) -> int:
        return 1

    def entry_names(self, group_names: Sequence[str]) -> list[str]:
        return [str(self)]

    def __str__(self) -> str:
        return f"{self.how}_g {self.a}" if "[g]" in str(self.a) else f"{self.how}({self.a})"


class Guard(Expr):
    """The entries of ``a``, each defined only where at least ``count`` entries of ``reference`` are defined: a
    comparison of each group with the others (``|r_g - r|``) says nothing when fewer than two groups have the rate."""

    def accept(self, visitor: ExprVisitor[T]) -> T:
        return visitor.visit_guard(self)

    def __init__(self, a: Expr, reference: Expr, count: int = 2) -> None:
        self.a, self.reference, self.count = a, reference, int(count)

    def _children(self) -> tuple[Expr, ...]:
        return (self.a, self.reference)

    def size(self, num_groups: int) -> int:
        return self.a.size(num_groups)

    def entry_names(self, group_names: Sequence[str]) -> list[str]:
        return self.a.entry_names(group_names)

    def __str__(self) -> str:
        return str(self.a)


def compares_groups(a: Expr, reference: Expr, count: int = 2) -> Expr:
    """``a``, undefined wherever fewer than ``count`` entries of ``reference`` (e.g. ``rate.per_group()``) are
    defined; used by the ``vs_overall`` conventions, whose entries ``|r_g - r|`` are 0 when only one group has the
    rate (it then *is* the overall rate)."""
    return Guard(a, reference, count)


class Elementwise(Expr):
    def accept(self, visitor: ExprVisitor[T]) -> T:
        return visitor.visit_elementwise(self)

    def __init__(self, how: str, a: Expr, b: Expr) -> None:
        self.how, self.a, self.b = how, a, b

    def _children(self) -> tuple[Expr, ...]:
        return (self.a, self.b)

    def size(self, num_groups: int) -> int:
        return broadcast_sizes(self.a.size(num_groups), self.b.size(num_groups), str(self))

    def entry_names(self, group_names: Sequence[str]) -> list[str]:
        na, nb = _broadcast_names(self.a.entry_names(group_names), self.b.entry_names(group_names))
        return [f"{self.how}({x}, {y})" for x, y in zip(na, nb)]

    def __str__(self) -> str:
        return f"{self.how}({self.a}, {self.b})"


def maximum(a: Expr | Number, b: Expr | Number) -> Expr:
    """Elementwise maximum of two expressions (broadcasting one-entry expressions)."""
    return Elementwise("maximum", as_expr(a), as_expr(b))


def minimum(a: Expr | Number, b: Expr | Number) -> Expr:
    """Elementwise minimum of two expressions (broadcasting one-entry expressions)."""
    return Elementwise("minimum", as_expr(a), as_expr(b))


class Pairwise(Expr):
    def accept(self, visitor: ExprVisitor[T]) -> T:
        return visitor.visit_pairwise(self)

    def __init__(self, a: Expr, b: Expr, symmetric: bool) -> None:
        self.a, self.b, self.symmetric = a, b, symmetric

    def _children(self) -> tuple[Expr, ...]:
        return (self.a, self.b)

    def pairs(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Row indices ``(i, j)`` of the pairs, in entry order (row-major over ``i``)."""
        if self.symmetric:
            return np.triu_indices(n, k=1)
        return np.nonzero(~np.eye(n, dtype=bool))

    def size(self, num_groups: int) -> int:
        n = self.a.size(num_groups)
        return n * (n - 1) // (2 if self.symmetric else 1)

    def entry_names(self, group_names: Sequence[str]) -> list[str]:
        na, nb = self.a.entry_names(group_names), self.b.entry_names(group_names)
        i, j = self.pairs(len(na))
        return [
            f"{_paren(na[x], self.a)} - {_paren(nb[y], self.b, right=True)}" for x, y in zip(i.tolist(), j.tolist())
        ]

    def __str__(self) -> str:
        return f"pairwise({self.a}, {self.b})"


def pairwise(a: Expr, b: Expr | None = None, *, symmetric: bool = False) -> Expr:
    """``a[i] - b[j]`` for every ordered pair of entries ``i != j`` (``b`` defaults to ``a``).

    With ``symmetric=True`` only pairs ``i < j`` are formed (use with ``abs``).
    """
    return Pairwise(a, a if b is None else b, symmetric)


class Concat(Expr):
    def accept(self, visitor: ExprVisitor[T]) -> T:
        return visitor.visit_concat(self)

    def __init__(self, parts: Sequence[Expr]) -> None:
        if not parts:
            raise ValueError("concat() needs at least one expression")
        self.parts = tuple(parts)

    def _children(self) -> tuple[Expr, ...]:
        return self.parts

    def size(self, num_groups: int) -> int:
        return sum(p.size(num_groups) for p in self.parts)

    def entry_names(self, group_names: Sequence[str]) -> list[str]:
        return [n for p in self.parts for n in p.entry_names(group_names)]

    def __str__(self) -> str:
        return "[" + ", ".join(str(p) for p in self.parts) + "]"


def concat(*parts: Expr) -> Expr:
    """Stack the entries of several expressions into one vector."""
    return Concat(parts)


Interval = tuple[float, float]
_ANY: Interval = (-math.inf, math.inf)


class _ValueRange(ExprVisitor[Interval]):
    """:func:`value_range` by interval arithmetic, one interval per node (over all of its entries)."""

    def visit_const(self, node: Const) -> Interval:
        return node.value, node.value

    def visit_rate(self, node: RateRef) -> Interval:
        return _ANY if node.rate == "mean_loss" else (0.0, 1.0)  # a rate is a ratio of counts; a loss is any number

    def visit_binop(self, node: BinOp) -> Interval:
        (a_lo, a_hi), (b_lo, b_hi) = node.a.accept(self), node.b.accept(self)
        if node.op == "+":
            return a_lo + b_lo, a_hi + b_hi
        if node.op == "-":
            if (scale := _range_scale(node)) is not None and b_lo >= 0.0:
                # c * max(v) - min(v) of one vector, 0 <= c <= 1, v >= 0 (min(v)'s range is v's, [b_lo, b_hi]): at
                # least (c - 1) * max(v) >= (c - 1) * b_hi (0 for a plain range; p - 1 for the p%-rule's linear
                # form), where interval arithmetic says -b_hi
                return max((scale - 1.0) * b_hi, a_lo - b_hi), a_hi - b_lo
            return a_lo - b_hi, a_hi - b_lo
        if node.op == "/" and b_lo <= 0.0 <= b_hi:
            return _ANY
        # the corners as the evaluator computes them (a / b, not a * (1 / b): one rounding, the same one)
        ends = [a / b if node.op == "/" else a * b for a in (a_lo, a_hi) for b in (b_lo, b_hi)]
        return _ANY if any(map(math.isnan, ends)) else (min(ends), max(ends))  # NaN: 0 * inf, inf / inf

    def visit_abs(self, node: Abs) -> Interval:
        lo, hi = node.a.accept(self)
        top = max(abs(lo), abs(hi))
        return (0.0, top) if lo <= 0.0 <= hi else (min(abs(lo), abs(hi)), top)

    def visit_reduce(self, node: Reduce) -> Interval:
        return node.a.accept(self)

    def visit_guard(self, node: Guard) -> Interval:
        return node.a.accept(self)

    def visit_elementwise(self, node: Elementwise) -> Interval:
        (a_lo, a_hi), (b_lo, b_hi) = node.a.accept(self), node.b.accept(self)
        pick = max if node.how == "maximum" else min
        return pick(a_lo, b_lo), pick(a_hi, b_hi)

    def visit_pairwise(self, node: Pairwise) -> Interval:
        (a_lo, a_hi), (b_lo, b_hi) = node.a.accept(self), node.b.accept(self)
        return a_lo - b_hi, a_hi - b_lo

    def visit_concat(self, node: Concat) -> Interval:
        ranges = [p.accept(self) for p in node.parts]
        return min(lo for lo, _ in ranges), max(hi for _, hi in ranges)

    def visit_unknown(self, node: Expr) -> Interval:
        return _ANY


def _range_scale(node: BinOp) -> float | None:
    """``c`` when ``node`` is ``c * max(v) - min(v)`` (or ``max(v) - min(v)``: 1) of one vector object ``v``, with
    ``0 <= c <= 1``; else None (the caller checks that ``v >= 0``)."""
    a, b = node.a, node.b
    scale = 1.0
    if type(a) is BinOp and a.op == "*" and type(a.a) is Const:
        scale, a = a.a.value, a.b
    if not (
        type(a) is Reduce
        and type(b) is Reduce
        and a.how == "max"
        and b.how == "min"
        and a.a is b.a  # the same vector object (two that print alike may differ: a constant's :g, min_defined)
        and 0.0 <= scale <= 1.0
    ):
        return None
    return scale


def value_range(expr: Expr) -> Interval:
    """``(lowest, highest)``: bounds on every value that any entry of ``expr`` can take, on any table.

    Interval arithmetic over the tree: a rate is in ``[0, 1]``, a mean loss unbounded; ``r.max() - r.min()`` of one
    vector object is at least 0 (the built-in parity conventions), ``c * r.max() - r.min()`` (``0 <= c <= 1``, the
    p%-rule's linear form) at least ``c - 1``, ``|x|`` at least 0. The bounds hold (a quotient's corners are rounded
    as the evaluator rounds them) but need not be tight: e.g. ``r(1) - r(1)`` gives ``[-1, 1]``; ``(-inf, inf)`` for
    a node type this module does not define. Used to tell a target that no model can meet (``expr <= tolerance -
    margin`` below ``lowest``) from one that is merely hard: a loose bound only misses such a target.
    """
    return expr.accept(_ValueRange())


def entry_value_ranges(expr: Expr, num_groups: int) -> list[Interval]:
    """:func:`value_range` of each of the ``expr.size(num_groups)`` entries: the parts of a top-level
    :func:`concat` (nested ones too) each get their own bounds, any other node its one interval for all entries."""
    if type(expr) is Concat:
        return [r for part in expr.parts for r in entry_value_ranges(part, num_groups)]
    return [value_range(expr)] * expr.size(num_groups)
