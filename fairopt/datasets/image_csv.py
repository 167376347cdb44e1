"""Images listed in a metadata CSV: the shape of CheXpert, MIMIC-CXR, NIH ChestX-ray14, ISIC and Fitzpatrick17k."""

from __future__ import annotations

import itertools
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fairopt._validation import require_columns
from fairopt.groups import Groups

from ._categories import sorted_categories, warn_numeric_groups
from ._csv import positive_values
from ._splits import SPLIT_ALIASES, check_fractions, check_nonempty, grouped_split, stratified_split
from ._tabular import normalize_names
from .image_io import IMAGENET_MEAN, IMAGENET_STD, ImageSize, RowOrigin
from .images import ImageDataset, assemble_images

__all__ = ["SPLIT_ALIASES", "load_image_csv"]


def load_image_csv(
    csv: str | os.PathLike[str] | pd.DataFrame,
    image_root: str | os.PathLike[str],
    path_column: str,
    target: str,
    sensitive: str | Sequence[str],
    *,
    positive_label: Any = None,
    bins: Mapping[str, Sequence[float]] | None = None,
    sensitive_categories: Mapping[str, Sequence[Hashable]] | None = None,
    split_column: str | None = None,
    split_values: Mapping[Hashable, str] | None = None,
    patient_column: str | None = None,
    validation_fraction: float = 0.2,
    test_fraction: float = 0.2,
    audit_fraction: float = 0.0,
    seed: int | None = 0,
    stratify: bool = True,
    image_size: ImageSize | None = 224,
    channels: int = 3,
    hflip: bool = False,
    center_crop: ImageSize | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    check_files: bool = True,
    name: str | None = None,
    read_csv_kwargs: Mapping[str, Any] | None = None,
) -> ImageDataset:
    """Load images named in a metadata table, with a binary target and sensitive attributes, as an image dataset.

    One row per image: a path (relative to ``image_root``, or absolute), the label, the sensitive attributes
    (e.g. CheXpert's ``Sex`` and ``Age``, Fitzpatrick17k's ``fitzpatrick_scale``), optionally a split and a patient.

    Args:
        csv: the metadata CSV (read with ``pandas.read_csv(csv, **read_csv_kwargs)``) or a DataFrame (not modified;
            e.g. after mapping CheXpert's uncertain -1 labels yourself).
        image_root: the folder the paths are relative to.
        path_column: the column of image paths.
        target: the label column: 0/1 (or ``False``/``True``) values, or any values with ``positive_label``.
        sensitive: one column or several (intersectional group ids, first = most significant digit, names like
            ``"Sex=Female|Age=[60, 80)"``).
        positive_label: the value (or collection of values) meaning ``y = 1``; every other value is ``y = 0``.
            A string also matches the one value that reads the same (``"1"`` matches ``1``).
        bins: numeric sensitive column -> increasing band edges, e.g. ``{"Age": [0, 40, 60, 80, float("inf")]}``:
            bands ``[0, 40)``, ``[40, 60)``, ...; every band is a category (empty ones too), a value outside
            ``[edges[0], edges[-1])`` is an error.
        sensitive_categories: per (unbinned) sensitive column, all its categories in id order (default: the values
            found, sorted), to keep ids stable across files.
        split_column: a column naming each row's split (values in :data:`SPLIT_ALIASES`: train, valid, validate,
            test, audit ...); ``None``: seeded splits by the fractions.
        split_values: the column's own values -> ``"train"`` / ``"validation"`` / ``"test"`` / ``"audit"``, e.g.
            ``{0: "train", 1: "validation", 2: "test"}`` (replaces the aliases).
        patient_column: images with one value here (a patient) are kept in one split: seeded splits move whole
            patients; with a ``split_column`` a patient in two splits is an error (leaked held-out data).
        validation_fraction: shares of the rows for the held-out splits (seeded splits only).
        test_fraction: see ``validation_fraction``.
        audit_fraction: share of the *validation* rows moved to an ``audit`` split (estimates on new data only;
            see :meth:`ImageDataset.with_audit`); 0: none.
        seed: seed of the seeded splits and of the audit carve-out.
        stratify: stratify seeded splits by (group, label) (patients: by their first image's).
        image_size: model input ``(H, W)`` in pixels (int: square), ``None``: as decoded.
        channels: 3 (RGB) or 1 (grayscale, e.g. X-rays for a one-channel model).
        hflip: whether training augmentation may mirror images (skin lesions: yes; chest X-rays: no, the heart
            is on one side).
        center_crop: crop before resizing, or ``None``.
        mean: per-channel normalization on the [0, 1] scale (default ImageNet's; for one channel its average,
            0.449 and 0.226).
        std: see ``mean``.
        check_files: check that every listed image exists before returning.
        name: the dataset's name (default: the CSV's stem, or ``"dataframe"``).
        read_csv_kwargs: more arguments of ``pandas.read_csv``.

    Returns:
        An :class:`ImageDataset` whose ``frame`` is the table (index reset).

    Warns:
        UserWarning: ``positive_label`` is one value (not a collection) of a target with three or more: the others
            all become ``y = 0`` (the message names them); ``positive_label=[value]`` means the same without it.

    Raises:
        FileNotFoundError: an image file is missing (naming it, the CSV line and the path column), or the CSV.
        ValueError: a named column is missing (the available ones are listed); the target has missing values or
            values other than 0/1 without ``positive_label`` (naming the line); ``positive_label`` does not occur;
            one label only; a sensitive value missing, outside ``sensitive_categories`` or outside the bins, or a
            non-number in a binned column (naming line and column); an unknown split value; a patient in two
            splits; an empty split; bad fractions, ``channels``, ``mean``/``std`` lengths.
    """
    frame, source, default_name = _read(csv, read_csv_kwargs)
    origin = RowOrigin(source, None if source == "<DataFrame>" else 2, path_column)
    sensitive = normalize_names(sensitive, "sensitive")
    bins = dict(bins or {})
    if channels not in (1, 3):
        raise ValueError(f"channels must be 3 (RGB) or 1 (grayscale), got {channels!r}")
    default_mean, default_std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.449,), (0.226,))
    mean, std = tuple(mean or default_mean), tuple(std or default_std)
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean and std need {channels} value(s) each (channels={channels}), got {mean} and {std}")
    if split_column is None:
        check_fractions(validation_fraction, test_fraction)
    if not 0.0 <= audit_fraction < 1.0:
        raise ValueError(f"audit_fraction must be in [0, 1), got {audit_fraction}")

    not_sensitive = [c for c in bins if c not in sensitive]
    if not_sensitive:
        raise ValueError(f"bins name column(s) {not_sensitive} that are not sensitive attributes {list(sensitive)}")
    named = {"path_column": [path_column], "target": [target], "sensitive": list(sensitive)}
    named.update({k: [v] for k, v in (("split_column", split_column), ("patient_column", patient_column)) if v})
    require_columns(named, list(frame.columns), source)
    if target in sensitive:
        raise ValueError(f"the target {target!r} cannot also be a sensitive attribute")

    labels = _labels(frame[target], target, positive_label, origin)
    group_values: dict[str, np.ndarray] = {}
    categories: dict[str, list[Hashable]] = {}
    for attribute in sensitive:
        if attribute in bins:
            values, cats = _bands(frame[attribute], attribute, bins[attribute], origin)
        else:
            given = (sensitive_categories or {}).get(attribute)
            values, cats = _categorical(frame[attribute], attribute, given, origin)
        group_values[attribute], categories[attribute] = values, cats
    groups = Groups(categories)
    group_ids = groups.encode(group_values).numpy()
    patients = None if patient_column is None else _patients(frame[patient_column], patient_column, origin)

    if split_column is not None:
        names = None if patient_column is None else frame[patient_column]
        split_index = _column_splits(frame[split_column], split_column, split_values, patients, names, origin)
        hint = f"the split column {split_column!r} of {source} has no rows for it"
    else:
        shares = [1.0 - validation_fraction - test_fraction, validation_fraction, test_fraction]
        strata = group_ids * 2 + labels if stratify else np.zeros(len(frame), dtype=np.int64)
        if patients is None:
            parts = stratified_split(strata, shares, seed)
        else:
            parts = grouped_split(patients, strata, shares, seed)
        split_index = dict(zip(("train", "validation", "test"), parts))
        shown = ", ".join(f"{n} {f:.3g}" for n, f in zip(("train", "validation", "test"), shares))
        hint = f"{len(frame)} rows are too few at fractions {shown}; use more rows or larger fractions"
    check_nonempty({k: len(split_index.get(k, ())) for k in ("train", "validation", "test")}, hint)
    if audit_fraction and "audit" in split_index:
        raise ValueError(f"the split column {split_column!r} has audit rows already; drop audit_fraction")

    root = Path(image_root)
    paths = _paths(frame[path_column], root, origin, check_files)
    return assemble_images(
        name=name if name is not None else default_name,
        frame=frame,
        labels=labels,
        groups=groups,
        group_ids=group_ids,
        target=target,
        split_index=split_index,
        origin=origin,
        image_size=image_size,
        mean=mean,
        std=std,
        hflip=hflip,
        paths=paths,
        center_crop=center_crop,
        patients=patients,
        audit_fraction=audit_fraction,
        seed=seed,
    )


