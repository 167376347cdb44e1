"""Loading a user's own CSV file or DataFrame."""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Collection, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fairopt._validation import require_columns, user_stacklevel

from ._categories import sorted_categories, warn_numeric_groups
from ._splits import SPLIT_NAMES, check_fractions
from ._tabular import MIN_ROWS, TabularDataset, build_dataset, normalize_names, select_features

__all__ = ["load_csv"]


def load_csv(
    path_or_dataframe: str | os.PathLike[str] | pd.DataFrame,
    target: str,
    sensitive: str | Sequence[str],
    features: Sequence[str] | None = None,
    positive_label: Any = None,
    *,
    include_sensitive: bool = False,
    categorical: Sequence[str] = (),
    sensitive_categories: Mapping[str, Sequence[Hashable]] | None = None,
    validation_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int | None = 0,
    stratify: bool = True,
    name: str | None = None,
    read_csv_kwargs: Mapping[str, Any] | None = None,
) -> TabularDataset:
    """Load a CSV file or a DataFrame as a split, preprocessed fairness dataset.

    Preprocessing, fitted on the training split only: numeric columns are
    imputed with the training median and standardized; other columns (strings,
    booleans, pandas categoricals, and those named in ``categorical``) are
    one-hot encoded over the training categories (unseen or missing: all zeros).

    Parameters
    ----------
    path_or_dataframe:
        A CSV path (read with ``pandas.read_csv(path, **read_csv_kwargs)``) or
        a DataFrame (not modified).
    target:
        The label column. Without ``positive_label`` it must hold only 0/1 (or
        ``False``/``True``) values; it must hold both labels.
    sensitive:
        One sensitive attribute column or a sequence; intersectional group ids
        enumerate every combination of their categories (first attribute = most
        significant digit), names like ``"sex=F|race=B"``. Missing values are an
        error.
    features:
        Feature columns (default: every column but ``target`` and, unless
        ``include_sensitive``, the sensitive ones).
    positive_label:
        Target value (or collection of values) that means ``y = 1``; every other
        value means ``y = 0``. A string also matches the one value that reads the
        same (``"2"`` matches ``2``, ``"1.5"`` matches ``1.5``, ``"True"``
        matches ``True``), as a command line passes it.
    include_sensitive:
        Also use the sensitive columns as features (default ``False``).
    categorical:
        Numeric-looking columns to one-hot encode instead of standardizing.
    sensitive_categories:
        Per sensitive attribute, the full list of its categories in id order
        (default: a pandas categorical column's declared categories, otherwise
        the values found, sorted). Use it to keep ids stable across files where
        some category is absent.
    validation_fraction, test_fraction:
        Shares of the rows for the held-out splits (to within one row); the
        rest is ``train``.
    seed:
        Seed of the split (``None``: fresh entropy).
    stratify:
        Stratify the split by (group, label).
    name:
        ``TabularDataset.name`` (default: the file's stem, or ``"dataframe"``).
    read_csv_kwargs:
        Extra arguments of ``pandas.read_csv``.

    Returns
    -------
    TabularDataset
        ``X`` float32 ``(N, D)``, ``y`` float32 ``(N,)`` in {0, 1}, ``groups``
        int64 ``(N,)`` in ``[0, G)`` per split.

    Raises
    ------
    ValueError
        The file is empty or has no data rows (only a header); a column is
        missing (naming it, the source and the available columns); the target
        is not binary and no ``positive_label`` is given; ``positive_label``
        does not occur; the target holds one label only (every row ``y = 0``,
        or every row ``y = 1``); the target or a sensitive attribute has
        missing values; every row is in one group (each sensitive column has
        one value); fractions are out of range.

    Warns
    -----
    UserWarning
        ``positive_label`` is one value (not a collection) of a target with
        three or more: the others all become ``y = 0`` (the message names
        them). ``positive_label=[value]`` means the same without it.
    SmallSplitWarning
        (a ``UserWarning``) A split with a non-zero fraction gets fewer than
        30 rows (``MIN_ROWS``): its rates' intervals are very wide. The
        message says how many rows the file would need at these fractions.
    """
    if isinstance(path_or_dataframe, pd.DataFrame):
        source = "<DataFrame>"
        raw = path_or_dataframe.reset_index(drop=True)
        default_name = "dataframe"
    else:
        source = str(path_or_dataframe)
        try:
            raw = pd.read_csv(path_or_dataframe, **dict(read_csv_kwargs or {}))
        except pd.errors.EmptyDataError:
            raise ValueError(f"the CSV {source} is empty: no header and no data rows") from None
        default_name = Path(path_or_dataframe).stem
    if len(raw) == 0:
        what = "the DataFrame" if isinstance(path_or_dataframe, pd.DataFrame) else f"the CSV {source}"
        raise ValueError(f"{what} has no data rows (columns: {[str(c) for c in raw.columns]}); nothing to train on")
    sensitive = normalize_names(sensitive, "sensitive")
    check_fractions(validation_fraction, test_fraction)

    named = {"target": [target], "sensitive": list(sensitive)}
    named["categorical"] = list(categorical)
    if features is not None:
        named["features"] = list(features)
    if sensitive_categories is not None:
        named["sensitive_categories"] = list(sensitive_categories)
    require_columns(named, list(raw.columns), source)
    if target in sensitive:
        raise ValueError(f"the target {target!r} cannot be a sensitive attribute")

    labels = _binary_labels(raw[target], target, positive_label, source)
    columns = select_features(
        requested=features,
        default=[c for c in raw.columns if c != target],
        available=list(raw.columns),
        sensitive=sensitive,
        sources={a: (a,) for a in sensitive},
        include_sensitive=include_sensitive,
        target=target,
        where=source,
    )
    numeric = frozenset(
        c
        for c in columns
        if c not in set(categorical)
        and pd.api.types.is_numeric_dtype(raw[c])
        and not pd.api.types.is_bool_dtype(raw[c])
    )

    _warn_identifier_features(raw, [c for c in columns if c not in numeric and c not in sensitive], source)
    categories: dict[str, tuple[Hashable, ...]] = {}
    for attribute in sensitive:
        if sensitive_categories is not None and attribute in sensitive_categories:
            categories[attribute] = tuple(sensitive_categories[attribute])
        elif isinstance(raw[attribute].dtype, pd.CategoricalDtype):
            categories[attribute] = tuple(raw[attribute].cat.categories)
        else:
            categories[attribute] = sorted_categories(raw[attribute])
            warn_numeric_groups(
                raw[attribute], attribute, categories[attribute],
                f"bin it first, e.g. frame[{attribute!r}] = pd.cut(frame[{attribute!r}], [0, 40, 60, 120]) for bands",
            )  # fmt: skip
    if all(len(c) == 1 for c in categories.values()):
        only = ", ".join(f"{a!r} is always {c[0]!r}" for a, c in categories.items())
        raise ValueError(
            f"every row of {source} is in one group ({only}): no fairness constraint can compare groups; choose a "
            "sensitive column with at least two values (--sensitive on the command line), or list the categories "
            "the data should have with sensitive_categories="
        )
    data = build_dataset(
        raw,
        labels,
        name=name if name is not None else default_name,
        target=target,
        sensitive=sensitive,
        categories=categories,
        features=columns,
        numeric=numeric,
        validation_fraction=validation_fraction,
        test_fraction=test_fraction,
        seed=seed,
        stratify=stratify,
    )
    shares = (1.0 - validation_fraction - test_fraction, validation_fraction, test_fraction)
    _warn_small_splits(source, {p.name: len(p) for p in data.splits()}, dict(zip(SPLIT_NAMES, shares)))
    return data


