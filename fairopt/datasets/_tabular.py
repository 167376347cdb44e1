"""The dataset container, preprocessing and seeded splitting shared by all loaders."""

from __future__ import annotations

from collections.abc import Collection, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Sampler, TensorDataset

from fairopt.groups import Groups

from ._categories import category_codes, sorted_categories
from ._splits import SPLIT_NAMES, SplitDataset, stratified_split

__all__ = [
    "MIN_ROWS",
    "SPLIT_NAMES",
    "DatasetSplit",
    "TabularDataset",
    "TabularPreprocessor",
]

MIN_ROWS = 30
"""Rows below which a split's or a group's rates are too noisy to compare: from 30 rows a rate near 0.5 has a 95%
interval of about ±0.18 (1.96 · sqrt(0.25 / 30)), and it widens as 1 / sqrt(rows). Loaders and ``fairopt bench`` warn
below it."""


# --------------------------------------------------------------------------- splits


@dataclass(frozen=True, eq=False, repr=False)
class DatasetSplit:
    """One split (train, validation or test) of a :class:`TabularDataset`.

    Attributes
    ----------
    name:
        ``"train"``, ``"validation"`` or ``"test"``.
    X:
        ``(N, D)`` float32 feature tensor (already preprocessed).
    y:
        ``(N,)`` float32 labels, exactly 0.0 or 1.0.
    groups:
        ``(N,)`` int64 group ids in ``[0, G)``.
    index:
        ``(N,)`` int64 NumPy array: the rows of ``TabularDataset.frame`` this
        split holds, ascending.
    """

    name: str
    X: torch.Tensor
    y: torch.Tensor
    groups: torch.Tensor
    index: np.ndarray

    def __post_init__(self) -> None:
        n = self.X.shape[0]
        if self.X.dtype != torch.float32 or self.X.dim() != 2:
            raise ValueError("X must be a 2-D float32 tensor")
        if self.y.dtype != torch.float32 or tuple(self.y.shape) != (n,):
            raise ValueError("y must be a float32 tensor of shape (N,)")
        if self.groups.dtype != torch.int64 or tuple(self.groups.shape) != (n,):
            raise ValueError("groups must be an int64 tensor of shape (N,)")
        if self.index.shape != (n,):
            raise ValueError("index must have shape (N,)")

    def __len__(self) -> int:
        return int(self.X.shape[0])

    def __repr__(self) -> str:
        return f"DatasetSplit(name={self.name!r}, num_examples={len(self)}, num_features={self.X.shape[1]})"

    def subset(self, rows: np.ndarray, name: str | None = None) -> DatasetSplit:
        """The split of the given row positions (``(n,)`` ints into this split, kept in ascending order), named
        ``name`` (default: this split's name)."""
        rows = np.sort(np.asarray(rows, dtype=np.int64))
        keep = torch.as_tensor(rows)
        return DatasetSplit(name or self.name, self.X[keep], self.y[keep], self.groups[keep], self.index[rows])

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(X, y, groups)``: shapes ``(N, D)``, ``(N,)``, ``(N,)``."""
        return self.X, self.y, self.groups

    def loader(
        self,
        batch_size: int = 256,
        *,
        shuffle: bool = False,
        seed: int | None = None,
        drop_last: bool = False,
        **kwargs: Any,
    ) -> DataLoader:
        """A :class:`torch.utils.data.DataLoader` yielding ``(x, y, group)`` batches.

        Batches are sliced from the in-memory tensors in one indexing operation
        (no per-row collation): ``x`` is ``(B, D)`` float32, ``y`` ``(B,)``
        float32, ``group`` ``(B,)`` int64, with ``B <= batch_size``.

        Parameters
        ----------
        batch_size:
            Rows per batch.
        shuffle:
            Reshuffle the rows every epoch.
        seed:
            Seed of the shuffling generator, for reproducible batch orders
            (``None``: torch's global RNG).
        drop_last:
            Drop the last incomplete batch.
        **kwargs:
            Passed to ``DataLoader`` (e.g. ``num_workers``, ``pin_memory``).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        dataset = TensorDataset(self.X, self.y, self.groups)
        generator = None
        if shuffle and seed is not None:
            generator = torch.Generator()
            generator.manual_seed(seed)
        batches = _IndexBatches(len(self), batch_size, shuffle=shuffle, drop_last=drop_last, generator=generator)
        return DataLoader(dataset, batch_size=None, sampler=batches, collate_fn=_as_tuple, **kwargs)


class _IndexBatches(Sampler):
    """Batches of row indices as int64 tensors (one indexing operation per batch; a Python list of indices costs
    ~0.1 ms per tensor to convert). With a seed the order is ``RandomSampler``'s, ``torch.randperm(n, generator=...)``;
    without one it draws from torch's global RNG."""

    def __init__(
        self, n: int, batch_size: int, *, shuffle: bool, drop_last: bool, generator: torch.Generator | None
    ) -> None:
        self.n, self.batch_size, self.shuffle, self.drop_last, self.generator = (
            n,
            batch_size,
            shuffle,
            drop_last,
            generator,
        )

    def __iter__(self) -> Iterator[torch.Tensor]:
        order = torch.randperm(self.n, generator=self.generator) if self.shuffle else torch.arange(self.n)
        stop = self.n - self.n % self.batch_size if self.drop_last else self.n
        for start in range(0, stop, self.batch_size):
            yield order[start : start + self.batch_size]

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)


