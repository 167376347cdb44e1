"""Shared text formatting for reports: readable rate labels, numbers with intervals, Markdown tables."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

__all__ = ["RATE_LABELS", "format_estimate", "format_number", "markdown_table", "nullable_frame"]

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


def format_number(value: float | None, digits: int = 3) -> str:
    """``value`` with ``digits`` decimals; ``"undefined"`` for ``None``."""
    return UNDEFINED if value is None else f"{value:.{digits}f}"


def format_estimate(value: float | None, lower: float | None, upper: float | None, digits: int = 3) -> str:
    """``"0.812 [0.780, 0.841]"``; the bracket is left out when no interval is available."""
    if value is None:
        return UNDEFINED
    if lower is None or upper is None:
        return format_number(value, digits)
    return f"{value:.{digits}f} [{lower:.{digits}f}, {upper:.{digits}f}]"


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
    frame = pd.DataFrame.from_records(list(records))
    for column in float_columns:
        if column in frame:
            frame[column] = pd.array([None if v is None else float(v) for v in frame[column]], dtype="Float64")
    return frame.set_index(index) if index is not None else frame