IDENTIFIER_SHARE = 0.5
"""A categorical feature column with more distinct values than this share of the rows (and at least 20 rows) looks
like an identifier: one-hot encoded, it gives nearly one feature per row."""


def _warn_identifier_features(raw: pd.DataFrame, categorical: Sequence[Hashable], source: str) -> None:
    """Warn about categorical feature columns that look like identifiers (an ID, a name, a free-text or a date
    column): one-hot encoded, each becomes about one feature per row, which lets a model memorize its training rows
    (training accuracy up, test accuracy not) while nothing else says why."""
    rows = len(raw)
    if rows < 20:
        return
    for column in categorical:
        distinct = int(raw[column].nunique(dropna=True))
        if distinct > IDENTIFIER_SHARE * rows:
            warnings.warn(
                f"the feature column {column!r} of {source} has {distinct:,} distinct values in {rows:,} rows (an "
                f"identifier, a name, a free text or a date?): one-hot encoded it becomes {distinct:,} features, "
                "nearly one per row, which lets a model memorize its training rows (training accuracy up, test "
                "accuracy not); leave it out with load_csv(features=[...]), or drop the column from the file "
                "(fairopt bench reads every column but the target as a feature)",
                UserWarning,
                stacklevel=user_stacklevel(),
            )


class SmallSplitWarning(UserWarning):
    """A split of :func:`load_csv` gets fewer than ``MIN_ROWS`` (30) rows: rates measured on it have very wide
    intervals. Its own category, so that code which splits the data further (``fairopt bench`` carves its audit
    split out of the validation split) can report its own splits instead."""


def _warn_small_splits(source: str, sizes: Mapping[str, int], fractions: Mapping[str, float]) -> None:
    """Warn (:class:`SmallSplitWarning`) when a split with a non-zero fraction gets fewer than ``MIN_ROWS`` rows."""
    small = {name: n for name, n in sizes.items() if fractions[name] > 0 and n < MIN_ROWS}
    if not small:
        return
    needed = math.ceil(MIN_ROWS / min(f for f in fractions.values() if f > 0))
    shown = ", ".join(f"{name} {n}" for name, n in small.items())
    warnings.warn(
        f"{source} has {sum(sizes.values())} data rows, so some splits have fewer than {MIN_ROWS} rows ({shown}): "
        f"rates measured on them have very wide intervals; at these fractions use at least {needed} rows",
        SmallSplitWarning,
        stacklevel=3,
    )


