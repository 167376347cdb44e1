r"""The generalization gap of fairness constraints: the same constraints on train, held-out and test data.

A constraint met on the data the model was fit to says little about new data (Cherepanova et al., arXiv
2102.06764; Cotter et al., "Training Well-Generalizing Classifiers for Fairness Metrics and Other Data-Dependent
Constraints", ICML 2019). :func:`generalization_gap` evaluates one model on several splits in one call and puts
each entry's value, interval, violation and verdict side by side, with the gap between the first split (usually
train) and the last (usually test). A training split named ``"train"`` gets the illusion-of-fairness check.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor

from fairopt.constraints.base import Constraint
from fairopt.validation.measure.evaluate import evaluate
from fairopt.validation.report.fairness_report import FairnessReport
from fairopt.validation.report.formatting import format_estimate, format_number, markdown_table, nullable_frame
from fairopt.validation.report.jsonio import dump_json, load_json

if TYPE_CHECKING:  # imported where used: `import fairopt` stays light
    import pandas as pd

__all__ = ["GAP_SCHEMA", "GeneralizationGap", "generalization_gap"]

GAP_SCHEMA = "fairopt.validation.GeneralizationGap"
GAP_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class GeneralizationGap:
    """Reports of the same model and constraints on several splits, in order (e.g. train, held-out, test).

    Attributes:
        reports: split name → :class:`~fairopt.validation.report.fairness_report.FairnessReport`, in display order.

    Raises:
        ValueError: fewer than two splits, or reports whose constraint entries differ.
    """

    reports: Mapping[str, FairnessReport]

    def __post_init__(self) -> None:
        if len(self.reports) < 2:
            raise ValueError(f"a generalization gap needs at least two splits, got {list(self.reports)}")
        layouts = {name: _layout(r) for name, r in self.reports.items()}
        first = next(iter(layouts.values()))
        for name, layout in layouts.items():
            if layout != first:
                raise ValueError(f"split {name!r} was evaluated with other constraints than the first split")

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.reports)

    def table(self) -> pd.DataFrame:
        """One row per constraint entry; per split ``<split>_value``, ``_lower``, ``_upper``, ``_violation``,
        ``_verdict``; and ``gap`` = value on the last split minus value on the first (``<NA>`` if undefined)."""
        first, last = self.splits[0], self.splits[-1]
        records = []
        for index, (constraint, entry) in enumerate(_layout(self.reports[first])):
            record: dict[str, Any] = {"constraint": constraint, "entry": entry}
            for split, report in self.reports.items():
                e = _entries(report)[index]
                record.update(
                    {
                        f"{split}_value": e.value,
                        f"{split}_lower": e.lower,
                        f"{split}_upper": e.upper,
                        f"{split}_violation": e.violation,
                        f"{split}_verdict": e.verdict.value,
                    }
                )
            record["gap"] = _difference(record[f"{first}_value"], record[f"{last}_value"])
            records.append(record)
        floats = [f"{s}_{k}" for s in self.splits for k in ("value", "lower", "upper", "violation")] + ["gap"]
        return nullable_frame(records, floats, index=None)

    def to_markdown(self, digits: int = 3) -> str:
        """Markdown: one row per entry, one column per split (value [interval], verdict), and the gap; first a row
        with the overall error rate (or accuracy, whichever every report has; ``error_rate`` is among the default
        rates) and its interval per split, so that the constraints' gap reads beside the accuracy's."""
        first, last = self.splits[0], self.splits[-1]
        headers = ["constraint", "entry", *self.splits, f"gap ({last} - {first})"]
        rows = []
        reports = list(self.reports.values())
        rate = next((r for r in ("error_rate", "accuracy") if all(r in rep.overall.rates for rep in reports)), None)
        if rate is not None:
            estimates = [rep.overall.rates[rate] for rep in reports]
            values = [e.value for e in estimates]
            cells = [format_estimate(e.value, e.lower, e.upper, digits) for e in estimates]
            rows.append([f"(overall {rate.replace('_', ' ')}, not a constraint)", rate, *cells,
                         format_number(_difference(values[0], values[-1]), digits)])  # fmt: skip
        # constraints as the reports show them (with group names in place of ids, FairnessReport.to_markdown)
        layout = [(c.shown, e.name) for c in self.reports[first].constraints for e in c.entries]
        for index, (constraint, entry) in enumerate(layout):
            cells = []
            values = []
            for report in self.reports.values():
                e = _entries(report)[index]
                cells.append(f"{format_estimate(e.value, e.lower, e.upper, digits)}: {e.verdict.value}")
                values.append(e.value)
            rows.append([constraint, entry, *cells, format_number(_difference(values[0], values[-1]), digits)])
        level = f"{next(iter(self.reports.values())).options.confidence:.0%}"
        notes = [w for r in self.reports.values() for w in r.warnings]
        # expression values (g + tolerance, see the glossary), not constraint values g: each is read against its bound
        intro = f"Expression values with {level} intervals and verdicts (each against its constraint's bound)" + (
            ", after the overall rate." if rate else "."
        )
        out = ["## Generalization gap", "", intro, ""]
        out.append(markdown_table(headers, rows))
        if notes:
            out += ["", *(f"- {n}" for n in dict.fromkeys(notes))]
        return "\n".join(out) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": GAP_SCHEMA,
            "schema_version": GAP_SCHEMA_VERSION,
            "splits": list(self.splits),
            "reports": [self.reports[s].to_dict() for s in self.splits],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GeneralizationGap:
        if data.get("schema") != GAP_SCHEMA or data.get("schema_version") != GAP_SCHEMA_VERSION:
            raise ValueError(f"not a {GAP_SCHEMA} version {GAP_SCHEMA_VERSION} document")
        return cls({s: FairnessReport.from_dict(r) for s, r in zip(data["splits"], data["reports"])})

    def to_json(self, path: str | os.PathLike[str] | None = None, *, indent: int | None = 2) -> str:
        """Serialize to standard JSON; also write it to ``path`` when given. Returns the text."""
        return dump_json(self.to_dict(), path, indent)

    @classmethod
    def from_json(cls, source: str | os.PathLike[str]) -> GeneralizationGap:
        """Read from JSON text (a ``str``) or a file (a path-like)."""
        return cls.from_dict(load_json(source))


def _difference(first: float | None, last: float | None) -> float | None:
    """``last - first``, the gap between two splits' values; None when either is undefined."""
    return None if first is None or last is None else last - first


