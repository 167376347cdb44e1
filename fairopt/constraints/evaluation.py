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
from fairopt._tensors import detached
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
from fairopt.stats import COLUMNS, FEW_GROUPS, GroupStats

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
    table = detached(stats.table)
    if table.device.type != "cpu":
        table = table.cpu()
    return table.double().numpy()


def linearize(expr: Expr, table: np.ndarray, *, gradients: bool = True, offset: float = 0.0) -> Linearization:
    """Evaluate ``expr`` on a ``(G, K)`` float64 table (or a ``(B, G, K)`` stack), with its VJP.

    Args:
        expr: a rate expression.
        table: ``(..., G, K)`` float64 array (:func:`host_table`).
        gradients: keep what :attr:`Linearization.vjp` needs (otherwise it is None); must be False for a stack.
        offset: subtracted from every defined entry, as :meth:`Linearization.shifted` (``expr - tolerance``, the
            same numbers) but in one operation on the stacked values instead of three.

    Returns:
        :class:`Linearization` with ``k = expr.size(G)`` entries; undefined entries are 0 with zero derivative.

    Raises:
        ValueError: the expression refers to a group ``>= G``; ``pairwise`` of expressions of different sizes;
            gradients asked for a stack of tables.
    """
    if table.ndim == 2 and (ranges := _rate_ranges(expr)) is not None:
        if table.shape[0] <= FEW_GROUPS and (small := _linearize_small(ranges, table, gradients, offset)) is not None:
            return small
        return _linearize_ranges(ranges, table, gradients, offset)
    return _linearize_walk(expr, table, gradients, offset)


def _linearize_walk(expr: Expr, table: np.ndarray, gradients: bool, offset: float) -> Linearization:
    """:func:`linearize` by the general tree walk (:class:`_Evaluator`)."""
    evaluator = _Evaluator(table, gradients)
    node = expr.accept(evaluator)
    # The reverse-pass closures hold the evaluator (its grad) and the cache holds their nodes: dropping the cache
    # leaves no reference cycle, so each step's graph is freed at once instead of by the cyclic collector.
    evaluator.cache.clear()
    v, d, full = node.v, node.d, node.full
    shape = (*table.shape[:-2], d.shape[-1])
    if d.shape != shape:  # a constant expression has one value for the whole stack
        d = np.broadcast_to(d, shape).copy()
    elif not d.flags.writeable:  # a shared read-only mask (a full node's, see _true): torch wants its own
        d = d.copy()
    if offset != 0.0:  # values where defined minus offset, 0 elsewhere: the where below zeroes the rest
        v = v - offset
    if not full:
        v = np.where(d, v, 0.0)
    if v.shape[1:] != shape or not v.flags.writeable:
        v = np.broadcast_to(v, (3, *shape)).copy()
    vjp = None
    if gradients:
        defined, back, k = d, node.back, d.shape[-1]

        def vjp(c_upper: Cotangent, c_lower: Cotangent) -> np.ndarray:
            # The reverse pass carries one (2, k) cotangent, rows [upper, lower]: one NumPy call per operator.
            c = _cotangent(c_upper, c_lower, k, None if full else defined)
            evaluator.grad = np.zeros((evaluator.num_groups, _K))
            back(c)
            return evaluator.grad.reshape(-1)

    return Linearization(v[0], v[1], v[2], d, vjp)


def _denominator(den: np.ndarray) -> tuple[list[float], bool, np.ndarray]:
    """``(den.tolist(), every den > 0, the defined mask)`` of one table's ``(G,)`` rate denominators; the mask of a
    fully defined rate is the shared read-only one (:func:`_true`)."""
    listed = den.tolist()
    full = all(map(_POSITIVE, listed))
    return listed, full, _true(den.shape) if full else den > 0.0


def _reciprocal(den: np.ndarray, safe_den: np.ndarray, defined: np.ndarray, full: bool) -> np.ndarray:
    """``1 / den`` where defined, else 0 (``safe_den``: ``den`` with 1 where undefined)."""
    return 1.0 / den if full else np.where(defined, 1.0 / safe_den, 0.0)


def _pick_entry(hard: np.ndarray, defined: np.ndarray, full: bool, how: str, needed: int) -> tuple[int, bool]:
    """The entry a one-table ``max``/``min`` reduction takes (by the true values ``hard``, among the ``defined``
    ones; ``full``: all are) and whether at least ``needed`` entries are defined."""
    is_max = how == "max"
    masked = hard if full else np.where(defined, hard, -np.inf if is_max else np.inf)
    enough = defined.shape[-1] >= needed if full else np.count_nonzero(defined) >= needed
    return int(masked.argmax() if is_max else masked.argmin()), enough


