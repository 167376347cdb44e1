r"""Normal forms of constraint entries, so that each entry can get an analytic confidence interval.

Every entry of the built-in constraints, and of most hand-written rate expressions, is one of

* a **linear form** ``c_0 + Σ_k c_k r_k`` over group rates ``r_k = rate[group]`` (an overall or pooled rate is
  expanded into group rates, ``r = Σ_g (n_g / n) r_g`` with ``n_g`` the rate's denominator count in group ``g``; the
  complementary rates are rewritten as ``fnr = 1 - tpr``, ``tnr = 1 - fpr``, ``accuracy = 1 - error_rate``);
* an **extremum** ``max_i L_i`` or ``min_i L_i`` over linear forms, which covers ``|L| = max(L, -L)``,
  ``max_g r_g - min_g r_g = max_{a,b} (r_a - r_b)``, ``p · max r - min r = max_{a,b} (p r_a - r_b)`` and
  ``max`` over a vector, over the *defined* items, as :mod:`fairopt.constraints.expressions` does (a reduction with
  fewer than ``min_defined`` defined entries is undefined: :attr:`Extremum.enough`).

:func:`extract_forms` walks a constraint's expression tree and returns one form per entry, or ``None`` when an
expression is outside this class (products or quotients of rates, ``max(A) + min(B)``, elementwise
``maximum``/``minimum``, unknown nodes); callers then use the bootstrap of :mod:`fairopt.validation.estimate.bootstrap`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from fairopt.constraints.expressions import (
    Abs,
    BinOp,
    Concat,
    Const,
    Elementwise,
    Expr,
    ExprVisitor,
    Guard,
    Pairwise,
    RateRef,
    Reduce,
)
from fairopt.rates import compute_rate
from fairopt.stats import GroupStats

__all__ = ["COMPLEMENTS", "Extremum", "Form", "Linear", "RateLookup", "extract_forms"]

Key = tuple[str, int]  # (canonical rate name, group id)

COMPLEMENTS: dict[str, str] = {
    "false_negative_rate": "true_positive_rate",
    "true_negative_rate": "false_positive_rate",
    "accuracy": "error_rate",
}


class RateLookup:
    """Hard rate values, defined-masks and denominators of a table, computed once per rate (host numpy)."""

    def __init__(self, stats: GroupStats) -> None:
        self.stats = stats
        self._cache: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def __call__(self, rate: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(value, defined, denominator)``, each ``(G,)``."""
        if rate not in self._cache:
            rv = compute_rate(self.stats, rate)
            self._cache[rate] = (
                rv.value.detach().cpu().double().numpy(),
                rv.defined.detach().cpu().numpy().astype(bool),
                rv.denominator.detach().cpu().double().numpy(),
            )
        return self._cache[rate]


@dataclass(frozen=True)
class Linear:
    """``const + Σ coef · rate[group]``; ``defined`` is False when a rate it uses has a zero denominator.

    ``groups`` are the group ids whose data the value depends on. ``pooled = (rate, c, ids)`` when the form is
    ``a + c · rate[ids pooled]`` (the overall rate, or a pooled group such as ``tpr((0, 1))``): one pooled
    proportion, whose own interval is then used.
    """

    const: float
    terms: tuple[tuple[Key, float], ...]
    defined: bool
    groups: frozenset[int]
    pooled: tuple[str, float, tuple[int, ...]] | None = None

    def value(self, lookup: RateLookup) -> float:
        if not self.defined:
            return float("nan")
        return self.const + sum(c * float(lookup(rate)[0][g]) for (rate, g), c in self.terms)

    def scaled(self, factor: float) -> Linear:
        terms = tuple((k, c * factor) for k, c in self.terms if c * factor != 0.0)
        pooled = (self.pooled[0], self.pooled[1] * factor, self.pooled[2]) if self.pooled and terms else None
        return Linear(self.const * factor, terms, self.defined, self.groups, pooled)

    def plus(self, other: Linear) -> Linear:
        coefs = dict(self.terms)
        for k, c in other.terms:
            coefs[k] = coefs.get(k, 0.0) + c
        terms = tuple(sorted((k, c) for k, c in coefs.items() if c != 0.0))
        # Still one pooled rate only when the other side adds a constant.
        pooled = self.pooled if not other.terms else (other.pooled if not self.terms else None)
        return Linear(
            self.const + other.const, terms, self.defined and other.defined, self.groups | other.groups, pooled
        )

    def sign_free_key(self) -> tuple[tuple[Key, float], ...]:
        """The terms up to an overall sign (and without the constant): equal keys are the same random quantity."""
        if not self.terms:
            return ()
        sign = 1.0 if self.terms[0][1] > 0 else -1.0
        return tuple((k, c * sign) for k, c in self.terms)


