r"""Evaluation of rate expressions: values, proxy bounds and their first derivatives, on the host in NumPy.

Everything downstream of a :class:`~fairopt.stats.GroupStats` table is a function of a few dozen numbers
(``G × K``). Evaluating an expression with tensor operations costs one dispatch (a few µs) per operation and as
much again in the autograd pass, about 0.7 ms per training step for equalized odds over 2 groups, several times
the step of a small MLP. Here the tree is walked once in NumPy (float64), carrying for every node its hard value,
its proxy ``upper``/``lower`` bounds, the ``defined`` mask, and the Jacobians of the bounds w.r.t. the table
(:class:`Linearization`). :func:`attach` then connects a value to the autograd graph of the table through its
Jacobian, ``v + J · (T − T.detach())``: the value is exact and so is its gradient (second derivatives are not
carried).

The first derivative is all a first-order method needs, and it is what makes the per-step path of
:class:`~fairopt.optim.ConstrainedOptimizer` cheap: a Lagrangian ``f + Σ μ_i g̃_i`` needs only
``Σ μ_i ∂g̃_i/∂T``, one ``(G, K)`` array.

Semantics (see :mod:`fairopt.constraints.expressions`): rates as :func:`fairopt.rates.compute_rate` defines them;
interval arithmetic for the bounds; ``abs``, ``max``/``min`` and ``maximum``/``minimum`` choose their branch or
entry by the *true* values, interval products and quotients by the bound values (the first corner at a tie);
undefined entries hold 0 with zero derivative. Jacobians w.r.t. the hard columns are 0 (they are counts).

A table on a GPU is copied to the host (one synchronization per evaluation).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from fairopt.constraints.expressions import (
    _PER_GROUP,
    Bounds,
    Const,
    Expr,
    RateRef,
    _Abs,
    _BinOp,
    _broadcast_sizes,
    _Concat,
    _Elementwise,
    _Pairwise,
    _Reduce,
)
from fairopt.rates import RATES, is_label_conditioned, mixer_matrix
from fairopt.stats import COLUMNS, GroupStats

__all__ = ["Linearization", "attach", "evaluate_expr", "host_table", "linearize", "to_tensors"]

_K = len(COLUMNS)
_LOSS = COLUMNS.index("loss")
_MIXERS = {name: mixer_matrix(spec) for name, spec in RATES.items()}
# How each rate's bounds are formed (see fairopt.rates): "label" (label-conditioned), "loss", "base", "ratio".
_KINDS = {
    name: "loss"
    if spec.numerator == ("loss",)
    else "base"
    if spec.numerator == ("fn", "tp")
    else "label"
    if is_label_conditioned(spec)
    else "ratio"
    for name, spec in RATES.items()
}


class Linearization(NamedTuple):
    """An expression (or constraint) at one table, as float64 NumPy arrays.

    Leading batch dimensions ``...`` appear when a stack of tables is evaluated (``jacobians=False``).

    Attributes:
        hard: ``(..., k)`` true values.
        upper: ``(..., k)`` proxy upper bound (the ``proxy`` value of a constraint).
        lower: ``(..., k)`` proxy lower bound.
        defined: ``(..., k)`` bool.
        d_upper: ``(k, G*K)`` ``∂ upper / ∂ table`` (the table flattened row-major: ``G`` rows of ``K``
            columns), or None when not computed (always None for a stack).
        d_lower: ``(k, G*K)`` ``∂ lower / ∂ table``, or None.
    """

    hard: np.ndarray
    upper: np.ndarray
    lower: np.ndarray
    defined: np.ndarray
    d_upper: np.ndarray | None
    d_lower: np.ndarray | None

    def shifted(self, offset: float) -> Linearization:
        """Values minus ``offset`` at defined entries (0 elsewhere), e.g. ``expr - tolerance``."""
        if offset == 0.0:
            return self
        d = self.defined
        if d.all():
            return self._replace(hard=self.hard - offset, upper=self.upper - offset, lower=self.lower - offset)
        return self._replace(
            hard=np.where(d, self.hard - offset, 0.0),
            upper=np.where(d, self.upper - offset, 0.0),
            lower=np.where(d, self.lower - offset, 0.0),
        )


def host_table(stats: GroupStats) -> np.ndarray:
    """The table as a ``(G, K)`` float64 NumPy array (a view when it already is one on the CPU)."""
    table = stats.table.detach()
    if table.device.type != "cpu":
        table = table.cpu()
    return table.double().numpy()


def linearize(expr: Expr, table: np.ndarray, *, jacobians: bool = True) -> Linearization:
    """Evaluate ``expr`` on a ``(G, K)`` float64 table (or a ``(B, G, K)`` stack) with the Jacobians of its bounds.

    Args:
        expr: a rate expression.
        table: ``(..., G, K)`` float64 array (:func:`host_table`).
        jacobians: also compute ``d_upper``/``d_lower`` (otherwise they are None); must be False for a stack.

    Returns:
        :class:`Linearization` with ``k = expr.size(G)`` entries; undefined entries are 0 with zero derivative.

    Raises:
        ValueError: the expression refers to a group ``>= G``; ``pairwise`` of expressions of different sizes;
            Jacobians asked for a stack of tables.
    """
    v, d, j, full = _Evaluator(table, jacobians).run(expr)
    if not full:
        v = np.where(d, v, 0.0)
        j = None if j is None else np.where(d[..., None], j, 0.0)
    shape = (*table.shape[:-2], d.shape[-1])
    if d.shape != shape:  # a constant expression has one value for the whole stack
        d = np.broadcast_to(d, shape).copy()
    if v.shape[1:] != shape or not v.flags.writeable:
        v = np.broadcast_to(v, (3, *shape)).copy()
    return Linearization(v[0], v[1], v[2], d, None if j is None else j[0], None if j is None else j[1])


def attach(value: np.ndarray, jacobian: np.ndarray | None, table: Tensor) -> Tensor:
    """``value`` as a tensor whose gradient w.r.t. ``table`` is ``jacobian`` (exact value, first order).

    Args:
        value: ``(k,)`` values at ``table``. jacobian: ``(k, G*K)`` their derivatives (None: a constant). table: the
            ``(G, K)`` tensor they were computed from (when it does not require grad the result is a constant).

    Returns:
        ``(k,)`` tensor on ``table.device`` in ``table.dtype``.
    """
    out = torch.from_numpy(value).to(device=table.device, dtype=table.dtype)
    if jacobian is None or not table.requires_grad:
        return out
    j = torch.from_numpy(jacobian).to(device=table.device, dtype=table.dtype)
    return out + j @ (table - table.detach()).reshape(-1)


def to_tensors(lin: Linearization, table: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(hard, upper, lower, defined)`` tensors on ``table``'s device and dtype, the bounds differentiable w.r.t.
    ``table`` where their Jacobians were computed (:func:`attach`)."""
    hard = torch.from_numpy(lin.hard).to(device=table.device, dtype=table.dtype)
    defined = torch.from_numpy(lin.defined).to(table.device)
    return hard, attach(lin.upper, lin.d_upper, table), attach(lin.lower, lin.d_lower, table), defined