def _cotangent(c_upper: Cotangent, c_lower: Cotangent, k: int, defined: np.ndarray | None) -> np.ndarray:
    """The ``(2, k)`` cotangent ``[c_upper; c_lower]`` of a VJP (None: zeros), zero at undefined entries (``defined``
    None: all are defined): undefined entries have zero derivative."""
    c = np.zeros((2, k))
    if c_upper is not None:
        c[0] = c_upper
    if c_lower is not None:
        c[1] = c_lower
    return c if defined is None else np.where(defined, c, 0.0)


class _RateRange(NamedTuple):
    """One entry ``a(r) - b(r)`` of :func:`_rate_ranges`: two reductions (``how`` "max"/"min", the defined entries
    each needs) of the per-group rate ``r`` (a label-conditioned one)."""

    rate: str
    how_a: str
    how_b: str
    needed_a: int
    needed_b: int


def _rate_range(expr: Expr) -> _RateRange | None:
    if not (type(expr) is BinOp and expr.op == "-" and type(expr.a) is Reduce and type(expr.b) is Reduce):
        return None
    ra, rb = expr.a, expr.b
    rate = ra.a
    if rb.a is not rate or type(rate) is not RateRef or rate.group != PER_GROUP or _KINDS[rate.rate] != "label":
        return None
    return _RateRange(rate.rate, ra.how, rb.how, ra.needed(), rb.needed())


def _rate_ranges(expr: Expr) -> tuple[_RateRange, ...] | None:
    """The entries of ``expr`` when it is a range of a per-group label-conditioned rate (``r.max() - r.min()``, the
    default convention of demographic parity, equal opportunity, ...) or a concatenation of such (equalized odds);
    None otherwise. Remembered on the expression (with the parts it was read from: expressions are not modified)."""
    parts = expr.parts if type(expr) is Concat else (expr,)
    key = tuple(map(id, parts))
    cached = expr.__dict__.get("_rate_ranges")
    if cached is not None and cached[0] == key:
        return cached[1]
    ranges = tuple(_rate_range(p) for p in parts)
    result = None if None in ranges else ranges
    expr.__dict__["_rate_ranges"] = (key, result)
    return result  # type: ignore[return-value]


def _linearize_ranges(
    ranges: tuple[_RateRange, ...], table: np.ndarray, gradients: bool, offset: float
) -> Linearization:
    """:func:`linearize` of :func:`_rate_ranges` entries on one table: the operations of the walk (``_rate_rows``,
    ``_range``, ``visit_concat`` and the reverse pass), in the same order on the same numbers, so the same values and
    gradients bit for bit (``tests/test_evaluation.py`` compares them), without a node, a visitor call or a closure
    per node: the built-in parity constraints are evaluated every training step, twice with a dual window."""
    num_groups = table.shape[0]
    entries = []
    picks = []  # per entry: rate, the two rows taken, 1 / den, whether a row's VJP may skip the others (back_at)
    defined_entries = []
    for entry in ranges:
        sums = (table @ _MIXERS[entry.rate]).T  # rows: den, hard numerator, proxy numerator, complementary proxy
        den = sums[0]
        listed, rate_full, defined = _denominator(den)
        safe_den = den if rate_full else np.where(defined, den, 1.0)
        v = sums[1:4] / safe_den
        np.subtract(1.0, v[2], out=v[2])
        inv = _reciprocal(den, safe_den, defined, rate_full) if gradients else None
        if not rate_full:
            v = np.where(defined, v, 0.0)
        i, defined_a = _pick_entry(v[0], defined, rate_full, entry.how_a, entry.needed_a)
        j, defined_b = _pick_entry(v[0], defined, rate_full, entry.how_b, entry.needed_b)
        entries.append(v[:, i : i + 1] - v[:, j : j + 1].take(_SWAP_V, 0))
        defined_entries.append(defined_a and defined_b)
        picks.append((entry.rate, i, j, inv, rate_full and min(listed, default=0.0) >= _NORMAL))
    k = len(ranges)
    v = entries[0] if k == 1 else np.concatenate(entries, -1)
    full = all(defined_entries)
    d = np.ones(k, dtype=bool) if full else np.array(defined_entries)
    if offset != 0.0:
        v = v - offset
    if not full:
        v = np.where(d, v, 0.0)
    vjp = None
    if gradients:

        def vjp(c_upper: Cotangent, c_lower: Cotangent) -> np.ndarray:
            c = _cotangent(c_upper, c_lower, k, None if full else d)
            grad = np.zeros((num_groups, _K))
            for r, (rate, i, j, inv, one_row) in enumerate(picks):
                weights = _LABEL_BACK[rate]
                # the upper bound of a - b uses the lower bound of b
                for row, c_row in ((i, c[:, r]), (j, -c[::-1, r])):
                    if one_row:
                        grad[row] += (c_row * inv[row]) @ weights
                    else:
                        c_rows = np.zeros((2, num_groups))
                        c_rows[:, row] = c_row
                        grad += (c_rows * inv).T @ weights
            return grad.reshape(-1)

    return Linearization(v[0], v[1], v[2], d, vjp)


