"""The tabular loaders' shared tail (fairopt.datasets._tabular.build_dataset): groups, seeded stratified split,
preprocessing fitted on train, the splits; a fixed test split (Adult's published test file) or shares of the rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from fairopt.datasets import load_csv
from fairopt.datasets._tabular import build_dataset


def _frame(n: int = 200) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(
        {"x": rng.normal(size=n), "job": rng.choice(["a", "b"], n), "sex": rng.choice(["F", "M"], n, p=[0.3, 0.7])}
    )
    frame["code"] = frame["sex"].map({"F": "f", "M": "m"})  # the attribute's values under another column name
    return frame, rng.integers(0, 2, n)


OPTIONS = {
    "name": "toy",
    "target": "y",
    "sensitive": ("sex",),
    "categories": {"sex": ("F", "M")},
    "features": ("x", "job"),
    "numeric": {"x"},
}


def test_a_fixed_test_split_and_a_stratified_validation_share_of_the_rest():
    frame, labels = _frame()
    test_rows = np.arange(150, 200)
    data = build_dataset(frame, labels, **OPTIONS, validation_fraction=0.2, test_rows=test_rows, seed=0, stratify=True)
    assert data.test.index.tolist() == test_rows.tolist()
    rest = np.sort(np.concatenate([data.train.index, data.validation.index]))
    assert rest.tolist() == list(range(150)) and len(data.validation) == 30  # 0.2 of the 150 other rows
    strata = (frame["sex"] == "M").to_numpy().astype(int) * 2 + labels
    for stratum in range(4):  # every (group, label) stratum is split 80/20 to within one row
        members = np.flatnonzero(strata[:150] == stratum)
        in_validation = np.isin(members, data.validation.index).sum()
        assert abs(in_validation - 0.2 * members.size) <= 1
    assert data.group_names == ("sex=F", "sex=M") and data.feature_names == ("x", "job=a", "job=b")
    torch.testing.assert_close(data.test.y, torch.as_tensor(labels[150:], dtype=torch.float32))


def test_preprocessing_is_fitted_on_the_training_rows_only():
    frame, labels = _frame()
    data = build_dataset(frame, labels, **OPTIONS, validation_fraction=0.2, test_fraction=0.2, seed=3, stratify=True)
    x = frame["x"].to_numpy()[data.train.index]
    assert data.preprocessor.means["x"] == pytest.approx(x.mean()) and data.preprocessor.stds["x"] == pytest.approx(
        x.std()
    )
    assert abs(float(data.train.X[:, 0].mean())) < 1e-6  # standardized with the training mean
    assert sorted([len(data.train), len(data.validation), len(data.test)]) == [40, 40, 120]


def test_group_columns_name_where_an_attribute_is_read():
    frame, labels = _frame()
    options = {**OPTIONS, "categories": {"sex": ("f", "m")}}
    data = build_dataset(
        frame, labels, **options, validation_fraction=0.2, test_fraction=0.2, seed=0, stratify=False,
        group_columns={"sex": "code"},
    )  # fmt: skip
    expected = (frame["sex"].to_numpy()[data.train.index] == "M").astype(np.int64)
    assert data.train.groups.tolist() == expected.tolist() and data.group_names == ("sex=f", "sex=m")


def test_exactly_one_of_a_test_share_and_test_rows():
    frame, labels = _frame()
    for extra in ({}, {"test_fraction": 0.2, "test_rows": np.arange(10)}):
        with pytest.raises(ValueError, match="exactly one of test_fraction"):
            build_dataset(frame, labels, **OPTIONS, validation_fraction=0.2, seed=0, stratify=True, **extra)


def test_load_csv_is_its_checks_then_the_shared_tail():
    frame, labels = _frame()
    table = frame.drop(columns="code").assign(y=labels)
    loaded = load_csv(table, target="y", sensitive="sex", seed=4, name="toy")
    built = build_dataset(table, labels, **OPTIONS, validation_fraction=0.2, test_fraction=0.2, seed=4, stratify=True)
    for ours, theirs in zip(loaded.splits(), built.splits()):
        assert (
            torch.equal(ours.X, theirs.X) and torch.equal(ours.y, theirs.y) and torch.equal(ours.groups, theirs.groups)
        )
        assert ours.index.tolist() == theirs.index.tolist()