def _at(column: pd.Series, row: int) -> Any:
    """The value at position ``row`` as a plain Python object (``2``, not ``np.int64(2)``, in messages)."""
    value = column.iat[row]
    return value.item() if isinstance(value, np.generic) else value


def _read(csv: Any, read_csv_kwargs: Mapping[str, Any] | None) -> tuple[pd.DataFrame, str, str]:
    if isinstance(csv, pd.DataFrame):
        frame, source, default_name = csv.reset_index(drop=True), "<DataFrame>", "dataframe"
    else:
        source, default_name = str(csv), Path(csv).stem
        if not Path(csv).is_file():
            raise FileNotFoundError(f"metadata CSV {source} not found")
        try:
            frame = pd.read_csv(csv, **dict(read_csv_kwargs or {}))
        except pd.errors.EmptyDataError:
            raise ValueError(f"the CSV {source} is empty: no header and no data rows") from None
        except UnicodeDecodeError as error:
            raise ValueError(
                f"the CSV {source} is not UTF-8 text ({error.reason} at byte {error.start}); if it is text in another "
                "encoding, pass read_csv_kwargs={'encoding': 'latin-1'} (or its encoding)"
            ) from None
        except pd.errors.ParserError as error:
            raise ValueError(
                f"the CSV {source} is malformed: {str(error).strip()} (pandas counts lines from 1)"
            ) from None
    if len(frame) == 0:
        raise ValueError(f"{source} has no data rows (columns: {[str(c) for c in frame.columns]})")
    return frame, source, default_name


