r"""Evaluation of rate expressions with torch ops on the table's device: no host round trip.

The second implementation of the :class:`~fairopt.constraints.expressions.ExprVisitor` protocol next to the NumPy
evaluator of :mod:`fairopt.constraints.evaluation`, with the same semantics, node by node (rates as
:func:`fairopt.rates.compute_rate` defines them; interval arithmetic for the proxy bounds; ``abs``, ``max``/``min``
and ``maximum``/``minimum`` choose their branch or entry by the *true* values, interval products and quotients by
the bound values, the first corner at a tie; undefined entries hold 0 with zero derivative; derivatives w.r.t. the
hard columns are 0). Where the NumPy evaluator branches on values on the host (``if defined.all()``, ``int(argmax)``),
this one always takes the masked form (``torch.where``, ``gather``), so

* it never reads a tensor on the host: no ``.item()``, ``.tolist()``, ``.cpu()``, ``bool(tensor)``; on a GPU the
  constrained step stays in the device queue (CUDA-graph-able, ``torch.cuda.set_sync_debug_mode("error")`` clean);
* ``torch.compile(fullgraph=True)`` traces it with no graph break (the tree walk is Python over the expression, a
  constant: it unrolls at trace time);
* the gradient w.r.t. the table is plain autograd through these ops (first and higher order).

The constants it needs (the rates' column mixers, group selections, pair indices) are built with torch ops on the
table's device once per ``(device, dtype)`` and cached.

On the CPU, a table of a few dozen numbers is cheaper to walk in NumPy than with ~50 tensor dispatches and their
autograd nodes: :class:`~fairopt.optim.ConstrainedOptimizer` uses this evaluator on CUDA and the NumPy one on the CPU
by default (``evaluator="auto"``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

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
from fairopt.rates import RATES, is_label_conditioned, mixer_matrix
from fairopt.stats import COLUMNS

__all__ = ["DeviceValues", "evaluate_device"]

_HARD = slice(0, 4)  # tn fp fn tp: counts, no derivative
_LOSS = COLUMNS.index("loss")
# CPU copies made once at import; moved to a device once per (device, dtype) in _constant.
_MIXERS = {name: torch.from_numpy(mixer_matrix(spec)) for name, spec in RATES.items()}
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
# Rows of a node's value: [hard, proxy upper, proxy lower]; negating an interval swaps its bounds.
_SWAP = (0, 2, 1)
_CONSTANTS: dict[tuple[object, ...], Tensor] = {}


class DeviceValues(NamedTuple):
    """An expression's entries at one table, as tensors on the table's device.

    Attributes:
        hard: ``(k,)`` true values (no gradient), in the table's dtype.
        proxy_upper: ``(k,)`` proxy upper bound (a constraint's ``proxy`` value); differentiable w.r.t. the table's
            proxy and loss columns when the table requires grad.
        proxy_lower: ``(k,)`` proxy lower bound, differentiable the same way.
        defined: ``(k,)`` bool; undefined entries hold 0 with zero derivative.
    """

    hard: Tensor
    proxy_upper: Tensor
    proxy_lower: Tensor
    defined: Tensor

    def shifted(self, offset: float) -> DeviceValues:
        """Values minus ``offset`` at defined entries (0 elsewhere), e.g. ``expr - tolerance`` (no host branch)."""
        if offset == 0.0:  # a Python float: a constant, not a tensor value
            return self
        d = self.defined
        return DeviceValues(
            torch.where(d, self.hard - offset, 0.0),
            torch.where(d, self.proxy_upper - offset, 0.0),
            torch.where(d, self.proxy_lower - offset, 0.0),
            d,
        )


def evaluate_device(expr: Expr, table: Tensor) -> DeviceValues:
    """Evaluate ``expr`` on a ``(G, K)`` table with torch ops on ``table.device`` (no host synchronization).

    Same values, defined mask and first derivatives as :func:`fairopt.constraints.evaluation.linearize` (float
    rounding aside); the derivatives are autograd's, w.r.t. ``table``.

    Args:
        expr: a rate expression (:mod:`fairopt.constraints.expressions`).
        table: ``(G, K)`` floating tensor (``GroupStats.table``), ``K = 9``; may require grad.

    Returns:
        :class:`DeviceValues` of ``k = expr.size(G)`` entries in ``table.dtype``.

    Raises:
        ValueError: ``table`` is not ``(G, 9)``; the expression refers to a group ``>= G``; sizes that do not
            broadcast; ``pairwise`` of expressions of different sizes.
        TypeError: a non-floating table; a node type without a ``visit_*`` method (see
            :class:`~fairopt.constraints.ExprVisitor`).
    """
    if not isinstance(table, Tensor) or table.dim() != 2 or table.shape[1] != len(COLUMNS):
        shape = tuple(table.shape) if isinstance(table, Tensor) else type(table).__name__
        raise ValueError(f"table must be a (G, {len(COLUMNS)}) tensor (GroupStats.table), got {shape}")
    if not table.is_floating_point():
        raise TypeError(f"table must be floating point (weighted counts), got {table.dtype}; pass table.double()")
    node = _DeviceEvaluator(table).visit(expr)
    k = max(node.v.shape[-1], node.d.shape[-1])
    d = node.d.expand(k)
    v = torch.where(d, node.v.expand(3, k), 0.0)
    return DeviceValues(v[0].detach(), v[1], v[2], d)


def _constant(key: tuple[object, ...], build: object) -> Tensor:
    """A cached constant tensor (built by ``build()`` on the first call for ``key``)."""
    value = _CONSTANTS.get(key)
    if value is None:
        value = build()  # type: ignore[operator]
        _CONSTANTS[key] = value
    return value


class _Node(NamedTuple):
    """``v (3, k)``: [hard, upper, lower]; ``d (k,)`` bool defined mask (``k = 1`` broadcasts)."""

    v: Tensor
    d: Tensor


class _DeviceEvaluator(ExprVisitor[_Node]):
    """One pass over an expression tree on one ``(G, K)`` table; each rate computed once per group selection."""

    def __init__(self, table: Tensor) -> None:
        # Derivatives w.r.t. the hard columns are 0 (they are counts), as in the NumPy evaluator: their part of the
        # table enters detached, so autograd differentiates through the proxy and loss columns only.
        if table.requires_grad:
            table = torch.cat([table[:, _HARD].detach(), table[:, _HARD.stop :]], dim=1)
        self.table = table
        self.num_groups = table.shape[0]
        self.device, self.dtype = table.device, table.dtype
        self.cache: dict[tuple[str, object], _Node] = {}

    def _key(self, *parts: object) -> tuple[object, ...]:
        return (*parts, self.device, self.dtype)

    def _true(self) -> Tensor:
        return _constant(self._key("true"), lambda: torch.ones(1, dtype=torch.bool, device=self.device))

    # leaves -------------------------------------------------------------------------------------------------
    def visit_const(self, expr: Const) -> _Node:
        return _Node(self.table.new_full((3, 1), expr.value), self._true())

    def visit_rate(self, expr: RateRef) -> _Node:
        if expr.max_group() >= self.num_groups:
            raise ValueError(
                f"{expr} refers to group {expr.max_group()} but the statistics have {self.num_groups} groups"
            )
        key = (expr.rate, expr.group)
        if key not in self.cache:
            self.cache[key] = self._rate_rows(expr.rate, expr.group)
        return self.cache[key]

    def _selection(self, group: object) -> Tensor | None:
        """``(1, G)`` 0/1 row pooling the rows of a group id, a tuple of ids, or all (None); None for per-group.
        Built from ``arange`` comparisons on the device (no host-to-device copy of an index list)."""
        if group == PER_GROUP:
            return None
        ids = () if group is None else group if isinstance(group, tuple) else (group,)

        def build() -> Tensor:
            rows = torch.arange(self.num_groups, device=self.device)
            if not ids:
                return torch.ones(1, self.num_groups, dtype=self.dtype, device=self.device)
            hit = torch.zeros(self.num_groups, dtype=torch.bool, device=self.device)
            for g in ids:
                hit = hit | (rows == g)
            return hit.to(self.dtype)[None]

        return _constant(self._key("select", self.num_groups, ids), build)

    def _rate_rows(self, name: str, group: object) -> _Node:
        """One rate on the rows ``select @ table`` (:func:`fairopt.rates.compute_rate`'s definitions)."""
        kind = _KINDS[name]
        w = _constant(self._key("mixer", name), lambda: _MIXERS[name].to(device=self.device, dtype=self.dtype))
        select = self._selection(group)
        rows = self.table if select is None else select @ self.table  # (r, K)
        sums = (rows @ w).T  # (5, r): den, hard numerator, proxy numerator, complementary proxy, proxy denominator
        den = sums[0]
        defined = den > 0
        safe_den = torch.where(defined, den, 1.0)
        if kind == "label":
            v = sums[1:4] / safe_den  # divided, not multiplied by 1/den: ties break as in compute_rate
            v = torch.stack([v[0], v[1], 1.0 - v[2]])
        elif kind == "loss":
            v = (rows[:, _LOSS] / safe_den).expand(3, -1)
        elif kind == "base":  # no proxy
            v = (sums[1] / safe_den).expand(3, -1)
        else:  # precision / NPV: the plain ratio of proxy counts (its denominator depends on the predictions)
            ok = defined & (sums[4] > 0)
            value = torch.where(ok, sums[2] / torch.where(ok, sums[4], 1.0), 0.0)
            v = torch.stack([sums[1] / safe_den, value, value])
        return _Node(torch.where(defined, v, 0.0), defined)

    # operators ----------------------------------------------------------------------------------------------
    def visit_binop(self, expr: BinOp) -> _Node:
        a, b = self.visit(expr.a), self.visit(expr.b)
        _check_sizes(a, b, expr)
        defined = a.d & b.d
        if expr.op == "+":
            return _Node(a.v + b.v, defined)
        if expr.op == "-":  # the upper bound of a - b uses the lower bound of b
            return _Node(a.v - b.v[_SWAP, :], defined)
        (ah, au, al), (bh, bu, bl) = a.v, b.v
        if expr.op == "*":  # the four corner products of the two intervals
            return _extreme_corners(ah * bh, defined, [au * bu, au * bl, al * bu, al * bl])
        # Division: interval quotient when the proxy denominator is surely positive, else by the hard value.
        nonzero = bh != 0
        positive = bl > 0
        safe = positive | nonzero
        dens = [torch.where(safe, torch.where(positive, bound, bh), 1.0) for bound in (bu, bl)]
        corners = [num / den for num in (au, al) for den in dens]
        return _extreme_corners(ah / torch.where(nonzero, bh, 1.0), defined & nonzero, corners)

    def visit_abs(self, expr: Abs) -> _Node:
        # The branch follows the sign of the true value; |x| = -x on the negative side (hard row included).
        a = self.visit(expr.a)
        return _Node(torch.where(a.v[0] >= 0, a.v, -a.v[_SWAP, :]), a.d)

    def visit_reduce(self, expr: Reduce) -> _Node:
        # The entry is chosen among the defined ones by its true value: argmax/argmin on the device, then a gather
        # (the NumPy evaluator reads the index on the host). Fewer than needed() defined: undefined.
        a = self.visit(expr.a)
        k = max(a.v.shape[-1], a.d.shape[-1])
        d = a.d.expand(k)
        v = a.v.expand(3, k)
        fill = float("-inf") if expr.how == "max" else float("inf")
        masked = torch.where(d, v[0], fill)
        index = (masked.argmax() if expr.how == "max" else masked.argmin()).reshape(1)
        enough = (d.sum() >= expr.needed()).reshape(1)
        return _Node(v.index_select(1, index), enough)

    def visit_guard(self, expr: Guard) -> _Node:
        a, ref = self.visit(expr.a), self.visit(expr.reference)
        enough = ref.d.sum() >= expr.count
        return _Node(a.v, a.d & enough)

    def visit_elementwise(self, expr: Elementwise) -> _Node:
        a, b = self.visit(expr.a), self.visit(expr.b)
        _check_sizes(a, b, expr)
        take_a = a.v[0] >= b.v[0] if expr.how == "maximum" else a.v[0] <= b.v[0]
        return _Node(torch.where(take_a, a.v, b.v), a.d & b.d)

    def visit_pairwise(self, expr: Pairwise) -> _Node:
        a, b = self.visit(expr.a), self.visit(expr.b)
        n = a.v.shape[-1]
        if n != b.v.shape[-1]:
            raise ValueError(f"pairwise() needs two expressions with the same number of entries, in {expr}")
        i, j = _pairs(n, expr.symmetric, self.device)
        da, db = a.d.expand(n), b.d.expand(n)
        return _Node(a.v[:, i] - b.v[_SWAP, :][:, j], da[i] & db[j])

    def visit_concat(self, expr: Concat) -> _Node:
        parts = [self.visit(p) for p in expr.parts]
        sizes = [max(p.v.shape[-1], p.d.shape[-1]) for p in parts]
        v = torch.cat([p.v.expand(3, k) for p, k in zip(parts, sizes)], dim=-1)
        d = torch.cat([p.d.expand(k) for p, k in zip(parts, sizes)], dim=-1)
        return _Node(v, d)


def _pairs(n: int, symmetric: bool, device: torch.device) -> tuple[Tensor, Tensor]:
    """Row indices ``(i, j)`` of :meth:`Pairwise.pairs <fairopt.constraints.expressions.Pairwise.pairs>` (the same
    row-major order), built on the device without ``nonzero`` (which would synchronize)."""

    def build() -> Tensor:
        if symmetric:
            return torch.triu_indices(n, n, offset=1, device=device)
        i = torch.arange(n, device=device).repeat_interleave(max(n - 1, 0))
        step = torch.arange(max(n - 1, 0), device=device).repeat(n)
        return torch.stack([i, step + (step >= i).to(step.dtype)])  # every j != i, in increasing order

    ij = _constant(("pairs", n, symmetric, device), build)
    return ij[0], ij[1]


def _check_sizes(a: _Node, b: _Node, expr: Expr) -> None:
    n, m = a.v.shape[-1], b.v.shape[-1]
    if n != m and n != 1 and m != 1:
        broadcast_sizes(n, m, str(expr))  # raises with the expression in the message


def _extreme_corners(hard: Tensor, defined: Tensor, corners: list[Tensor]) -> _Node:
    """Bounds of an interval product or quotient: the largest and the smallest corner value (the first corner at a
    tie, as ``argmax``/``argmin`` return the first index); gradients flow through the chosen corner only."""
    k = max(hard.shape[-1], defined.shape[-1], *(c.shape[-1] for c in corners))
    stack = torch.stack([c.expand(k) for c in corners])  # (4, k)
    upper = stack.gather(0, stack.argmax(0, keepdim=True))[0]
    lower = stack.gather(0, stack.argmin(0, keepdim=True))[0]
    return _Node(torch.stack([hard.expand(k), upper, lower]), defined.expand(k))
