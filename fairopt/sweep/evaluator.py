r"""Constraint values of the members of a sweep, on their ``(M, G, K)`` stack of tables, with autograd.

The expressions are walked by the one torch evaluator of the library,
:func:`fairopt.constraints.device_evaluation.evaluate_device`, which takes a leading batch dimension: every operator
is one tensor operation over all members and autograd carries the gradient (one backward for the whole sweep, never a
Python loop over members). Its semantics are those of :mod:`fairopt.constraints.evaluation`, node for node;
``tests/test_sweep.py`` checks values and gradients against the NumPy evaluator member by member.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from fairopt.constraints import Constraint
from fairopt.constraints.device_evaluation import DeviceValues, evaluate_device
from fairopt.constraints.expressions import Expr
from fairopt.stats import COLUMNS

__all__ = ["BatchedBounds", "BatchedEvaluator", "batched_constraint_values"]

_K = len(COLUMNS)

BatchedBounds = DeviceValues
"""An expression's value on a stack of M tables: :class:`~fairopt.constraints.device_evaluation.DeviceValues` of
``(M, k)`` tensors (``hard`` detached, ``proxy_upper``/``proxy_lower`` differentiable, ``defined`` bool)."""


class BatchedEvaluator:
    """Evaluate expressions on a ``(M, G, K)`` stack of group-statistics tables (one per member), differentiably:
    :func:`~fairopt.constraints.device_evaluation.evaluate_device` with the stack's shape checked up front.

    Args:
        tables: ``(M, G, K)`` floating tensor (``K = 9``, the columns of :class:`~fairopt.stats.GroupStats`); it may
            require grad (the proxy bounds are then differentiable w.r.t. its proxy and loss columns).

    Raises:
        ValueError: a table of another shape; (on :meth:`bounds`) an expression referring to a group ``>= G`` or
            combining vectors of different sizes.
    """

    def __init__(self, tables: Tensor) -> None:
        _check_stack(tables)
        self.tables = tables

    def bounds(self, expr: Expr) -> BatchedBounds:
        """:class:`BatchedBounds` of ``expr`` for every member: ``(M, k)`` tensors, ``k = expr.size(G)``."""
        return evaluate_device(expr, self.tables)


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
    _check_stack(tables)
    tol = torch.as_tensor(tolerances, dtype=tables.dtype, device=tables.device).reshape(-1, 1)
    if tol.shape[0] != tables.shape[0]:
        raise ValueError(f"got {tol.shape[0]} tolerances for {tables.shape[0]} member tables")
    return evaluate_device(constraint.expr, tables, offset=tol)


def _check_stack(tables: Tensor) -> None:
    if not isinstance(tables, Tensor) or tables.dim() != 3 or tables.shape[-1] != _K:
        shape = tuple(tables.shape) if isinstance(tables, Tensor) else type(tables).__name__
        raise ValueError(f"tables must have shape (M, G, {_K}) (one GroupStats table per member), got {shape}")