@dataclass(frozen=True)
class Extremum:
    """``max`` (or ``min``) over the defined items; defined when any item is and every reduction it came from had
    enough defined entries (``enough``: ``.max(min_defined=)`` of the expression; ``abs`` always has)."""

    how: str
    items: tuple[Linear, ...]
    enough: bool = True

    @property
    def defined(self) -> bool:
        return self.enough and any(item.defined for item in self.items)

    @property
    def groups(self) -> frozenset[int]:
        return frozenset().union(*(item.groups for item in self.items))

    def value(self, lookup: RateLookup) -> float:
        values = [item.value(lookup) for item in self.items if item.defined]
        if not values or not self.enough:
            return float("nan")
        return max(values) if self.how == "max" else min(values)


Form = Linear | Extremum


def _rate_term(rate: str, group: int, lookup: RateLookup) -> Linear:
    _, defined, _ = lookup(rate)
    base = COMPLEMENTS.get(rate)
    if base is None:
        return Linear(0.0, (((rate, group), 1.0),), bool(defined[group]), frozenset((group,)))
    return Linear(1.0, (((base, group), -1.0),), bool(defined[group]), frozenset((group,)))


def _pooled_term(rate: str, ids: tuple[int, ...], lookup: RateLookup) -> Linear:
    """The rate of the groups ``ids`` pooled, ``Σ_g (n_g / n) r_g`` over those with ``n_g > 0``."""
    _, defined, denominator = lookup(rate)
    total = float(sum(denominator[g] for g in ids))
    if total <= 0:
        return Linear(0.0, (), False, frozenset(ids))
    out = Linear(0.0, (), True, frozenset())
    for g in ids:
        if defined[g]:
            out = out.plus(_rate_term(rate, g, lookup).scaled(float(denominator[g]) / total))
    return replace(out, pooled=(rate, 1.0, ids)) if out.terms else out


def _scale(form: Form, factor: float) -> Form:
    if isinstance(form, Linear):
        return form.scaled(factor)
    how = form.how if factor >= 0 else {"max": "min", "min": "max"}[form.how]
    return Extremum(how, tuple(item.scaled(factor) for item in form.items), form.enough)


def _add(a: Form, b: Form) -> Form | None:
    if isinstance(a, Linear) and isinstance(b, Linear):
        return a.plus(b)
    if isinstance(a, Linear):
        a, b = b, a
    assert isinstance(a, Extremum)
    if isinstance(b, Linear):
        return Extremum(a.how, tuple(item.plus(b) for item in a.items), a.enough)
    if a.how != b.how:  # max(A) + min(B) is not an extremum of linear forms
        return None
    return Extremum(a.how, tuple(x.plus(y) for x in a.items for y in b.items), a.enough and b.enough)


def _constant(form: Form) -> float | None:
    if isinstance(form, Linear) and not form.terms and form.defined:
        return form.const
    return None


def _broadcast(a: list[Form], b: list[Form]) -> list[tuple[Form, Form]] | None:
    if len(a) == len(b):
        return list(zip(a, b))
    if len(a) == 1:
        return [(a[0], y) for y in b]
    if len(b) == 1:
        return [(x, b[0]) for x in a]
    return None


def _binop(op: str, a: list[Form], b: list[Form]) -> list[Form] | None:
    pairs = _broadcast(a, b)
    if pairs is None:
        return None
    out: list[Form] = []
    for x, y in pairs:
        if op in "+-":
            z = _add(x, y if op == "+" else _scale(y, -1.0))
        elif op == "*":
            cx, cy = _constant(x), _constant(y)
            z = _scale(y, cx) if cx is not None else (_scale(x, cy) if cy is not None else None)
        else:  # "/": only by a non-zero constant
            cy = _constant(y)
            z = _scale(x, 1.0 / cy) if cy else None
        if z is None:
            return None
        out.append(z)
    return out