# The table columns that a label-conditioned rate's proxy numerator (its upper bound's) and complementary proxy (its
# lower bound is 1 - complement / den) add up: columns 2 and 3 of its mixer (fairopt.rates.mixer_matrix), all 0/1.
_UPPER, _COMPLEMENT = 2, 3
_RANGE_COLUMNS = {
    name: (tuple(np.flatnonzero(m[:, _UPPER]).tolist()), tuple(np.flatnonzero(m[:, _COMPLEMENT]).tolist()))
    for name, m in _MIXERS.items()
    if _KINDS[name] == "label"
}


def _linearize_small(
    ranges: tuple[_RateRange, ...], table: np.ndarray, gradients: bool, offset: float
) -> Linearization | None:
    """:func:`_linearize_ranges` on Python floats for a table of a few groups: the same IEEE operations on the same
    numbers (the same mixer products, divisions and differences; the first entry at a tie of a max/min), so the same
    values and gradients (``tests/test_evaluation.py`` compares them with the walk's on random tables), in a few µs
    instead of a dozen NumPy calls per rate. None where it would not be the same, and the caller takes the NumPy
    path: a non-finite rate (``argmax`` has its own rules for NaN), or with ``gradients`` a defined denominator below
    float64's normal range (``1 / den`` overflows, and the NumPy path spreads the NaN it makes to other rows)."""
    k = len(ranges)
    values = np.zeros((3, k))
    hard, upper, lower = values
    defined = np.zeros(k, dtype=bool)
    picks = []  # per defined entry: (entry index, its rate, row i, 1 / den_i, row j, 1 / den_j)
    for r, entry in enumerate(ranges):
        # the walk's product (the same call on the same shapes: a GEMM's order of summation depends on them)
        sums = (table @ _MIXERS[entry.rate]).tolist()
        rates: list[tuple[float, float, float, float] | None] = []  # per group: hard, upper, lower, 1 / den
        count = 0
        # the rows of the max and the min of the defined rates: the first at a tie, as argmax/argmin
        top = bottom = 0
        high = low = 0.0
        for g, (den, num, proxy, complement, _) in enumerate(sums):
            if den > 0.0:
                if gradients and den < _NORMAL:
                    return None
                h = num / den
                if h - h != 0.0:  # inf or NaN: argmax/argmin have their own rules for these
                    return None
                rates.append((h, proxy / den, 1.0 - complement / den, 1.0 / den))
                if not count or h > high:
                    top, high = g, h
                if not count or h < low:
                    bottom, low = g, h
                count += 1
            else:
                rates.append(None)
        if count < entry.needed_a or count < entry.needed_b:
            continue  # undefined: 0, zero derivative
        i, j = (top if entry.how_a == "max" else bottom), (top if entry.how_b == "max" else bottom)
        a, b = rates[i], rates[j]
        assert a is not None and b is not None  # count >= needed >= 1: defined rows are picked
        # a - b: hard values; upper bound a's upper - b's lower; lower bound a's lower - b's upper
        # a - b, then - offset (one subtraction at a time, as the NumPy path: never a - (b + offset)), and only a
        # nonzero offset, as there (x - -0.0 would turn a -0.0 into +0.0)
        h, u, lo = a[0] - b[0], a[1] - b[2], a[2] - b[1]
        if offset != 0.0:
            h, u, lo = h - offset, u - offset, lo - offset
        hard[r], upper[r], lower[r] = h, u, lo
        defined[r] = True
        picks.append((r, entry.rate, i, a[3], j, b[3]))
    vjp = None
    if gradients:
        num_groups = table.shape[0]

        def vjp(c_upper: Cotangent, c_lower: Cotangent) -> np.ndarray:
            grad = [0.0] * (num_groups * _K)
            for r, rate, i, inv_i, j, inv_j in picks:
                upper_columns, complement_columns = _RANGE_COLUMNS[rate]
                cu = 0.0 if c_upper is None else float(c_upper[r])
                cl = 0.0 if c_lower is None else float(c_lower[r])
                # a - b: a's upper and lower bounds take (cu, cl), b's (-cl, -cu); d upper/d numerator = 1 / den,
                # d lower/d complement = -1 / den
                for row, c_up, c_low, inv in ((i, cu, cl, inv_i), (j, -cl, -cu, inv_j)):
                    base = row * _K
                    up, low = c_up * inv, c_low * inv
                    for c in upper_columns:
                        grad[base + c] += up
                    for c in complement_columns:
                        grad[base + c] += -low
            return np.array(grad)

    return Linearization(hard, upper, lower, defined, vjp)


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