def _labels(column: pd.Series, target: str, positive_label: Any, origin: RowOrigin) -> np.ndarray:
    """``(N,)`` int64 0/1 labels; errors name the first offending line."""
    missing = np.flatnonzero(column.isna().to_numpy())
    if len(missing):
        raise ValueError(
            f"{origin.describe(int(missing[0]), target)} is missing ({len(missing)} rows without a target); drop "
            "those rows or fill them first"
        )
    values = sorted_categories(column)
    shown = list(values[:10]) + (["..."] if len(values) > 10 else [])
    if positive_label is None:
        bad = np.flatnonzero(~column.isin([0, 1]).to_numpy())  # 0/1 also matches False/True and 0.0/1.0
        if len(bad):
            row = int(bad[0])
            raise ValueError(
                f"{origin.describe(row, target)} holds {_at(column, row)!r}: the target is not binary 0/1 (values "
                f"found: {shown}); pass positive_label= the value (or values) meaning y = 1, the outcome the rates "
                "count (e.g. the finding): one of the values found, chosen by you (fairopt bench: --positive-label "
                "VALUE)"
            )
        labels = column.to_numpy().astype(np.int64)
    else:
        positives = positive_values(positive_label, values, f"target column {target!r} of {origin.source}")
        labels = column.isin(positives).to_numpy(dtype=np.int64)
    if len(np.unique(labels)) < 2:
        raise ValueError(
            f"target column {target!r} of {origin.source} gives one label only: all {len(labels)} rows are "
            f"y = {int(labels[0])}; a classifier needs both"
        )
    return labels


def _bands(
    column: pd.Series, attribute: str, edges: Sequence[float], origin: RowOrigin
) -> tuple[np.ndarray, list[str]]:
    """Each row's band label ``"[lo, hi)"`` and the list of all bands, in order."""
    cuts = np.asarray(edges, dtype=np.float64)
    if cuts.ndim != 1 or len(cuts) < 2 or not np.all(np.diff(cuts) > 0):
        raise ValueError(f"bins[{attribute!r}] must be at least 2 strictly increasing edges, got {list(edges)}")
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(np.isnan(values))
    if len(bad):
        row = int(bad[0])
        raw = _at(column, row)
        what = "is missing" if pd.isna(raw) else f"holds {raw!r}, not a number"
        raise ValueError(f"{origin.describe(row, attribute)} {what}; a binned attribute needs a number in every row")
    outside = np.flatnonzero((values < cuts[0]) | (values >= cuts[-1]))
    if len(outside):
        row = int(outside[0])
        raise ValueError(
            f"{origin.describe(row, attribute)} holds {_at(column, row)!r}, outside the bins [{cuts[0]:g}, "
            f"{cuts[-1]:g}); widen bins[{attribute!r}] (float('inf') is allowed as the last edge)"
        )
    names = [f"[{lo:g}, {hi:g})" for lo, hi in itertools.pairwise(cuts)]
    band = np.searchsorted(cuts, values, side="right") - 1
    return np.asarray(names, dtype=object)[band], names


