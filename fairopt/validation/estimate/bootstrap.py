r"""A seeded bootstrap over examples, done on the confusion cells: intervals for any constraint.

Every constraint is a function of the ``(G, K)`` table, and the four hard cells of each group are sufficient for
its hard value, so resampling examples only matters through the cell counts. This module draws them directly
(the Poisson bootstrap: each example is kept ``Poisson(1)`` times, so a cell of ``n`` examples becomes
``Poisson(n)``; Hanley & MacGibbon, "Creating non-parametric bootstrap samples using Poisson frequencies",
Computer Methods and Programs in Biomedicine 83 (2006); Chamandy, Muralidharan, Najmi, Naidu, "Estimating
Uncertainty for Massive Data Streams", Google (2012)). With example weights a cell is drawn as
``s · Poisson(m)``, with ``m = (Σw)² / Σw²`` and ``s = Σw² / Σw``: the mean ``Σw`` and variance ``Σw²`` of the
Poisson-bootstrapped weighted sum. A group's loss sum is redrawn as (its new count) × (its mean loss plus a
normal draw with the mean's standard error), when the loss moments are known; with ``loss_nonnegative`` the
redrawn mean is floored at 0 (a mean of non-negative losses is never below 0; the normal draw alone can be).

The interval is the percentile interval (Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993, ch. 13)
of the constraint value over the ``n_resamples`` tables, per entry over the resamples where the entry is defined.
All resampled tables of an expression constraint are evaluated in one vectorized NumPy pass
(:meth:`Constraint.linearize <fairopt.constraints.Constraint.linearize>` on a stack); a
:class:`~fairopt.constraints.FunctionConstraint` is vmapped (``torch.func.vmap``), or looped over when its function
cannot be. Like every percentile bootstrap it is approximate: it can undercover for small
groups and for rates at 0 or 1 (a zero cell is never resampled away from zero).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from fairopt.constraints.base import Constraint, ConstraintValue
from fairopt.stats import GroupStats
from fairopt.validation.measure.moments import SecondMoments

__all__ = ["bootstrap_constraint_interval", "resample_tables"]


def resample_tables(
    stats: GroupStats,
    moments: SecondMoments | None,
    n_resamples: int,
    generator: torch.Generator,
    *,
    loss_nonnegative: bool = False,
) -> Tensor:
    """``n_resamples`` Poisson-bootstrap replicates of ``stats`` as one ``(B, G, K)`` float64 CPU tensor.

    The proxy columns of each replicate repeat its hard cells (only hard values are bootstrapped).
    ``loss_nonnegative``: every per-example loss is ``>= 0``, so each replicate's mean loss is floored at 0.
    """
    table = stats.table.detach().cpu().double()
    cells = table[:, :4]
    if moments is None:
        rate, scale = cells, torch.ones_like(cells)
    else:
        sq = moments.table[:, :4].detach().cpu().double()
        positive = (cells > 0) & (sq > 0)
        rate = torch.where(positive, cells**2 / torch.where(positive, sq, 1.0), 0.0)
        scale = torch.where(positive, sq / torch.where(positive, cells, 1.0), 0.0)
    drawn = torch.poisson(rate.expand(n_resamples, *rate.shape).contiguous(), generator=generator) * scale
    loss = _resample_loss(table, moments, drawn.sum(dim=2), generator, loss_nonnegative)
    return torch.cat([drawn, drawn, loss.unsqueeze(-1)], dim=2)


def _resample_loss(
    table: Tensor, moments: SecondMoments | None, counts: Tensor, generator: torch.Generator, nonnegative: bool
) -> Tensor:
    """``(B, G)`` loss sums: each replicate's count times a redrawn mean loss (floored at 0 if ``nonnegative``)."""
    weight = table[:, :4].sum(dim=1)
    mean = torch.where(weight > 0, table[:, 8] / torch.where(weight > 0, weight, 1.0), 0.0)
    if moments is None or torch.isnan(moments.table[:, 4:6]).any():
        return counts * mean
    m = moments.table.detach().cpu().double()
    w2, s1, s2, n = m[:, :4].sum(dim=1), m[:, 4], m[:, 5], m[:, 6]
    spread = (s2 - 2 * mean * s1 + mean * mean * w2).clamp(min=0) * n / (n - 1).clamp(min=1)
    se = torch.where((n > 1) & (weight > 0), spread.sqrt() / torch.where(weight > 0, weight, 1.0), 0.0)
    noise = torch.randn(counts.shape, generator=generator, dtype=torch.float64)
    redrawn = mean + se * noise
    return counts * (redrawn.clamp(min=0.0) if nonnegative else redrawn)


def _evaluate_all(constraint: Constraint, tables: Tensor) -> tuple[Tensor, Tensor]:
    if constraint.linearizable:  # one vectorized NumPy pass over all resamples
        lin = constraint.linearize(tables.detach().cpu().double().numpy(), gradients=False)
        return torch.from_numpy(lin.hard), torch.from_numpy(lin.defined)

    def hard_and_defined(table: Tensor) -> tuple[Tensor, Tensor]:
        value = constraint.evaluate(GroupStats(table))
        return value.hard, value.defined

    try:
        return torch.func.vmap(hard_and_defined)(tables)
    except Exception:  # a user constraint doing host-side work: evaluate one table at a time
        outs = [hard_and_defined(t) for t in tables]
        return torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])


def bootstrap_constraint_interval(
    constraint: Constraint,
    stats: GroupStats,
    *,
    moments: SecondMoments | None = None,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
    loss_nonnegative: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile-bootstrap interval of each entry's value ``g + tolerance`` (the expression's value).

    Args:
        constraint: any :class:`~fairopt.constraints.base.Constraint` (expression-based or a function).
        stats: the ``(G, K)`` table it is evaluated on.
        moments: the table's :class:`SecondMoments` (weighted cells and loss spread); ``None``: unweighted counts,
            loss treated as known.
        confidence: two-sided level in (0, 1). n_resamples: number of bootstrap tables B (>= 1).
        seed: seed of the ``torch.Generator`` used for the draws (same seed, same interval).
        loss_nonnegative: every per-example loss is ``>= 0`` (e.g. log loss): redrawn mean losses are floored at 0,
            so a loss constraint's interval does not reach values its losses cannot give. Default False (any
            finite loss; see :mod:`fairopt.validation.estimate.estimates`).

    Returns:
        ``(lower, upper)``, each an ``(m,)`` float64 array in the units of the expression; NaN for an entry that
        is undefined in every resample.
    """
    generator = torch.Generator().manual_seed(int(seed))
    tables = resample_tables(stats, moments, int(n_resamples), generator, loss_nonnegative=loss_nonnegative)
    hard, defined = _evaluate_all(constraint, tables)
    values = constraint.expression_values(ConstraintValue(hard, hard, defined))
    alpha = 1.0 - confidence
    usable = ~np.all(np.isnan(values), axis=0)
    lower = np.full(values.shape[1], np.nan)
    upper = np.full(values.shape[1], np.nan)
    if usable.any():
        lower[usable] = np.nanquantile(values[:, usable], alpha / 2.0, axis=0)
        upper[usable] = np.nanquantile(values[:, usable], 1.0 - alpha / 2.0, axis=0)
    return lower, upper