def _as_tuple(batch: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return tuple(batch)


# -------------------------------------------------------------------- preprocessing


@dataclass(frozen=True, eq=False)
class TabularPreprocessor:
    """Feature preprocessing, fitted on the training split only.

    * Numeric columns: missing values are replaced by the training median, then
      standardized with the training mean and standard deviation
      (``ddof=0``; a constant column is divided by 1).
    * Categorical columns: one-hot encoded over the categories seen in the
      training split, sorted. A category seen only outside the training split,
      and a missing value, are encoded as all zeros (no extra column).

    The output columns follow ``columns`` in order, a categorical column
    expanding in place into ``"column=category"`` indicators.
    """

    columns: tuple[str, ...]
    numeric: frozenset[str]
    medians: Mapping[str, float]
    means: Mapping[str, float]
    stds: Mapping[str, float]
    categories: Mapping[str, tuple[Hashable, ...]]
    feature_names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        names: list[str] = []
        for column in self.columns:
            if column in self.numeric:
                names.append(column)
            else:
                names.extend(f"{column}={value}" for value in self.categories[column])
        object.__setattr__(self, "feature_names", tuple(names))

    @classmethod
    def fit(
        cls,
        frame: pd.DataFrame,
        columns: Sequence[str],
        numeric: Sequence[str] | frozenset[str],
    ) -> TabularPreprocessor:
        """Fit on ``frame`` (the training rows only)."""
        numeric_set = frozenset(c for c in columns if c in set(numeric))
        medians: dict[str, float] = {}
        means: dict[str, float] = {}
        stds: dict[str, float] = {}
        categories: dict[str, tuple[Hashable, ...]] = {}
        for column in columns:
            if column in numeric_set:
                values = _numeric(frame[column], column)
                median = float(np.nanmedian(values)) if np.isfinite(values).any() else 0.0
                values = np.where(np.isnan(values), median, values)
                mean = float(values.mean()) if len(values) else 0.0
                std = float(values.std()) if len(values) else 1.0
                medians[column] = median
                means[column] = mean
                stds[column] = std if std > 0 and np.isfinite(std) else 1.0
            else:
                categories[column] = sorted_categories(frame[column])
        return cls(
            columns=tuple(columns),
            numeric=numeric_set,
            medians=medians,
            means=means,
            stds=stds,
            categories=categories,
        )

    @property
    def num_features(self) -> int:
        """Number of output columns ``D``."""
        return len(self.feature_names)

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """Return the ``(len(frame), D)`` float32 feature matrix of ``frame``."""
        missing = [c for c in self.columns if c not in frame.columns]
        if missing:
            raise ValueError(f"columns {missing} not found; available columns: {list(frame.columns)}")
        blocks: list[np.ndarray] = []
        for column in self.columns:
            if column in self.numeric:
                values = _numeric(frame[column], column)
                values = np.where(np.isnan(values), self.medians[column], values)
                values = (values - self.means[column]) / self.stds[column]
                blocks.append(values[:, None])
            else:
                cats = self.categories[column]
                codes = category_codes(frame[column], cats)
                onehot = np.zeros((len(frame), len(cats)), dtype=np.float64)
                seen = codes >= 0
                onehot[np.flatnonzero(seen), codes[seen]] = 1.0
                blocks.append(onehot)
        if not blocks:
            return np.zeros((len(frame), 0), dtype=np.float32)
        return np.concatenate(blocks, axis=1).astype(np.float32)


def _numeric(series: pd.Series, column: str) -> np.ndarray:
    try:
        return pd.to_numeric(series).to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"column {column!r} is treated as numeric but holds non-numeric "
            f"values ({error}); list it as categorical instead"
        ) from error


# -------------------------------------------------------------------------- dataset


