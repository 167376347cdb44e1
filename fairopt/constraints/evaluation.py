r"""Evaluation of rate expressions: values, proxy bounds and their gradients, on the host in NumPy.

Everything downstream of a :class:`~fairopt.stats.GroupStats` table is a function of a few dozen numbers
(``G × K``). Evaluating an expression with tensor operations costs one dispatch (a few µs) per operation and as
much again in the autograd pass, about 0.7 ms per training step for equalized odds over 2 groups, several times
the step of a small MLP. Here the tree is walked once in NumPy (float64), carrying for every node its hard value,
its proxy ``upper``/``lower`` bounds and the ``defined`` mask (:class:`Linearization`), and remembering the branch
each node took. Gradients are vector-Jacobian products in reverse over the same tree
(:meth:`Linearization.vjp`), so their cost grows with the number of entries, never with entries × table size.
:func:`attach` connects a value to the autograd graph of the table through that product: the value is exact and
so is its first derivative (second derivatives are not carried).

The first derivative is all a first-order method needs, and it is what makes the per-step path of
:class:`~fairopt.optim.ConstrainedOptimizer` cheap: a Lagrangian ``f + Σ μ_i g̃_i`` needs only
``Σ μ_i ∂g̃_i/∂T = vjp(μ)``, one ``(G, K)`` array.

Semantics (see :mod:`fairopt.constraints.expressions`): rates as :func:`fairopt.rates.compute_rate` defines them;
interval arithmetic for the bounds; ``abs``, ``max``/``min`` and ``maximum``/``minimum`` choose their branch or
entry by the *true* values, interval products and quotients by the bound values (the first corner at a tie);
undefined entries hold 0 with zero derivative. Derivatives w.r.t. the hard columns are 0 (they are counts).

A table on a GPU is copied to the host (one synchronization per evaluation). The device-side implementation of the
same protocol, with the same semantics and no host round trip, is :mod:`fairopt.constraints.device_evaluation`
(``ConstrainedOptimizer(evaluator="device")``, the default on CUDA).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from fairopt._deprecation import renamed_attribute as _renamed
from fairopt.constraints.expressions import (
    PER_GROUP,
    Abs,
    BinOp,
    Bounds,
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
    link,
)
from fairopt.rates import RATES, is_label_conditioned, mixer_matrix
from fairopt.stats import COLUMNS, GroupStats

__all__ = ["Linearization", "attach", "evaluate_expr", "host_table", "linearize", "to_tensors", "value_tensors"]

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


Cotangent = np.ndarray | None
Vjp = Callable[[Cotangent, Cotangent], np.ndarray]


class Linearization(NamedTuple):
    """An expression (or constraint) at one table, as float64 NumPy arrays.

    Leading batch dimensions ``...`` appear when a stack of tables is evaluated (``gradients=False``).

    Attributes:
        hard: ``(..., k)`` true values.
        proxy_upper: ``(..., k)`` proxy upper bound (the ``proxy`` value of a constraint).
        proxy_lower: ``(..., k)`` proxy lower bound.
        defined: ``(..., k)`` bool.
        vjp: ``vjp(c_upper, c_lower) -> (G*K,)``, the vector-Jacobian product ``c_upperᵀ ∂upper/∂T +
            c_lowerᵀ ∂lower/∂T`` w.r.t. the table flattened row-major (``G`` rows of ``K`` columns); either
            cotangent ``(k,)`` may be None (zero). None when gradients were not asked for (always for a stack).
    """

    hard: np.ndarray
    proxy_upper: np.ndarray
    proxy_lower: np.ndarray
    defined: np.ndarray
    vjp: Vjp | None

    def shifted(self, offset: float) -> Linearization:
        """Values minus ``offset`` at defined entries (0 elsewhere), e.g. ``expr - tolerance``."""
        if offset == 0.0:
            return self
        d = self.defined
        if d.all():
            return self._replace(
                hard=self.hard - offset, proxy_upper=self.proxy_upper - offset, proxy_lower=self.proxy_lower - offset
            )
        return self._replace(
            hard=np.where(d, self.hard - offset, 0.0),
            proxy_upper=np.where(d, self.proxy_upper - offset, 0.0),
            proxy_lower=np.where(d, self.proxy_lower - offset, 0.0),
        )

    @property
    def upper(self) -> np.ndarray:
        """Deprecated name of :attr:`proxy_upper` (``lower``/``upper`` name interval ends; see the glossary)."""
        return _renamed(self, "upper", "proxy_upper")

    @property
    def lower(self) -> np.ndarray:
        """Deprecated name of :attr:`proxy_lower`."""
        return _renamed(self, "lower", "proxy_lower")

    def jacobian(self, bound: str = "upper") -> np.ndarray:
        """The dense ``(k, G*K)`` Jacobian of one proxy bound (``"upper"``: :attr:`proxy_upper`, or ``"lower"``), one
        VJP per entry: for tests and inspection, not for a training loop."""
        if self.vjp is None:
            raise ValueError("this linearization was computed without gradients")
        eye = np.eye(self.hard.shape[-1])
        return np.stack([self.vjp(e, None) if bound == "upper" else self.vjp(None, e) for e in eye])


def host_table(stats: GroupStats) -> np.ndarray:
    """The table as a ``(G, K)`` float64 NumPy array (a view when it already is one on the CPU)."""
    table = stats.table.detach()
    if table.device.type != "cpu":
        table = table.cpu()
    return table.double().numpy()


def linearize(expr: Expr, table: np.ndarray, *, gradients: bool = True) -> Linearization:
    """Evaluate ``expr`` on a ``(G, K)`` float64 table (or a ``(B, G, K)`` stack), with its VJP.

    Args:
        expr: a rate expression.
        table: ``(..., G, K)`` float64 array (:func:`host_table`).
        gradients: keep what :attr:`Linearization.vjp` needs (otherwise it is None); must be False for a stack.

    Returns:
        :class:`Linearization` with ``k = expr.size(G)`` entries; undefined entries are 0 with zero derivative.

    Raises:
        ValueError: the expression refers to a group ``>= G``; ``pairwise`` of expressions of different sizes;
            gradients asked for a stack of tables.
    """
    evaluator = _Evaluator(table, gradients)
    node = evaluator.visit(expr)
    v, d = node.v, node.d
    if not node.full:
        v = np.where(d, v, 0.0)
    shape = (*table.shape[:-2], d.shape[-1])
    if d.shape != shape:  # a constant expression has one value for the whole stack
        d = np.broadcast_to(d, shape).copy()
    elif not d.flags.writeable:  # the shared read-only mask of a one-entry reduction: torch wants its own
        d = d.copy()
    if v.shape[1:] != shape or not v.flags.writeable:
        v = np.broadcast_to(v, (3, *shape)).copy()
    vjp = None
    if gradients:
        defined, full, back = d, node.full, node.back

        def vjp(c_upper: Cotangent, c_lower: Cotangent) -> np.ndarray:
            zero = np.zeros(defined.shape)
            cu = zero if c_upper is None else np.asarray(c_upper, dtype=np.float64)
            cl = zero if c_lower is None else np.asarray(c_lower, dtype=np.float64)
            if not full:  # undefined entries have zero derivative
                cu, cl = np.where(defined, cu, 0.0), np.where(defined, cl, 0.0)
            evaluator.grad = np.zeros((evaluator.num_groups, _K))
            back(cu, cl)
            return evaluator.grad.reshape(-1)

    return Linearization(v[0], v[1], v[2], d, vjp)


class _Attach(torch.autograd.Function):
    """``value`` (computed from ``table`` outside autograd) with the gradient ``vjp(grad_output)`` w.r.t. it."""

    # forward(ctx, ...) rather than setup_context: Function.apply then skips inspect.signature (~25 µs a call).
    @staticmethod
    def forward(ctx: Any, table: Tensor, value: Tensor, vjp: Callable[[np.ndarray], np.ndarray]) -> Tensor:  # type: ignore[override]
        ctx.vjp, ctx.shape = vjp, table.shape
        return value

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        g = ctx.vjp(grad.detach().cpu().double().numpy())
        return torch.from_numpy(g).to(device=grad.device, dtype=grad.dtype).view(ctx.shape), None, None


def attach(value: np.ndarray, vjp: Callable[[np.ndarray], np.ndarray] | None, table: Tensor) -> Tensor:
    """``value`` as a tensor whose gradient w.r.t. ``table`` is given by ``vjp`` (exact value, first order).

    Args:
        value: ``(k,)`` values at ``table``. vjp: ``cotangent (k,) -> (G*K,)`` gradient of ``cotangentᵀ value``
            w.r.t. the flattened table (None: a constant). table: the ``(G, K)`` tensor they were computed from
            (when it does not require grad the result is a constant).

    Returns:
        ``(k,)`` tensor on ``table.device`` in ``table.dtype``.
    """
    out = torch.from_numpy(value).to(device=table.device, dtype=table.dtype)
    if vjp is None or not table.requires_grad:
        return out
    return _Attach.apply(table, out, vjp)


def value_tensors(lin: Linearization, table: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(hard, upper, defined)`` tensors on ``table``'s device and dtype; ``upper`` (a constraint's proxy value) is
    differentiable w.r.t. ``table`` when the linearization has a VJP (:func:`attach`)."""
    hard = torch.from_numpy(lin.hard).to(device=table.device, dtype=table.dtype)
    defined = torch.from_numpy(lin.defined).to(table.device)
    vjp = lin.vjp
    return hard, attach(lin.proxy_upper, None if vjp is None else lambda c: vjp(c, None), table), defined


