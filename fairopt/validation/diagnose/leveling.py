r"""Leveling down: did a fairness gap close because the better-off group got worse?

A constraint can be met by making the better-off group worse instead of the worse-off group better ("leveling
down"; Mittelstadt, Wachter, Russell, "The Unfairness of Fair Machine Learning: Levelling down and strict
egalitarianism by default", Michigan Technology Law Review 2024, arXiv:2302.02404; Zietlow, Lohaus, Balakrishnan,
Kleindessner, Locatello, Schölkopf, Russell, "Leveling Down in Computer Vision: Pareto Inefficiencies in Fair Deep
Classifiers", CVPR 2022). :func:`leveling_down` compares a result (e.g. the constrained model on test data) with a
reference result (e.g. the unconstrained model on the same data):

* every group's change in each rate (default accuracy, TPR, FPR), and
* per rate, with ``d = +1`` where higher is better (accuracy, TPR) and ``d = -1`` where lower is better (FPR):
  the better-off group ``b`` and the worse-off group ``w`` of the *reference* (largest and smallest ``d · r``; two
  distinct groups, the first in group order on ties), the gap ``d (r_b - r_w)`` before and after, and each one's
  change ``Δ = d (r_new - r_ref)`` (negative = worse). The gap closed by ``closure = gap_ref - |gap_now|``: a gap
  that reverses (``w`` now ahead of ``b``) counts by its size, so swapping places is not "closing" it. The finding
  is flagged when ``closure >= min_gap_closed`` and the better-off group's decline ``-Δ_b`` is more than half of
  it; "strict" when no one got better (``Δ_w <= 0``).

The texts (:attr:`LevelingFinding.reason`, :meth:`LevelingDownReport.to_markdown`) name each group once, with the
direction its change has ("got better", "got worse"); a change or gap that rounds to zero at the printed precision
is "unchanged" / equal, and a sign is printed only on a non-zero rounded number (never ``"-0.000"``). When the
reference rates of ``b`` and ``w`` tie at the printed precision, neither is called better off.

Values are point estimates: the two results usually share their data (paired), so intervals for independent
samples would not apply.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fairopt.rates import canonical_rate_name, compute_rate
from fairopt.validation.report.fairness_report import FairnessReport
from fairopt.validation.report.formatting import (
    RATE_LABELS,
    UNCHANGED,
    format_number,
    format_signed,
    is_zero_at,
    markdown_table,
    nullable_frame,
)

if TYPE_CHECKING:  # imported where used: `import fairopt` stays light
    import pandas as pd

__all__ = ["HIGHER_IS_BETTER", "LevelingDownReport", "LevelingFinding", "RateChange", "leveling_down"]

_DIGITS = 3  # decimals of the numbers in LevelingFinding.reason
_FLOAT_NOISE = 1e-12  # a change this small (rate units) is rounding in the rates, not a gain

HIGHER_IS_BETTER: dict[str, bool] = {
    "accuracy": True,
    "true_positive_rate": True,
    "true_negative_rate": True,
    "precision": True,
    "negative_predictive_value": True,
    "selection_rate": True,
    "false_positive_rate": False,
    "false_negative_rate": False,
    "error_rate": False,
    "mean_loss": False,
}


@dataclass(frozen=True)
class RateChange:
    """One group's rate in the reference and the current result (``None``: undefined), and the difference."""

    group: str
    rate: str
    reference: float | None
    current: float | None

    @property
    def change(self) -> float | None:
        return None if self.reference is None or self.current is None else self.current - self.reference


@dataclass(frozen=True)
class LevelingFinding:
    """How the gap in one rate between the reference's better-off and worse-off groups changed.

    Attributes:
        rate: canonical rate name. better_off, worse_off: group names (from the reference).
        reference_gap, current_gap: ``d (r_b - r_w)`` before and after (rate units).
        better_off_change, worse_off_change: ``d (r_new - r_ref)``; negative means the group got worse.
        leveling_down: the gap closed mainly because the better-off group got worse. strict: and no one gained.
        reason: one readable sentence.
    """

    rate: str
    better_off: str
    worse_off: str
    reference_gap: float
    current_gap: float
    better_off_change: float
    worse_off_change: float
    leveling_down: bool
    strict: bool
    reason: str


@dataclass(frozen=True)
class LevelingDownReport:
    """Per-group rate changes and one :class:`LevelingFinding` per rate (see the module docstring)."""

    changes: tuple[RateChange, ...]
    findings: tuple[LevelingFinding, ...]

    @property
    def flagged(self) -> tuple[LevelingFinding, ...]:
        """The findings flagged as leveling down."""
        return tuple(f for f in self.findings if f.leveling_down)

    def table(self) -> pd.DataFrame:
        """Changes: one row per (group, rate) with ``reference``, ``current``, ``change`` (nullable floats)."""
        records = [
            {"group": c.group, "rate": c.rate, "reference": c.reference, "current": c.current, "change": c.change}
            for c in self.changes
        ]
        return nullable_frame(records, ["reference", "current", "change"], index=None)

    def findings_table(self) -> pd.DataFrame:
        """One row per rate with the fields of :class:`LevelingFinding`."""
        import pandas as pd

        return pd.DataFrame([f.__dict__ for f in self.findings])

    def to_markdown(self, digits: int = 3) -> str:
        """Markdown: a table of ``reference → current (change)`` per group and rate, then one line per finding.

        A change that rounds to zero at ``digits`` decimals reads ``unchanged``; others carry their sign.
        """
        rates = list(dict.fromkeys(c.rate for c in self.changes))
        groups = list(dict.fromkeys(c.group for c in self.changes))
        by_key = {(c.group, c.rate): c for c in self.changes}
        headers = ["group", *(f"{RATE_LABELS.get(r, r)} (reference → current)" for r in rates)]
        rows = []
        for g in groups:
            cells = []
            for r in rates:
                c = by_key[g, r]
                change = c.change
                still = change is not None and is_zero_at(change, digits)
                shown = UNCHANGED if still else format_signed(change, digits)
                cells.append(f"{format_number(c.reference, digits)} → {format_number(c.current, digits)} ({shown})")
            rows.append([g, *cells])
        out = ["## Leveling-down check", "", markdown_table(headers, rows), ""]
        out += [f"- {'**leveling down**: ' if f.leveling_down else ''}{f.reason}" for f in self.findings]
        return "\n".join(out) + "\n"