def evaluate_expr(expr: Expr, stats: GroupStats) -> Bounds:
    """:meth:`Expr.evaluate <fairopt.constraints.Expr.evaluate>`: :class:`Bounds` of ``(k,)`` tensors on the table's
    device and dtype; ``upper``/``lower`` are differentiable w.r.t. the table."""
    return Bounds(*to_tensors(linearize(expr, host_table(stats)), stats.table))


class _Node(NamedTuple):
    """An expression's value inside the evaluator: ``v (3, ..., k)`` stacks [hard, upper, lower], ``d (..., k)`` the
    defined mask, ``j (2, k, G*K)`` the Jacobians of [upper, lower] (or None), ``full`` whether all are defined.
    Stacking the three values makes each operator one NumPy call instead of three: this runs every training step."""

    v: np.ndarray
    d: np.ndarray
    j: np.ndarray | None
    full: bool  # every entry defined (skips the masking)


# Negating an interval swaps its bounds: the rows of -x are -x[[hard, lower, upper]] (values), -x[[lower, upper]]
# (Jacobians, a reversed view).
_SWAP_V = np.array([0, 2, 1])


def _swapped(v: np.ndarray) -> np.ndarray:
    return v.take(_SWAP_V, axis=0)


def _selection(group: object, num_groups: int) -> np.ndarray | None:
    """``(1, G)`` 0/1 row pooling the table rows of a group id, a tuple of ids, or all (None); None for per-group."""
    if group == _PER_GROUP:
        return None
    select = np.zeros((1, num_groups))
    select[0, slice(None) if group is None else list(group) if isinstance(group, tuple) else [group]] = 1.0
    return select


