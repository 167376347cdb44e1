"""Private group encoding: intersectional group ids by mixed radix.

To be replaced by the public ``fairopt.groups`` module; keep this small.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = ["category_codes", "encode_groups", "sorted_categories"]


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


def encode_groups(
    frame: pd.DataFrame,
    attributes: Sequence[str],
    categories: Mapping[str, Sequence[Hashable]],
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Map each row of ``frame`` to an intersectional group id.

    Group ids enumerate the cartesian product of ``categories[a]`` for ``a`` in
    ``attributes`` in row-major (C) order: the first attribute is the most
    significant digit, so ``id = ((c_0 * n_1) + c_1) * n_2 + c_2 ...`` where
    ``c_i`` is the position of the row's value in ``categories[a_i]``. Every
    combination gets an id, whether or not it occurs in ``frame``.

    Returns
    -------
    ids:
        ``(N,)`` int64 array with values in ``[0, G)``, ``G = prod(n_i)``.
    names:
        ``G`` names such as ``"sex=Female|race=Black"``, ``names[id]``.

    Raises
    ------
    ValueError
        If a value is missing or is not among the attribute's categories.
    """
    ids = np.zeros(len(frame), dtype=np.int64)
    for attribute in attributes:
        cats = list(categories[attribute])
        column = frame[attribute]
        if column.isna().any():
            raise ValueError(
                f"sensitive attribute {attribute!r} has "
                f"{int(column.isna().sum())} missing value(s); drop or fill "
                "those rows before loading"
            )
        codes = category_codes(column, cats)
        if (codes < 0).any():
            unknown = sorted_categories(column[codes < 0])
            raise ValueError(
                f"sensitive attribute {attribute!r} has values {list(unknown)} outside its categories {cats}"
            )
        ids = ids * len(cats) + codes
    names = tuple(
        "|".join(f"{a}={v}" for a, v in zip(attributes, combo, strict=True))
        for combo in itertools.product(*(categories[a] for a in attributes))
    )
    return ids, names