def _categorical(
    column: pd.Series, attribute: str, given: Sequence[Hashable] | None, origin: RowOrigin
) -> tuple[np.ndarray, list[Hashable]]:
    missing = np.flatnonzero(column.isna().to_numpy())
    if len(missing):
        raise ValueError(
            f"{origin.describe(int(missing[0]), attribute)} is missing ({len(missing)} rows); drop those rows, or "
            "make missing a group of its own, e.g. frame[column].fillna('missing')"
        )
    categories = list(given) if given is not None else list(sorted_categories(column))
    if given is None:
        warn_numeric_groups(column, attribute, categories, f"pass bins={{{attribute!r}: [0, 40, 60, 120]}} for bands")
    outside = np.flatnonzero(~column.isin(categories).to_numpy())
    if len(outside):
        row = int(outside[0])
        raise ValueError(
            f"{origin.describe(row, attribute)} holds {_at(column, row)!r}, not among sensitive_categories"
            f"[{attribute!r}] = {categories}"
        )
    values = np.asarray([v.item() if isinstance(v, np.generic) else v for v in column.tolist()], dtype=object)
    return values, categories


def _patients(column: pd.Series, patient_column: str, origin: RowOrigin) -> np.ndarray:
    missing = np.flatnonzero(column.isna().to_numpy())
    if len(missing):
        raise ValueError(
            f"{origin.describe(int(missing[0]), patient_column)} is missing: every image needs its patient, or "
            "images of one patient could land in two splits"
        )
    return pd.factorize(column)[0].astype(np.int64)


def _column_splits(
    column: pd.Series,
    split_column: str,
    split_values: Mapping[Hashable, str] | None,
    patients: np.ndarray | None,
    patient_names: pd.Series | None,
    origin: RowOrigin,
) -> dict[str, np.ndarray]:
    names = ("train", "validation", "test", "audit")
    if split_values is not None:
        wrong = {k: v for k, v in split_values.items() if v not in names}
        if wrong:
            raise ValueError(f"split_values must map to {', '.join(names)}; got {wrong}")
        table = {**{str(k): v for k, v in split_values.items()}, **dict(split_values)}
        mapped = [table.get(v, table.get(str(v))) for v in column.tolist()]
        accepted = f"the keys of split_values {list(split_values)}"
    else:
        mapped = [SPLIT_ALIASES.get(str(v).strip().lower()) for v in column.tolist()]
        accepted = f"{sorted(SPLIT_ALIASES)} (any case), or pass split_values={{value: split name}}"
    unknown = [i for i, m in enumerate(mapped) if m is None]
    if unknown:
        row = unknown[0]
        raise ValueError(
            f"{origin.describe(row, split_column)} holds {_at(column, row)!r}; split values are {accepted}"
        )
    split_of = np.asarray(mapped, dtype=object)
    if patients is not None:
        _check_patients(split_of, patients, patient_names, origin)
    return {n: np.flatnonzero(split_of == n) for n in names if n != "audit" or (split_of == n).any()}


def _check_patients(split_of: np.ndarray, patients: np.ndarray, names: pd.Series | None, origin: RowOrigin) -> None:
    """``ValueError`` when one patient's images lie in two splits (its held-out images would not be new data)."""
    first_split: dict[int, str] = {}
    straddling = {}
    for row, (patient, split) in enumerate(zip(patients.tolist(), split_of.tolist())):
        seen = first_split.setdefault(patient, split)
        if seen != split and patient not in straddling:
            straddling[patient] = row
    if straddling:
        patient, row = next(iter(straddling.items()))
        first = int(np.flatnonzero(patients == patient)[0])
        label = "" if names is None else f" {_at(names, row)!r} ({names.name})"
        raise ValueError(
            f"patient{label} has images in split {first_split[patient]!r} ({origin.describe(first)}) and "
            f"{split_of[row]!r} ({origin.describe(row)}); {len(straddling)} patient(s) straddle splits, so held-out "
            "numbers would come from patients the model trained on: fix the split column"
        )


def _paths(column: pd.Series, root: Path, origin: RowOrigin, check_files: bool) -> np.ndarray:
    missing = np.flatnonzero(column.isna().to_numpy())
    if len(missing):
        raise ValueError(f"{origin.describe(int(missing[0]))} is missing: every row needs an image path")
    paths = np.asarray([os.path.join(root, str(p)) for p in column.tolist()], dtype=object)
    if check_files:
        absent = [i for i, p in enumerate(paths.tolist()) if not os.path.isfile(p)]
        if absent:
            raise FileNotFoundError(
                f"image file {paths[absent[0]]} not found ({origin.describe(absent[0])}); {len(absent)} of the "
                f"{len(paths)} listed images are missing under {root}"
            )
    return paths
