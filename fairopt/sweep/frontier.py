"""The accuracy-fairness frontier of a sweep, chosen without test data, and its outputs (JSON, Markdown, PNG).

Three roles for data, as in ``fairopt bench``: the *validation* split chose each member's final iterate; the *audit*
split (``held-out``) did nothing else, so its values, with 95% intervals, are the frontier a user reads and chooses
from; the *test* split re-evaluates the same members beside it (as OxonFair plots its validation frontier on test
data), to show how far the honest estimate carried.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fairopt.validation import FairnessReport

__all__ = ["FrontierPoint", "SplitEstimate", "SweepResult", "pick_member"]

# 2: with provenance (1: without; fairopt.sweep.replay reads both)
_FORMAT = 2


@dataclass(frozen=True)
class SplitEstimate:
    """One member's final model on one split.

    Attributes:
        accuracy, accuracy_lower, accuracy_upper: overall accuracy and its 95% interval (Wilson), unitless.
        value, lower, upper: the expression value (``g + tolerance``, e.g. a gap in rate units) of the constraint's
            largest entry and that entry's interval; ``upper`` is the largest upper end over the entries, so
            ``upper <= t`` means every entry is below ``t`` at 95% each. None when undefined.
        verdict: ``"satisfied"``, ``"violated"`` or ``"cannot tell"`` against the member's own tolerance.
    """

    accuracy: float
    accuracy_lower: float
    accuracy_upper: float
    value: float | None
    lower: float | None
    upper: float | None
    verdict: str

    @classmethod
    def from_report(cls, report: FairnessReport) -> SplitEstimate:
        """Read a :class:`~fairopt.validation.FairnessReport` built with one constraint and the accuracy rate."""
        acc = report.overall.rates["accuracy"]
        entries = report.constraints[0].entries
        defined = [e for e in entries if e.value is not None]
        top = max(defined, key=lambda e: e.value) if defined else None  # type: ignore[arg-type, return-value]
        uppers = [e.upper for e in entries if e.upper is not None]
        return cls(
            accuracy=float(acc.value) if acc.value is not None else float("nan"),
            accuracy_lower=float(acc.lower) if acc.lower is not None else float("nan"),
            accuracy_upper=float(acc.upper) if acc.upper is not None else float("nan"),
            value=None if top is None else float(top.value),  # type: ignore[arg-type]
            lower=None if top is None or top.lower is None else float(top.lower),
            upper=max(uppers) if len(uppers) == len(entries) else None,
            verdict=report.constraints[0].verdict.value,
        )


@dataclass(frozen=True)
class FrontierPoint:
    """One member of the sweep after selection.

    Attributes:
        label: e.g. ``"proxy_lagrangian tol=0.05 seed=0"``. method, tolerance, seed, penalty_coefficient: the member.
        selection: how its final iterate was chosen (on the validation split).
        audit: its :class:`SplitEstimate` on the audit split (the frontier). test: on the test split (re-check).
        multipliers: its final constraint weights.
        constant: it predicts one label for every held-out row (a constant classifier meets parity constraints
            trivially and learned nothing: never picked).
    """

    label: str
    method: str
    tolerance: float
    seed: int
    penalty_coefficient: float | None
    selection: str
    audit: SplitEstimate
    test: SplitEstimate
    multipliers: tuple[float, ...] = ()
    constant: bool = False


def pick_member(points: Sequence[FrontierPoint], bound: float) -> int | None:
    """The member a user would deploy for ``bound``, chosen without test data: the largest audit accuracy
    among the members whose audit upper bound meets it (``audit.upper <= bound``), constant classifiers excepted; ties
    go to the first. None when no member certifies the bound on the audit split."""
    ok = [i for i, p in enumerate(points) if p.audit.upper is not None and p.audit.upper <= bound and not p.constant]
    return max(ok, key=lambda i: (points[i].audit.accuracy, -i)) if ok else None


@dataclass
class SweepResult:
    """What :func:`fairopt.sweep` returns.

    Attributes:
        points: one :class:`FrontierPoint` per member. bound: the bound the pick is for. picked: index of the picked
            member (:func:`pick_member`) or None. constraint: the constraint's expression (tolerance aside).
        config: the options the sweep ran with, as :func:`fairopt.sweep`'s arguments. seconds: training wall time
            (evaluation excluded). notes: what a reader should know (data caps, a bound no member meets).
        provenance: the versions, the machine and the data it ran on (:func:`fairopt.bench.provenance.provenance`: the
            data file's SHA-256 among them), for :func:`fairopt.sweep.replay`.
    """

    points: list[FrontierPoint]
    bound: float
    picked: int | None
    constraint: str
    config: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-native (``None`` for undefined values)."""
        return {"format": _FORMAT, **asdict(self)}

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, allow_nan=False, default=str)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    def to_markdown(self, digits: int = 3) -> str:
        """The frontier as a Markdown table (audit beside test), the pick and the notes."""

        def f(x: float | None) -> str:
            return "undefined" if x is None else f"{x:.{digits}f}"

        def interval(lo: float | None, hi: float | None) -> str:
            return f"[{f(lo)}, {f(hi)}]"

        lines = [
            f"Constraint `{self.constraint}`; bound {self.bound:g}. Final iterates chosen on the validation split; "
            "held-out = the audit split (95% intervals), test = the same members re-evaluated.",
            "",
            "| member | held-out acc | held-out value [95%] | test acc | test value | test verdict at its tolerance "
            "| pick |",
            "|---|---|---|---|---|---|---|",
        ]
        for i, p in enumerate(self.points):
            a, t = p.audit, p.test
            mark = "**picked**" if i == self.picked else "constant" if p.constant else ""
            lines.append(
                f"| {p.label} | {f(a.accuracy)} | {f(a.value)} {interval(a.lower, a.upper)} | {f(t.accuracy)} | "
                f"{f(t.value)} | {t.verdict} | {mark} |"
            )
        lines.append("")
        if self.picked is None:
            lines.append(f"No member's held-out upper bound meets {self.bound:g}: loosen the bound or add audit data.")
        else:
            p = self.points[self.picked]
            lines.append(
                f"Pick for bound {self.bound:g}: **{p.label}** (held-out accuracy {f(p.audit.accuracy)}, upper bound "
                f"{f(p.audit.upper)}); on test: accuracy {f(p.test.accuracy)}, value {f(p.test.value)}."
            )
        lines += [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def plot(self, path: str | Path) -> Path | None:
        """Accuracy vs constraint value, held-out (with intervals) and test side by side, one marker per method, the
        pick circled and the bound as a line. Returns the path, or None when matplotlib is not installed."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return None
        fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
        styles = {"proxy_lagrangian": ("o", "tab:blue"), "penalty": ("s", "tab:orange")}
        for ax, split in zip(axes, ("audit", "test")):
            for method, (marker, color) in styles.items():
                pts = [p for p in self.points if p.method == method and getattr(p, split).value is not None]
                if not pts:
                    continue
                est = [getattr(p, split) for p in pts]
                xs = [e.value for e in est]
                ys = [e.accuracy for e in est]
                if split == "audit":
                    xerr = [[e.value - (e.lower if e.lower is not None else e.value) for e in est],
                            [(e.upper if e.upper is not None else e.value) - e.value for e in est]]  # fmt: skip
                    ax.errorbar(xs, ys, xerr=xerr, fmt="none", ecolor=color, alpha=0.4)
                ax.scatter(xs, ys, marker=marker, color=color, label=method.replace("_", "-"))
            if self.picked is not None:
                e = getattr(self.points[self.picked], split)
                if e.value is not None:
                    ax.scatter([e.value], [e.accuracy], s=180, facecolors="none", edgecolors="k", label="pick")
            ax.axvline(self.bound, color="k", ls="--", lw=0.8)
            ax.set_xlabel(f"largest entry, {'held-out (95% intervals)' if split == 'audit' else 'test'}")
            ax.set_title("chosen on held-out data" if split == "audit" else "re-checked on test data")
        axes[0].set_ylabel("accuracy")
        fig.suptitle(f"{self.constraint}; bound {self.bound:g} (dashed)", fontsize=9)
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        out = Path(path)
        fig.savefig(out, dpi=120)
        plt.close(fig)
        return out

    def write(self, out: str | Path, *, plots: bool = True) -> list[Path]:
        """Write ``sweep.json``, ``sweep.md`` and (with matplotlib) ``sweep.png`` into folder ``out``."""
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        written = [folder / "sweep.json", folder / "sweep.md"]
        self.to_json(written[0])
        written[1].write_text(self.to_markdown())
        if plots and (png := self.plot(folder / "sweep.png")) is not None:
            written.append(png)
        return written