def _reduce(how: str, parts: list[Form], min_defined: int) -> list[Form] | None:
    enough = sum(part.defined for part in parts) >= min_defined
    items: list[Linear] = []
    for part in parts:
        if isinstance(part, Linear):
            items.append(part)
        elif part.how == how and part.enough:
            items.extend(part.items)
        else:
            return None
    return [Extremum(how, tuple(items), enough)]


Forms = list[Form] | None  # one form per entry, or None: not expressible (the caller bootstraps)


class _FormWalker(ExprVisitor[Forms]):
    """The normal forms of an expression's entries on one table (:func:`extract_forms`)."""

    def __init__(self, lookup: RateLookup) -> None:
        self.lookup, self.num_groups = lookup, lookup.stats.num_groups

    def visit_const(self, node: Const) -> Forms:
        return [Linear(node.value, (), True, frozenset())]

    def visit_rate(self, node: RateRef) -> Forms:
        lookup = self.lookup
        if node.group is None:
            return [_pooled_term(node.rate, tuple(range(self.num_groups)), lookup)]
        if isinstance(node.group, int):
            return [_rate_term(node.rate, node.group, lookup)]
        if isinstance(node.group, tuple):
            if len(set(node.group)) != len(node.group):
                return None  # a repeated id counts its group twice: leave it to the bootstrap
            return [_pooled_term(node.rate, node.group, lookup)]
        return [_rate_term(node.rate, g, lookup) for g in range(self.num_groups)]

    def visit_binop(self, node: BinOp) -> Forms:
        a, b = self.visit(node.a), self.visit(node.b)
        return None if a is None or b is None else _binop(node.op, a, b)

    def visit_abs(self, node: Abs) -> Forms:
        a = self.visit(node.a)
        if a is None or not all(isinstance(x, Linear) for x in a):
            return None
        return [Extremum("max", (x, x.scaled(-1.0))) for x in a if isinstance(x, Linear)]

    def visit_reduce(self, node: Reduce) -> Forms:
        a = self.visit(node.a)
        return None if a is None else _reduce(node.how, a, node.needed())

    def visit_pairwise(self, node: Pairwise) -> Forms:
        a, b = self.visit(node.a), self.visit(node.b)
        if a is None or b is None or len(a) != len(b):
            return None
        i, j = node.pairs(len(a))
        out = [_add(a[x], _scale(b[y], -1.0)) for x, y in zip(i.tolist(), j.tolist())]
        return None if any(z is None for z in out) else [z for z in out if z is not None]

    def visit_guard(self, node: Guard) -> Forms:
        a, ref = self.visit(node.a), self.visit(node.reference)
        if a is None or ref is None:
            return None
        if sum(f.defined for f in ref) >= node.count:
            return a
        return [replace(f, defined=False) if isinstance(f, Linear) else replace(f, enough=False) for f in a]

    def visit_concat(self, node: Concat) -> Forms:
        parts = [self.visit(p) for p in node.parts]
        return None if any(p is None for p in parts) else [f for p in parts if p is not None for f in p]

    def visit_elementwise(self, node: Elementwise) -> Forms:
        return None  # maximum/minimum of two vectors: not an extremum of linear forms

    def visit_unknown(self, node: Expr) -> Forms:
        return None


def extract_forms(expr: Expr, lookup: RateLookup) -> list[Form] | None:
    """One :data:`Form` per entry of ``expr`` evaluated on ``lookup.stats``, or ``None`` if not expressible.

    Args:
        expr: a rate expression (``Constraint.expr``).
        lookup: the rates of the table the constraint is evaluated on (the overall-rate expansion uses its
            denominators).

    Returns:
        A list with one form per entry (its length is ``expr.size(G)``), or ``None``.
    """
    return _FormWalker(lookup).visit(expr)


def form_values(forms: Sequence[Form], lookup: RateLookup) -> np.ndarray:
    """Point values of the forms (NaN where undefined), for checking them against ``Constraint.evaluate``."""
    return np.array([f.value(lookup) for f in forms], dtype=np.float64)