def _as_tensor_of(array: np.ndarray, table: Tensor, *, keep_dtype: bool = False) -> Tensor:
    """``array`` as a tensor on ``table``'s device, in ``table``'s dtype unless ``keep_dtype`` (a bool mask): a view
    of the array where it is there already, without a ``Tensor.to`` call (a no-op one still costs several µs, and
    this runs several times a training step)."""
    out = torch.from_numpy(array)
    if table.is_cpu and (keep_dtype or out.dtype == table.dtype):
        return out
    return out.to(table.device) if keep_dtype else out.to(device=table.device, dtype=table.dtype)


def attach(value: np.ndarray, vjp: Callable[[np.ndarray], np.ndarray] | None, table: Tensor) -> Tensor:
    """``value`` as a tensor whose gradient w.r.t. ``table`` is given by ``vjp`` (exact value, first order).

    Args:
        value: ``(k,)`` values at ``table``. vjp: ``cotangent (k,) -> (G*K,)`` gradient of ``cotangentᵀ value``
            w.r.t. the flattened table (None: a constant). table: the ``(G, K)`` tensor they were computed from
            (when it does not require grad the result is a constant).

    Returns:
        ``(k,)`` tensor on ``table.device`` in ``table.dtype``.
    """
    out = _as_tensor_of(value, table)
    if vjp is None or not table.requires_grad:
        return out
    return _Attach.apply(table, out, vjp)


