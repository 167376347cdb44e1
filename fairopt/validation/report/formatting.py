"""Shared text formatting for reports: readable rate labels, numbers with intervals, Markdown tables."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: `import fairopt` stays light
    import pandas as pd

__all__ = [
    "RATE_LABELS",
    "UNCHANGED",
    "format_estimate",
    "format_number",
    "format_signed",
    "is_zero_at",
    "markdown_table",
    "nullable_frame",
]

RATE_LABELS: dict[str, str] = {
    "selection_rate": "selection rate",
    "true_positive_rate": "TPR",
    "false_positive_rate": "FPR",
    "true_negative_rate": "TNR",
    "false_negative_rate": "FNR",
    "error_rate": "error rate",
    "accuracy": "accuracy",
    "precision": "precision",
    "negative_predictive_value": "NPV",
    "base_rate": "base rate",
    "mean_loss": "mean loss",
}

UNDEFINED = "undefined"
UNCHANGED = "unchanged"


def is_zero_at(value: float, digits: int = 3) -> bool:
    """Whether ``value`` prints as zero with ``digits`` decimals (``|value| < 0.5 · 10^-digits``, e.g. 0.0004)."""
    return float(f"{value:.{digits}f}") == 0.0


def format_number(value: float | None, digits: int = 3) -> str:
    """``value`` with ``digits`` decimals; ``"undefined"`` for ``None``.

    A value that rounds to zero prints as ``"0.000"``, never ``"-0.000"`` (e.g. ``-0.0002`` or ``-0.0``).
    """
    if value is None:
        return UNDEFINED
    return f"{0.0 if is_zero_at(value, digits) else value:.{digits}f}"


def format_signed(value: float | None, digits: int = 3) -> str:
    """A change with its sign, ``"+0.020"`` / ``"-0.260"``; a sign only when the rounded number is non-zero.

    ``None`` gives ``"undefined"``; a value that rounds to zero gives ``"0.000"`` (no ``"+"``, never ``"-0.000"``).
    """
    if value is None:
        return UNDEFINED
    return format_number(value, digits) if is_zero_at(value, digits) else f"{value:+.{digits}f}"


def format_estimate(value: float | None, lower: float | None, upper: float | None, digits: int = 3) -> str:
    """``"0.812 [0.780, 0.841]"``; the bracket is left out when no interval is available.

    Each number is printed by :func:`format_number` (no ``"-0.000"``).
    """
    if value is None:
        return UNDEFINED
    if lower is None or upper is None:
        return format_number(value, digits)
    return f"{format_number(value, digits)} [{format_number(lower, digits)}, {format_number(upper, digits)}]"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table (``|`` inside cells is escaped); numbers should be pre-formatted."""
    lines = ["| " + " | ".join(_cell(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def nullable_frame(
    records: Sequence[dict[str, object]], float_columns: Sequence[str], index: str | None
) -> pd.DataFrame:
    """A DataFrame whose ``float_columns`` use pandas' nullable ``Float64`` dtype: ``None`` shows as ``<NA>``."""
    import pandas as pd

    frame = pd.DataFrame.from_records(list(records))
    for column in float_columns:
        if column in frame:
            frame[column] = pd.array([None if v is None else float(v) for v in frame[column]], dtype="Float64")
    return frame.set_index(index) if index is not None else frame
