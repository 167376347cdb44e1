r"""A training-loop monitor: constraint values on held-out data every k steps, with the history kept.

Held-out measurements are what tell whether constraints generalize while training (Cotter et al., ICML 2019;
Cherepanova et al. 2021). :class:`FairnessMonitor` evaluates the constraints on one or more held-out datasets
every ``every`` steps (an exact pass with :func:`~fairopt.validation.collect_stats`), records the training-side
values you pass in (e.g. the batch or running ``GroupStats`` your training step already has), and, when a
multiplier source is attached, the current Lagrange multipliers. It keeps each evaluated table, so a full
:class:`~fairopt.validation.FairnessReport` with intervals can be made for any recorded step afterwards.

Example::

    monitor = FairnessMonitor([EqualOpportunity(0.05)], {"validation": val_loader}, group_names=groups,
                              every=200, multipliers=optimizer)
    for step, (x, y, g) in enumerate(train_loader):
        ...; batch_stats = group_stats(scores, labels=y, groups=g, num_groups=G)
        monitor.update(step, model, train_stats=batch_stats)
    monitor.history()           # DataFrame: step, split, constraint, entry, value, violation
    plot_constraint_history(monitor, path="constraint_history.png")
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from numbers import Number
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from fairopt.constraints.base import Constraint
from fairopt.groups import Groups
from fairopt.stats import GroupStats
from fairopt.validation.measure.evaluate import collect_stats
from fairopt.validation.measure.moments import SecondMoments
from fairopt.validation.report.fairness_report import FairnessReport, resolve_group_names
from fairopt.validation.report.options import ReportOptions

if TYPE_CHECKING:  # imported where used: `import fairopt` stays light
    import pandas as pd

__all__ = ["FairnessMonitor", "multiplier_values"]

TRAIN = "train"


def multiplier_values(source: Any) -> list[float]:
    """Flatten Lagrange multipliers to a list of floats, accepting loose shapes.

    ``source`` may be an object with a ``multipliers`` attribute (a value or a zero-argument callable), a
    zero-argument callable (e.g. a cooper multiplier module), a tensor, a number, or a dict/list of those.

    Raises:
        TypeError: anything else.
    """
    if hasattr(source, "multipliers") and not isinstance(source, (Tensor, Mapping)):
        source = source.multipliers
    if isinstance(source, Tensor):
        return [float(v) for v in source.detach().reshape(-1).cpu().tolist()]
    if isinstance(source, Number) and not isinstance(source, bool):
        return [float(source)]  # type: ignore[arg-type]
    if isinstance(source, Mapping):
        return [v for item in source.values() for v in multiplier_values(item)]
    if isinstance(source, (list, tuple)):
        return [v for item in source for v in multiplier_values(item)]
    if callable(source):
        return multiplier_values(source())
    raise TypeError(
        f"cannot read multipliers from {type(source).__name__}; pass a tensor, a dict/list of tensors, a callable, "
        "or an object with a `multipliers` attribute"
    )


class FairnessMonitor:
    """Evaluate constraints every ``every`` steps on held-out data and keep the history.

    Args:
        constraints: the constraints to track.
        data: split name → data (anything :func:`~fairopt.validation.evaluate` accepts), evaluated every
            ``every`` steps, e.g. ``{"validation": val_loader}`` (add ``"test"`` to plot it too).
        num_groups, group_names: G and/or the group names (a ``Groups``).
        every: evaluate at steps divisible by ``every`` (>= 1).
        multipliers: optional multiplier source read at each evaluation (see :func:`multiplier_values`).
        collect_kwargs: keyword arguments of :func:`~fairopt.validation.collect_stats` (``threshold``,
            ``batch_size``, ``loss_fn``, ...); ``progress`` defaults to False here.

    Raises:
        ValueError: ``every < 1``, no data, a split named ``"train"`` in ``data`` (train values come from
            ``update(train_stats=...)``), or constraints that do not fit G.
    """

    def __init__(
        self,
        constraints: Constraint | Sequence[Constraint],
        data: Mapping[str, Any],
        *,
        num_groups: int | None = None,
        group_names: Sequence[str] | Groups | None = None,
        every: int = 100,
        multipliers: Any = None,
        **collect_kwargs: Any,
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an int >= 1, got {every!r}")
        if not isinstance(data, Mapping) or not data:
            raise ValueError("data must be a non-empty dict of split name -> data, e.g. {'validation': val_loader}")
        if TRAIN in data:
            raise ValueError("pass training values with update(train_stats=...), not as a 'train' split in data")
        self.constraints = [constraints] if isinstance(constraints, Constraint) else list(constraints)
        self.group_names = resolve_group_names(group_names, num_groups)
        for c in self.constraints:
            c.check_num_groups(len(self.group_names))
        self.data, self.every, self.multipliers = dict(data), every, multipliers
        self.collect_kwargs = {"progress": False, **collect_kwargs}
        self._rows: list[dict[str, Any]] = []
        self._multipliers: list[dict[str, Any]] = []
        self._tables: dict[tuple[int, str], tuple[Tensor, Tensor | None]] = {}

    def should_evaluate(self, step: int) -> bool:
        """Whether :meth:`update` evaluates the held-out data at ``step``."""
        return step % self.every == 0

    def update(self, step: int, model: Callable[[Any], Tensor], *, train_stats: GroupStats | None = None) -> bool:
        """Call once per training step; every ``every`` steps it evaluates and records.

        Args:
            step: the training step (int >= 0).
            model: the model to evaluate (as :func:`~fairopt.validation.evaluate`).
            train_stats: the training-side ``(G, K)`` table of this step (batch or running); recorded as split
                ``"train"`` at evaluation steps.

        Returns:
            True if it evaluated at this step.
        """
        if not self.should_evaluate(step):
            return False
        if train_stats is not None:
            self.record(step, TRAIN, train_stats)
        for split, data in self.data.items():
            stats, moments = collect_stats(model, data, len(self.group_names), **self.collect_kwargs)
            self.record(step, split, stats, moments)
        if self.multipliers is not None:
            values = multiplier_values(self.multipliers)
            self._multipliers += [{"step": step, "index": i, "value": v} for i, v in enumerate(values)]
        return True

    def record(self, step: int, split: str, stats: GroupStats, moments: SecondMoments | None = None) -> None:
        """Record the constraint values of a table you computed yourself at ``step`` for ``split``."""
        stats = stats.detach().to("cpu", torch.float64)
        self._tables[step, split] = (stats.table, None if moments is None else moments.table.detach().cpu())
        for c in self.constraints:
            value = c.evaluate(stats)
            names = c.entry_names(self.group_names)
            shown = c.expression_values(value).tolist()
            for name, hard, ok, expression in zip(names, value.hard.tolist(), value.defined.tolist(), shown):
                self._rows.append(
                    {
                        "step": step,
                        "split": split,
                        "constraint": c.name,
                        "entry": name,
                        "value": expression if ok else None,
                        "violation": max(0.0, hard) if ok else None,
                    }
                )

    def history(self) -> pd.DataFrame:
        """Long table: ``step, split, constraint, entry, value, violation`` (undefined entries: ``<NA>``)."""
        import pandas as pd

        frame = pd.DataFrame(self._rows, columns=["step", "split", "constraint", "entry", "value", "violation"])
        for column in ("value", "violation"):
            frame[column] = pd.array(frame[column].tolist(), dtype="Float64")
        return frame

    def multiplier_history(self) -> pd.DataFrame:
        """Long table: ``step, index, value`` of the attached multipliers."""
        import pandas as pd

        return pd.DataFrame(self._multipliers, columns=["step", "index", "value"])

    @property
    def steps(self) -> list[int]:
        """The recorded steps, in order."""
        return sorted({step for step, _ in self._tables})

    def report(self, step: int | None = None, split: str | None = None, options: ReportOptions | None = None):
        """A full :class:`FairnessReport` of a recorded table (default: the last step, the first data split).

        Raises:
            KeyError: nothing recorded for that step and split.
        """
        step = self.steps[-1] if step is None and self._tables else step
        split = split or next(iter(self.data))
        if (step, split) not in self._tables:
            raise KeyError(f"nothing recorded for step={step}, split={split!r}; recorded steps: {self.steps}")
        table, moments = self._tables[step, split]  # type: ignore[index]
        return FairnessReport.from_stats(
            GroupStats(table),
            self.constraints,
            moments=None if moments is None else SecondMoments(moments),
            group_names=self.group_names,
            split=split,
            options=options,
            metadata={"step": step},
        )

    def state_dict(self) -> dict[str, Any]:
        """History and tables (CPU tensors), for checkpoints."""
        return {
            "rows": list(self._rows),
            "multipliers": list(self._multipliers),
            "tables": dict(self._tables),
            "group_names": list(self.group_names),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`.

        Raises:
            ValueError: the state was recorded with other group names.
        """
        if list(state["group_names"]) != list(self.group_names):
            raise ValueError(f"state has groups {state['group_names']}, this monitor has {self.group_names}")
        self._rows = list(state["rows"])
        self._multipliers = list(state["multipliers"])
        self._tables = dict(state["tables"])
