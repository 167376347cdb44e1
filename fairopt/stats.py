r"""Per-group sufficient statistics of a binary classifier: the one table everything else is computed from.

A batch of ``scores (N,)`` (logits), ``labels (N,)`` and ``groups (N,)`` is reduced in one pass to a
``(G, K)`` table of *additive* weighted counts: for each group the four cells of the confusion matrix counted
with the hard prediction ``score > threshold``, the same four cells counted with a differentiable proxy (see
:mod:`fairopt.proxies`), and the sum of a per-example loss. Because every column is a sum over examples,

* the table of a union of batches is the sum of their tables (streaming evaluation, DDP all-reduce),
* a running estimate is an exponential moving average or a window sum of tables (:class:`RunningGroupStats`),
* every rate of :mod:`fairopt.rates` is a ratio of column sums, so a group absent from a batch is a zero row
  at its own index and contributes nothing.

Columns, in order (``GroupStats.COLUMNS``); "weighted" means each example counts ``weights[i]`` (default 1):

=============  =====================================================================
``tn``         weighted count of ``label == 0`` and ``score <= threshold``
``fp``         weighted count of ``label == 0`` and ``score >  threshold``
``fn``         weighted count of ``label == 1`` and ``score <= threshold``
``tp``         weighted count of ``label == 1`` and ``score >  threshold``
``tn_proxy``   ``sum w * negative(score - threshold)`` over ``label == 0``
``fp_proxy``   ``sum w * positive(score - threshold)`` over ``label == 0``
``fn_proxy``   ``sum w * negative(score - threshold)`` over ``label == 1``
``tp_proxy``   ``sum w * positive(score - threshold)`` over ``label == 1``
``loss``       ``sum w * loss`` (0 when no loss is given)
=============  =====================================================================

Hard columns carry no gradient; proxy columns are differentiable w.r.t. ``scores`` and the loss column
w.r.t. ``loss``. Derived counts (``count``, ``label_pos``, ``pred_pos``, ``errors``, ...) are properties.
"""

from __future__ import annotations

import numbers
import operator
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

from fairopt._batch_checks import (
    WEIGHT_TOLERANCE,
    HostViews,
    check_batch,
    check_batch_values,
    check_num_groups,
    host_views,
)
from fairopt._deprecation import renamed_kwargs
from fairopt._step_count import CountAttribute, StepCount
from fairopt._tensors import ViewCache, detached
from fairopt._validation import require_tensor, validate_args_enabled
from fairopt.kernels import group_stats_table, resolve_backend
from fairopt.kernels._common import derive_negative_cells
from fairopt.proxies import Proxy, as_proxy

__all__ = [
    "COLUMNS",
    "WEIGHT_TOLERANCE",
    "ExampleTerms",
    "GroupStats",
    "RunningGroupStats",
    "example_terms",
    "group_stats",
]

COLUMNS: tuple[str, ...] = ("tn", "fp", "fn", "tp", "tn_proxy", "fp_proxy", "fn_proxy", "tp_proxy", "loss")
_INDEX = {name: i for i, name in enumerate(COLUMNS)}


