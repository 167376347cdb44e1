r"""Evaluation of rate expressions with torch ops on the table's device: no host round trip.

The second implementation of the :class:`~fairopt.constraints.expressions.ExprVisitor` protocol next to the NumPy
evaluator of :mod:`fairopt.constraints.evaluation`, with the same semantics, node by node (rates as
:func:`fairopt.rates.compute_rate` defines them; interval arithmetic for the proxy bounds; ``abs``, ``max``/``min``
and ``maximum``/``minimum`` choose their branch or entry by the *true* values, interval products and quotients by
the bound values, the first corner at a tie; undefined entries hold 0 with zero derivative; derivatives w.r.t. the
hard columns are 0, except with ``hard_gradients``, the delta method's Jacobian). Where the NumPy evaluator branches
on values on the host (``if defined.all()``, ``int(argmax)``), this one always takes the masked form
(``torch.where``, ``gather``), so

* it never reads a tensor on the host: no ``.item()``, ``.tolist()``, ``.cpu()``, ``bool(tensor)``; on a GPU the
  constrained step stays in the device queue (CUDA-graph-able, ``torch.cuda.set_sync_debug_mode("error")`` clean);
* ``torch.compile(fullgraph=True)`` traces it with no graph break (the tree walk is Python over the expression, a
  constant: it unrolls at trace time);
* the gradient w.r.t. the table is plain autograd through these ops (first and higher order), and ``torch.func``
  transforms (``grad``, ``vjp``, ``vmap``) see the same graph: the hard columns enter detached (unless
  ``hard_gradients``, which only :meth:`~fairopt.optim.ConstraintSet.hard_jacobian` asks for).

It is the library's one torch evaluator: a table may carry leading batch dimensions, ``(..., G, K)``, and every node
is then one tensor operation over the whole stack. The constrained step evaluates one ``(G, K)`` table
(:class:`~fairopt.optim.ConstraintSet`, ``evaluator="device"``); a tolerance sweep
(:class:`~fairopt.sweep.SweepTrainer`) evaluates the ``(M, G, K)`` tables of its M members and their dual tables in
one call, with one tolerance per member (``offset``). Where two formulations of a node were measured, the faster one
on both shapes is kept (e.g. cached 0-dim fill values instead of Python floats in ``torch.where``, ``index_select``
with a cached index instead of list indexing); ``tests/test_no_sync.py`` checks that a stack equals its tables
evaluated one by one, and equals ``vmap`` over them.

The constants it needs (the rates' column mixers, group selections, pair indices) are built with torch ops on the
table's device once per ``(device, dtype)`` and cached.

On the CPU, a table of a few dozen numbers is cheaper to walk in NumPy than with ~50 tensor dispatches and their
autograd nodes: :class:`~fairopt.optim.ConstrainedOptimizer` uses this evaluator on CUDA and the NumPy one on the CPU
by default (``evaluator="auto"``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
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


# CPU copies made once at import; moved to a device once per (device, dtype) in _constant. A label-conditioned rate
# needs the first 4 columns only (no proxy denominator).
_MIXERS = {
    name: torch.from_numpy(mixer_matrix(spec)[:, :4] if _KINDS[name] == "label" else mixer_matrix(spec))
    for name, spec in RATES.items()
}
# Rows of a node's value: [hard, proxy upper, proxy lower]; negating an interval swaps its bounds.
_SWAP = (0, 2, 1)
_CONSTANTS: dict[tuple[object, ...], Tensor] = {}
_AFFINE: dict[tuple[object, ...], tuple[Tensor, Tensor]] = {}


def _normal(build: Callable[[], Tensor]) -> Tensor:
    """``build()``, outside inference mode: a cached constant made under ``torch.inference_mode()`` would be an
    inference tensor, which no later autograd pass may save (``ConstraintSet.hard_jacobian`` differentiates
    through these constants)."""
    if torch.is_inference_mode_enabled():
        with torch.inference_mode(False):
            return build()
    return build()


def _scalar(value: float, like: Tensor) -> Tensor:
    """A cached 0-dim tensor of ``like``'s dtype and device. ``torch.where(mask, x, _scalar(0.0, x))`` is about
    1.5x faster on the CPU than passing the Python float (which wraps a fresh tensor each call), and this runs at
    every node of every step."""
    key = ("scalar", value, like.dtype, like.device)
    out = _CONSTANTS.get(key)
    if out is None:
        out = _CONSTANTS[key] = _normal(lambda: torch.tensor(value, dtype=like.dtype, device=like.device))
    return out


def _label_affine(like: Tensor) -> tuple[Tensor, Tensor]:
    """Cached ``(3,)`` sign ``[1, 1, -1]`` and offset ``[0, 0, 1]`` in ``like``'s dtype and device."""
    key = ("label_affine", like.dtype, like.device)
    out = _AFFINE.get(key)
    if out is None:
        sign, offset = _normal(
            lambda: torch.tensor([[1.0, 1.0, -1.0], [0.0, 0.0, 1.0]], dtype=like.dtype, device=like.device)
        )
        out = _AFFINE[key] = (sign, offset)
    return out