def _moved(group: str, delta: float) -> str:
    """``"A got worse (-0.260)"``, ``"B got better (+0.020)"`` or ``"C unchanged"`` (``delta``: positive = better)."""
    if is_zero_at(delta, _DIGITS):
        return f"{group} {UNCHANGED}"
    return f"{group} got {'better' if delta > 0 else 'worse'} ({format_signed(delta, _DIGITS)})"


def _finding(
    rate: str, higher: bool, ref: Mapping[str, float], cur: Mapping[str, float], min_closed: float
) -> LevelingFinding | None:
    """The finding for one rate from the groups' reference and current values (``None``: fewer than 2 groups)."""
    d = 1.0 if higher else -1.0
    groups = [g for g in ref if g in cur]
    if len(groups) < 2:
        return None
    best = max(groups, key=lambda g: d * ref[g])
    worst = min((g for g in groups if g != best), key=lambda g: d * ref[g])  # never the same group twice
    # "+ 0.0" turns the -0.0 of d = -1 times a zero difference into 0.0
    gap_ref, gap_now = d * (ref[best] - ref[worst]) + 0.0, d * (cur[best] - cur[worst]) + 0.0
    delta_b, delta_w = d * (cur[best] - ref[best]) + 0.0, d * (cur[worst] - ref[worst]) + 0.0
    closure = gap_ref - abs(gap_now)
    label = RATE_LABELS.get(rate, rate)
    flagged = closure >= min_closed and -delta_b > 0.5 * closure
    strict = flagged and delta_w <= _FLOAT_NOISE
    now = format_number(abs(gap_now), _DIGITS)
    still = is_zero_at(delta_b, _DIGITS) and is_zero_at(delta_w, _DIGITS)
    if is_zero_at(gap_ref, _DIGITS):  # a tie: neither group is better off
        level = format_number(ref[best], _DIGITS)
        if still:
            head = f"{best} and {worst} had the same {label} in the reference ({level}), and both are unchanged"
        else:
            head = (
                f"the {label} was {level} for both groups in the reference and the gap is now {now}; "
                f"{_moved(best, delta_b)}, {_moved(worst, delta_w)}"
            )
    else:
        reversed_ = gap_now < 0 and not is_zero_at(gap_now, _DIGITS)
        first = f"{best} (better off in the reference)"
        moves = (
            f"{first} and {worst} both {UNCHANGED}" if still else f"{_moved(first, delta_b)}, {_moved(worst, delta_w)}"
        )
        order = ", with the order reversed" if reversed_ else ""
        head = f"the {label} gap went from {format_number(gap_ref, _DIGITS)} to {now}{order}; {moves}"
    if flagged:
        tail = "mainly because the better-off group got worse" + (", and no group gained" if strict else "")
    elif closure >= min_closed:
        tail = "mainly because the worse-off group improved"
    else:
        tail = f"it did not narrow by at least {min_closed:g}"
    reason = f"{head}: {tail}"
    return LevelingFinding(rate, best, worst, gap_ref, gap_now, delta_b, delta_w, flagged, strict, reason)


def leveling_down(
    report: FairnessReport,
    reference: FairnessReport,
    *,
    rates: Sequence[str] = ("accuracy", "true_positive_rate", "false_positive_rate"),
    higher_is_better: Mapping[str, bool] | None = None,
    min_gap_closed: float = 0.01,
) -> LevelingDownReport:
    """Compare ``report`` with ``reference`` group by group and flag gaps closed by leveling down.

    Args:
        report: the result to check (e.g. the constrained model on test data).
        reference: the baseline (e.g. the unconstrained model on the same data), with the same group names.
        rates: rates to compare (any of :mod:`fairopt.rates`).
        higher_is_better: per-rate direction overrides (defaults: :data:`HIGHER_IS_BETTER`).
        min_gap_closed: the smallest narrowing of a gap (rate units) that counts as closing it.

    Returns:
        :class:`LevelingDownReport`.

    Raises:
        ValueError: the reports have different groups, an unknown rate, or a rate without a known direction.
    """
    if report.group_names != reference.group_names:
        raise ValueError(f"the reports have different groups: {report.group_names} vs {reference.group_names}")
    directions = {**HIGHER_IS_BETTER, **{canonical_rate_name(k): v for k, v in (higher_is_better or {}).items()}}
    changes: list[RateChange] = []
    findings: list[LevelingFinding] = []
    for rate in (canonical_rate_name(r) for r in rates):
        if rate not in directions:
            raise ValueError(f"no direction known for {rate!r}; pass higher_is_better={{{rate!r}: True/False}}")
        values = []
        for r in (reference, report):
            rv = compute_rate(r.stats, rate)
            values.append(
                {n: float(v) for n, v, ok in zip(r.group_names, rv.value.tolist(), rv.defined.tolist()) if ok}
            )
        ref, cur = values
        changes += [RateChange(g, rate, ref.get(g), cur.get(g)) for g in report.group_names]
        finding = _finding(rate, directions[rate], ref, cur, min_gap_closed)
        if finding is not None:
            findings.append(finding)
    return LevelingDownReport(tuple(changes), tuple(findings))
