"""Private helpers: the sorted categories of a column and the codes of its values (used for one-hot encoding).

Group ids are built by the public :class:`fairopt.groups.Groups`.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Iterable, Sequence

import numpy as np
import pandas as pd

from fairopt._validation import user_stacklevel

__all__ = ["MANY_VALUES", "category_codes", "sorted_categories", "warn_numeric_groups"]

MANY_VALUES = 20  # distinct values of a numeric sensitive column beyond which it is likely a measurement, not a code


def sorted_categories(values: Iterable[Hashable]) -> tuple[Hashable, ...]:
    """Distinct non-missing ``values``, sorted (by ``str`` if not comparable)."""
    distinct = {v.item() if isinstance(v, np.generic) else v for v in values}
    distinct = {v for v in distinct if not pd.isna(v)}
    try:
        return tuple(sorted(distinct))
    except TypeError:
        return tuple(sorted(distinct, key=lambda v: (type(v).__name__, str(v))))


def category_codes(values: pd.Series, categories: Sequence[Hashable]) -> np.ndarray:
    """``(N,)`` int64 position of each value in ``categories``; -1 if absent/missing."""
    index = pd.Index(list(categories))
    if isinstance(values.dtype, pd.CategoricalDtype):
        values = values.astype(object)
    return np.asarray(index.get_indexer(values), dtype=np.int64)


def warn_numeric_groups(column: pd.Series, attribute: str, categories: Sequence[Hashable], fix: str) -> None:
    """Warn when a numeric sensitive column with more than :data:`MANY_VALUES` distinct values is read as categories:
    every value becomes a group of its own (an age or an income column: dozens of groups, most too small for a rate).

    Args:
        column: the sensitive column. attribute: its name. categories: the categories it will be read as.
        fix: how to bin it with the loader at hand (e.g. ``"pass bins={'Age': [0, 40, 60, 120]}"``).
    """
    numeric = pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)
    if numeric and len(categories) > MANY_VALUES:
        warnings.warn(
            f"the sensitive column {attribute!r} is numeric with {len(categories)} distinct values, so each value "
            f"becomes a group of its own ({len(categories)} groups over {len(column)} rows, most too small to "
            f"estimate a rate on); {fix}",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
