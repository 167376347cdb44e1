r"""Which statistics the dual player reads, and when: the training batches or a held-out stream.

Every ``every`` primal steps the dual player takes one step on the hard constraint values of one table:

* ``source="train"``: the sum of the training-batch tables seen since the last dual step;
* ``source="heldout"``: the sum of the held-out tables observed since the last dual step (Cotter, Gupta, Jiang,
  Srebro, Sridharan, Wang, Woodworth, You, "Training Well-Generalizing Classifiers for Fairness Metrics and Other
  Data-Dependent Constraints", ICML 2019: θ trains on one dataset, λ is updated on an independent one, so the
  constraint generalization bound depends on the held-out size rather than on the model's complexity).

The pending table then goes through an optional ``sync`` (under DDP :meth:`fairopt.GroupStats.all_reduce`: sums of
counts are exact, ratios are never averaged across ranks) and an optional :class:`~fairopt.stats.RunningGroupStats`
(EMA or window), so small or rare groups do not make multipliers jump. A group absent from every pending batch is a
zero row: its rates are undefined and its entries do not move the multipliers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

from fairopt._step_count import CountAttribute, StepCount
from fairopt._tensors import detached
from fairopt.stats import GroupStats, RunningGroupStats

__all__ = ["DUAL_SOURCES", "DualStatistics"]

DUAL_SOURCES = ("train", "heldout")


class DualStatistics:
    """The pending table of the dual player, its schedule, sync hook and running estimate.

    Args:
        num_groups: G.
        source: ``"train"`` or ``"heldout"`` (documentation of where :meth:`observe` tables come from).
        every: take a dual step every ``every`` primal steps (>= 1), or None: no scheduled dual steps (the duals move
            only when the optimizer's ``update_duals`` is called, e.g. after each full validation pass).
        running: optional :class:`~fairopt.stats.RunningGroupStats` the pending table is folded into.
        sync: optional ``fn(stats) -> stats`` applied to the pending table before anything else; under DDP pass
            :meth:`fairopt.GroupStats.all_reduce` (a sum over ranks), so every rank holds the same table and the
            same multipliers.

    Attributes:
        num_pending: tables observed since the last :meth:`collect`.
        num_observed: tables observed since construction (saved in :meth:`state_dict`): tells "no held-out data yet"
            from "none since the last dual step".
        num_unfed: scheduled dual steps that found nothing to read before any table was observed (the optimizer
            tolerates one, then raises; see ``ConstrainedOptimizer.step``).

    Raises:
        ValueError: unknown source, ``every`` not None nor an int >= 1, a running estimator for another G.
    """

    num_pending = CountAttribute("_num_pending", "Tables observed since the last :meth:`collect`.")
    num_observed = CountAttribute("_observed", "Tables observed since construction.")

    def __init__(
        self,
        num_groups: int,
        *,
        source: str = "train",
        every: int | None = 1,
        running: RunningGroupStats | None = None,
        sync: Callable[[GroupStats], GroupStats] | None = None,
    ) -> None:
        if source not in DUAL_SOURCES:
            raise ValueError(f"dual_source must be one of {DUAL_SOURCES}, got {source!r}")
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise ValueError(
                f"dual_every must be an int >= 1 (primal steps per dual step) or None (dual steps only through "
                f"update_duals()), got {every!r}"
            )
        if running is not None and running.num_groups != num_groups:
            raise ValueError(f"the running statistics have {running.num_groups} groups, expected {num_groups}")
        self.num_groups, self.source, self.every = num_groups, source, every
        self.running, self.sync = running, sync
        self._pending: Tensor | None = None
        # counts that grow with the steps: never a Python int in a compiled step (see StepCount)
        self._num_pending, self._observed = StepCount(), StepCount()
        self.num_unfed = 0

    @property
    def has_observed(self) -> bool:
        """Whether any table was ever observed (:attr:`num_observed` > 0, without reading the device)."""
        return bool(self._observed)

    @property
    def passthrough(self) -> bool:
        """True when the dual reads exactly the current training batch (no window, sync or running estimate):
        the optimizer can then reuse the batch's constraint values instead of evaluating the table again."""
        return self.source == "train" and self.every == 1 and self.running is None and self.sync is None

    def due(self, step: int) -> bool:
        """Whether primal step number ``step`` (1-based) is followed by a dual step (never with ``every=None``)."""
        return self.every is not None and step % self.every == 0

    def observe(self, stats: GroupStats) -> None:
        """Add one table (detached) to the pending sum.

        Raises:
            ValueError: a table with another number of groups.
        """
        if stats.num_groups != self.num_groups:
            raise ValueError(f"expected statistics with {self.num_groups} groups, got {stats.num_groups}")
        table = detached(stats.table)
        self._pending = table.clone() if self._pending is None else self._pending + table.to(self._pending)
        self._num_pending.increment(table)
        self._observed.increment(table)

    def collect(self) -> GroupStats | None:
        """The table for the next dual step (pending sum → sync → running estimate), or None when nothing is
        pending. Clears the pending sum."""
        if self._pending is None:
            return None
        stats = GroupStats(self._pending)
        self._pending, self.num_pending = None, 0
        if self.sync is not None:
            stats = self.sync(stats)
        return stats if self.running is None else self.running.update(stats)

    def state_dict(self) -> dict[str, Any]:
        """The pending table, the counters and the running estimate (tensors and ints)."""
        return {
            "pending": None if self._pending is None else self._pending.clone(),
            "num_pending": self.num_pending,
            "num_observed": self.num_observed,
            "num_unfed": self.num_unfed,
            "running": None if self.running is None else self.running.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`. A state saved before ``num_observed`` existed counts as having observed
        (a resumed run is never refused for lack of held-out data it may have had).

        Raises:
            ValueError: the state and this object disagree on whether running statistics are used.
        """
        if (state["running"] is None) != (self.running is None):
            raise ValueError("state_dict and this optimizer disagree on whether running statistics are used")
        self._pending = None if state["pending"] is None else state["pending"].clone()
        self.num_pending = int(state["num_pending"])
        self.num_observed = int(state.get("num_observed", max(1, self.num_pending)))
        self.num_unfed = int(state.get("num_unfed", 0))
        if self.running is not None:
            self.running.load_state_dict(state["running"])
