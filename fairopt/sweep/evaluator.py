r"""Rate expressions on a stack of tables, one per sweep member, with autograd: the batched walker of expressions.

The library's evaluator (:mod:`fairopt.constraints.evaluation`) walks an expression once in NumPy and carries its
gradient as a vector-Jacobian product for *one* ``(G, K)`` table; on a stack of tables it gives values only. A sweep
needs, at every step, the proxy values of M members *and* their gradients w.r.t. each member's table, so this module
is one more implementation of the expression visitor protocol (:class:`~fairopt.constraints.expressions.ExprVisitor`)
on ``(M, G, K)`` torch tensors: every operator is one tensor operation over all members, and autograd carries the
gradient (one backward for the whole sweep, never a Python loop over members).

The semantics are those of :mod:`fairopt.constraints.evaluation`, node for node: rates exactly as
:func:`fairopt.rates.compute_rate` computes them (it is called on the members' rows stacked into one table, rates
being row-wise); interval arithmetic for the proxy bounds; ``abs``, ``max``/``min``, ``maximum``/``minimum`` take
their branch or entry by the *true* values, products and quotients the extreme corners (the first at a tie);
undefined entries hold 0 with zero gradient. ``tests/test_sweep.py`` checks values and gradients against the NumPy
evaluator member by member.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from fairopt.constraints import Constraint
from fairopt.constraints.expressions import (
    PER_GROUP,
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
    broadcast_sizes,
)
from fairopt.rates import compute_rate
from fairopt.stats import COLUMNS, GroupStats

__all__ = ["BatchedBounds", "BatchedEvaluator", "batched_constraint_values"]

_K = len(COLUMNS)


class BatchedBounds(NamedTuple):
    """An expression's value on a stack of M tables.

    Attributes:
        hard: ``(M, k)`` true values (no gradient); 0 where undefined.
        proxy_upper: ``(M, k)`` differentiable proxy upper bound (what the primal player descends on).
        proxy_lower: ``(M, k)`` differentiable proxy lower bound.
        defined: ``(M, k)`` bool.
    """

    hard: Tensor
    proxy_upper: Tensor
    proxy_lower: Tensor
    defined: Tensor


class _Node(NamedTuple):
    """``v (3, M, k)``: [hard, upper, lower]; ``d (M, k)`` (or ``(1, k)`` for a constant) the defined mask."""

    v: Tensor
    d: Tensor


def _swapped(v: Tensor) -> Tensor:
    # Negating an interval swaps its bounds: the rows of -x are -x[[hard, lower, upper]].
    return v[[0, 2, 1]]


class BatchedEvaluator(ExprVisitor[_Node]):
    """Evaluate expressions on a ``(M, G, K)`` stack of group-statistics tables (one per member), differentiably.

    Args:
        tables: ``(M, G, K)`` floating tensor (``K = 9``, the columns of :class:`~fairopt.stats.GroupStats`); it may
            require grad (the proxy bounds are then differentiable w.r.t. it).

    Raises:
        ValueError: a table of another shape; (on :meth:`bounds`) an expression referring to a group ``>= G`` or
            combining vectors of different sizes.
    """

    def __init__(self, tables: Tensor) -> None:
        if tables.dim() != 3 or tables.shape[-1] != _K:
            raise ValueError(f"tables must have shape (M, G, {_K}) (one GroupStats table per member), got "
                             f"{tuple(tables.shape)}")  # fmt: skip
        self.tables = tables
        self.num_members, self.num_groups = tables.shape[0], tables.shape[1]
        self._cache: dict[tuple[str, object], _Node] = {}

    def bounds(self, expr: Expr) -> BatchedBounds:
        """:class:`BatchedBounds` of ``expr`` for every member (``k = expr.size(G)``)."""
        node = self.visit(expr)
        d = node.d.expand(self.num_members, node.d.shape[-1])
        v = torch.where(d, node.v, torch.zeros((), dtype=node.v.dtype, device=node.v.device))
        v = v.expand(3, self.num_members, d.shape[-1])
        return BatchedBounds(v[0].detach(), v[1], v[2], d)

    # leaves -------------------------------------------------------------------------------------------------
    def visit_const(self, node: Const) -> _Node:
        t = self.tables
        return _Node(torch.full((3, 1, 1), node.value, dtype=t.dtype, device=t.device),
                     torch.ones((1, 1), dtype=torch.bool, device=t.device))  # fmt: skip

    def visit_rate(self, node: RateRef) -> _Node:
        if node.max_group() >= self.num_groups:
            raise ValueError(f"{node} refers to group {node.max_group()} but the statistics have {self.num_groups} "
                             "groups")  # fmt: skip
        key = (node.rate, node.group)
        if key not in self._cache:
            self._cache[key] = self._rate_rows(node.rate, node.group)
        return self._cache[key]

    def _rate_rows(self, name: str, group: object) -> _Node:
        """One rate on the rows of every member (each group, a pooled set of groups, or all of them): the members'
        rows stacked into one ``(M * R, K)`` table for :func:`~fairopt.rates.compute_rate` (rates are row-wise)."""
        t = self.tables
        if group == PER_GROUP:
            rows = t
        else:
            ids = (
                list(range(self.num_groups)) if group is None else list(group) if isinstance(group, tuple) else [group]
            )
            rows = t[:, ids].sum(dim=1, keepdim=True)
        m, r = rows.shape[0], rows.shape[1]
        rate = compute_rate(GroupStats(rows.reshape(m * r, _K)), name)
        v = torch.stack([rate.value, rate.proxy_upper, rate.proxy_lower]).view(3, m, r)
        return _Node(v, rate.defined.view(m, r))

    # operators ----------------------------------------------------------------------------------------------
    def visit_binop(self, node: BinOp) -> _Node:
        a, b = self.visit(node.a), self.visit(node.b)
        _check_sizes(a, b, node)
        defined = a.d & b.d
        if node.op == "+":
            return _Node(a.v + b.v, defined)
        if node.op == "-":  # the upper bound of a - b uses the lower bound of b
            return _Node(a.v - _swapped(b.v), defined)
        (ah, au, al), (bh, bu, bl) = a.v, b.v
        if node.op == "*":  # the four corner products of the two intervals
            corners = [au * bu, au * bl, al * bu, al * bl]
            return _extreme_corners(ah * bh, defined, corners)
        # Division: interval quotient when the proxy denominator is surely positive, else by the hard value.
        nonzero = bh != 0
        defined = defined & nonzero
        positive = bl > 0
        safe = positive | nonzero
        one = torch.ones((), dtype=bh.dtype, device=bh.device)
        dens = [torch.where(safe, torch.where(positive, bound, bh), one) for bound in (bu, bl)]
        corners = [num / den for num in (au, al) for den in dens]
        return _extreme_corners(ah / torch.where(nonzero, bh, one), defined, corners)

    def visit_abs(self, node: Abs) -> _Node:
        a = self.visit(node.a)
        pos = a.v[0] >= 0  # the branch follows the sign of the true value
        return _Node(torch.where(pos, a.v, -_swapped(a.v)), a.d)

    def visit_reduce(self, node: Reduce) -> _Node:
        a = self.visit(node.a)
        hard = a.v[0]
        fill = -torch.inf if node.how == "max" else torch.inf
        masked = torch.where(a.d, hard, torch.full_like(hard, fill))
        index = masked.argmax(-1, keepdim=True) if node.how == "max" else masked.argmin(-1, keepdim=True)
        v = torch.take_along_dim(a.v.expand(3, *masked.shape), index.expand(3, *index.shape), dim=-1)
        return _Node(v, a.d.sum(-1, keepdim=True) >= node.needed())

    def visit_guard(self, node: Guard) -> _Node:
        a, ref = self.visit(node.a), self.visit(node.reference)
        return _Node(a.v, a.d & (ref.d.sum(-1, keepdim=True) >= node.count))

    def visit_elementwise(self, node: Elementwise) -> _Node:
        a, b = self.visit(node.a), self.visit(node.b)
        _check_sizes(a, b, node)
        take_a = a.v[0] >= b.v[0] if node.how == "maximum" else a.v[0] <= b.v[0]
        return _Node(torch.where(take_a, a.v, b.v), a.d & b.d)

    def visit_pairwise(self, node: Pairwise) -> _Node:
        a, b = self.visit(node.a), self.visit(node.b)
        n = a.d.shape[-1]
        if n != b.d.shape[-1]:
            raise ValueError(f"pairwise() needs two expressions with the same number of entries, in {node}")
        i, j = (torch.as_tensor(x, device=a.v.device) for x in node.pairs(n))
        return _Node(a.v[..., i] - _swapped(b.v)[..., j], a.d[..., i] & b.d[..., j])

    def visit_concat(self, node: Concat) -> _Node:
        parts = [self.visit(p) for p in node.parts]
        m = max(p.d.shape[0] for p in parts)  # constants have one row: give every part the members' shape
        v = torch.cat([p.v.expand(3, m, p.v.shape[-1]) for p in parts], dim=-1)
        d = torch.cat([p.d.expand(m, p.d.shape[-1]) for p in parts], dim=-1)
        return _Node(v, d)


def _check_sizes(a: _Node, b: _Node, expr: Expr) -> None:
    n, m = a.d.shape[-1], b.d.shape[-1]
    if n != m and n != 1 and m != 1:
        broadcast_sizes(n, m, str(expr))  # raises with the expression in the message


def _extreme_corners(hard: Tensor, defined: Tensor, corners: list[Tensor]) -> _Node:
    """Bounds of an interval product or quotient: the largest and the smallest corner (the first at a tie, as
    ``argmax``/``argmin`` return the first extreme)."""
    shape = torch.broadcast_shapes(*(c.shape for c in corners), hard.shape, defined.shape)
    stacked = torch.stack([c.expand(shape) for c in corners])
    hi, lo = stacked.detach().argmax(0, keepdim=True), stacked.detach().argmin(0, keepdim=True)
    upper = torch.take_along_dim(stacked, hi, dim=0)[0]
    lower = torch.take_along_dim(stacked, lo, dim=0)[0]
    return _Node(torch.stack([hard.expand(shape), upper, lower]), defined.expand(shape))


def batched_constraint_values(
    constraint: Constraint, tables: Tensor, tolerances: Tensor | Sequence[float] | np.ndarray
) -> BatchedBounds:
    """The constraint ``expr - tolerance_j <= 0`` of each member ``j`` on its table: one expression, M tolerances.

    Args:
        constraint: an expression constraint (its ``expr`` is evaluated; its own tolerance is not used).
        tables: ``(M, G, K)`` member tables (see :class:`BatchedEvaluator`).
        tolerances: ``(M,)`` bounds in the units of the expression.

    Returns:
        :class:`BatchedBounds` of ``(M, m)`` constraint values: hard ``g``, proxy ``g̃`` bounds, defined mask; 0 at
        undefined entries (as :meth:`fairopt.constraints.Constraint.linearize` gives them).

    Raises:
        ValueError: a function constraint (it has no expression to walk), or ``tolerances`` of another length than M.
    """
    if not constraint.linearizable:
        raise ValueError(
            f"a sweep evaluates one expression for all members; {constraint.name!r} is a FunctionConstraint: write it "
            "as a rate expression (e.g. fairopt.tpr(1) - fairopt.tpr(0) <= 0.05)"
        )
    tol = torch.as_tensor(tolerances, dtype=tables.dtype, device=tables.device).reshape(-1, 1)
    if tol.shape[0] != tables.shape[0]:
        raise ValueError(f"got {tol.shape[0]} tolerances for {tables.shape[0]} member tables")
    b = BatchedEvaluator(tables).bounds(constraint.expr)
    zero = torch.zeros((), dtype=tables.dtype, device=tables.device)
    return BatchedBounds(
        torch.where(b.defined, b.hard - tol, zero),
        torch.where(b.defined, b.proxy_upper - tol, zero),
        torch.where(b.defined, b.proxy_lower - tol, zero),
        b.defined,
    )