@dataclass(frozen=True)
class GroupStats:
    """A ``(G, K)`` table of additive per-group statistics (see the module docstring for the columns).

    Build one with :func:`group_stats` (or :meth:`GroupStats.from_batch`). Supports ``a + b`` (exact: the table
    of the union of the two batches), ``c * a`` for a number ``c`` (used by moving averages), :meth:`overall`
    (the ``(1, K)`` table of all groups pooled), :meth:`detach`, :meth:`to`.

    Attributes:
        table: ``(G, K)`` floating tensor, ``K = len(COLUMNS) = 9``; weighted counts in examples (or weight units).
    """

    table: Tensor

    COLUMNS = COLUMNS

    def __post_init__(self) -> None:
        table = require_tensor("table", self.table)
        if table.dim() != 2 or table.shape[1] != len(COLUMNS):
            raise ValueError(f"GroupStats.table must have shape (G, {len(COLUMNS)}), got {tuple(table.shape)}")
        if not table.is_floating_point():
            raise TypeError(f"GroupStats.table must be floating point, got {table.dtype}")

    # construction ---------------------------------------------------------------------------------------------
    @classmethod
    def zeros(
        cls, num_groups: int, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float64
    ) -> GroupStats:
        """An empty table: the identity of ``+``."""
        check_num_groups(num_groups)
        return cls(torch.zeros(num_groups, len(COLUMNS), device=device, dtype=dtype))

    @staticmethod
    def from_batch(*args: Any, **kwargs: Any) -> GroupStats:
        """Same as :func:`group_stats`."""
        return group_stats(*args, **kwargs)

    # shape --------------------------------------------------------------------------------------------------
    @property
    def num_groups(self) -> int:
        """G, the number of groups (rows)."""
        return self.table.shape[0]

    @property
    def device(self) -> torch.device:
        return self.table.device

    @property
    def dtype(self) -> torch.dtype:
        return self.table.dtype

    def column(self, name: str) -> Tensor:
        """The ``(G,)`` column ``name`` (one of ``COLUMNS``)."""
        try:
            return self.table[:, _INDEX[name]]
        except KeyError:
            raise ValueError(f"unknown column {name!r}; columns are {list(COLUMNS)}") from None

    # algebra ------------------------------------------------------------------------------------------------
    def __add__(self, other: GroupStats) -> GroupStats:
        if not isinstance(other, GroupStats):
            return NotImplemented
        if other.num_groups != self.num_groups:
            raise ValueError(
                f"cannot add GroupStats with {self.num_groups} and {other.num_groups} groups; "
                "build both with the same num_groups"
            )
        return GroupStats(self.table + other.table.to(device=self.device, dtype=self.dtype))

    def __mul__(self, factor: float) -> GroupStats:
        if isinstance(factor, bool) or not isinstance(factor, numbers.Real):
            return NotImplemented
        if not factor >= 0:
            raise ValueError(f"a GroupStats table holds counts; scale it by a factor >= 0, got {factor}")
        return GroupStats(self.table * float(factor))

    __rmul__ = __mul__

    def overall(self) -> GroupStats:
        """All groups pooled: a ``(1, K)`` table (rates computed from it are the overall rates)."""
        return GroupStats(self.table.sum(dim=0, keepdim=True))

    def detach(self) -> GroupStats:
        return GroupStats(self.table.detach())

    def all_reduce(self, group: Any = None) -> GroupStats:
        """Sum the (detached) tables of all ranks of a ``torch.distributed`` process group.

        Every rank then holds the table of the global batch, so rates, constraint values and any multiplier
        update computed from it are identical on all ranks (ratios are never averaged across ranks). Without
        an initialized process group this returns the detached table unchanged.
        """
        import torch.distributed as dist

        table = self.table.detach().clone()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(table, op=dist.ReduceOp.SUM, group=group)
        return GroupStats(table)

    def to(self, *args: Any, **kwargs: Any) -> GroupStats:
        return GroupStats(self.table.to(*args, **kwargs))

    # derived counts (all (G,), weighted) --------------------------------------------------------------------
    @property
    def count(self) -> Tensor:
        """Weighted number of examples per group."""
        return self.table[:, :4].sum(dim=1)

    @property
    def label_pos(self) -> Tensor:
        """Weighted number of examples with ``label == 1``."""
        return self.column("fn") + self.column("tp")

    @property
    def label_neg(self) -> Tensor:
        """Weighted number of examples with ``label == 0``."""
        return self.column("tn") + self.column("fp")

    @property
    def pred_pos(self) -> Tensor:
        """Weighted number of hard positive predictions (``score > threshold``)."""
        return self.column("fp") + self.column("tp")

    @property
    def true_pos(self) -> Tensor:
        return self.column("tp")

    @property
    def false_pos(self) -> Tensor:
        return self.column("fp")

    @property
    def errors(self) -> Tensor:
        """Weighted number of misclassified examples (``fp + fn``)."""
        return self.column("fp") + self.column("fn")

    @property
    def pred_pos_proxy(self) -> Tensor:
        """Proxy number of positive predictions (``fp_proxy + tp_proxy``); differentiable."""
        return self.column("fp_proxy") + self.column("tp_proxy")

    @property
    def errors_proxy(self) -> Tensor:
        """Proxy number of errors (``fp_proxy + fn_proxy``); differentiable."""
        return self.column("fp_proxy") + self.column("fn_proxy")

    def __repr__(self) -> str:
        return f"GroupStats(num_groups={self.num_groups}, dtype={self.dtype}, device={self.device})"


def _segment_sum(
    index: Tensor, values: Tensor | None, bins: int, count_dtype: torch.dtype, on_host: bool = False
) -> Tensor:
    """``out[b] = sum(values[index == b])`` (a count when ``values`` is None), ``out: (bins,)``, in one pass.

    No host sync (``torch.bincount`` reads ``index.max()`` on CUDA). Unweighted counts on the CPU use ``bincount``
    (exact int64 counts; NumPy's with ``on_host``, the same counts), sums a ``scatter_add`` in the values' dtype
    (measured 1.5-2x faster than a weighted ``bincount`` at N = 1M).
    """
    if values is None:
        if on_host and index.is_cpu:  # the same int64 counts in NumPy, ~1 µs instead of ~5
            return torch.from_numpy(np.bincount(index.numpy(), minlength=bins))
        if index.is_cpu:
            return torch.bincount(index, minlength=bins)
        values = torch.ones((), device=index.device, dtype=count_dtype).expand(index.shape[0])
    return torch.zeros(bins, device=index.device, dtype=values.dtype).scatter_add_(0, index, values)


def _table_sums(
    positive: Tensor,
    negative: Tensor | None,
    loss: Tensor | None,
    code2: Tensor,
    code4: Tensor,
    groups: Tensor,
    weights: Tensor | None,
    num_groups: int,
    dtype: torch.dtype,
    on_host: bool = False,
) -> Tensor:
    """The ``(G, K)`` table of one batch from its per-example terms (:func:`_example_terms`): four segment sums, no
    autograd recording (the caller passes detached tensors or runs inside an autograd function's forward).
    ``on_host``: assemble a CPU table in NumPy (faster; the device path, e.g. ``evaluator="device"`` on the CPU,
    reads nothing on the host, so :func:`group_stats` does not)."""
    g = num_groups
    hard = _segment_sum(code4, weights, 4 * g, dtype, on_host)  # (4G,): tn fp fn tp of each group
    pos = _segment_sum(code2, positive, 2 * g, dtype)  # (2G,): fp_proxy, tp_proxy, one per (group, label)
    neg = None if negative is None else _segment_sum(code2, negative, 2 * g, dtype)  # tn_proxy, fn_proxy
    total = None if loss is None else _segment_sum(groups, loss, g, dtype)
    host = _HOST_DTYPES.get(dtype) if on_host and code2.is_cpu else None
    if host is np.float64 and g <= FEW_GROUPS:
        return torch.from_numpy(_rows_on_floats(hard, pos, neg, total, g))
    hard, pos = hard.view(g, 4), pos.view(g, 2)
    neg = None if neg is None else neg.view(g, 2)
    if host is not None:  # assembled in NumPy: the same casts and sums, ~1 µs an operation instead of ~5
        out = np.empty((g, len(COLUMNS)), dtype=host)
        out[:, :4] = _on_host(hard, dtype)  # int64 counts, or sums in the weights' dtype
        out[:, 5:8:2] = _on_host(pos, dtype)  # sums in the scores' dtype
        if neg is None:  # normalized proxy: negative = 1 - positive per example; sums follow from label counts
            # label counts tn + fp, fn + tp (the two-term sums of derive_negative_cells), minus the positive cells
            np.subtract(out[:, 0:4:2] + out[:, 1:4:2], out[:, 5:8:2], out=out[:, 4:8:2])
        else:
            out[:, 4:8:2] = _on_host(neg, dtype)
        out[:, 8] = 0.0 if total is None else _on_host(total, dtype)
        return torch.from_numpy(out)
    table = torch.empty(g, len(COLUMNS), dtype=dtype, device=code2.device)
    table[:, :4] = hard
    table[:, 5:8:2] = pos
    if neg is None:
        derive_negative_cells(table)
    else:
        table[:, 4:8:2] = neg
    table[:, 8] = 0.0 if total is None else total
    return table