def _match_label(value: Any, values: Sequence[Hashable]) -> Hashable | None:
    """The value of ``values`` that ``value`` names: itself, else (for a string) the one value whose ``str`` is
    ``value`` or that equals it as a number (``"2"`` names ``2``; ``"1"`` names ``1.0``). None if there is none."""
    if value in set(values):
        return value
    if not isinstance(value, str):
        return None
    matches = [v for v in values if str(v) == value]
    if not matches:
        try:
            number = float(value)
        except ValueError:
            return None
        matches = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and v == number]
    return matches[0] if len(matches) == 1 else None


def _label_spelling(value: Any) -> str:
    """A label value as text without case, whitespace, ``_`` and ``.`` (``-`` stays: ``-1`` is not ``1``)."""
    return re.sub(r"[\s_.]", "", str(value).casefold())


def positive_values(positive_label: Any, values: Sequence[Hashable], where: str) -> list[Hashable]:
    """The values of a target column (``values``, its distinct values) that ``positive_label`` names: one value or
    a collection of them, each matched by :func:`_match_label`. Shared by the tabular and the image loaders.

    Warns:
        UserWarning: one value (not a collection) named among three or more: the others all become ``y = 0`` (the
            message names them). A one-element list names the same value without the warning.

    Raises:
        ValueError: a named value does not occur; ``where`` (e.g. ``"target column 'y' in data.csv"``) says where it
            was looked for, and the message lists the values found.
    """
    one = not (isinstance(positive_label, Collection) and not isinstance(positive_label, (str, bytes)))
    given = [positive_label] if one else list(positive_label)
    positives = [_match_label(p, values) for p in given]
    absent = [p for p, match in zip(given, positives) if match is None]
    if absent:
        shown = list(values[:20]) + (["..."] if len(values) > 20 else [])
        # a value spelled alike up to case, whitespace, "_" and "." only ("yes" for "Yes", ">50k" for ">50K."): never
        # a fuzzy match or a sign, which could name the other class ("normal" for "abnormal", -1 for 1)
        spelled = {_label_spelling(v): v for v in values}
        close = {p: spelled.get(_label_spelling(p)) for p in absent}
        hint = "".join(f"did you mean {c!r} for {p!r}? " for p, c in close.items() if c is not None)
        raise ValueError(
            f"positive_label {absent if len(given) > 1 else absent[0]!r} does not occur in {where}; {hint}values "
            f"found: {shown}"
        )
    negatives = [v for v in values if v not in positives]
    if one and len(negatives) > 1:  # one value named: the others merged, perhaps unawares (a list: on purpose)
        shown = ", ".join(map(repr, negatives[:5])) + (", ..." if len(negatives) > 5 else "")
        warnings.warn(
            f"{where} has {len(values)} distinct values: positive_label "
            f"{positives[0]!r} makes y = 1 for it and y = 0 for the {len(negatives)} others together ({shown}); "
            "if another value also means y = 1, pass them all (positive_label=[...]; fairopt bench: repeat "
            "--positive-label), drop the rows of a value that is neither (e.g. 'pending') from the file, or, if "
            f"this is what you meant, pass it as a list (positive_label=[{positives[0]!r}]) to say so",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
    return positives


def _binary_labels(column: pd.Series, target: str, positive_label: Any, source: str) -> np.ndarray:
    """``(N,)`` int64 0/1 labels of ``column``.

    Raises:
        ValueError: missing values; a non-binary column without ``positive_label`` (the message names the Python
            argument and the ``fairopt bench`` flag); a ``positive_label`` that does not occur; a single label.
    """
    if column.isna().any():
        raise ValueError(
            f"target column {target!r} in {source} has "
            f"{int(column.isna().sum())} missing value(s); drop those rows first"
        )
    values = sorted_categories(column)
    if positive_label is None:
        if not set(values) <= {0, 1}:  # {0, 1} also matches False/True and 0.0/1.0
            shown = list(values[:10]) + (["..."] if len(values) > 10 else [])
            raise ValueError(
                f"target column {target!r} in {source} is not binary 0/1: found "
                f"{len(values)} distinct values {shown}; pass positive_label= the "
                "value (or collection of values) that means y = 1, the outcome the rates count (a TPR is the share "
                "of y = 1 rows predicted 1; usually the favourable one): one of the values found, chosen by you "
                "(fairopt bench: --positive-label VALUE)"
            )
        labels = column.astype(np.int64).to_numpy()
    else:
        positives = positive_values(positive_label, values, f"target column {target!r} in {source}")
        labels = column.isin(positives).to_numpy(dtype=np.int64)
    if len(np.unique(labels)) < 2:
        also = "" if positive_label is None else f", every value being positive_label {positive_label!r}"
        raise ValueError(
            f"target column {target!r} in {source} holds one label only: all {len(labels)} rows are "
            f"y = {int(labels[0])}{also}; a classifier needs rows of both labels: check that the target "
            "(fairopt bench: --target) names the label column"
        )
    return labels