@functools.lru_cache(maxsize=256)
def _templates(name: str, group: object, num_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Constant parts of a rate's Jacobians w.r.t. the flattened table, ``(2, k, G*K)`` each, before dividing by
    the denominator: label-conditioned rates: [∂ proxy numerator, -∂ complementary proxy count] (upper, lower);
    mean loss: [∂ loss sum] twice; precision / NPV: [∂ proxy numerator] and [∂ proxy denominator]."""
    w = _MIXERS[name]
    select = _selection(group, num_groups)
    rows = np.eye(num_groups) if select is None else select

    def block(column: np.ndarray) -> np.ndarray:  # ∂ (rows @ table @ column) / ∂ table, (k, G*K)
        return (rows[:, :, None] * column).reshape(rows.shape[0], -1)

    kind = _KINDS[name]
    if kind == "label":
        pair = np.stack([block(w[:, 2]), -block(w[:, 3])])
        return pair, pair
    if kind == "loss":
        loss = block(np.eye(_K)[_LOSS])
        pair = np.stack([loss, loss])
        return pair, pair
    return np.stack([block(w[:, 2])] * 2), np.stack([block(w[:, 4])] * 2)


class _Evaluator:
    """One pass over an expression tree on one table or a stack of tables (each rate computed once per group
    selection)."""

    def __init__(self, table: np.ndarray, jacobians: bool) -> None:
        self.table = table
        self.batch = table.shape[:-2]
        self.num_groups = table.shape[-2]
        self.width = self.num_groups * _K
        if jacobians and self.batch:
            raise ValueError("Jacobians are computed for one (G, K) table, not a stack; pass jacobians=False")
        self.jacobians = jacobians
        self.cache: dict[tuple[str, object], _Node] = {}
        self.rules: dict[type, Callable[[Any], _Node]] = {
            Const: self._const,
            RateRef: self._rate,
            _BinOp: self._binop,
            _Abs: self._abs,
            _Reduce: self._reduce,
            _Elementwise: self._elementwise,
            _Pairwise: self._pairwise,
            _Concat: self._concat,
        }

    def run(self, expr: Expr) -> _Node:
        rule = self.rules.get(type(expr))
        if rule is None:  # a subclass of a node type evaluates as its base
            base = next((cls for cls in type(expr).__mro__ if cls in self.rules), None)
            if base is None:
                raise TypeError(
                    f"cannot evaluate expression type {type(expr).__name__}: build expressions from rates, numbers "
                    "and the operators of fairopt.constraints.expressions, or use a FunctionConstraint"
                )
            rule = self.rules[base]
        return rule(expr)

    # leaves -------------------------------------------------------------------------------------------------
    def _const(self, expr: Const) -> _Node:
        j = np.zeros((2, 1, self.width)) if self.jacobians else None
        ones = (1,) * len(self.batch)  # broadcasts against a stack of tables
        return _Node(np.full((3, *ones, 1), expr.value), np.ones((*ones, 1), dtype=bool), j, True)

    def _rate(self, expr: RateRef) -> _Node:
        if expr.max_group() >= self.num_groups:
            raise ValueError(
                f"{expr} refers to group {expr.max_group()} but the statistics have {self.num_groups} groups"
            )
        key = (expr.rate, expr.group)
        if key not in self.cache:
            self.cache[key] = self._rate_rows(expr.rate, expr.group)
        return self.cache[key]

    def _rate_rows(self, name: str, group: object) -> _Node:
        """One rate on the rows ``select @ table`` (each row a group, a pooled set of groups, or all), as
        :func:`fairopt.rates.compute_rate` computes it."""
        kind, w = _KINDS[name], _MIXERS[name]
        select = _selection(group, self.num_groups)
        sums = self.table @ w if select is None else (select @ self.table) @ w
        # rows of sums: den, hard numerator, proxy numerator, complementary proxy, proxy denominator
        sums = np.moveaxis(sums, -1, 0) if self.batch else sums.T
        den = sums[0]
        defined = den > 0
        full = bool(defined.all())
        safe_den = den if full else np.where(defined, den, 1.0)
        j = None
        if kind == "label":
            v = sums[1:4] / safe_den  # divided, not multiplied by 1/den: ties break as in compute_rate
            v[2] = 1.0 - v[2]
            if self.jacobians:
                j = _templates(name, group, self.num_groups)[0] * (1.0 / safe_den)[:, None]
        elif kind == "loss":
            loss = self.table[..., _LOSS] if select is None else self.table[..., _LOSS] @ select.T
            v = np.broadcast_to(loss / safe_den, (3, *den.shape))
            if self.jacobians:
                j = _templates(name, group, self.num_groups)[0] * (1.0 / safe_den)[:, None]
        elif kind == "base":  # no proxy
            v = np.broadcast_to(sums[1] / safe_den, (3, *den.shape))
            if self.jacobians:
                j = np.zeros((2, den.shape[-1], self.width))
        else:  # precision / NPV: the plain ratio of proxy counts (its denominator depends on the predictions)
            ok = defined & (sums[4] > 0)
            proxy_den = np.where(ok, sums[4], 1.0)
            value = np.where(ok, sums[2] / proxy_den, 0.0)
            v = np.stack([sums[1] / safe_den, value, value])
            if self.jacobians:  # ∂(num/den) = (∂num - (num/den) ∂den) / den
                pinv = np.where(ok, 1.0 / proxy_den, 0.0)
                num, proxy_den_t = _templates(name, group, self.num_groups)
                d = (num[0] - proxy_den_t[0] * value[:, None]) * pinv[:, None]
                j = np.stack([d, d])
        if not full:
            v = np.where(defined, v, 0.0)
            j = None if j is None else np.where(defined[:, None], j, 0.0)
        return _Node(v, defined, j, full)

    # operators ----------------------------------------------------------------------------------------------
    def _binop(self, expr: _BinOp) -> _Node:
        a, b = self.run(expr.a), self.run(expr.b)
        _check_sizes(a, b, expr)
        defined, full = a.d & b.d, a.full and b.full
        jac = self.jacobians
        if expr.op == "+":
            return _Node(a.v + b.v, defined, a.j + b.j if jac else None, full)
        if expr.op == "-":  # the upper bound of a - b uses the lower bound of b
            return _Node(a.v - _swapped(b.v), defined, a.j - b.j[::-1] if jac else None, full)
        (ah, au, al), (bh, bu, bl) = a.v, b.v
        if expr.op == "*":  # the four corner products of the two intervals
            values = [au * bu, au * bl, al * bu, al * bl]
            grads = None
            if jac:
                (dau, dal), (dbu, dbl) = a.j, b.j
                grads = [
                    x[:, None] * dy + y[:, None] * dx
                    for x, dx in ((au, dau), (al, dal))
                    for y, dy in ((bu, dbu), (bl, dbl))
                ]
            return _extreme_corners(ah * bh, defined, values, grads)
        # Division: interval quotient when the proxy denominator is surely positive, else by the hard value.
        nonzero = bh != 0
        defined = defined & nonzero
        positive = bl > 0
        safe = positive | nonzero
        dens = [np.where(safe, np.where(positive, bound, bh), 1.0) for bound in (bu, bl)]
        values = [num / den for num in (au, al) for den in dens]
        grads = None
        if jac:
            pos_j = positive[:, None]
            d_dens = [np.where(pos_j, dj, 0.0) for dj in b.j]
            grads = [
                (d_num - (num / den)[:, None] * d_den) / den[:, None]
                for num, d_num in zip((au, al), a.j)
                for den, d_den in zip(dens, d_dens)
            ]
        return _extreme_corners(ah / np.where(nonzero, bh, 1.0), defined, values, grads)

    def _abs(self, expr: _Abs) -> _Node:
        # The branch follows the sign of the true value; |x| = -x on the negative side (hard row included).
        a = self.run(expr.a)
        pos = a.v[0] >= 0
        j = np.where(pos[:, None], a.j, -a.j[::-1]) if self.jacobians else None
        return _Node(np.where(pos, a.v, -_swapped(a.v)), a.d, j, a.full)

    def _reduce(self, expr: _Reduce) -> _Node:
        # The entry is chosen among the defined ones by its true value; none defined: undefined (zeroed later).
        a = self.run(expr.a)
        hard = a.v[0]
        masked = hard if a.full else np.where(a.d, hard, -np.inf if expr.how == "max" else np.inf)
        index = masked.argmax(-1) if expr.how == "max" else masked.argmin(-1)
        any_defined = np.ones((*a.d.shape[:-1], 1), dtype=bool) if a.full else a.d.any(-1, keepdims=True)
        full = a.full or bool(any_defined.all())
        if not self.batch:
            s = slice(int(index), int(index) + 1)
            return _Node(a.v[:, s], any_defined, a.j[:, s] if self.jacobians else None, full)
        v = np.take_along_axis(np.broadcast_to(a.v, (3, *masked.shape)), index[None, ..., None], axis=-1)
        return _Node(v, any_defined, None, full)

    def _elementwise(self, expr: _Elementwise) -> _Node:
        a, b = self.run(expr.a), self.run(expr.b)
        _check_sizes(a, b, expr)
        take_a = a.v[0] >= b.v[0] if expr.how == "maximum" else a.v[0] <= b.v[0]
        j = np.where(take_a[:, None], a.j, b.j) if self.jacobians else None
        return _Node(np.where(take_a, a.v, b.v), a.d & b.d, j, a.full and b.full)

    def _pairwise(self, expr: _Pairwise) -> _Node:
        a, b = self.run(expr.a), self.run(expr.b)
        if a.d.shape[-1] != b.d.shape[-1]:
            raise ValueError(f"pairwise() needs two expressions with the same number of entries, in {expr}")
        i, k = expr._pairs(a.d.shape[-1])
        j = a.j[:, i] - b.j[::-1][:, k] if self.jacobians else None
        return _Node(a.v[..., i] - _swapped(b.v)[..., k], a.d[..., i] & b.d[..., k], j, a.full and b.full)

    def _concat(self, expr: _Concat) -> _Node:
        parts = [self.run(p) for p in expr.parts]
        if self.batch:  # constants are (1,): give every part the batch shape first
            parts = [
                _Node(
                    np.broadcast_to(p.v, (3, *self.batch, p.d.shape[-1])),
                    np.broadcast_to(p.d, (*self.batch, p.d.shape[-1])),
                    None,
                    p.full,
                )
                for p in parts
            ]
        j = np.concatenate([p.j for p in parts], axis=1) if self.jacobians else None
        full = all(p.full for p in parts)
        return _Node(
            np.concatenate([p.v for p in parts], axis=-1), np.concatenate([p.d for p in parts], axis=-1), j, full
        )


def _check_sizes(a: _Node, b: _Node, expr: Expr) -> None:
    n, m = a.d.shape[-1], b.d.shape[-1]
    if n != m and n != 1 and m != 1:
        _broadcast_sizes(n, m, str(expr))  # raises with the expression in the message


def _extreme_corners(
    hard: np.ndarray, defined: np.ndarray, values: list[np.ndarray], grads: list[np.ndarray] | None
) -> _Node:
    """Bounds of an interval product or quotient: the largest and the smallest corner value with their Jacobians
    (the first corner at a tie). One-entry operands are broadcast."""
    shape = np.broadcast_shapes(*(v.shape for v in [*values, hard, defined]))
    v = np.stack([np.broadcast_to(x, shape) for x in values])
    hi, lo = v.argmax(0), v.argmin(0)
    upper = np.take_along_axis(v, hi[None], 0)[0]
    lower = np.take_along_axis(v, lo[None], 0)[0]
    j = None
    if grads is not None:
        k = shape[-1]
        g = np.stack([np.broadcast_to(x, (k, x.shape[-1])) for x in grads])
        rows = np.arange(k)
        j = np.stack([g[hi, rows], g[lo, rows]])
    defined = np.broadcast_to(defined, shape).copy()
    return _Node(np.stack([np.broadcast_to(hard, shape), upper, lower]), defined, j, bool(defined.all()))