def _swapped(v: Tensor) -> Tensor:
    """The rows of ``-x`` read from those of ``x`` (``v (3, ..., k)``): negating an interval swaps its bounds.
    ``index_select`` with a cached index, about 2x faster than indexing with a list (a new index tensor per call)."""
    key = ("swap", v.device)
    index = _CONSTANTS.get(key)
    if index is None:
        index = _CONSTANTS[key] = _normal(lambda: torch.tensor(_SWAP, device=v.device))
    return v.index_select(0, index)


class DeviceValues(NamedTuple):
    """An expression's entries at one table (or a stack of tables), as tensors on the table's device.

    Attributes:
        hard: ``(..., k)`` true values (no gradient, unless :func:`evaluate_device`'s ``hard_gradients``), in the
            table's dtype; ``...`` the table's batch dimensions.
        proxy_upper: ``(..., k)`` proxy upper bound (a constraint's ``proxy`` value); differentiable w.r.t. the
            table's proxy and loss columns when the table requires grad (or is being differentiated by
            ``torch.func``).
        proxy_lower: ``(..., k)`` proxy lower bound, differentiable the same way.
        defined: ``(..., k)`` bool; undefined entries hold 0 with zero derivative.
    """

    hard: Tensor
    proxy_upper: Tensor
    proxy_lower: Tensor
    defined: Tensor

    def shifted(self, offset: float | Tensor) -> DeviceValues:
        """Values minus ``offset`` at defined entries (0 elsewhere), e.g. ``expr - tolerance`` (no host branch).

        Args:
            offset: a Python number, or a tensor that broadcasts against ``(..., k)``: e.g. ``(M, 1)`` tolerances,
                one per table of an ``(M, G, 9)`` stack.
        """
        if isinstance(offset, (int, float)) and offset == 0.0:  # a Python number: a constant, not a tensor value
            return self
        d, zero = self.defined, _scalar(0.0, self.hard)
        return DeviceValues(
            torch.where(d, self.hard - offset, zero),
            torch.where(d, self.proxy_upper - offset, zero),
            torch.where(d, self.proxy_lower - offset, zero),
            d,
        )


def evaluate_device(
    expr: Expr, table: Tensor, *, offset: float | Tensor = 0.0, hard_gradients: bool = False
) -> DeviceValues:
    """Evaluate ``expr`` on a ``(..., G, K)`` table with torch ops on ``table.device`` (no host synchronization).

    Same values, defined mask and first derivatives as :func:`fairopt.constraints.evaluation.linearize` (float
    rounding aside), for every table of the stack; the derivatives are autograd's, w.r.t. ``table``. A leading batch
    (``(M, G, K)``: the M members of a sweep, :class:`~fairopt.sweep.SweepTrainer`) costs the same number of tensor
    operations as one table; ``torch.func.vmap`` over ``(G, K)`` tables gives the same values too.

    Args:
        expr: a rate expression (:mod:`fairopt.constraints.expressions`).
        table: ``(..., G, K)`` floating tensor (``GroupStats.table``, or a stack of them), ``K = 9``; may require
            grad. Its hard-count columns (``tn fp fn tp``) enter detached (the derivative w.r.t. them is 0) unless
            ``hard_gradients``.
        offset: subtracted from every defined entry, as :meth:`DeviceValues.shifted` (one op instead of six): a
            number, or a tensor broadcasting against ``(..., k)``, e.g. ``(M, 1)`` per-member tolerances.
        hard_gradients: keep the hard values' graph through the hard-count columns (``hard`` is then
            differentiable w.r.t. ``tn fp fn tp``, one-sided at the kinks of ``abs`` and ``max``/``min``: the branch
            or entry the values chose; at a tie ``min`` takes the last entry, ``max`` the first): the Jacobian of the
            delta method,
            :meth:`fairopt.optim.ConstraintSet.hard_jacobian`. Not for a training step (the counts are constants
            there).

    Returns:
        :class:`DeviceValues` of ``(..., k)`` entries, ``k = expr.size(G)``, in ``table.dtype``.

    Raises:
        ValueError: ``table`` is not ``(..., G, 9)``; the expression refers to a group ``>= G``; sizes that do not
            broadcast; ``pairwise`` of expressions of different sizes.
        TypeError: a non-floating table; a node type without a ``visit_*`` method (see
            :class:`~fairopt.constraints.ExprVisitor`).
    """
    if not isinstance(table, Tensor) or table.dim() < 2 or table.shape[-1] != len(COLUMNS):
        shape = tuple(table.shape) if isinstance(table, Tensor) else type(table).__name__
        raise ValueError(
            f"table must be a (G, {len(COLUMNS)}) tensor (GroupStats.table) or a (..., G, {len(COLUMNS)}) stack of "
            f"them, got {shape}"
        )
    if not table.is_floating_point():
        raise TypeError(f"table must be floating point (weighted counts), got {table.dtype}; pass table.double()")
    node = _DeviceEvaluator(table, hard_gradients).visit(expr)
    shape = (*table.shape[:-2], max(node.v.shape[-1], node.d.shape[-1]))
    d = node.d.expand(shape)
    v = node.v.expand(3, *shape)
    if not (isinstance(offset, (int, float)) and offset == 0.0):
        v = v - offset  # broadcasts against (..., k), hence against (3, ..., k)
    v = torch.where(d, v, _scalar(0.0, v))
    return DeviceValues(v[0] if hard_gradients else v[0].detach(), v[1], v[2], d)