def _entries(report: FairnessReport) -> list[Any]:
    return [e for c in report.constraints for e in c.entries]


def _layout(report: FairnessReport) -> list[tuple[str, str]]:
    return [(c.name, e.name) for c in report.constraints for e in c.entries]


def generalization_gap(
    model: Callable[[Any], Tensor],
    splits: Mapping[str, Any],
    constraints: Constraint | Sequence[Constraint],
    **evaluate_kwargs: Any,
) -> GeneralizationGap:
    """Evaluate ``model`` and ``constraints`` on every split and put the results side by side.

    Example::

        gap = generalization_gap(model, {"train": train, "validation": val, "test": test},
                                 [EqualOpportunity(0.05)], group_names=groups)
        print(gap.to_markdown())

    Args:
        model: as :func:`~fairopt.validation.evaluate`.
        splits: split name → data (any data :func:`~fairopt.validation.evaluate` accepts), in display order; a
            split named ``"train"`` gets the illusion-of-fairness check.
        constraints: the constraints.
        **evaluate_kwargs: further keyword arguments of :func:`~fairopt.validation.evaluate` (``num_groups``,
            ``group_names``, ``options``, ``threshold``, ...), the same for every split.

    Returns:
        :class:`GeneralizationGap`.

    Raises:
        ValueError: fewer than two splits, ``split`` among the keyword arguments, and the errors of ``evaluate``.
    """
    if len(splits) < 2:
        raise ValueError(f"a generalization gap needs at least two splits, got {list(splits)}")
    if "split" in evaluate_kwargs:
        raise ValueError("the split names are the keys of `splits`; do not pass split=")
    reports = {name: evaluate(model, data, constraints, split=name, **evaluate_kwargs) for name, data in splits.items()}
    return GeneralizationGap(reports)
