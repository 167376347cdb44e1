"""Plain result records of a fairness report: rate estimates, group rows, constraint entries and verdicts.

All fields are Python floats, ints, strings, tuples and mappings (no tensors), so records compare with ``==``,
print readably and serialize to JSON without loss (:mod:`.fairness_report`). An undefined value (a rate
with a zero denominator, an unavailable bound) is ``None``: never 0, never NaN.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

__all__ = ["ConstraintResult", "EntryResult", "Estimate", "GroupRow", "Verdict", "optional_float"]


class Verdict(str, Enum):
    """The verdict on a constraint entry at the report's confidence level.

    ``SATISFIED``: the interval's upper end is at or below the bound; ``VIOLATED``: its lower end is above the
    bound; ``CANNOT_TELL``: the interval contains the bound, the entry is undefined, no interval is available, or
    the entry is flagged (e.g. an illusion of fairness on training data); the entry's ``reason`` says which.
    """

    SATISFIED = "satisfied"
    VIOLATED = "violated"
    CANNOT_TELL = "cannot tell"

    def __str__(self) -> str:
        return self.value


def optional_float(value: Any) -> float | None:
    """``None`` for ``None``/NaN, else ``float(value)``: the one place NaN becomes "undefined"."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


@dataclass(frozen=True)
class Estimate:
    """A rate (or mean loss) of one group with its interval.

    Attributes:
        value: the point estimate; ``None`` when undefined (zero denominator).
        lower, upper: interval bounds; ``None`` when undefined or unavailable.
        denominator: weighted count the rate conditions on (examples, or weight units).
        effective_n: binomial-equivalent sample size behind the interval (equals ``denominator`` without weights).
    """

    value: float | None
    lower: float | None
    upper: float | None
    denominator: float
    effective_n: float

    @property
    def defined(self) -> bool:
        return self.value is not None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Estimate:
        return cls(**data)


@dataclass(frozen=True)
class GroupRow:
    """One row of the per-group table.

    Attributes:
        name: group name (``"overall"`` for the pooled row).
        count: weighted number of examples. examples: number of examples (unweighted; with frequency weights the
            number of replicated examples); ``None`` if unknown.
        rates: canonical rate name → :class:`Estimate`.
    """

    name: str
    count: float
    examples: int | None
    rates: Mapping[str, Estimate]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GroupRow:
        rates = {k: Estimate.from_dict(v) for k, v in data["rates"].items()}
        return cls(data["name"], data["count"], data["examples"], rates)


@dataclass(frozen=True)
class EntryResult:
    """One entry of a constraint (``g = value - tolerance <= 0`` wanted).

    Attributes:
        name: readable entry name, e.g. ``"|tpr[sex=F] - tpr[overall]|"``.
        value: the expression's value (rate units); ``None`` when undefined.
        lower, upper: its interval at the report's confidence; ``None`` when unavailable.
        tolerance: the bound. violation: ``max(0, value - tolerance)``; ``None`` when undefined.
        verdict: :class:`Verdict`. method: how the interval was computed (e.g. ``"newcombe"``, ``"bootstrap"``).
        reason: why the verdict (one sentence). flags: e.g. ``("illusion_of_fairness",)``.
        groups: names of the groups whose data the value depends on.
        excluded: names of the groups the entry left out because a rate it compares is undefined there (zero
            denominator, e.g. no positive labels for a TPR): the value, when defined, covers the other groups only.
    """

    name: str
    value: float | None
    lower: float | None
    upper: float | None
    tolerance: float
    violation: float | None
    verdict: Verdict
    method: str
    reason: str
    flags: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    excluded: tuple[str, ...] = ()

    @property
    def defined(self) -> bool:
        return self.value is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "lower": self.lower,
            "upper": self.upper,
            "tolerance": self.tolerance,
            "violation": self.violation,
            "verdict": self.verdict.value,
            "method": self.method,
            "reason": self.reason,
            "flags": list(self.flags),
            "groups": list(self.groups),
            "excluded": list(self.excluded),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EntryResult:
        fields = dict(data)
        fields["verdict"] = Verdict(fields["verdict"])
        fields["flags"], fields["groups"] = tuple(fields["flags"]), tuple(fields["groups"])
        fields["excluded"] = tuple(fields.get("excluded", ()))  # absent in reports written by fairopt 0.1.0
        return cls(**fields)


@dataclass(frozen=True)
class ConstraintResult:
    """A constraint's entries, with a combined verdict.

    Attributes:
        name: the constraint's name (``Constraint.name``: the key of :meth:`FairnessReport.constraint`).
        kind: its class name (e.g. ``"EqualOpportunity"``). tolerance: its bound.
        entries: one :class:`EntryResult` per entry.
        label: the name with group names in place of ids (``Constraint.label``; ``""``: as ``name``), shown in
            reports.
    """

    name: str
    kind: str
    tolerance: float
    entries: tuple[EntryResult, ...]
    label: str = ""

    @property
    def shown(self) -> str:
        """The label when there is one, else the name."""
        return self.label or self.name

    @property
    def verdict(self) -> Verdict:
        """``VIOLATED`` if any entry is; ``SATISFIED`` if every entry is; else ``CANNOT_TELL``.

        No multiplicity correction is made across entries (each entry's verdict is at the report's level).
        """
        verdicts = {e.verdict for e in self.entries}
        if Verdict.VIOLATED in verdicts:
            return Verdict.VIOLATED
        if verdicts == {Verdict.SATISFIED}:
            return Verdict.SATISFIED
        return Verdict.CANNOT_TELL

    @property
    def max_violation(self) -> float | None:
        """Largest violation over defined entries; ``None`` when no entry is defined."""
        values = [e.violation for e in self.entries if e.violation is not None]
        return max(values) if values else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "tolerance": self.tolerance,
            "verdict": self.verdict.value,
            "entries": [e.to_dict() for e in self.entries],
            "label": self.label,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConstraintResult:
        entries = tuple(EntryResult.from_dict(e) for e in data["entries"])
        return cls(data["name"], data["kind"], data["tolerance"], entries, data.get("label", ""))
