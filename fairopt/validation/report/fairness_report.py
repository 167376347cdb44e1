r"""The fairness report: per-group rates with intervals, constraint values with verdicts; DataFrame, Markdown, JSON.

Build one with :func:`fairopt.validation.evaluate` (from a model and data) or :meth:`FairnessReport.from_stats`
(from a ``GroupStats`` table you already have). The report keeps the table itself, so it can be re-read, merged
into other tools, or turned back into a :class:`~fairopt.stats.GroupStats` (:attr:`FairnessReport.stats`).

JSON schema ``fairopt.validation.FairnessReport``, version 2 (:data:`SCHEMA_VERSION`)
------------------------------------------------------------------------------------
A JSON object (standard JSON: no NaN or Infinity; an undefined number is ``null``)::

    schema          "fairopt.validation.FairnessReport"
    schema_version  2  (a reader refuses a larger version; version 1 lacks the entries' ``excluded``)
    split           string or null: "train", "validation", "audit", "test", ...
    options         {confidence, method, constraint_method, n_resamples, seed, max_train_error, loss_nonnegative}
    rates           [canonical rate names], the columns of the group table, in order
    groups          [group row], one per group, in group-id order
    overall         group row of all groups pooled (name "overall")
    constraints     [constraint]
    statistics      {columns: ["tn", ..., "loss"], table: [[G rows of 9 numbers]]}: the GroupStats table
    moments         null, or {columns: ["w2_tn", ..., "examples"], table: [[G rows of 7 numbers]]}: SecondMoments
    warnings        [string]
    metadata        {string: JSON value}: e.g. threshold (logit units), num_batches

    group row   = {name, count (weighted), examples (int or null), rates: {rate: estimate}}
    estimate    = {value, lower, upper (number or null), denominator (weighted count), effective_n}
    constraint  = {name, kind (class name), tolerance, verdict, entries: [entry], label (name with group names)}
    entry       = {name, value, lower, upper (number or null), tolerance, violation (number or null),
                   verdict ("satisfied" | "violated" | "cannot tell"), method, reason, flags: [string],
                   groups: [group name], excluded: [group name] (left out: a rate it compares is undefined)}

Rates are fractions in [0, 1]; ``mean_loss`` is in the loss's units; counts are weighted example counts.
``FairnessReport.from_json(report.to_json()) == report`` holds exactly (floats are written with ``repr``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from fairopt.constraints.base import Constraint
from fairopt.groups import Groups
from fairopt.stats import COLUMNS, GroupStats
from fairopt.validation.diagnose.illusion import ILLUSION_FLAG, flag_illusion, is_training_split
from fairopt.validation.estimate.assess import assess_constraint, nonnegative_losses
from fairopt.validation.estimate.estimates import rate_estimates
from fairopt.validation.measure.moments import MOMENT_COLUMNS, SecondMoments
from fairopt.validation.report.formatting import (
    RATE_LABELS,
    format_estimate,
    format_number,
    markdown_table,
    nullable_frame,
)
from fairopt.validation.report.jsonio import dump_json, load_json
from fairopt.validation.report.options import ReportOptions
from fairopt.validation.report.results import ConstraintResult, Estimate, GroupRow, Verdict, optional_float

if TYPE_CHECKING:  # imported where used: `import fairopt` stays light
    import pandas as pd

__all__ = ["DEFAULT_RATES", "SCHEMA", "SCHEMA_VERSION", "FairnessReport", "resolve_group_names"]

SCHEMA = "fairopt.validation.FairnessReport"
SCHEMA_VERSION = 2
DEFAULT_RATES: tuple[str, ...] = (
    "base_rate",
    "selection_rate",
    "true_positive_rate",
    "false_positive_rate",
    "false_negative_rate",
    "error_rate",
    "precision",
    "mean_loss",
)
OVERALL = "overall"


def resolve_group_names(group_names: Sequence[str] | Groups | None, num_groups: int | None) -> list[str]:
    """G unique group names from ``group_names`` (a sequence or a :class:`~fairopt.groups.Groups`) or ``num_groups``.

    Raises:
        TypeError: a single string (it would be read as one name per character). ValueError: neither given, lengths
            disagree, duplicate names, or the reserved name ``"overall"``.
    """
    if isinstance(group_names, (str, bytes)):
        raise TypeError(
            f"group_names must be a sequence of G names, got the string {group_names!r} (it would be read as one "
            f"name per character); pass a list, e.g. [{group_names!r}] for one group or ['female', 'male']"
        )
    if isinstance(group_names, Groups):
        names = list(group_names.names)
    elif group_names is not None:
        names = [str(n) for n in group_names]
    elif num_groups is not None:
        names = [str(i) for i in range(num_groups)]
    else:
        raise ValueError("pass num_groups (G, fixed up front) or group_names")
    if num_groups is not None and len(names) != num_groups:
        raise ValueError(f"group_names has {len(names)} names but num_groups is {num_groups}")
    if len(set(names)) != len(names) or OVERALL in names:
        raise ValueError(f"group names must be unique and not {OVERALL!r}, got {names}")
    return names


def _rows(
    names: Sequence[str], stats: GroupStats, moments: SecondMoments | None, rates: Sequence[str], options: ReportOptions
) -> list[GroupRow]:
    """One :class:`GroupRow` per row of ``stats`` (``names`` has one name per row)."""
    est = {
        r: rate_estimates(
            stats,
            r,
            moments=moments,
            confidence=options.confidence,
            method=options.method,
            loss_nonnegative=nonnegative_losses(stats, options),
        )
        for r in rates
    }
    count = stats.count.detach().cpu().double().tolist()
    examples = moments.column("examples").tolist() if moments is not None else [None] * len(count)
    return [
        GroupRow(
            names[g],
            float(count[g]),
            None if examples[g] is None else round(examples[g]),
            {
                r: Estimate(
                    optional_float(e.value[g]),
                    optional_float(e.lower[g]),
                    optional_float(e.upper[g]),
                    float(e.denominator[g]),
                    float(e.effective_n[g]),
                )
                for r, e in est.items()
            },
        )
        for g in range(stats.num_groups)
    ]


def _table(tensor: torch.Tensor) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(v) for v in row) for row in tensor.detach().cpu().double().tolist())


def constant_label(stats: GroupStats) -> int | None:
    """The label a model predicts for every row of a non-empty ``(G, K)`` table (no positive, or no negative, hard
    prediction; for a randomized classifier's expected table, every candidate predicts it), else None."""
    cells = stats.table[:, :4].sum(dim=0).tolist()  # tn, fp, fn, tp over the groups
    positives, negatives = cells[1] + cells[3], cells[0] + cells[2]
    if positives + negatives <= 0 or (positives > 0 and negatives > 0):
        return None
    return int(positives > 0)


RARE_PREDICTION = 0.1
"""A label is predicted *rarely* when the share of rows predicted so is below this fraction of the share of rows that
have it (e.g. 0.9% positive predictions where 24% of the rows are positive): nearly a constant classifier."""


def rare_prediction(stats: GroupStats) -> tuple[int, float, float] | None:
    """``(label, share predicted, share with the label)`` when a non-constant model predicts ``label`` for less than
    :data:`RARE_PREDICTION` times the share of rows that have it, over all groups of ``stats``; else None."""
    tn, fp, fn, tp = stats.table[:, :4].sum(dim=0).tolist()
    total = tn + fp + fn + tp
    for label, predicted, actual in ((1, fp + tp, fn + tp), (0, tn + fn, tn + fp)):
        # predicted > 0: a label never predicted is a constant classifier (constant_label), not a rare prediction
        if 0 < predicted < RARE_PREDICTION * actual:
            return label, predicted / total, actual / total
    return None


def _entry_warnings(results: Sequence[ConstraintResult]) -> list[str]:
    """One warning per undefined entry and per entry that left groups out, so neither passes unnoticed."""
    out = []
    for result in results:
        for e in result.entries:
            if not e.defined:
                out.append(f"{result.shown}: entry {e.name} is {e.reason}")
            elif e.excluded:
                out.append(
                    f"{result.shown}: entry {e.name} leaves out group(s) {', '.join(map(repr, e.excluded))} (a rate it "
                    "compares is undefined there); its value covers the other groups only"
                )
    return out


@dataclass(frozen=True)
class FairnessReport:
    """Per-group rates with intervals, and constraint entries with intervals and verdicts, for one dataset.

    Attributes:
        groups: one :class:`~fairopt.validation.report.results.GroupRow` per group (group-id order).
        overall: the pooled row (``name == "overall"``).
        constraints: one :class:`~fairopt.validation.report.results.ConstraintResult` per constraint.
        options: the :class:`ReportOptions` used. split: e.g. ``"validation"``; ``None`` if not given.
        rates: canonical names of the rates in the group table.
        statistics: the ``(G, 9)`` ``GroupStats`` table as nested tuples. moments: the ``(G, 7)``
            :class:`SecondMoments` table, or ``None``.
        warnings: readable notes (absent groups, illusion of fairness). metadata: JSON-native extras.
    """

    groups: tuple[GroupRow, ...]
    overall: GroupRow
    constraints: tuple[ConstraintResult, ...]
    options: ReportOptions
    split: str | None = None
    rates: tuple[str, ...] = DEFAULT_RATES
    statistics: tuple[tuple[float, ...], ...] = ()
    moments: tuple[tuple[float, ...], ...] | None = None
    warnings: tuple[str, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)

    # construction -------------------------------------------------------------------------------------------
    @classmethod
    def from_stats(
        cls,
        stats: GroupStats,
        constraints: Constraint | Sequence[Constraint] = (),
        *,
        moments: SecondMoments | None = None,
        group_names: Sequence[str] | Groups | None = None,
        split: str | None = None,
        options: ReportOptions | None = None,
        rates: Sequence[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> FairnessReport:
        """Build a report from a ``(G, K)`` table (e.g. accumulated over a held-out loader).

        Args:
            stats: the table. moments: its :class:`SecondMoments` (from :func:`~fairopt.validation.collect_stats`);
                ``None`` treats the counts as unweighted and gives no mean-loss intervals.
            constraints: one constraint or several. group_names: G names or a ``Groups`` (default ``"0"``...).
            split: the dataset's role; ``"train"`` (or ``"training"``) turns on the illusion-of-fairness check
                (:mod:`fairopt.validation.diagnose.illusion`); a name spelled nearly like ``"train"`` (``"trian"``)
                warns (:func:`~fairopt.validation.diagnose.illusion.is_training_split`).
            options: :class:`ReportOptions`. rates: rates of the group table (default :data:`DEFAULT_RATES`,
                without ``mean_loss`` when the table's loss column is all zero, i.e. no loss was recorded).
            metadata: JSON-serializable extras stored in the report.

        Raises:
            ValueError: bad names, unknown rates, a constraint referring to a missing group, non-JSON metadata.
        """
        options = options or ReportOptions()
        names = resolve_group_names(group_names, stats.num_groups)
        constraints = [constraints] if isinstance(constraints, Constraint) else list(constraints)
        stats = stats.detach()
        if moments is not None and moments.num_groups != stats.num_groups:
            raise ValueError(f"moments have {moments.num_groups} groups but stats have {stats.num_groups}")
        if rates is None:
            no_loss = not bool(stats.column("loss").abs().sum() > 0)
            rates = tuple(r for r in DEFAULT_RATES if not (r == "mean_loss" and no_loss))
        results = []
        training = is_training_split(split)
        for c in constraints:
            result = assess_constraint(c, stats, moments=moments, group_names=names, options=options)
            if training:
                result = flag_illusion(result, c, stats, names, options.max_train_error)
            results.append(result)
        rows = _rows(names, stats, moments, rates, options)
        overall = _rows([OVERALL], stats.overall(), None if moments is None else moments.overall(), rates, options)[0]
        warnings = [
            f"group {n!r} has no examples: its rates are undefined" for n, r in zip(names, rows) if r.count == 0
        ]
        warnings += _entry_warnings(results)
        if (constant := constant_label(stats)) is not None:  # (no split in the text: readers prefix it, once)
            warnings.append(
                f"the model predicts {constant} for every row (a constant classifier): parity constraints (equal "
                "selection rates, TPRs, FPRs) hold trivially for it, and it learned nothing; train longer or change "
                "the learning rate (under a constraint: loosen its bound)"
            )
        elif (rare := rare_prediction(stats)) is not None:
            label, predicted, actual = rare
            warnings.append(
                f"the model predicts {label} for {predicted:.1%} of the rows, where {actual:.1%} have label {label} "
                f"(nearly constant): parity constraints hold nearly trivially for it (TPRs and FPRs near {1 - label} "
                "in every group are nearly equal); compare its accuracy with predicting one label for everyone, "
                "and loosen the bound or the margin if training pushed it there"
            )
        illusions = [e.name for r in results for e in r.entries if ILLUSION_FLAG in e.flags]
        if illusions:  # named here: a reader that prints the warnings alone (not the entries) still sees which
            warnings.append(
                f"illusion of fairness on {', '.join(illusions)}: they look met only because the model (nearly) "
                "memorized the training data (training error near 0 in the groups they compare); evaluate on held-out "
                "data"
            )
        return cls(
            groups=tuple(rows),
            overall=overall,
            constraints=tuple(results),
            options=options,
            split=split,
            rates=tuple(rates),
            statistics=_table(stats.table),
            moments=None if moments is None else _table(moments.table),
            warnings=tuple(warnings),
            metadata=json.loads(json.dumps(dict(metadata or {}), allow_nan=False)),
        )

    # access -------------------------------------------------------------------------------------------------
    @property
    def group_names(self) -> tuple[str, ...]:
        return tuple(row.name for row in self.groups)

    @property
    def stats(self) -> GroupStats:
        """The ``(G, 9)`` float64 :class:`~fairopt.stats.GroupStats` the report was computed from (CPU)."""
        return GroupStats(torch.tensor(self.statistics, dtype=torch.float64).reshape(-1, len(COLUMNS)))

    @property
    def second_moments(self) -> SecondMoments | None:
        if self.moments is None:
            return None
        return SecondMoments(torch.tensor(self.moments, dtype=torch.float64).reshape(-1, len(MOMENT_COLUMNS)))

    def constraint(self, name: str) -> ConstraintResult:
        """The result of the constraint named ``name`` (``Constraint.name``)."""
        for result in self.constraints:
            if result.name == name:
                return result
        raise KeyError(f"no constraint named {name!r}; have {[c.name for c in self.constraints]}")

    @property
    def verdict(self) -> Verdict:
        """``VIOLATED`` if any constraint is, ``SATISFIED`` if all are (or there are none), else ``CANNOT_TELL``."""
        verdicts = {c.verdict for c in self.constraints}
        if Verdict.VIOLATED in verdicts:
            return Verdict.VIOLATED
        return Verdict.SATISFIED if verdicts <= {Verdict.SATISFIED} else Verdict.CANNOT_TELL

    # pandas -------------------------------------------------------------------------------------------------
    def group_table(self) -> pd.DataFrame:
        """Per-group table plus the ``"overall"`` row: ``count``, ``examples`` and, per rate, ``<rate>``,
        ``<rate>_lower``, ``<rate>_upper`` (nullable ``Float64``: undefined is ``<NA>``, never 0 or NaN)."""
        import pandas as pd

        records = []
        for row in (*self.groups, self.overall):
            record: dict[str, object] = {"group": row.name, "count": row.count, "examples": row.examples}
            for rate in self.rates:
                est = row.rates[rate]
                record.update({rate: est.value, f"{rate}_lower": est.lower, f"{rate}_upper": est.upper})
            records.append(record)
        floats = [c for r in self.rates for c in (r, f"{r}_lower", f"{r}_upper")]
        frame = nullable_frame(records, floats, index="group")
        frame["examples"] = pd.array(frame["examples"].tolist(), dtype="Int64")
        return frame

    def constraint_table(self) -> pd.DataFrame:
        """One row per constraint entry: ``constraint, entry, value, lower, upper, tolerance, violation, verdict,
        method, reason, flags`` (nullable floats)."""
        import pandas as pd

        records = [
            {
                "constraint": c.name,
                "entry": e.name,
                "value": e.value,
                "lower": e.lower,
                "upper": e.upper,
                "tolerance": e.tolerance,
                "violation": e.violation,
                "verdict": e.verdict.value,
                "method": e.method,
                "reason": e.reason,
                "flags": ",".join(e.flags),
            }
            for c in self.constraints
            for e in c.entries
        ]
        columns = ["constraint", "entry", "value", "lower", "upper", "tolerance", "violation", "verdict"]
        if not records:
            return pd.DataFrame(columns=[*columns, "method", "reason", "flags"])
        return nullable_frame(records, ["value", "lower", "upper", "tolerance", "violation"], index=None)

    # Markdown -----------------------------------------------------------------------------------------------
    def to_markdown(self, digits: int = 3) -> str:
        """A readable Markdown summary: the group table, the constraint table, and notes."""
        level = f"{self.options.confidence:.0%}"
        title = f"## Fairness report{f' ({self.split})' if self.split else ''}"
        counts = "counts are example counts (weighted where weights were given)"
        out = [title, "", f"Rates with {level} {self.options.method} intervals; {counts}.", ""]
        headers = ["group", "count", *(RATE_LABELS.get(r, r) for r in self.rates)]
        rows = [
            [row.name, f"{row.count:g}", *(format_estimate(*_triple(row.rates[r]), digits) for r in self.rates)]
            for row in (*self.groups, self.overall)
        ]
        out += [markdown_table(headers, rows), ""]
        if self.constraints:
            c_rows = [
                [
                    c.shown,
                    e.name,
                    format_estimate(e.value, e.lower, e.upper, digits),
                    f"{e.tolerance:g}",
                    format_number(e.violation, digits),
                    e.verdict.value,
                    e.method,
                ]
                for c in self.constraints
                for e in c.entries
            ]
            headers = ["constraint", "entry", f"value [{level} CI]", "bound", "violation", "verdict", "interval"]
            out += ["### Constraints", "", markdown_table(headers, c_rows), ""]
        said = " ".join(self.warnings)  # an undefined entry is among the warnings (reports of schema 2 on): once
        notes = list(self.warnings) + [
            f"{e.name}: {e.reason}"
            for c in self.constraints
            for e in c.entries
            if ((e.flags or e.lower is None) if e.defined else e.reason not in said)
        ]
        if notes:
            out += ["### Notes", "", *(f"- {n}" for n in notes), ""]
        return "\n".join(out)

    # JSON ---------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict of the versioned schema (see the module docstring)."""
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "split": self.split,
            "options": self.options.to_dict(),
            "rates": list(self.rates),
            "groups": [asdict(row) for row in self.groups],
            "overall": asdict(self.overall),
            "constraints": [c.to_dict() for c in self.constraints],
            "statistics": {"columns": list(COLUMNS), "table": [list(r) for r in self.statistics]},
            "moments": None
            if self.moments is None
            else {"columns": list(MOMENT_COLUMNS), "table": [list(r) for r in self.moments]},
            "warnings": list(self.warnings),
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FairnessReport:
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: not a fairopt report, or a schema version newer than this fairopt reads.
        """
        if data.get("schema") != SCHEMA:
            raise ValueError(f"not a fairopt fairness report (schema {data.get('schema')!r}, expected {SCHEMA!r})")
        version = data.get("schema_version")
        if not isinstance(version, int) or version > SCHEMA_VERSION or version < 1:
            raise ValueError(
                f"report schema version {version!r} is not supported (this fairopt reads versions 1..{SCHEMA_VERSION});"
                " upgrade fairopt to read it"
            )
        moments = data["moments"]
        return cls(
            groups=tuple(GroupRow.from_dict(r) for r in data["groups"]),
            overall=GroupRow.from_dict(data["overall"]),
            constraints=tuple(ConstraintResult.from_dict(c) for c in data["constraints"]),
            options=ReportOptions.from_dict(data["options"]),
            split=data["split"],
            rates=tuple(data["rates"]),
            statistics=tuple(tuple(float(v) for v in r) for r in data["statistics"]["table"]),
            moments=None if moments is None else tuple(tuple(float(v) for v in r) for r in moments["table"]),
            warnings=tuple(data["warnings"]),
            metadata=dict(data["metadata"]),
        )

    def to_json(self, path: str | os.PathLike[str] | None = None, *, indent: int | None = 2) -> str:
        """Serialize to standard JSON (no NaN); also write it to ``path`` when given. Returns the text."""
        return dump_json(self.to_dict(), path, indent)

    @classmethod
    def from_json(cls, source: str | os.PathLike[str]) -> FairnessReport:
        """Read a report from JSON text (a ``str``) or from a file (a ``pathlib.Path`` / path-like)."""
        return cls.from_dict(load_json(source))

    def __str__(self) -> str:
        return self.to_markdown()


def _triple(est: Estimate) -> tuple[float | None, float | None, float | None]:
    return est.value, est.lower, est.upper
