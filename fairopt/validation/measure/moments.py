r"""Second moments collected beside a :class:`~fairopt.stats.GroupStats` table, for honest intervals.

A ``GroupStats`` table holds first moments (weighted counts, a loss sum). Confidence intervals also need the
spread: with example weights a weighted count is not binomial, and a mean loss needs its variance. The
:class:`SecondMoments` table holds, per group, the additive sums that give them:

==============  ====================================================================
``w2_tn`` ...   ``Σ w²`` over each hard confusion cell (``tn, fp, fn, tp``, same order as ``GroupStats``)
``w2_loss``     ``Σ w² · loss``
``w2_loss2``    ``Σ w² · loss²``
``examples``    number of examples, whatever sampling weights they have (with frequency weights: ``Σ w``)
==============  ====================================================================

Like ``GroupStats`` it is a sum over examples, so ``a + b`` is the table of the union (streaming, all-reduce).
Without weights ``w = 1`` and the four cell columns equal the hard counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fairopt._deprecation import renamed_kwargs
from fairopt.stats import GroupStats, group_stats

__all__ = ["MOMENT_COLUMNS", "SecondMoments", "second_moments"]

MOMENT_COLUMNS: tuple[str, ...] = ("w2_tn", "w2_fp", "w2_fn", "w2_tp", "w2_loss", "w2_loss2", "examples")
_INDEX = {name: i for i, name in enumerate(MOMENT_COLUMNS)}


@dataclass(frozen=True)
class SecondMoments:
    """A ``(G, 7)`` float64 table of additive second moments per group (columns: :data:`MOMENT_COLUMNS`).

    Build one per batch with :func:`second_moments`; add tables with ``+``.
    """

    table: Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.table, Tensor) or self.table.dim() != 2 or self.table.shape[1] != len(MOMENT_COLUMNS):
            shape = tuple(self.table.shape) if isinstance(self.table, Tensor) else type(self.table).__name__
            raise ValueError(f"SecondMoments.table must be a (G, {len(MOMENT_COLUMNS)}) tensor, got {shape}")

    @classmethod
    def zeros(cls, num_groups: int, *, device: torch.device | str | None = None) -> SecondMoments:
        return cls(torch.zeros(num_groups, len(MOMENT_COLUMNS), dtype=torch.float64, device=device))

    @property
    def num_groups(self) -> int:
        return self.table.shape[0]

    def column(self, name: str) -> np.ndarray:
        """The ``(G,)`` column ``name`` as a float64 numpy array (host copy)."""
        return self.table[:, _INDEX[name]].detach().cpu().double().numpy()

    def __add__(self, other: SecondMoments) -> SecondMoments:
        if not isinstance(other, SecondMoments):
            return NotImplemented
        if other.num_groups != self.num_groups:
            raise ValueError(f"cannot add SecondMoments with {self.num_groups} and {other.num_groups} groups")
        return SecondMoments(self.table + other.table.to(self.table))

    def overall(self) -> SecondMoments:
        """All groups pooled: a ``(1, 7)`` table."""
        return SecondMoments(self.table.sum(dim=0, keepdim=True))

    def to(self, *args: object, **kwargs: object) -> SecondMoments:
        return SecondMoments(self.table.to(*args, **kwargs))

    @classmethod
    def from_counts(cls, stats: GroupStats) -> SecondMoments:
        """Moments of *unweighted* data reconstructed from its table: ``Σ w² = count`` per cell.

        The loss moments cannot be reconstructed and are NaN (mean-loss intervals are then unavailable).
        """
        cells = stats.table[:, :4].detach().double()
        nan = torch.full((stats.num_groups, 2), float("nan"), dtype=torch.float64, device=cells.device)
        return cls(torch.cat([cells, nan, cells.sum(dim=1, keepdim=True)], dim=1))


@renamed_kwargs(loss="example_losses")
def second_moments(
    scores: Tensor,
    *,
    labels: Tensor,
    groups: Tensor,
    num_groups: int,
    weights: Tensor | None = None,
    example_losses: Tensor | None = None,
    threshold: float = 0.0,
    frequency_weights: bool = False,
    stats: GroupStats | None = None,
) -> SecondMoments:
    """Reduce one batch to its :class:`SecondMoments` table (inputs as :func:`fairopt.group_stats`, unchecked).

    Args:
        scores, labels, groups, num_groups, weights, example_losses, threshold: as :func:`fairopt.group_stats`;
            the caller has already checked them. The old name ``loss=`` still works (``DeprecationWarning``).
        frequency_weights: the weights are replication counts (an integer weight k means k identical examples),
            so ``Σ w`` takes the place of ``Σ w²``. Default False: sampling/importance weights.
        stats: the batch's ``GroupStats`` when already computed; its hard cells are reused when they are the
            needed sums (no weights, or frequency weights).

    Returns:
        A ``(num_groups, 7)`` float64 table on ``scores.device``.
    """
    with torch.no_grad():
        # The weight each example carries in the second moments: w² (sampling weights) or w (replication counts).
        unit = None if weights is None else (weights.double() if frequency_weights else weights.double() ** 2)
        if stats is not None and (weights is None or frequency_weights):
            cells = stats.table[:, :4].double()
        else:
            cells = group_stats(
                scores,
                labels=labels,
                groups=groups,
                num_groups=num_groups,
                weights=unit,
                proxy="hard",
                threshold=threshold,
                validate_args=False,
            ).table[:, :4]
        v = torch.ones_like(scores, dtype=torch.float64) if unit is None else unit
        lo = torch.zeros_like(v) if example_losses is None else example_losses.double()
        copies = weights.double() if (weights is not None and frequency_weights) else torch.ones_like(v)
        per_example = torch.stack([v * lo, v * lo * lo, copies], dim=1)
        sums = torch.zeros(num_groups, 3, dtype=torch.float64, device=scores.device)
        sums.index_add_(0, groups.long(), per_example)
    return SecondMoments(torch.cat([cells.to(torch.float64), sums], dim=1))
