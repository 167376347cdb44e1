"""The settings shared by every report: interval level and methods, bootstrap size and seed, illusion threshold."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from fairopt.validation.estimate.intervals import INTERVAL_METHODS

__all__ = ["CONSTRAINT_METHODS", "ReportOptions"]

CONSTRAINT_METHODS = ("auto", "bootstrap")


@dataclass(frozen=True)
class ReportOptions:
    """How a :class:`~fairopt.validation.report.fairness_report.FairnessReport` computes its intervals and verdicts.

    Args:
        confidence: two-sided level of every interval, in (0, 1) (default 0.95).
        method: interval for a group rate: ``"wilson"`` (default; Wilson 1927) or ``"clopper-pearson"``
            (exact, conservative). Mean loss always uses the Student-t interval.
        constraint_method: ``"auto"`` (default): analytic intervals (Newcombe / MOVER, see
            :mod:`~fairopt.validation.estimate.assess`) where the entry is a linear form or an extremum of linear
            forms of independent group rates, the bootstrap otherwise; ``"bootstrap"``: the bootstrap for every entry.
        n_resamples: bootstrap size B (>= 100).
        seed: seed of the bootstrap draws (reports are reproducible).
        max_train_error: a group's training error rate at or below which its error-based constraint entries are
            flagged as an illusion of fairness instead of "satisfied" (default 0.01; only for ``split="train"``).
        loss_nonnegative: the per-example losses are >= 0 (default True: log loss, 0-1, hinge, squared error), so
            mean-loss intervals are clipped at 0; pass False for a loss that can be negative (the tables hold sums
            only, so this cannot be read from them).

    Raises:
        ValueError: any value out of range (raised here, at construction).
    """

    confidence: float = 0.95
    method: str = "wilson"
    constraint_method: str = "auto"
    n_resamples: int = 2000
    seed: int = 0
    max_train_error: float = 0.01
    loss_nonnegative: bool = True

    def __post_init__(self) -> None:
        if not (0.0 < self.confidence < 1.0):
            raise ValueError(f"confidence must be in (0, 1), e.g. 0.95, got {self.confidence!r}")
        if self.method not in INTERVAL_METHODS:
            raise ValueError(f"method must be one of {INTERVAL_METHODS}, got {self.method!r}")
        if self.constraint_method not in CONSTRAINT_METHODS:
            raise ValueError(f"constraint_method must be one of {CONSTRAINT_METHODS}, got {self.constraint_method!r}")
        if isinstance(self.n_resamples, bool) or not isinstance(self.n_resamples, int) or self.n_resamples < 100:
            raise ValueError(f"n_resamples must be an int >= 100, got {self.n_resamples!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        if not (0.0 <= self.max_train_error < 1.0):
            raise ValueError(f"max_train_error must be in [0, 1), got {self.max_train_error!r}")
        if not isinstance(self.loss_nonnegative, bool):
            raise ValueError(f"loss_nonnegative must be True or False, got {self.loss_nonnegative!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReportOptions:
        return cls(**data)