def _constant(key: tuple[object, ...], build: object) -> Tensor:
    """A cached constant tensor (built by ``build()`` on the first call for ``key``)."""
    value = _CONSTANTS.get(key)
    if value is None:
        value = _normal(build)  # type: ignore[arg-type]
        _CONSTANTS[key] = value
    return value


class _Node(NamedTuple):
    """``v (3, ..., k)``: [hard, upper, lower]; ``d (..., k)`` bool defined mask. Every node has the table's number
    of batch dimensions; a constant has size 1 in each of them and ``k = 1`` (both broadcast)."""

    v: Tensor
    d: Tensor


def _size(node: _Node) -> int:
    return max(node.v.shape[-1], node.d.shape[-1])


class _DeviceEvaluator(ExprVisitor[_Node]):
    """One pass over an expression tree on one ``(..., G, K)`` table; each rate computed once per group selection."""

    def __init__(self, table: Tensor, hard_gradients: bool = False) -> None:
        # Derivatives w.r.t. the hard columns are 0 (they are counts), as in the NumPy evaluator: their part of the
        # table enters detached, so autograd differentiates through the proxy and loss columns only. Always, not only
        # when table.requires_grad: under torch.func (grad, vjp, vmap) that flag is False for a tensor being
        # differentiated. (hard_gradients: the delta method's Jacobian of the hard values, see evaluate_device.)
        if not hard_gradients:
            table = torch.cat([table[..., _HARD].detach(), table[..., _HARD.stop :]], dim=-1)
        self.table = table
        self.hard_gradients = hard_gradients
        self.num_groups = table.shape[-2]
        self.batch = tuple(table.shape[:-2])
        self.batch_ones = (1,) * len(self.batch)  # a constant's batch shape
        self.device, self.dtype = table.device, table.dtype
        self.cache: dict[tuple[str, object], _Node] = {}

    def _key(self, *parts: object) -> tuple[object, ...]:
        return (*parts, self.device, self.dtype)

    # leaves -------------------------------------------------------------------------------------------------
    def visit_const(self, expr: Const) -> _Node:
        ones = (*self.batch_ones, 1)
        true = _constant(("true", ones, self.device), lambda: torch.ones(ones, dtype=torch.bool, device=self.device))
        return _Node(self.table.new_full((3, *ones), expr.value), true)

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
        rows = self.table if select is None else select @ self.table  # (..., r, K)
        sums = rows @ w  # (..., r, 4 or 5), the columns of _device_mixer
        den = sums[..., 0]
        defined = den > 0
        zero = _scalar(0.0, den)
        safe_den = torch.where(defined, den, _scalar(1.0, den))
        if kind == "label":
            # [hard, upper, 1 - complement] = offset + sign * ratios: one exact fused op (-x + 1 rounds as 1 - x), and
            # divided, not multiplied by 1/den, so that values and hence ties are those of compute_rate.
            sign, offset = _label_affine(den)
            v = torch.addcmul(offset, sums[..., 1:] / safe_den[..., None], sign).movedim(-1, 0)
            return _Node(torch.where(defined, v, zero), defined)
        sums = sums.movedim(-1, 0)  # (5, ..., r): den, hard numerator, proxy numerator, complement, proxy denominator
        if kind == "loss":
            value = rows[..., _LOSS] / safe_den
            v = value.expand(3, *value.shape)
        elif kind == "base":  # no proxy
            value = sums[1] / safe_den
            v = value.expand(3, *value.shape)
        else:  # precision / NPV: the plain ratio of proxy counts (its denominator depends on the predictions)
            ok = defined & (sums[4] > 0)
            value = torch.where(ok, sums[2] / torch.where(ok, sums[4], _scalar(1.0, den)), zero)
            v = torch.stack([sums[1] / safe_den, value, value])
        return _Node(torch.where(defined, v, zero), defined)

    # operators ----------------------------------------------------------------------------------------------
    def visit_binop(self, expr: BinOp) -> _Node:
        a, b = self.visit(expr.a), self.visit(expr.b)
        _check_sizes(a, b, expr)
        defined = a.d & b.d
        if expr.op == "+":
            return _Node(a.v + b.v, defined)
        if expr.op == "-":  # the upper bound of a - b uses the lower bound of b
            return _Node(a.v - _swapped(b.v), defined)
        (ah, au, al), (bh, bu, bl) = a.v, b.v
        if expr.op == "*":  # the four corner products of the two intervals
            return _extreme_corners(ah * bh, defined, [au * bu, au * bl, al * bu, al * bl])
        # Division: interval quotient when the proxy denominator is surely positive, else by the hard value.
        nonzero = bh != 0
        positive = bl > 0
        safe = positive | nonzero
        one = _scalar(1.0, bh)
        dens = [torch.where(safe, torch.where(positive, bound, bh), one) for bound in (bu, bl)]
        corners = [num / den for num in (au, al) for den in dens]
        return _extreme_corners(ah / torch.where(nonzero, bh, one), defined & nonzero, corners)

    def visit_abs(self, expr: Abs) -> _Node:
        # The branch follows the sign of the true value; |x| = -x on the negative side (hard row included).
        a = self.visit(expr.a)
        return _Node(torch.where(a.v[0] >= 0, a.v, -_swapped(a.v)), a.d)

    def visit_reduce(self, expr: Reduce) -> _Node:
        # The entry is chosen among the defined ones by its true value: argmax/argmin on the device, then a gather
        # (the NumPy evaluator reads the index on the host). Fewer than needed() defined: undefined.
        a = self.visit(expr.a)
        shape = (*self.batch, _size(a))
        d = a.d.expand(shape)
        v = a.v.expand(3, *shape)
        masked = torch.where(d, v[0], _scalar(-math.inf if expr.how == "max" else math.inf, v))
        index = masked.argmax(-1, keepdim=True) if expr.how == "max" else masked.argmin(-1, keepdim=True)
        enough = d.sum(-1, keepdim=True) >= expr.needed()
        picked = v.gather(-1, index.expand(3, *index.shape))
        if self.hard_gradients and expr.how == "min":
            # The delta method's derivative (hard_jacobian): the hard value of a min comes from the *last* entry at a
            # tie (max takes the first), so that max_g r_g - min_g r_g over tied rates differentiates as the
            # difference of two of them (the standard error of a gap at a tie), not as r_0 - r_0 = 0. The same hard
            # value either way; the proxy bounds keep the first entry's, as in every other mode.
            last = masked.shape[-1] - 1 - masked.flip(-1).argmin(-1, keepdim=True)
            picked = torch.cat([v[0].gather(-1, last).unsqueeze(0), picked[1:]])
        return _Node(picked, enough)

    def visit_guard(self, expr: Guard) -> _Node:
        a, ref = self.visit(expr.a), self.visit(expr.reference)
        enough = ref.d.sum(-1, keepdim=True) >= expr.count
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
        da, db = a.d.expand(*a.d.shape[:-1], n), b.d.expand(*b.d.shape[:-1], n)
        v = a.v.index_select(-1, i) - _swapped(b.v).index_select(-1, j)
        return _Node(v, da.index_select(-1, i) & db.index_select(-1, j))

    def visit_concat(self, expr: Concat) -> _Node:
        parts = [self.visit(p) for p in expr.parts]
        sizes = [_size(p) for p in parts]
        v = torch.cat([p.v.expand(3, *self.batch, k) for p, k in zip(parts, sizes)], dim=-1)
        d = torch.cat([p.d.expand(*self.batch, k) for p, k in zip(parts, sizes)], dim=-1)
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
    n, m = _size(a), _size(b)
    if n != m and n != 1 and m != 1:
        broadcast_sizes(n, m, str(expr))  # raises with the expression in the message


def _extreme_corners(hard: Tensor, defined: Tensor, corners: list[Tensor]) -> _Node:
    """Bounds of an interval product or quotient: the largest and the smallest corner value (the first corner at a
    tie, as ``argmax``/``argmin`` return the first index); gradients flow through the chosen corner only."""
    shapes = {hard.shape, defined.shape, *(c.shape for c in corners)}
    # torch.broadcast_shapes costs ~10 µs; the shapes are most often equal already
    shape = shapes.pop() if len(shapes) == 1 else torch.broadcast_shapes(*shapes)
    stack = torch.stack([c.expand(shape) for c in corners])  # (4, ..., k)
    upper = stack.gather(0, stack.argmax(0, keepdim=True))[0]
    lower = stack.gather(0, stack.argmin(0, keepdim=True))[0]
    return _Node(torch.stack([hard.expand(shape), upper, lower]), defined.expand(shape))
