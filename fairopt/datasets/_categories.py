"""Private helpers: the sorted categories of a column and the codes of its values (used for one-hot encoding).

Group ids are built by the public :class:`fairopt.groups.Groups`.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence

import numpy as np
import pandas as pd

__all__ = ["category_codes", "sorted_categories"]


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