_Cells = TypeVar("_Cells", Tensor, np.ndarray)  # a (G, K) table cotangent, torch or NumPy

# Table dtypes that NumPy holds (bfloat16 does not; float16 tables stay on the torch path too, for its rounding).
_HOST_DTYPES = {torch.float64: np.float64, torch.float32: np.float32}

FEW_GROUPS = 16
"""Up to this many groups, the per-step work on a table (assembling it, :func:`_rows_on_floats`; evaluating ranges of
rates, :func:`fairopt.constraints.evaluation.linearize`) runs on Python floats: in a training step every NumPy call
costs several µs (cold caches, not arithmetic), and such a table is a few dozen numbers."""


def _rows_on_floats(hard: Tensor, pos: Tensor, neg: Tensor | None, total: Tensor | None, g: int) -> np.ndarray:
    """The float64 ``(G, K)`` table of :func:`_table_sums`' NumPy branch from the flat CPU sums ``hard (4G,)``,
    ``pos``/``neg (2G,)``, ``total (G,)``, built on Python floats: the same numbers (every sum converts to float64
    exactly, as NumPy's cast does; a derived negative cell is ``(float(tn) + float(fp)) - fp_proxy``, the same two
    float64 roundings)."""
    h, p = hard.tolist(), pos.tolist()
    n = None if neg is None else neg.tolist()
    t = None if total is None else total.tolist()
    rows = []
    for i in range(g):
        tn, fp, fn, tp = h[4 * i : 4 * i + 4]
        fp_proxy, tp_proxy = p[2 * i], p[2 * i + 1]
        if n is None:  # label counts minus the positive cells (derive_negative_cells)
            tn_proxy, fn_proxy = (float(tn) + float(fp)) - fp_proxy, (float(fn) + float(tp)) - tp_proxy
        else:
            tn_proxy, fn_proxy = n[2 * i], n[2 * i + 1]
        rows.append((tn, fp, fn, tp, tn_proxy, fp_proxy, fn_proxy, tp_proxy, 0.0 if t is None else t[i]))
    return np.array(rows, dtype=np.float64)


def _on_host(sums: Tensor, dtype: torch.dtype) -> np.ndarray:
    """A CPU tensor of sums as a NumPy array that NumPy casts into a ``dtype`` table as torch's ``copy_`` would
    (both round to nearest): bfloat16, which NumPy lacks, is cast by torch first."""
    return (sums.to(dtype) if sums.dtype == torch.bfloat16 else sums).numpy()


def _proxy_cotangents(grad: _Cells, derived_negative: bool) -> tuple[_Cells, _Cells]:
    """A ``(G, K)`` cotangent of the table (a tensor, or a NumPy array) as the ``(G, 2)`` cotangents of the
    per-example positive and negative proxy terms, one column per label (``fp/tp_proxy`` and ``tn/fn_proxy``). A
    derived negative column (label count minus the positive column) sends its cotangent to the positive terms with the
    opposite sign."""
    d_neg = grad[:, 4:8:2]  # tn_proxy, fn_proxy
    d_pos = grad[:, 5:8:2]  # fp_proxy, tp_proxy
    if derived_negative:  # neg = count - pos
        d_pos = d_pos - d_neg
    return d_pos, d_neg