@dataclass(frozen=True, eq=False, repr=False)
class TabularDataset(SplitDataset):
    """A tabular fairness dataset, preprocessed and split.

    Attributes
    ----------
    name:
        Dataset name (``"adult"``, ``"compas"``, ``"german"`` or the CSV's name).
    train, validation, test:
        The three :class:`DatasetSplit` s. ``validation`` is the held-out split
        for model selection and held-out constraint estimates; it may be empty
        when ``validation_fraction=0``.
    feature_names:
        ``D`` names of the columns of ``X`` (``"age"``, ``"workclass=Private"``).
    group_names:
        ``G`` names of the group ids, ``group_names[g]`` for id ``g``, e.g.
        ``"sex=Female|race=Black"``. Every combination of the sensitive
        attributes' categories has an id, including combinations absent from the
        data.
    sensitive:
        The sensitive attributes, in the order they enter the group id (the
        first is the most significant digit).
    target:
        Name of the label column.
    frame:
        The cleaned source table (all splits, before preprocessing; including
        derived columns such as German ``sex``), rows ``0..len(frame)-1``;
        ``DatasetSplit.index`` points into it.
    preprocessor:
        The :class:`TabularPreprocessor` fitted on the training rows; apply it to
        new data with ``preprocessor.transform(new_frame)``.
    audit:
        Optional held-out rows for estimates on new data only (never for training
        or model selection): see :meth:`with_audit`; None by default.
    """

    name: str
    train: DatasetSplit
    validation: DatasetSplit
    test: DatasetSplit
    feature_names: tuple[str, ...]
    group_names: tuple[str, ...]
    sensitive: tuple[str, ...]
    target: str
    frame: pd.DataFrame
    preprocessor: TabularPreprocessor
    audit: DatasetSplit | None = None

    @property
    def num_features(self) -> int:
        """Number of feature columns ``D``."""
        return len(self.feature_names)

    def tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(X, y, groups)`` of a split: ``(N, D)`` float32, ``(N,)`` float32,
        ``(N,)`` int64."""
        return self.split(split).tensors()

    def loader(
        self,
        split: str,
        batch_size: int = 256,
        *,
        shuffle: bool | None = None,
        seed: int | None = None,
        drop_last: bool = False,
        **kwargs: Any,
    ) -> DataLoader:
        """A DataLoader over a split yielding ``(x, y, group)`` batches.

        ``shuffle`` defaults to ``True`` for ``"train"`` and ``False`` otherwise.
        See :meth:`DatasetSplit.loader` for the other arguments.
        """
        part = self.split(split)
        if shuffle is None:
            shuffle = split == "train"
        return part.loader(batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last, **kwargs)

    def __repr__(self) -> str:
        return (
            f"TabularDataset(name={self.name!r}, train={len(self.train)}, "
            f"validation={len(self.validation)}, test={len(self.test)}, "
            f"num_features={self.num_features}, num_groups={self.num_groups}, "
            f"sensitive={self.sensitive!r}, target={self.target!r})"
        )


def build_dataset(
    frame: pd.DataFrame,
    labels: np.ndarray,
    *,
    name: str,
    target: str,
    sensitive: Sequence[str],
    categories: Mapping[str, Sequence[Hashable]],
    features: Sequence[str],
    numeric: Collection[str],
    validation_fraction: float,
    test_fraction: float | None = None,
    test_rows: np.ndarray | None = None,
    seed: int | None,
    stratify: bool,
    group_columns: Mapping[str, str] | None = None,
) -> TabularDataset:
    """The tail every tabular loader shares, after it has parsed its rows: group, split, preprocess, build.

    1. *Groups*: one column per sensitive attribute, read from ``frame[group_columns.get(a, a)]`` (default: the
       attribute's own column).
    2. *Split*: seeded and, with ``stratify``, stratified by (group, label) (:func:`stratified_split`): either
       ``(1 - validation_fraction - test_fraction, validation_fraction, test_fraction)`` of all rows, or, with
       ``test_rows`` (a published test file), ``test_rows`` as the test split and ``(1 - validation_fraction,
       validation_fraction)`` of the other rows as train and validation.
    3. *Preprocess and build*: the group ids encoded (:class:`~fairopt.groups.Groups`), the preprocessing fitted on
       the training rows only (:class:`TabularPreprocessor`), the three :class:`DatasetSplit` s.

    Args:
        frame: ``(N, ...)`` the cleaned rows (features, sensitive and derived columns); kept as
            :attr:`TabularDataset.frame`.
        labels: ``(N,)`` 0/1 ints. name, target: the dataset's name and label column. sensitive: the attributes, in
            group-id order. categories: every attribute's categories, in id order. features, numeric: the feature
            columns and the numeric ones among them.
        validation_fraction, test_fraction: shares of the rows (``test_fraction`` None exactly when ``test_rows``
            is given). test_rows: ``(n,)`` row positions of a fixed test split. seed: of the split (None: fresh
            entropy). stratify: by (group, label). group_columns: attribute -> the column holding its values.

    Returns:
        The :class:`TabularDataset`.

    Raises:
        ValueError: both or neither of ``test_fraction`` and ``test_rows``; a sensitive value outside its
            categories; a numeric feature with non-numeric values.
    """
    if (test_fraction is None) == (test_rows is None):
        raise ValueError("give exactly one of test_fraction (a share of the rows) and test_rows (a fixed test split)")
    columns = group_columns or {}
    group_frame = pd.DataFrame({a: frame[columns.get(a, a)].to_numpy() for a in sensitive})
    labels = np.asarray(labels, dtype=np.int64)
    if stratify:
        strata = group_label_strata(group_frame, labels, list(sensitive), categories)
    else:
        strata = np.zeros(len(frame), dtype=np.int64)
    if test_rows is None:
        assert test_fraction is not None
        fractions = (1.0 - validation_fraction - test_fraction, validation_fraction, test_fraction)
        train, validation, test = stratified_split(strata, fractions, seed)
    else:
        test = np.asarray(test_rows, dtype=np.int64)
        rest = np.setdiff1d(np.arange(len(frame), dtype=np.int64), test)  # ascending
        parts = stratified_split(strata[rest], (1.0 - validation_fraction, validation_fraction), seed)
        train, validation = (rest[part] for part in parts)
    encoder = Groups({a: categories[a] for a in sensitive})
    group_ids = encoder.encode(group_frame[list(sensitive)]).numpy()
    split_index = {"train": train, "validation": validation, "test": test}
    preprocessor = TabularPreprocessor.fit(frame.iloc[train], features, frozenset(numeric))
    y_all = labels.astype(np.float32)
    parts = {}
    for split_name in SPLIT_NAMES:
        index = np.asarray(split_index[split_name], dtype=np.int64)
        parts[split_name] = DatasetSplit(
            name=split_name,
            X=torch.from_numpy(np.ascontiguousarray(preprocessor.transform(frame.iloc[index]), dtype=np.float32)),
            y=torch.from_numpy(np.ascontiguousarray(y_all[index])),
            groups=torch.from_numpy(np.ascontiguousarray(group_ids[index])),
            index=index,
        )
    return TabularDataset(
        name=name,
        train=parts["train"],
        validation=parts["validation"],
        test=parts["test"],
        feature_names=preprocessor.feature_names,
        group_names=encoder.names,
        sensitive=tuple(sensitive),
        target=target,
        frame=frame,
        preprocessor=preprocessor,
    )


def normalize_names(value: str | Sequence[str], what: str) -> tuple[str, ...]:
    """Accept one name or a sequence of names; reject empty and duplicates."""
    names = (value,) if isinstance(value, str) else tuple(value)
    if not names:
        raise ValueError(f"{what} must name at least one column")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{what} lists {duplicates} more than once")
    return names


def select_features(
    *,
    requested: Sequence[str] | None,
    default: Sequence[str],
    available: Sequence[str],
    sensitive: Sequence[str],
    sources: Mapping[str, Sequence[str]],
    include_sensitive: bool,
    target: str,
    where: str,
) -> tuple[str, ...]:
    """Decide the feature columns.

    ``sources[a]`` are the columns that carry sensitive attribute ``a``. With
    ``include_sensitive=False`` they are removed from the default features and
    listing one explicitly is an error; with ``True`` they are appended (if not
    already present).
    """
    carried = [c for a in sensitive for c in sources[a]]
    if requested is None:
        chosen = [c for c in default if include_sensitive or c not in carried]
    else:
        chosen = list(normalize_names(requested, "features"))
        unknown = [c for c in chosen if c not in available]
        if unknown:
            raise ValueError(f"unknown feature column(s) {unknown} in {where}; valid choices: {', '.join(available)}")
        if target in chosen:
            raise ValueError(f"the target {target!r} cannot be a feature")
        if not include_sensitive:
            clash = [c for c in chosen if c in carried]
            if clash:
                raise ValueError(
                    f"feature column(s) {clash} carry the sensitive attribute(s) "
                    f"{list(sensitive)}; pass include_sensitive=True to use them "
                    "as features"
                )
    if include_sensitive:
        chosen.extend(c for c in dict.fromkeys(carried) if c not in chosen)
    return tuple(chosen)


def group_label_strata(
    frame: pd.DataFrame,
    labels: np.ndarray,
    sensitive: Sequence[str],
    categories: Mapping[str, Sequence[Hashable]],
) -> np.ndarray:
    """Stratum id per row: (group id, label) combined."""
    ids = Groups({a: categories[a] for a in sensitive}).encode(frame[list(sensitive)]).numpy()
    return ids * 2 + np.asarray(labels, dtype=np.int64)