def value_tensors(lin: Linearization, table: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(hard, upper, defined)`` tensors on ``table``'s device and dtype; ``upper`` (a constraint's proxy value) is
    differentiable w.r.t. ``table`` when the linearization has a VJP (:func:`attach`)."""
    hard, defined = _as_tensor_of(lin.hard, table), _as_tensor_of(lin.defined, table, keep_dtype=True)
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


Back = Callable[[np.ndarray], None]
"""``back(c)`` adds a node's VJP into the evaluator's gradient; ``c`` is ``(2, k)``: rows [c_upper, c_lower]."""
BackAt = Callable[[int, np.ndarray], None]


def _no_back(c: np.ndarray) -> None:
    return None


class _Node(NamedTuple):
    """An expression's value inside the evaluator: ``v (3, ..., k)`` stacks [hard, upper, lower], ``d (..., k)`` the
    defined mask, ``full`` whether all are defined, ``back(c)`` adds the node's VJP into the evaluator's gradient
    (:data:`Back`). Stacking the three values (and the two cotangents) makes each operator one NumPy call instead of
    three: this runs every training step. ``d`` of a full node may be a shared read-only mask (:func:`_true`); it is
    never written. ``back_at(i, c_i)``, where a node has it, is ``back(c)`` for a ``c`` that is zero but in entry
    ``i`` (``c_i`` its two rows), the same numbers without the zeros (what a ``max``/``min`` sends back)."""

    v: np.ndarray
    d: np.ndarray
    full: bool
    back: Back
    back_at: BackAt | None = None


_TRUES: dict[tuple[int, ...], np.ndarray] = {}


def _true(shape: tuple[int, ...]) -> np.ndarray:
    """A shared read-only all-True mask: a full node needs no mask computed, and combining full nodes needs no ``&``
    (a NumPy call of ~1 µs each, several per step). Cached per shape (a few: one per entry count)."""
    mask = _TRUES.get(shape)
    if mask is None:
        mask = np.ones(shape, dtype=bool)
        mask.flags.writeable = False
        if len(_TRUES) < 1024:  # stacks of many sizes (bootstrap) must not grow the cache without bound
            _TRUES[shape] = mask
    return mask


_TRUE = _true((1,))  # "defined" of a one-entry reduction
_FALSE = np.zeros(1, dtype=bool)
_FALSE.flags.writeable = False

# Negating an interval swaps its bounds: the rows of -x are -x[[hard, lower, upper]].
_SWAP_V = np.array([0, 2, 1])
_SWAP_V.flags.writeable = False

# The smallest normal float64: 1 / x is finite for every x >= _NORMAL.
_NORMAL = float(np.finfo(np.float64).tiny)

# 0.0 < x, as a C-level predicate: `all(map(_POSITIVE, den.tolist()))` is den > 0 everywhere (NaN is not), a few
# times cheaper than (den > 0).all() on the G entries of one table.
_POSITIVE = (0.0).__lt__

# The reverse pass of a label-conditioned rate as one product: grad += [c_u/den, c_l/den]ᵀ @ [w_upper; -w_lower]. The
# weights are 0/±1, so both products of an entry are exact and their sum is the one rounding of
# (c_u/den) w_upper - (c_l/den) w_lower: the same numbers as two outer products and a difference, in one call.
_LABEL_BACK = {
    name: np.stack([w[:, _UPPER], -w[:, _COMPLEMENT]]) for name, w in _MIXERS.items() if _KINDS[name] == "label"
}


def _sum_to(c: np.ndarray, size: int) -> np.ndarray:
    """A cotangent ``(2, k)`` of a broadcast operand: summed back to one entry when the operand had one (row by row, as
    each row alone would be summed)."""
    return c.sum(-1, keepdims=True) if size == 1 and c.shape[-1] != 1 else c


_SELECTIONS: dict[tuple[object, int], np.ndarray] = {}


def _selection(group: object, num_groups: int) -> np.ndarray | None:
    """``(1, G)`` 0/1 row pooling the table rows of a group id, a tuple of ids, or all (None); None for per-group.
    Cached (read-only): it depends on the group and G only."""
    if group == PER_GROUP:
        return None
    key = (group, num_groups)
    select = _SELECTIONS.get(key)
    if select is None:
        select = np.zeros((1, num_groups))
        select[0, slice(None) if group is None else list(group) if isinstance(group, tuple) else [group]] = 1.0
        select.flags.writeable = False
        if len(_SELECTIONS) < 4096:
            _SELECTIONS[key] = select
    return select


class _Pairs(NamedTuple):
    """The static index arrays of ``pairwise`` over ``n`` entries (one table): ``i``, ``j`` the pairs, ``take_a`` /
    ``take_b`` flat indices giving ``a.v[:, i]`` and ``swapped(b.v)[:, j]`` in one ``take``, ``to_a`` / ``to_b`` the
    bins of one ``bincount`` giving both rows of a cotangent per entry (``to_b`` swapped: the upper bound of an entry
    uses the lower bound of b)."""

    i: np.ndarray
    j: np.ndarray
    take_a: np.ndarray
    take_b: np.ndarray
    to_a: np.ndarray
    to_b: np.ndarray


_PAIRS: dict[tuple[int, bool], _Pairs] = {}


def _pairs(expr: Pairwise, n: int) -> tuple[np.ndarray, np.ndarray, _Pairs | None]:
    """``expr.pairs(n)`` and, for the built-in pair orders, their cached :class:`_Pairs`."""
    if type(expr).pairs is not Pairwise.pairs:  # a subclass with its own pairs: computed as it says, every time
        i, j = expr.pairs(n)
        return i, j, None
    key = (n, bool(expr.symmetric))
    cached = _PAIRS.get(key)
    if cached is None:
        i, j = expr.pairs(n)
        rows = np.arange(3)[:, None] * n
        cached = _Pairs(
            i, j, rows + i, _SWAP_V[:, None] * n + j, np.concatenate([i, i + n]), np.concatenate([j + n, j])
        )
        for array in cached:
            array.flags.writeable = False
        if len(_PAIRS) < 1024:
            _PAIRS[key] = cached
    return cached.i, cached.j, cached


class _Evaluator(ExprVisitor[_Node]):
    """One pass over an expression tree on one table or a stack of tables (each rate computed once per group
    selection); ``grad`` accumulates the ``(G, K)`` gradient of a reverse pass. Without gradients no reverse-pass
    closure (nor what it reads, e.g. ``1 / den``) is built."""

    def __init__(self, table: np.ndarray, gradients: bool) -> None:
        self.table = table
        self.batch = table.shape[:-2]
        self.num_groups = table.shape[-2]
        if gradients and self.batch:
            raise ValueError("gradients are computed for one (G, K) table, not a stack; pass gradients=False")
        self.gradients = gradients
        self.grad = np.zeros((self.num_groups, _K))
        self.cache: dict[tuple[str, object], _Node] = {}

    def _defined(self, a: _Node, b: _Node, full: bool) -> np.ndarray:
        """``a.d & b.d``; for two full operands the larger operand's mask (all True already) on one table."""
        if full:
            da, db = a.d, b.d
            if da.shape == db.shape:
                return da
            if not self.batch:  # one-table masks are (k,) or (1,): the larger is the broadcast shape
                return da if da.shape[-1] >= db.shape[-1] else db
        return a.d & b.d

    # leaves -------------------------------------------------------------------------------------------------
    def visit_const(self, expr: Const) -> _Node:
        ones = (1,) * len(self.batch)  # broadcasts against a stack of tables
        return _Node(np.full((3, *ones, 1), expr.value), _true((*ones, 1)), True, _no_back)

    def visit_rate(self, expr: RateRef) -> _Node:
        key = (expr.rate, expr.group)
        node = self.cache.get(key)
        if node is not None:  # the same group, checked when the rate was computed
            return node
        if expr.max_group() >= self.num_groups:
            raise ValueError(
                f"{expr} refers to group {expr.max_group()} but the statistics have {self.num_groups} groups"
            )
        node = self.cache[key] = self._rate_rows(expr.rate, expr.group)
        return node

    def _rate_rows(self, name: str, group: object) -> _Node:
        """One rate on the rows ``select @ table`` (each row a group, a pooled set of groups, or all), as
        :func:`fairopt.rates.compute_rate` computes it."""
        kind, w = _KINDS[name], _MIXERS[name]
        select = _selection(group, self.num_groups)
        table = self.table
        sums = table @ w if select is None else (select @ table) @ w
        # rows of sums: den, hard numerator, proxy numerator, complementary proxy, proxy denominator
        if self.batch:
            sums = np.moveaxis(sums, -1, 0)
            den = sums[0]
            defined = den > 0.0
            full = np.count_nonzero(defined) == defined.size
        else:
            sums = sums.T
            den = sums[0]
            listed, full, defined = _denominator(den)
        safe_den = den if full else np.where(defined, den, 1.0)
        back: Back = _no_back
        back_at: BackAt | None = None
        if kind == "label":
            v = sums[1:4] / safe_den  # divided, not multiplied by 1/den: ties break as in compute_rate
            np.subtract(1.0, v[2], out=v[2])
            if self.gradients:
                inv = _reciprocal(den, safe_den, defined, full)
                weights = _LABEL_BACK[name]

                def back(c: np.ndarray) -> None:
                    scaled = c * inv
                    if select is not None:  # a cotangent per pooled row -> per table row
                        scaled = select * scaled
                    self.grad += scaled.T @ weights

                # With every 1 / den finite, the rows of back(c) outside entry i add exact zeros: leave them out.
                if select is None and full and min(listed, default=0.0) >= _NORMAL:

                    def back_at(i: int, c_i: np.ndarray) -> None:
                        self.grad[i] += (c_i * inv[i]) @ weights

        elif kind == "loss":
            loss = table[..., _LOSS] if select is None else table[..., _LOSS] @ select.T
            v = np.broadcast_to(loss / safe_den, (3, *den.shape))
            if self.gradients:
                inv = _reciprocal(den, safe_den, defined, full)

                def back(c: np.ndarray) -> None:
                    scaled = (c[0] + c[1]) * inv
                    self.grad[:, _LOSS] += scaled if select is None else select[0] * scaled[0]

        elif kind == "base":  # no proxy
            v = np.broadcast_to(sums[1] / safe_den, (3, *den.shape))
        else:  # precision / NPV: the plain ratio of proxy counts (its denominator depends on the predictions)
            ok = defined & (sums[4] > 0)
            proxy_den = np.where(ok, sums[4], 1.0)
            value = np.where(ok, sums[2] / proxy_den, 0.0)
            v = np.stack([sums[1] / safe_den, value, value])
            if self.gradients:
                pinv = np.where(ok, 1.0 / proxy_den, 0.0)

                def add(c: np.ndarray, column: np.ndarray) -> None:  # grad += ∂(cᵀ (select @ table @ column)) / ∂T
                    self.grad += (c if select is None else select[0] * c[0])[:, None] * column

                def back(c: np.ndarray) -> None:  # ∂(num/den) = (∂num - (num/den) ∂den) / den
                    scaled = (c[0] + c[1]) * pinv
                    add(scaled, w[:, 2])
                    add(-scaled * value, w[:, 4])

        if not full:
            v = np.where(defined, v, 0.0)
        return _Node(v, defined, full, back, back_at)

    # operators ----------------------------------------------------------------------------------------------
    def visit_binop(self, expr: BinOp) -> _Node:
        ra, rb = expr.a, expr.b
        if expr.op == "-" and type(ra) is Reduce and type(rb) is Reduce and ra.a is rb.a and not self.batch:
            return self._range(ra, rb)
        a, b = ra.accept(self), rb.accept(self)
        _check_sizes(a, b, expr)
        full = a.full and b.full
        ka, kb = a.d.shape[-1], b.d.shape[-1]
        back: Back = _no_back
        if expr.op == "+":
            if self.gradients:

                def back(c: np.ndarray) -> None:
                    a.back(_sum_to(c, ka))
                    b.back(_sum_to(c, kb))

            return _Node(a.v + b.v, self._defined(a, b, full), full, back)
        if expr.op == "-":  # the upper bound of a - b uses the lower bound of b
            if self.gradients:

                def back(c: np.ndarray) -> None:
                    a.back(_sum_to(c, ka))
                    b.back(_sum_to(-c[::-1], kb))

            return _Node(a.v - b.v.take(_SWAP_V, 0), self._defined(a, b, full), full, back)
        defined = a.d & b.d
        (ah, au, al), (bh, bu, bl) = a.v, b.v
        if expr.op == "*":  # the four corner products of the two intervals
            xs, ys = (au, au, al, al), (bu, bl, bu, bl)
            values = [x * y for x, y in zip(xs, ys)]
            # ∂(x y) = y ∂x + x ∂y: corner i sends its cotangent to bound i // 2 of a and bound i % 2 of b
            d_a, d_b = ys, xs
            return self._extreme_corners(ah * bh, defined, values, d_a, d_b, a, b)
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
        return self._extreme_corners(ah / np.where(nonzero, bh, 1.0), defined, values, d_a, d_b, a, b)

    def visit_abs(self, expr: Abs) -> _Node:
        # The branch follows the sign of the true value; |x| = -x on the negative side (hard row included).
        a = expr.a.accept(self)
        pos = a.v[0] >= 0.0
        back: Back = _no_back
        if self.gradients:

            def back(c: np.ndarray) -> None:
                a.back(np.where(pos, c, -c[::-1]))

        return _Node(np.where(pos, a.v, -a.v.take(_SWAP_V, 0)), a.d, a.full, back)

    def visit_reduce(self, expr: Reduce) -> _Node:
        # The entry is chosen among the defined ones by its true value; fewer than needed() defined: undefined
        # (zeroed later).
        a = expr.a.accept(self)
        k = a.d.shape[-1]
        if not self.batch:
            i, full = self._pick(expr, a)
            back: Back = _no_back
            if self.gradients:

                def back(c: np.ndarray) -> None:
                    _back_at(a, k, i, c[:, 0])

            return _Node(a.v[:, i : i + 1], _TRUE if full else _FALSE, full, back)
        hard = a.v[0]
        is_max = expr.how == "max"
        masked = hard if a.full else np.where(a.d, hard, -np.inf if is_max else np.inf)
        needed = expr.needed()
        index = masked.argmax(-1) if is_max else masked.argmin(-1)
        if a.full and k >= needed:
            any_defined = np.ones((*self.batch, 1), dtype=bool)
        else:
            any_defined = a.d.sum(-1, keepdims=True) >= needed
        v = np.take_along_axis(np.broadcast_to(a.v, (3, *masked.shape)), index[None, ..., None], axis=-1)
        return _Node(v, any_defined, bool(any_defined.all()), _no_back)

    def _pick(self, expr: Reduce, a: _Node) -> tuple[int, bool]:
        """The entry a one-table reduction takes (by the true values, among the defined ones) and whether enough
        entries are defined: :meth:`visit_reduce` without building its node."""
        return _pick_entry(a.v[0], a.d, a.full, expr.how, expr.needed())

    def _range(self, ra: Reduce, rb: Reduce) -> _Node:
        """``ra - rb``, two reductions of the same expression (``r.max() - r.min()``, the default convention): as
        :meth:`visit_binop` over two :meth:`visit_reduce` nodes, the same numbers in the same order, with the
        operand evaluated once and no node per reduction."""
        a = ra.a.accept(self)
        (i, full_a), (j, full_b) = self._pick(ra, a), self._pick(rb, a)
        full = full_a and full_b
        back: Back = _no_back
        if self.gradients:
            k = a.d.shape[-1]

            def back(c: np.ndarray) -> None:
                _back_at(a, k, i, c[:, 0])
                _back_at(a, k, j, -c[::-1, 0])  # the upper bound of a - b uses the lower bound of b

        v = a.v[:, i : i + 1] - a.v[:, j : j + 1].take(_SWAP_V, 0)
        return _Node(v, _TRUE if full else _FALSE, full, back)

    def visit_guard(self, expr: Guard) -> _Node:
        a, ref = expr.a.accept(self), expr.reference.accept(self)
        if ref.full and ref.d.shape[-1] >= expr.count:  # every entry of ref is defined (on every table)
            return a
        enough = ref.d.sum(-1, keepdims=True) >= expr.count
        if bool(enough.all()):
            return a
        defined = a.d & enough
        return _Node(a.v, defined, bool(defined.all()), a.back)

    def visit_elementwise(self, expr: Elementwise) -> _Node:
        a, b = expr.a.accept(self), expr.b.accept(self)
        _check_sizes(a, b, expr)
        take_a = a.v[0] >= b.v[0] if expr.how == "maximum" else a.v[0] <= b.v[0]
        ka, kb = a.d.shape[-1], b.d.shape[-1]
        back: Back = _no_back
        if self.gradients:

            def back(c: np.ndarray) -> None:
                a.back(_sum_to(np.where(take_a, c, 0.0), ka))
                b.back(_sum_to(np.where(take_a, 0.0, c), kb))

        full = a.full and b.full
        return _Node(np.where(take_a, a.v, b.v), self._defined(a, b, full), full, back)

    def visit_pairwise(self, expr: Pairwise) -> _Node:
        a, b = expr.a.accept(self), expr.b.accept(self)
        n = a.d.shape[-1]
        if n != b.d.shape[-1]:
            raise ValueError(f"pairwise() needs two expressions with the same number of entries, in {expr}")
        i, j, static = _pairs(expr, n)
        full = a.full and b.full
        if static is not None and not self.batch:
            v = a.v.take(static.take_a) - b.v.take(static.take_b)
            d = _true((len(i),)) if full else a.d[i] & b.d[j]
        else:
            v = a.v[..., i] - b.v.take(_SWAP_V, 0)[..., j]
            d = a.d[..., i] & b.d[..., j]
        back: Back = _no_back
        if self.gradients:
            if static is not None:  # both cotangent rows of each operand in one bincount (same sums, same order)
                to_a, to_b, bins = static.to_a, static.to_b, 2 * n

                def back(c: np.ndarray) -> None:  # entry (i, j): upper a_u[i] - b_l[j], lower a_l[i] - b_u[j]
                    flat = c.ravel()
                    a.back(np.bincount(to_a, flat, bins).reshape(2, n))
                    b.back(-np.bincount(to_b, flat, bins).reshape(2, n))

            else:

                def back(c: np.ndarray) -> None:
                    a.back(np.stack([np.bincount(i, c[0], n), np.bincount(i, c[1], n)]))
                    b.back(np.stack([-np.bincount(j, c[1], n), -np.bincount(j, c[0], n)]))

        return _Node(v, d, full, back)

    def visit_concat(self, expr: Concat) -> _Node:
        parts = [p.accept(self) for p in expr.parts]
        if self.batch:  # constants are (1,): give every part the batch shape first
            parts = [
                p._replace(
                    v=np.broadcast_to(p.v, (3, *self.batch, p.d.shape[-1])),
                    d=np.broadcast_to(p.d, (*self.batch, p.d.shape[-1])),
                )
                for p in parts
            ]
        sizes = [p.d.shape[-1] for p in parts]
        full = all(p.full for p in parts)
        back: Back = _no_back
        if self.gradients:
            bounds = list(itertools.accumulate(sizes, initial=0))

            def back(c: np.ndarray) -> None:
                for p, lo, hi in zip(parts, bounds[:-1], bounds[1:]):
                    p.back(c[:, lo:hi])

        v = np.concatenate([p.v for p in parts], -1)
        d = _true((sum(sizes),)) if full and not self.batch else np.concatenate([p.d for p in parts], -1)
        return _Node(v, d, full, back)

    def _extreme_corners(
        self,
        hard: np.ndarray,
        defined: np.ndarray,
        values: list[np.ndarray],
        d_a: list[np.ndarray] | tuple[np.ndarray, ...],
        d_b: list[np.ndarray] | tuple[np.ndarray, ...],
        a: _Node,
        b: _Node,
    ) -> _Node:
        """Bounds of an interval product or quotient: the largest and the smallest of the corner values (the first
        corner at a tie). Corner ``c`` combines bound ``c // 2`` of ``a`` (upper, lower) with bound ``c % 2`` of
        ``b``; ``d_a[c]``/``d_b[c]`` are its partial derivatives w.r.t. those bounds. One-entry operands are
        broadcast."""
        shape = np.broadcast_shapes(*(v.shape for v in [*values, hard, defined]))
        v = np.stack([np.broadcast_to(x, shape) for x in values])
        hi, lo = v.argmax(0), v.argmin(0)
        upper = np.take_along_axis(v, hi[None], 0)[0]
        lower = np.take_along_axis(v, lo[None], 0)[0]
        ka, kb = a.d.shape[-1], b.d.shape[-1]
        back: Back = _no_back
        if self.gradients:

            def back(c: np.ndarray) -> None:
                cu, cl = c[0], c[1]
                ca, cb = np.zeros((2, *shape)), np.zeros((2, *shape))
                for corner in range(4):
                    weight = np.where(hi == corner, cu, 0.0) + np.where(lo == corner, cl, 0.0)
                    ca[corner // 2] += weight * d_a[corner]
                    cb[corner % 2] += weight * d_b[corner]
                a.back(_sum_to(ca, ka))
                b.back(_sum_to(cb, kb))

        defined = np.broadcast_to(defined, shape).copy()
        return _Node(np.stack([np.broadcast_to(hard, shape), upper, lower]), defined, bool(defined.all()), back)


def _back_at(node: _Node, k: int, i: int, c_i: np.ndarray) -> None:
    """``node.back(c)`` for the ``(2, k)`` cotangent that is ``c_i`` in entry ``i`` and zero elsewhere."""
    if node.back_at is not None:
        node.back_at(i, c_i)
        return
    c = np.zeros((2, k))
    c[:, i] = c_i
    node.back(c)


def _check_sizes(a: _Node, b: _Node, expr: Expr) -> None:
    n, m = a.d.shape[-1], b.d.shape[-1]
    if n != m and n != 1 and m != 1:
        broadcast_sizes(n, m, str(expr))  # raises with the expression in the message


link("evaluate_expr", evaluate_expr)