class _Table(torch.autograd.Function):
    """The ``(G, K)`` table of one batch as a single autograd node: its forward is a few segment sums (no autograd
    recording inside), its backward one gather per differentiable input (``grad_table[cell of example i]``)."""

    # forward(ctx, ...) rather than setup_context: Function.apply binds default arguments through
    # inspect.signature on every call when setup_context is defined (~25 µs, more than the forward itself).
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        positive: Tensor,
        negative: Tensor | None,
        loss: Tensor | None,
        code2: Tensor,
        code4: Tensor,
        groups: Tensor,
        weights: Tensor | None,
        num_groups: int,
        dtype: torch.dtype,
    ) -> Tensor:
        ctx.derived_negative = negative is None
        ctx.save_for_backward(code2, groups)
        ctx.dtypes = tuple(None if t is None else t.dtype for t in (positive, negative, loss))
        return _table_sums(positive, negative, loss, code2, code4, groups, weights, num_groups, dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        code2, groups = ctx.saved_tensors
        d_pos, d_neg = _proxy_cotangents(grad, ctx.derived_negative)
        pos_dtype, neg_dtype, loss_dtype = ctx.dtypes
        grads: list[Tensor | None] = [None, None, None]
        if ctx.needs_input_grad[0]:
            grads[0] = d_pos.reshape(-1).index_select(0, code2).to(pos_dtype)
        if ctx.needs_input_grad[1]:
            grads[1] = d_neg.reshape(-1).index_select(0, code2).to(neg_dtype)
        if ctx.needs_input_grad[2]:
            grads[2] = grad[:, 8].index_select(0, groups).to(loss_dtype)
        return (*grads, None, None, None, None, None, None)


@dataclass(frozen=True)
class ExampleTerms:
    """One batch as the per-example terms its table sums, with the table itself (no graph): what the CPU path of
    :meth:`ConstrainedOptimizer.step <fairopt.ConstrainedOptimizer.step>` differentiates instead of the table.

    Every differentiable column of the table is a sum of per-example terms, ``T[g, k] = Σ_{i in cell (g, k)} t_i``,
    so the gradient of a linear function ``Σ W ∘ T`` w.r.t. the model is that of ``Σ_i W[cell_i] t_i``: a gather and
    a dot product, recorded by torch's own autograd, where the differentiable table of :func:`group_stats` costs a
    Python autograd node for the table and another for the function of it. Built by :func:`example_terms`.

    Attributes:
        stats: the batch's :class:`GroupStats`, without a graph (equal to :func:`group_stats`' table bit for bit).
        positive: ``(N,)`` per-example positive proxy terms (times the weights), with their graph.
        negative: ``(N,)`` negative proxy terms, or None for a normalized proxy (its column is derived from counts).
        loss: ``(N,)`` per-example losses (times the weights), or None without ``example_losses``.
        code2: ``(N,)`` int64 cell of each example, ``2 * group + label``. groups: ``(N,)`` int64 group ids.
    """

    stats: GroupStats
    positive: Tensor
    negative: Tensor | None
    loss: Tensor | None
    code2: Tensor
    groups: Tensor

    def linear_term(self, weights: np.ndarray) -> Tensor:
        """A scalar with the gradient of ``Σ W ∘ T`` w.r.t. the model, ``W = weights``: a ``(G, K)`` float64 array
        (the hard columns carry no gradient, so their weights are ignored).

        Its value is *not* ``Σ W ∘ T``: it lacks the terms that carry no gradient (hard columns; the label counts
        of a derived negative column). Compute the value from :attr:`stats` where it is needed."""
        # the (G, K) arithmetic of _Table.backward, in NumPy (float64), then one gather per term
        d_pos, d_neg = _proxy_cotangents(weights, self.negative is None)
        term = self._dot(d_pos, self.code2, self.positive)
        if self.negative is not None:
            term = term + self._dot(d_neg, self.code2, self.negative)
        if self.loss is not None:
            term = term + self._dot(weights[:, 8], self.groups, self.loss)
        return term

    @staticmethod
    def _dot(cells: np.ndarray, index: Tensor, values: Tensor) -> Tensor:
        """``Σ_i cells.flat[index_i] * values_i``, the cell weights cast to the values' dtype first; half-precision
        values are promoted to float64 instead, so that the backward pass multiplies the float64 weights by the
        incoming gradient (e.g. a GradScaler's scale) before the cast, as the table's backward does: a weight below
        float16's normal range (6e-5) would lose its bits in a cast before the scaling."""
        if values.dtype in (torch.float16, torch.bfloat16):
            values = values.double()
        host = _HOST_DTYPES.get(values.dtype) if index.is_cpu and values.is_cpu else None
        if host is not None:  # cast and gather in NumPy: the same numbers, ~1 µs an operation instead of ~5
            return torch.dot(torch.from_numpy(cells.astype(host).reshape(-1)[index.numpy()]), values)
        coefficients = torch.from_numpy(np.ascontiguousarray(cells).reshape(-1)).to(
            device=values.device, dtype=values.dtype
        )
        return torch.dot(coefficients.index_select(0, index), values)


def _host_codes(views: HostViews, margin: Tensor | None, groups: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(code2, code4, int64 groups)`` of :func:`_example_terms` computed in NumPy on the batch's views (``margin``:
    ``scores - threshold``, None for a threshold of 0): the same integers (``2 * group + label bit``, then
    ``2 * code2 + (margin > 0)``) at a NumPy call each instead of a tensor operation."""
    s, y, g = views
    m = s if margin is None else margin.detach().numpy()
    g64 = g if g.dtype == np.int64 else g.astype(np.int64)
    code2 = g64 + g64
    np.add(code2, y if y.dtype == np.bool_ else y > 0, out=code2)
    code4 = code2 + code2
    np.add(code4, m > 0, out=code4)
    return torch.from_numpy(code2), torch.from_numpy(code4), groups if g is g64 else torch.from_numpy(g64)


def _example_terms(
    scores: Tensor,
    labels: Tensor,
    groups: Tensor,
    weights: Tensor | None,
    loss: Tensor | None,
    proxy: Proxy,
    threshold: float,
    views: HostViews | None = None,
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor, Tensor, Tensor, Tensor | None]:
    """``(positive, negative, loss, code2, code4, groups, hard_weights)`` of a checked batch: the per-example terms
    and the cell indices that :func:`_table_sums` adds up. ``views``: :func:`~fairopt._batch_checks.host_views` of
    the batch, to compute the indices in NumPy (:func:`_host_codes`); without them, tensor operations only (the
    device path, e.g. ``evaluator="device"`` on the CPU, reads nothing on the host)."""
    # code2 = 2*group + label indexes the (group, label) cells; code4 adds the hard prediction bit. One fused
    # add each: index arithmetic dominates the cost of this function on CPU.
    # A 0/1 bit, whatever the labels hold: with the value checks off, a label outside {0, 1} (e.g. -1 or 2) must not
    # shift code2 into another group's row (it counts as positive when > 0, negative otherwise, in its own group).
    margin = scores if threshold == 0 else scores - threshold
    if views is None:
        label_bit = labels if labels.dtype == torch.bool else labels > 0
        groups = groups if groups.dtype == torch.int64 else groups.to(torch.int64)  # a no-op .to() still costs ~3 µs
        code2 = torch.add(label_bit, groups, alpha=2)
        code4 = torch.add(margin.detach() > 0, code2, alpha=2)
    else:
        code2, code4, groups = _host_codes(views, None if threshold == 0 else margin, groups)
    # Proxy sums accumulate in the scores' dtype (a float64 copy of the batch would cost more than the whole
    # scatter); the small table is then cast. Hard counts are exact integer counts when unweighted.
    if weights is not None:  # rounding negatives (accepted by the check) count as 0
        weights = weights.clamp(min=0)
    hard_weights = None if weights is None else weights.detach()
    positive = proxy.positive(margin)
    negative = None
    if not proxy.normalized or (weights is not None and weights.requires_grad):
        negative = proxy.negative_fn(margin)
    if weights is not None:
        positive = positive * weights
        negative = None if negative is None else negative * weights
        loss = None if loss is None else loss * weights
    return positive, negative, loss, code2, code4, groups, hard_weights


@renamed_kwargs(loss="example_losses", validate="validate_args")
def group_stats(
    scores: Tensor,
    *,
    labels: Tensor,
    groups: Tensor,
    num_groups: int,
    weights: Tensor | None = None,
    example_losses: Tensor | None = None,
    proxy: str | Proxy | Callable[[Tensor], Tensor] = "sigmoid",
    threshold: float = 0.0,
    dtype: torch.dtype = torch.float64,
    backend: str = "auto",
    validate_args: bool | None = None,
) -> GroupStats:
    """Reduce one batch to its ``(G, K)`` :class:`GroupStats` table in one pass (no loop over groups).

    Everything after ``scores`` is keyword-only (``group_stats(scores, labels=y, groups=a, num_groups=G)``), as in
    :meth:`ConstrainedOptimizer.step <fairopt.ConstrainedOptimizer.step>`: labels and group ids are both ``(N,)``
    small integers, and swapped by position they would run without an error.

    Args:
        scores: ``(N,)`` floating logits. A positive prediction is ``score > threshold``.
        labels: ``(N,)`` in {0, 1}: bool, integer, or floating holding exactly 0.0/1.0.
        groups: ``(N,)`` integer group ids in ``[0, num_groups)`` (any integer dtype; used as int64).
        num_groups: G, fixed up front, so an absent group is a zero row at its own index.
        weights: optional ``(N,)`` non-negative floating example weights (an integer weight k counts like k
            copies of the example). Negatives within rounding, ``w >= -`` :data:`WEIGHT_TOLERANCE` ``* eps(dtype) *
            max(1, max|w|)`` (e.g. ``1 - p`` for a probability ``p = 1 + 2e-16``), count as 0.
        example_losses: optional ``(N,)`` per-example loss (e.g. ``binary_cross_entropy_with_logits`` with
            ``reduction="none"``); summed into the differentiable ``loss`` column (needed by mean-loss rates and
            BoundedGroupLoss).
        proxy: surrogate for the proxy columns: ``"sigmoid"`` (default), ``"hinge"``, ``"softplus"``, ``"hard"``,
            a :class:`~fairopt.proxies.Proxy` or an elementwise callable (see :mod:`fairopt.proxies`).
        threshold: decision threshold in logit units (default 0, i.e. probability 0.5).
        dtype: floating dtype of the returned table (default float64). Unweighted hard counts are exact integer
            counts (up to 2**53 in float64, 2**24 in float32). Weighted counts, proxy sums and the loss sum
            accumulate in the dtype of ``weights``/``scores``/``example_losses`` (pass float64 tensors for float64
            accumulation) and are then cast.
        backend: which implementation computes the table: ``"auto"`` (default: the fused Triton kernel,
            ``torch.ops.fairopt.group_stats``, for CUDA tensors when ``triton`` is installed; the torch path below
            otherwise), ``"torch"`` (segment sums and one autograd node, any device) or ``"triton"`` (the kernel; on CPU
            tensors only under ``TRITON_INTERPRET=1``, for tests). Both give the same table and gradients to float32
            rounding; the kernel accumulates in float32 (float64 when ``dtype`` is float64) whatever the input dtypes
            (:mod:`fairopt.kernels`). Under ``torch.compile`` the torch path runs as the same custom op's torch
            implementation, which the compiler traces without a graph break.
        validate_args: run the value checks (one host sync). ``None`` uses the global default
            (:class:`fairopt.set_validate_args`, env ``FAIROPT_VALIDATE_ARGS``). Shape/dtype/device checks always
            run. The old names ``loss=`` and ``validate=`` still work, with a ``DeprecationWarning``.

    Returns:
        :class:`GroupStats` with a ``(num_groups, 9)`` table on ``scores.device``.

    Raises:
        TypeError: a non-tensor input, non-floating scores/weights/loss, non-integer groups, labels of another dtype.
        ValueError: mismatched shapes or devices; group ids negative or ``>= num_groups``; labels not in {0, 1};
            NaN/inf scores, weights or loss; weights below 0 by more than rounding (see ``weights``); an unknown
            ``backend``.
        RuntimeError: ``backend="triton"`` where it cannot run (no triton; a CPU tensor without ``TRITON_INTERPRET=1``).
    """
    proxy_obj = as_proxy(proxy)
    check_num_groups(num_groups)
    scores, labels, groups, weights, loss = check_batch(
        scores, labels, groups, num_groups, weights, example_losses, validate_args_enabled(validate_args)
    )
    resolved = resolve_backend(backend, scores.device)
    if resolved == "triton" or torch.compiler.is_compiling():
        # The custom op (checks already run above): Triton, or under torch.compile its torch implementation, which
        # has a fake implementation and traces without a graph break (torch.bincount's data-dependent size would not).
        table = group_stats_table(
            scores, labels=labels, groups=groups, num_groups=num_groups, weights=weights, example_losses=loss,
            proxy=proxy_obj, threshold=threshold, dtype=dtype, backend=resolved, validate_args=False,
        )  # fmt: skip
        return GroupStats(table)
    terms = _example_terms(scores, labels, groups, weights, loss, proxy_obj, threshold)
    return GroupStats(_Table.apply(*terms, num_groups, dtype))


def example_terms(
    scores: Tensor,
    *,
    labels: Tensor,
    groups: Tensor,
    num_groups: int,
    weights: Tensor | None = None,
    example_losses: Tensor | None = None,
    proxy: str | Proxy | Callable[[Tensor], Tensor] = "sigmoid",
    threshold: float = 0.0,
    dtype: torch.dtype = torch.float64,
    validate_args: bool | None = None,
) -> ExampleTerms:
    """:func:`group_stats` (its torch path), returned as :class:`ExampleTerms`: the table without a graph, and the
    per-example terms with theirs, for differentiating a linear function of the table
    (:meth:`ExampleTerms.linear_term`) without the table in the autograd graph.

    Arguments, checks and errors as :func:`group_stats` (without ``backend``: this is the torch path's arithmetic;
    the table equals ``group_stats(..., backend="torch")``'s bit for bit).
    """
    proxy_obj = as_proxy(proxy)
    check_num_groups(num_groups)
    scores, labels, groups, weights, loss = check_batch(
        scores, labels, groups, num_groups, weights, example_losses, False
    )
    views = host_views(scores, labels, groups)  # taken once, for the value checks and the cell indices
    if validate_args_enabled(validate_args) and scores.shape[0] > 0:
        check_batch_values(scores, labels, groups, num_groups, weights, loss, views)
    positive, negative, loss, code2, code4, groups, hard_weights = _example_terms(
        scores, labels, groups, weights, loss, proxy_obj, threshold, views
    )
    detached = [None if t is None else t.detach() for t in (positive, negative, loss)]  # cheaper than no_grad()
    table = _table_sums(*detached, code2, code4, groups, hard_weights, num_groups, dtype, True)
    return ExampleTerms(GroupStats(table), positive, negative, loss, code2, groups)


def _label_counts(sums: np.ndarray) -> np.ndarray:
    """``(..., G, 2)`` examples with label 0 (``tn + fp``) and label 1 (``fn + tp``) per group of a ``(..., G, K)``
    array (``K >= 4``: only the hard columns are read)."""
    return sums[..., 0:4:2] + sums[..., 1:4:2]


class RunningGroupStats:
    """A running estimate of a :class:`GroupStats` table over training steps, for the dual player.

    Three modes, all exact for additive tables (a rate is a ratio of sums, so scaling all rows alike changes
    nothing and no bias correction is needed):

    * ``"ema"``: ``running = decay * running + batch`` (a geometrically weighted sum; effective window
      ``1 / (1 - decay)`` batches),
    * ``"window"``: the sum of the last ``window`` batch tables,
    * ``"count"``: the sum of the fewest most recent batch tables (at most ``window``) in which every group holds
      at least ``min_count`` examples of each label (a group or label that is rarer over the whole kept window
      counts all it has). The window adapts to the group counts the data has: rare groups get a long window, so
      every label-conditioned rate (TPR, FPR, ...) and selection rate the dual player reads has a standard error
      of at most ``0.5 / sqrt(min_count)`` (0.05 at the default 100) where the data allow it, if the window's rows
      are distinct (a window longer than one pass over a held-out split counts rows twice); rates conditioned on
      predictions (precision, NPV) are not covered. Why it matters: a constraint such as a max-min gap is a convex
      function of the rates, so its value on a noisy small-batch table is biased *upward* (Jensen's inequality):
      a batch of 64 Adult rows holds ~2.4 women with a positive label, its female TPR is mostly 0, 0.5 or 1, and
      a dual player reading it over-constrains while the true gap is already met. The chosen length is
      :attr:`last_window` (read it for logging; it is a tensor so that the update never waits for the device).

    A group absent from a batch adds a zero row: it keeps its earlier statistics and never produces a fake
    violation. Updates are detached (the running table carries no autograd graph).

    Args:
        num_groups: G.
        mode: ``"ema"``, ``"window"`` or ``"count"``.
        decay: EMA factor in ``[0, 1)`` (mode ``"ema"``).
        window: number of batches (mode ``"window"``; the cap for mode ``"count"``), >= 1.
        min_count: mode ``"count"``: examples per group and label the window must reach (> 0, weighted counts).

    Attributes:
        host_bookkeeping: mode ``"count"`` with CPU tables: choose the window in NumPy on views of the same float64
            ring (True, the default; the same window and table bit for bit, at a third of the cost of the ~15 tensor
            operations) or with tensor operations, as on a GPU (False; ``ConstrainedOptimizer(evaluator="device")``
            sets it, so that the forced device path reads nothing on the host).

    Raises:
        ValueError: an unknown mode, ``decay`` outside ``[0, 1)``, ``window < 1``, ``min_count <= 0``, or an update
            whose table has another number of groups (the running state is left unchanged).
    """

    MODES = ("ema", "window", "count")
    num_updates = CountAttribute("_updates", "Tables folded in so far.")
    # mode "count" on the host: candidate windows tried one by one before the rest are compared at once
    _SCAN = 4

    def __init__(
        self,
        num_groups: int,
        *,
        mode: str = "ema",
        decay: float = 0.9,
        window: int = 10,
        min_count: float = 100.0,
    ) -> None:
        check_num_groups(num_groups)
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        if mode == "ema" and not (0.0 <= decay < 1.0):
            raise ValueError(f"decay must be in [0, 1), got {decay!r}")
        if mode in ("window", "count") and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
            raise ValueError(f"window must be an int >= 1, got {window!r}")
        if mode == "count" and not (isinstance(min_count, numbers.Real) and min_count > 0):
            raise ValueError(f"min_count must be a number > 0 (examples per group and label), got {min_count!r}")
        self.num_groups, self.mode, self.decay, self.window = num_groups, mode, float(decay), int(window)
        self.min_count = float(min_count)
        self._ema: Tensor | None = None
        self._tables: deque[Tensor] = deque(maxlen=self.window)
        # mode "count": prefix sums P_t of the last window + 1 steps in a ring (slot t % (window + 1)), their step
        # numbers (-1: empty), so every suffix sum P_t - P_s is one subtraction (no per-step stack of tables)
        self._prefix: Tensor | None = None
        self._times: Tensor | None = None
        self._dtype = torch.float64  # of the tables given (the window is returned in it)
        self._value: Tensor | None = None
        self.last_window: Tensor | None = None
        self._updates = StepCount()  # num_updates: grows every step, never a Python int in a compiled step
        # a CPU tensor is on the host already: reading it there waits for nothing (see the class docstring)
        self.host_bookkeeping = True
        # NumPy views of the CPU ring and the ring index, kept while the ring tensors stay the same objects (see
        # _host_ring): a view costs ~1 µs per call, several per step; copies and pickles start without (ViewCache)
        self._ring_cache = ViewCache()

    def update(self, stats: GroupStats) -> GroupStats:
        """Fold one batch's table in and return the current running table."""
        if stats.num_groups != self.num_groups:
            raise ValueError(f"expected a GroupStats with {self.num_groups} groups, got {stats.num_groups}")
        table = detached(stats.table)
        if self.mode == "ema":
            self._ema = table.clone() if self._ema is None else self._ema.to(table) * self.decay + table
        elif self.mode == "window":
            self._tables.append(table.clone())
        self._updates.increment(table)
        if self.mode == "count":
            self._dtype = table.dtype
            self._append_prefix(table)
            self._value = self._count_window_host() if self._on_host() else self._count_window()
        return self.value

    def _on_host(self) -> bool:
        return self.host_bookkeeping and self._prefix is not None and self._prefix.is_cpu

    def _host_ring(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """NumPy views of the CPU ring ``(prefix, times)`` and ``ring_index`` (``arange(slots)`` twice, so that the
        slots of the windows of length ``1..L`` ending at slot ``c`` are the slice ``ring_index[c + slots - L : c +
        slots]`` reversed: no modulo per step). Cached while ``_prefix``/``_times`` are the same tensors and the
        window is unchanged (``load_state_dict`` and ``reset`` replace the tensors, which invalidates it)."""
        assert self._prefix is not None and self._times is not None
        slots = self.window + 1
        cache = self._ring_cache.value
        if cache is None or cache[0] is not self._prefix or cache[1] is not self._times or cache[2] != slots:
            ring_index = np.tile(np.arange(slots), 2)
            cache = (self._prefix, self._times, slots, self._prefix.numpy(), self._times.numpy(), ring_index)
            self._ring_cache.value = cache
        return cache[3], cache[4], cache[5]

    def _append_prefix(self, table: Tensor) -> None:
        slots = self.window + 1
        if self._prefix is None:  # float64: prefix sums grow with the step count, their differences must stay exact
            self._prefix = torch.zeros((slots, *table.shape), dtype=torch.float64, device=table.device)
            self._times = torch.full((slots,), -1, dtype=torch.int64, device=table.device)
            self._times[0] = 0  # P_0 = 0
        elif not (table.is_cpu and self._prefix.is_cpu) and self._prefix.device != table.device:
            # e.g. a checkpoint loaded on the CPU, training on a GPU (is_cpu first: reading .device costs ~1 µs)
            self._prefix, self._times = self._prefix.to(table.device), self._times.to(table.device)  # type: ignore[union-attr]
        assert self._times is not None
        if self._on_host():  # the same float64 sum, written through NumPy views of the ring
            step = self.num_updates  # this table's step (1-based)
            prefix, times, _ = self._host_ring()
            if table.dtype != torch.float64 and table.dtype != torch.float32:  # NumPy has no bfloat16
                table = table.to(torch.float64)
            # a float32 table is widened by np.add exactly as by .to(torch.float64) (every float32 is a float64)
            np.add(prefix[(step - 1) % slots], table.numpy(), out=prefix[step % slots])
            times[step % slots] = step
            return
        # the step as a device index (no host read, and no integer input of a compiled step: see StepCount)
        index = self._updates.as_tensor(self._prefix.device)
        slot = index % slots
        previous = self._prefix.index_select(0, (index - 1) % slots)
        self._prefix.index_copy_(0, slot, previous + table.to(self._prefix))
        self._times.index_copy_(0, slot, index)

    def _count_window(self) -> Tensor:
        """Sum of the shortest recent window meeting ``min_count`` (tensor ops only: no host sync)."""
        assert self._prefix is not None and self._times is not None
        step = self._updates.as_tensor(self._prefix.device)  # (1,): the newest table's step, on the device
        slots = self.window + 1
        sums = self._prefix.index_select(0, step % slots) - self._prefix  # (W + 1, G, K): since each stored step
        lengths = step - self._times  # tables in each window
        valid = (self._times >= 0) & (lengths >= 1)
        labels = torch.stack([sums[..., _INDEX["fn"]] + sums[..., _INDEX["tp"]],
                              sums[..., _INDEX["tn"]] + sums[..., _INDEX["fp"]]], dim=-1)  # (W + 1, G, 2)  # fmt: skip
        # index_select with a (1,) index, never t[index] with a 0-dim tensor: that converts the index to a Python int
        # (a host sync on CUDA, a graph break under torch.compile)
        longest = torch.argmax(torch.where(valid, lengths, -1)).reshape(1)  # everything kept
        enough = (labels >= self.min_count) | (labels >= labels.index_select(0, longest))  # rarer over all: take it all
        ok = enough.flatten(1).all(dim=1) & valid  # the longest valid window is always ok
        chosen = torch.argmin(torch.where(ok, lengths, torch.iinfo(torch.int64).max)).reshape(1)
        self.last_window = lengths.index_select(0, chosen)[0]
        return sums.index_select(0, chosen)[0].to(self._dtype)

    def _count_window_host(self) -> Tensor:
        """:meth:`_count_window` for a ring on the CPU: the same window and the same float64 differences (bit for bit,
        the operations of :func:`_label_counts` on the same numbers). The shortest candidate windows are tried first
        one by one on Python floats (~2 µs each for a few groups, against ~6 µs for the NumPy operations on a tiny
        array), the rest, if needed, all at once in NumPy (a fixed dozen operations, whatever their number)."""
        assert self._prefix is not None and self._times is not None
        prefix, times, ring_index = self._host_ring()
        step, slots = self.num_updates, self.window + 1
        longest = min(step, self.window)
        # the ring holds consecutive steps (one slot written per update); anything else: the general tensor path
        if longest < 1 or times[(step - longest) % slots] != step - longest:
            return self._count_window()
        current = step % slots
        newest = prefix[current]
        new_rows = newest.tolist()

        def label_counts(slot: int) -> list[float]:  # _label_counts(newest - prefix[slot]), flattened
            counts = []
            for n, p in zip(new_rows, prefix[slot].tolist()):
                counts += ((n[0] - p[0]) + (n[1] - p[1]), (n[2] - p[2]) + (n[3] - p[3]))
            return counts

        count = self.min_count
        # ">= min_count, or all there is" (the longest window: everything kept), as np.minimum (NaN propagates)
        enough = [c if c <= count or c != c else count for c in label_counts((step - longest) % slots)]
        length = 0  # none found yet
        for candidate in range(1, min(longest, self._SCAN) + 1):
            # >= rather than `not <`: a NaN count fails, as in (labels >= enough).all()
            if all(map(operator.ge, label_counts((step - candidate) % slots), enough)):
                length = candidate
                break
        if not length and longest > self._SCAN:  # the longer windows at once: their start slots, shortest first
            starts = ring_index[current + slots - longest : current + slots - self._SCAN][::-1]
            hard = newest[None, :, :4] - prefix.take(starts, axis=0)[:, :, :4]  # (windows, G, 4)
            labels = _label_counts(hard).reshape(len(starts), -1)
            passing = (labels >= np.array(enough)).all(axis=1)
            first = int(passing.argmax())
            length = self._SCAN + 1 + first if passing[first] else 0
        length = length or longest  # none passes only with NaN counts: all is taken
        sums = torch.from_numpy(newest - prefix[(step - length) % slots])
        self.last_window = torch.from_numpy(np.array(length, dtype=np.int64))  # torch.tensor(int): ~5 µs
        # Tensor.to costs ~2 µs even when it returns the tensor itself
        return sums if self._dtype == torch.float64 else sums.to(self._dtype)

    @property
    def value(self) -> GroupStats:
        """The running ``(G, K)`` table (zeros before the first update)."""
        if self.mode == "ema":
            table = self._ema
        elif self.mode == "count":
            table = self._value
        else:
            table = torch.stack(list(self._tables)).sum(dim=0) if self._tables else None
        if table is None:
            return GroupStats.zeros(self.num_groups)  # on the CPU: no table has been seen yet
        return GroupStats(table)

    def reset(self) -> None:
        self._ema, self._value, self.last_window, self.num_updates = None, None, None, 0
        self._prefix = self._times = None
        self._tables.clear()

    def state_dict(self) -> dict[str, Any]:
        return {
            "num_groups": self.num_groups,
            "mode": self.mode,
            "decay": self.decay,
            "window": self.window,
            "min_count": self.min_count,
            "ema": self._ema,
            "tables": list(self._tables),
            # copies: the ring is written in place (through NumPy views on the CPU), so a state that shared it would
            # change as training goes on, and two objects loaded from one state would write into each other
            "prefix": None if self._prefix is None else self._prefix.clone(),
            "times": None if self._times is None else self._times.clone(),
            "dtype": self._dtype,
            "num_updates": self.num_updates,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for key in ("num_groups", "mode"):
            if state[key] != getattr(self, key):
                raise ValueError(f"state_dict has {key}={state[key]!r} but this object has {getattr(self, key)!r}")
        self.decay, self.window = float(state["decay"]), int(state["window"])
        self._ema = state["ema"]
        self.min_count = float(state.get("min_count", self.min_count))
        self._tables = deque(state["tables"], maxlen=self.window)
        prefix, times = state.get("prefix"), state.get("times")
        self._prefix = None if prefix is None else prefix.clone()  # this object's own ring (see state_dict)
        self._times = None if times is None else times.clone()
        self.num_updates = int(state["num_updates"])
        self._value, self.last_window = None, None
        if self.mode == "count" and self._prefix is not None:
            self._dtype = state.get("dtype", self._dtype)
            self._value = self._count_window_host() if self._on_host() else self._count_window()
