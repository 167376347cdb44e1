"""Encode sensitive attributes as int64 group ids with stable, readable names.

The data path needs ``groups (N,)`` int64 ids in ``[0, G)`` with G fixed up front (an absent group is a zero
row, never a shifted id). :class:`Groups` produces them from one or several sensitive attributes given as ints,
bools, strings or pandas categoricals. Several attributes give *intersectional* groups: every combination of
categories gets an id (mixed radix, first attribute most significant), whether or not it occurs in the data,
named like ``"sex=Female|race=Black"``.

Categories are ordered stably: a pandas categorical keeps its declared order, bools are ``False, True``,
other values are sorted. Fit on the training data (or pass ``categories=``) and reuse the same object to encode
held-out and test data, so ids mean the same everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import product
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["Groups"]


def _pandas() -> Any:
    """pandas, imported when first needed (``import fairopt`` stays light)."""
    import pandas

    return pandas


def _as_columns(data: Any, name: str | None) -> dict[str, np.ndarray | Any]:
    """Split input into named 1-D columns: DataFrame/dict → its columns; anything 1-D → one column."""
    pd = _pandas()
    if isinstance(data, pd.DataFrame):
        return {str(c): data[c] for c in data.columns}
    if isinstance(data, Mapping):
        return {str(k): v for k, v in data.items()}
    if isinstance(data, pd.Series):
        return {name or (str(data.name) if data.name is not None else "group"): data}
    if isinstance(data, Tensor):
        data = data.detach().cpu().numpy()
    arr = _values(data)
    if arr.ndim != 1:
        raise ValueError(
            f"a sensitive attribute must be 1-D (N,), got shape {arr.shape}; pass several attributes as a "
            "pandas DataFrame or a dict of name -> (N,) values"
        )
    return {name or "group": arr}


def _values(column: Any) -> np.ndarray:
    if isinstance(column, Tensor):
        return column.detach().cpu().numpy()
    values = np.asarray(column, dtype=object if getattr(column, "dtype", None) == "category" else None)
    if values.dtype.kind == "U" and not isinstance(column, np.ndarray):
        # np.asarray(["F", nan]) turns the NaN into the string "nan" (a spurious group); as objects it stays a
        # missing value, reported as for a Series, an object array or a DataFrame.
        values = np.asarray(column, dtype=object)
    return values


def _check_missing(attr: str, values: np.ndarray) -> None:
    missing = int(_pandas().isna(values).sum())
    if missing:
        raise ValueError(
            f"sensitive attribute {attr!r} has {missing} missing value(s) (None/NaN); drop those rows, or make "
            "missing an explicit group of its own, e.g. series.fillna('missing')"
        )


def _categories(name: str, column: Any) -> list[Any]:
    dtype = getattr(column, "dtype", None)
    if dtype is not None and str(dtype) == "category":
        return list(column.cat.categories)
    values = _values(column)
    if values.dtype == bool:
        return [False, True]
    _check_missing(name, values)
    uniques = set(values.tolist())
    try:
        return sorted(uniques)
    except TypeError:
        return sorted(uniques, key=str)


class Groups:
    """Sensitive attributes → int64 group ids in ``[0, num_groups)`` and readable names.

    Args:
        categories: mapping attribute name → list of its categories, in id order. Use :meth:`fit` to infer it.

    Attributes:
        attributes: tuple of attribute names. num_groups: G = product of the category counts.
        names: tuple of G readable names (``"sex=F|race=Black"``; a single unnamed attribute: ``"F"``).

    Example:
        >>> groups = Groups.fit(train_df[["sex", "race"]])
        >>> ids = groups.encode(test_df[["sex", "race"]])  # (N,) int64
    """

    def __init__(self, categories: Mapping[str, Sequence[Any]]) -> None:
        if not categories:
            raise ValueError("Groups needs at least one sensitive attribute")
        self.categories: dict[str, list[Any]] = {str(k): list(v) for k, v in categories.items()}
        for attr, cats in self.categories.items():
            if not cats:
                raise ValueError(f"attribute {attr!r} has no categories")
            if len(set(map(repr, cats))) != len(cats):
                raise ValueError(f"attribute {attr!r} has duplicate categories: {cats}")
        self.attributes = tuple(self.categories)
        self._sizes = [len(c) for c in self.categories.values()]
        self.num_groups = int(np.prod(self._sizes))
        unnamed = self.attributes == ("group",)
        self.names: tuple[str, ...] = tuple(
            str(combo[0]) if unnamed else "|".join(f"{a}={v}" for a, v in zip(self.attributes, combo))
            for combo in product(*self.categories.values())
        )

    @classmethod
    def fit(
        cls, data: Any, *, name: str | None = None, categories: Mapping[str, Sequence[Any]] | None = None
    ) -> Groups:
        """Infer categories from data.

        Args:
            data: one attribute (list, numpy array, tensor, pandas Series) or several (pandas DataFrame, or dict
                of name → values).
            name: the name of a single attribute (default: the Series name, else ``"group"``).
            categories: categories to use for some attributes instead of inferring them (fixes their order and
                includes categories absent from ``data``).

        Raises:
            ValueError: missing values, or a non 1-D attribute.
        """
        columns = _as_columns(data, name)
        given = dict(categories or {})
        return cls({attr: given.get(attr) or _categories(attr, col) for attr, col in columns.items()})

    def encode(self, data: Any, *, name: str | None = None, device: torch.device | str | None = None) -> Tensor:
        """Map attribute values to group ids.

        Returns:
            ``(N,)`` int64 tensor of ids in ``[0, num_groups)``.

        Raises:
            ValueError: a missing attribute, attributes of different lengths, or a value not among the fitted
                categories (the message lists them).
        """
        single = self.attributes[0] if len(self.attributes) == 1 else None
        if single is not None and not isinstance(data, Mapping) and not hasattr(data, "columns"):
            columns = {single: data}  # one unnamed (or differently named) 1-D attribute
        else:
            columns = _as_columns(data, name)
        missing = [a for a in self.attributes if a not in columns]
        if missing:
            raise ValueError(
                f"missing sensitive attribute(s) {missing}; got {list(columns)}, expected {list(self.attributes)}"
            )
        ids: np.ndarray | None = None
        for attr, size in zip(self.attributes, self._sizes):
            values = _values(columns[attr])
            _check_missing(attr, values)
            codes = np.asarray(_pandas().Index(self.categories[attr], dtype=object).get_indexer(values.astype(object)))
            if (codes < 0).any():
                unknown = sorted({repr(_key(v)) for v in values[codes < 0].tolist()})[:5]
                raise ValueError(
                    f"attribute {attr!r} has value(s) {', '.join(unknown)} not among its categories "
                    f"{self.categories[attr]}; fit Groups on data that contains them or pass categories="
                )
            if ids is not None and len(codes) != len(ids):
                raise ValueError(f"attribute {attr!r} has {len(codes)} values but the first attribute has {len(ids)}")
            ids = codes.astype(np.int64) if ids is None else ids * size + codes
        assert ids is not None
        return torch.as_tensor(ids, dtype=torch.int64, device=device)

    def id(self, name: str) -> int:
        """The id of a group from its name (``"sex=F|race=Black"``)."""
        try:
            return self.names.index(name)
        except ValueError:
            raise ValueError(f"unknown group name {name!r}; names are {list(self.names)}") from None

    def decode(self, ids: Tensor | Sequence[int]) -> list[str]:
        """Names of the given ids."""
        values = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        return [self.names[int(i)] for i in values]

    def to_dict(self) -> dict[str, list[Any]]:
        """Plain categories (JSON-friendly for str/int/bool categories); ``Groups(d)`` restores it."""
        return {a: list(c) for a, c in self.categories.items()}

    def __len__(self) -> int:
        return self.num_groups

    def __repr__(self) -> str:
        return (
            f"Groups({', '.join(f'{a}: {len(c)}' for a, c in self.categories.items())}; num_groups={self.num_groups})"
        )


def _key(value: Any) -> Any:
    # numpy scalars and Python scalars of equal value must match (np.int64(1) == 1, np.str_('F') == 'F').
    return value.item() if hasattr(value, "item") else value