def to_tensors(lin: Linearization, table: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(hard, upper, lower, defined)``: :func:`value_tensors` and the lower bound, differentiable the same way."""
    hard, upper, defined = value_tensors(lin, table)
    vjp = lin.vjp
    return hard, upper, attach(lin.proxy_lower, None if vjp is None else lambda c: vjp(None, c), table), defined


def evaluate_expr(expr: Expr, stats: GroupStats) -> Bounds:
    """:meth:`Expr.evaluate <fairopt.constraints.Expr.evaluate>`: :class:`Bounds` of ``(k,)`` tensors on the table's
    device and dtype; ``upper``/``lower`` are differentiable w.r.t. the table."""
    return Bounds(*to_tensors(linearize(expr, host_table(stats), gradients=stats.table.requires_grad), stats.table))


Back = Callable[[np.ndarray, np.ndarray], None]


def _no_back(cu: np.ndarray, cl: np.ndarray) -> None:
    return None


class _Node(NamedTuple):
    """An expression's value inside the evaluator: ``v (3, ..., k)`` stacks [hard, upper, lower], ``d (..., k)`` the
    defined mask, ``full`` whether all are defined, ``back(c_upper, c_lower)`` adds the node's VJP into the
    evaluator's gradient. Stacking the three values makes each operator one NumPy call instead of three: this runs
    every training step."""

    v: np.ndarray
    d: np.ndarray
    full: bool
    back: Back


_TRUE = np.ones(1, dtype=bool)
_TRUE.flags.writeable = False  # shared "defined" of one entry; combined with &, never written

# Negating an interval swaps its bounds: the rows of -x are -x[[hard, lower, upper]].
_SWAP_V = np.array([0, 2, 1])


def _swapped(v: np.ndarray) -> np.ndarray:
    return v.take(_SWAP_V, axis=0)


def _sum_to(c: np.ndarray, size: int) -> np.ndarray:
    """A cotangent of a broadcast operand: summed back to one entry when the operand had one."""
    return c.sum(keepdims=True) if size == 1 and c.shape[-1] != 1 else c


def _selection(group: object, num_groups: int) -> np.ndarray | None:
    """``(1, G)`` 0/1 row pooling the table rows of a group id, a tuple of ids, or all (None); None for per-group."""
    if group == PER_GROUP:
        return None
    select = np.zeros((1, num_groups))
    select[0, slice(None) if group is None else list(group) if isinstance(group, tuple) else [group]] = 1.0
    return select


class _Evaluator(ExprVisitor[_Node]):
    """One pass over an expression tree on one table or a stack of tables (each rate computed once per group
    selection); ``grad`` accumulates the ``(G, K)`` gradient of a reverse pass."""

    def __init__(self, table: np.ndarray, gradients: bool) -> None:
        self.table = table
        self.batch = table.shape[:-2]
        self.num_groups = table.shape[-2]
        if gradients and self.batch:
            raise ValueError("gradients are computed for one (G, K) table, not a stack; pass gradients=False")
        self.gradients = gradients
        self.grad = np.zeros((self.num_groups, _K))
        self.cache: dict[tuple[str, object], _Node] = {}

    # leaves -------------------------------------------------------------------------------------------------
    def visit_const(self, expr: Const) -> _Node:
        ones = (1,) * len(self.batch)  # broadcasts against a stack of tables
        return _Node(np.full((3, *ones, 1), expr.value), np.ones((*ones, 1), dtype=bool), True, _no_back)

    def visit_rate(self, expr: RateRef) -> _Node:
        if expr.max_group() >= self.num_groups:
            raise ValueError(
                f"{expr} refers to group {expr.max_group()} but the statistics have {self.num_groups} groups"
            )
        key = (expr.rate, expr.group)
        node = self.cache.get(key)
        if node is None:
            node = self.cache[key] = self._rate_rows(expr.rate, expr.group)
        return node

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
        # 1 / den where defined, else 0 (only the reverse pass reads it; np.where(True, x, 0) is x itself)
        inv = None if not self.gradients else 1.0 / den if full else np.where(defined, 1.0 / safe_den, 0.0)

        def rows(c: np.ndarray) -> np.ndarray:  # a cotangent per pooled row -> per table row
            return c if select is None else select[0] * c[0]

        def add(c: np.ndarray, column: np.ndarray) -> None:  # grad += ∂(cᵀ (select @ table @ column)) / ∂ table
            self.grad += rows(c)[:, None] * column

        back: Back = _no_back
        if kind == "label":
            v = sums[1:4] / safe_den  # divided, not multiplied by 1/den: ties break as in compute_rate
            v[2] = 1.0 - v[2]

            w_upper, w_lower = w[:, 2], w[:, 3]

            def back(cu: np.ndarray, cl: np.ndarray) -> None:
                self.grad += rows(cu * inv)[:, None] * w_upper - rows(cl * inv)[:, None] * w_lower

        elif kind == "loss":
            loss = self.table[..., _LOSS] if select is None else self.table[..., _LOSS] @ select.T
            v = np.broadcast_to(loss / safe_den, (3, *den.shape))

            def back(cu: np.ndarray, cl: np.ndarray) -> None:
                self.grad[:, _LOSS] += rows((cu + cl) * inv)

        elif kind == "base":  # no proxy
            v = np.broadcast_to(sums[1] / safe_den, (3, *den.shape))
        else:  # precision / NPV: the plain ratio of proxy counts (its denominator depends on the predictions)
            ok = defined & (sums[4] > 0)
            proxy_den = np.where(ok, sums[4], 1.0)
            value = np.where(ok, sums[2] / proxy_den, 0.0)
            v = np.stack([sums[1] / safe_den, value, value])
            pinv = np.where(ok, 1.0 / proxy_den, 0.0)

            def back(cu: np.ndarray, cl: np.ndarray) -> None:  # ∂(num/den) = (∂num - (num/den) ∂den) / den
                c = (cu + cl) * pinv
                add(c, w[:, 2])
                add(-c * value, w[:, 4])

        if not full:
            v = np.where(defined, v, 0.0)
        return _Node(v, defined, full, back)

    # operators ----------------------------------------------------------------------------------------------
    def visit_binop(self, expr: BinOp) -> _Node:
        a, b = self.visit(expr.a), self.visit(expr.b)
        _check_sizes(a, b, expr)
        defined, full = a.d & b.d, a.full and b.full
        ka, kb = a.d.shape[-1], b.d.shape[-1]
        if expr.op == "+":

            def back(cu: np.ndarray, cl: np.ndarray) -> None:
                a.back(_sum_to(cu, ka), _sum_to(cl, ka))
                b.back(_sum_to(cu, kb), _sum_to(cl, kb))

            return _Node(a.v + b.v, defined, full, back)
        if expr.op == "-":  # the upper bound of a - b uses the lower bound of b

            def back(cu: np.ndarray, cl: np.ndarray) -> None:
                a.back(_sum_to(cu, ka), _sum_to(cl, ka))
                b.back(_sum_to(-cl, kb), _sum_to(-cu, kb))

            return _Node(a.v - _swapped(b.v), defined, full, back)
        (ah, au, al), (bh, bu, bl) = a.v, b.v
        if expr.op == "*":  # the four corner products of the two intervals
            xs, ys = (au, au, al, al), (bu, bl, bu, bl)
            values = [x * y for x, y in zip(xs, ys)]
            # ∂(x y) = y ∂x + x ∂y: corner i sends its cotangent to bound i // 2 of a and bound i % 2 of b
            d_a, d_b = ys, xs
            return _extreme_corners(ah * bh, defined, values, d_a, d_b, a, b)
        # Division: interval quotient when the proxy denominator is surely positive, else by the hard value.
        nonzero = bh != 0
        defined = defined & nonzero
        positive = bl > 0
        safe = positive | nonzero
        dens = [np.where(safe, np.where(positive, bound, bh), 1.0) for bound in (bu, bl)]
        values = [num / den for num in (au, al) for den in dens]
        # ∂(n/d) = ∂n / d - (n/d) ∂d / d; the denominator moves only where it is a proxy bound
        d_a = [1.0 / den for _ in (0, 1) for den in dens]
        d_b = [np.where(positive, -q / den, 0.0) for q, den in zip(values, dens * 2)]
        return _extreme_corners(ah / np.where(nonzero, bh, 1.0), defined, values, d_a, d_b, a, b)

    def visit_abs(self, expr: Abs) -> _Node:
        # The branch follows the sign of the true value; |x| = -x on the negative side (hard row included).
        a = self.visit(expr.a)
        pos = a.v[0] >= 0

        def back(cu: np.ndarray, cl: np.ndarray) -> None:
            a.back(np.where(pos, cu, -cl), np.where(pos, cl, -cu))

        return _Node(np.where(pos, a.v, -_swapped(a.v)), a.d, a.full, back)

    def visit_reduce(self, expr: Reduce) -> _Node:
        # The entry is chosen among the defined ones by its true value; fewer than needed() defined: undefined
        # (zeroed later).
        a = self.visit(expr.a)
        hard = a.v[0]
        masked = hard if a.full else np.where(a.d, hard, -np.inf if expr.how == "max" else np.inf)
        index = masked.argmax(-1) if expr.how == "max" else masked.argmin(-1)
        k = a.d.shape[-1]
        needed = expr.needed()
        if a.full and k >= needed:
            any_defined = _TRUE if not self.batch else np.ones((*self.batch, 1), dtype=bool)
        else:
            any_defined = a.d.sum(-1, keepdims=True) >= needed
        full = any_defined is _TRUE or bool(any_defined.all())
        if self.batch:
            v = np.take_along_axis(np.broadcast_to(a.v, (3, *masked.shape)), index[None, ..., None], axis=-1)
            return _Node(v, any_defined, full, _no_back)
        i = int(index)

        def back(cu: np.ndarray, cl: np.ndarray) -> None:
            c = np.zeros((2, k))
            c[0, i], c[1, i] = cu[0], cl[0]
            a.back(c[0], c[1])

        return _Node(a.v[:, i : i + 1], any_defined, full, back)

    def visit_guard(self, expr: Guard) -> _Node:
        a, ref = self.visit(expr.a), self.visit(expr.reference)
        enough = ref.d.sum(-1, keepdims=True) >= expr.count
        if bool(enough.all()):
            return a
        defined = a.d & enough
        return _Node(a.v, defined, bool(defined.all()), a.back)

    def visit_elementwise(self, expr: Elementwise) -> _Node:
        a, b = self.visit(expr.a), self.visit(expr.b)
        _check_sizes(a, b, expr)
        take_a = a.v[0] >= b.v[0] if expr.how == "maximum" else a.v[0] <= b.v[0]
        ka, kb = a.d.shape[-1], b.d.shape[-1]

        def back(cu: np.ndarray, cl: np.ndarray) -> None:
            a.back(_sum_to(np.where(take_a, cu, 0.0), ka), _sum_to(np.where(take_a, cl, 0.0), ka))
            b.back(_sum_to(np.where(take_a, 0.0, cu), kb), _sum_to(np.where(take_a, 0.0, cl), kb))

        return _Node(np.where(take_a, a.v, b.v), a.d & b.d, a.full and b.full, back)

    def visit_pairwise(self, expr: Pairwise) -> _Node:
        a, b = self.visit(expr.a), self.visit(expr.b)
        n = a.d.shape[-1]
        if n != b.d.shape[-1]:
            raise ValueError(f"pairwise() needs two expressions with the same number of entries, in {expr}")
        i, j = expr.pairs(n)

        def back(cu: np.ndarray, cl: np.ndarray) -> None:  # entry (i, j): upper a_u[i] - b_l[j], lower a_l[i] - b_u[j]
            a.back(np.bincount(i, cu, n), np.bincount(i, cl, n))
            b.back(-np.bincount(j, cl, n), -np.bincount(j, cu, n))

        v = a.v[..., i] - _swapped(b.v)[..., j]
        return _Node(v, a.d[..., i] & b.d[..., j], a.full and b.full, back)

    def visit_concat(self, expr: Concat) -> _Node:
        parts = [self.visit(p) for p in expr.parts]
        if self.batch:  # constants are (1,): give every part the batch shape first
            parts = [
                p._replace(
                    v=np.broadcast_to(p.v, (3, *self.batch, p.d.shape[-1])),
                    d=np.broadcast_to(p.d, (*self.batch, p.d.shape[-1])),
                )
                for p in parts
            ]
        bounds = list(itertools.accumulate((p.d.shape[-1] for p in parts), initial=0))

        def back(cu: np.ndarray, cl: np.ndarray) -> None:
            for p, lo, hi in zip(parts, bounds[:-1], bounds[1:]):
                p.back(cu[lo:hi], cl[lo:hi])

        v = np.concatenate([p.v for p in parts], axis=-1)
        d = np.concatenate([p.d for p in parts], axis=-1)
        return _Node(v, d, all(p.full for p in parts), back)


def _check_sizes(a: _Node, b: _Node, expr: Expr) -> None:
    n, m = a.d.shape[-1], b.d.shape[-1]
    if n != m and n != 1 and m != 1:
        broadcast_sizes(n, m, str(expr))  # raises with the expression in the message


def _extreme_corners(
    hard: np.ndarray,
    defined: np.ndarray,
    values: list[np.ndarray],
    d_a: list[np.ndarray] | tuple[np.ndarray, ...],
    d_b: list[np.ndarray] | tuple[np.ndarray, ...],
    a: _Node,
    b: _Node,
) -> _Node:
    """Bounds of an interval product or quotient: the largest and the smallest of the corner values (the first
    corner at a tie). Corner ``c`` combines bound ``c // 2`` of ``a`` (upper, lower) with bound ``c % 2`` of ``b``;
    ``d_a[c]``/``d_b[c]`` are its partial derivatives w.r.t. those bounds. One-entry operands are broadcast."""
    shape = np.broadcast_shapes(*(v.shape for v in [*values, hard, defined]))
    v = np.stack([np.broadcast_to(x, shape) for x in values])
    hi, lo = v.argmax(0), v.argmin(0)
    upper = np.take_along_axis(v, hi[None], 0)[0]
    lower = np.take_along_axis(v, lo[None], 0)[0]
    ka, kb = a.d.shape[-1], b.d.shape[-1]

    def back(cu: np.ndarray, cl: np.ndarray) -> None:
        ca, cb = [np.zeros(shape), np.zeros(shape)], [np.zeros(shape), np.zeros(shape)]
        for c in range(4):
            weight = np.where(hi == c, cu, 0.0) + np.where(lo == c, cl, 0.0)
            ca[c // 2] += weight * d_a[c]
            cb[c % 2] += weight * d_b[c]
        a.back(_sum_to(ca[0], ka), _sum_to(ca[1], ka))
        b.back(_sum_to(cb[0], kb), _sum_to(cb[1], kb))

    defined = np.broadcast_to(defined, shape).copy()
    return _Node(np.stack([np.broadcast_to(hard, shape), upper, lower]), defined, bool(defined.all()), back)


link("evaluate_expr", evaluate_expr)
