"""Tests of fairopt.datasets: bundled data, splits, preprocessing, groups, errors."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import fairopt.datasets as fd
from fairopt.datasets import (
    ChecksumError,
    TabularDataset,
    TabularPreprocessor,
    _checksums,
    _resources,
    load_adult,
    load_compas,
    load_csv,
    load_dataset,
    load_german,
)

DATA_DIR = Path(fd.__file__).parent / "data"
REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = REPO_ROOT.parent / "shared" / "datasets"


def _lines(name: str) -> list[str]:
    """Non-blank lines of a packaged file, read independently of the loaders."""
    text = gzip.decompress((DATA_DIR / name).read_bytes()).decode()
    return [line for line in text.splitlines() if line.strip()]


def _all_labels(data: TabularDataset) -> torch.Tensor:
    return torch.cat([s.y for s in data.splits()])


# ------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def adult() -> TabularDataset:
    return load_adult(sensitive=("sex", "race"))


@pytest.fixture(scope="module")
def adult_all_rows() -> TabularDataset:
    return load_adult(drop_missing=False)


@pytest.fixture(scope="module")
def compas() -> TabularDataset:
    return load_compas(sensitive=("race", "sex"))


@pytest.fixture(scope="module")
def german() -> TabularDataset:
    return load_german(sensitive=("sex", "age"))


# ---------------------------------------------------------- row counts, base rates


def test_adult_row_counts(adult: TabularDataset, adult_all_rows: TabularDataset):
    # Published split: 32,561 train + 16,281 test rows before dropping '?' rows.
    assert len(adult_all_rows.train) + len(adult_all_rows.validation) == 32_561
    assert len(adult_all_rows.test) == 16_281
    # drop_missing=True (default) leaves UCI's documented 30,162 + 15,060 rows.
    assert len(adult.train) + len(adult.validation) == 30_162
    assert len(adult.test) == 15_060
    assert len(adult.validation) == round(0.2 * 30_162)


def test_adult_base_rate_matches_file(adult_all_rows: TabularDataset):
    train_lines = _lines("adult.data.gz")
    assert len(train_lines) == 32_561
    positives = sum(line.rstrip().endswith(">50K") for line in train_lines)
    assert positives == 7_841
    y = torch.cat([adult_all_rows.train.y, adult_all_rows.validation.y])
    assert int(y.sum()) == positives
    assert y.mean().item() == pytest.approx(0.2408, abs=5e-5)

    test_lines = _lines("adult.test.gz")
    assert test_lines[0].startswith("|1x3 Cross validator")
    assert len(test_lines) - 1 == 16_281
    test_positives = sum(line.rstrip().endswith(">50K.") for line in test_lines[1:])
    assert int(adult_all_rows.test.y.sum()) == test_positives == 3_846


def test_compas_filtering_and_base_rate(compas: TabularDataset):
    rows = list(csv.DictReader(io.StringIO("\n".join(_lines("compas.csv.gz")))))
    assert len(rows) == 7_214
    kept = [
        r
        for r in rows
        if r["days_b_screening_arrest"] != ""
        and -30 <= float(r["days_b_screening_arrest"]) <= 30
        and r["is_recid"] != "-1"
        and r["c_charge_degree"] != "O"
        and r["score_text"] != "N/A"
    ]
    assert len(kept) == 6_172
    assert len(compas.frame) == 6_172
    assert sum(len(s) for s in compas.splits()) == 6_172
    positives = sum(r["two_year_recid"] == "1" for r in kept)
    y = _all_labels(compas)
    assert int(y.sum()) == positives == 2_809
    assert y.mean().item() == pytest.approx(0.4551, abs=5e-5)


def test_german_rows_and_base_rate(german: TabularDataset):
    lines = _lines("german.data.gz")
    assert len(lines) == 1_000
    good = sum(line.split()[-1] == "1" for line in lines)
    y = _all_labels(german)
    assert len(y) == 1_000
    assert int(y.sum()) == good == 700  # y = 1 means good credit
    assert (german.frame["credit"] == 1).sum() == 700


def test_tensor_shapes_and_dtypes(adult, compas, german):
    for data in (adult, compas, german):
        for split in data.splits():
            X, y, g = split.tensors()
            assert X.dtype == torch.float32 and X.shape == (len(split), data.num_features)
            assert y.dtype == torch.float32 and y.shape == (len(split),)
            assert g.dtype == torch.int64 and g.shape == (len(split),)
            assert set(y.unique().tolist()) <= {0.0, 1.0}
            assert int(g.min()) >= 0 and int(g.max()) < data.num_groups
            assert torch.isfinite(X).all()
        assert len(data.feature_names) == data.num_features


# ---------------------------------------------------------------------- checksums


def test_checksums_match_packaged_files():
    for name, expected in _checksums.SHA256.items():
        raw = _resources.read_package_file(name)
        assert hashlib.sha256(raw).hexdigest() == expected


def test_wrong_expected_hash_raises(monkeypatch):
    bogus = "0" * 64
    monkeypatch.setitem(_checksums.SHA256, "german.data.gz", bogus)
    with pytest.raises(ChecksumError) as info:
        load_german()
    message = str(info.value)
    assert "german.data.gz" in message
    assert bogus in message
    assert "b21f3d81db8071257d5ff1deaeba1fd4303b62712e6fcc9715c7a86202cb5871" in message


def test_corrupt_file_raises(tmp_path):
    raw = gzip.decompress((DATA_DIR / "german.data.gz").read_bytes())
    tampered = raw.replace(b"A11", b"A12", 1)
    (tmp_path / "german.data.gz").write_bytes(gzip.compress(tampered))
    with pytest.raises(ChecksumError, match=r"german\.data\.gz") as info:
        _resources.read_package_file("german.data.gz", directory=tmp_path)
    assert _checksums.SHA256["german.data.gz"] in str(info.value)
    assert hashlib.sha256(tampered).hexdigest() in str(info.value)

    (tmp_path / "german.data.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ChecksumError, match=r"german\.data\.gz"):
        _resources.read_package_file("german.data.gz", directory=tmp_path)
    assert isinstance(ChecksumError("x"), OSError)


def test_missing_package_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="build_datasets"):
        _resources.read_package_file("adult.data.gz", directory=tmp_path)


@pytest.mark.skipif(not SHARED.is_dir(), reason="raw files in ../shared not present")
def test_package_data_is_up_to_date():
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "build_datasets.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------ preprocessing


def test_standardization_fitted_on_train_only(adult: TabularDataset):
    numeric = [adult.feature_names.index(c) for c in ("age", "hours-per-week")]
    X_train, X_test = adult.train.X[:, numeric], adult.test.X[:, numeric]
    assert torch.allclose(X_train.mean(0), torch.zeros(2), atol=1e-4)
    assert torch.allclose(X_train.std(0, unbiased=False), torch.ones(2), atol=1e-4)
    # Test features use the training statistics, so they are not re-centred.
    assert (X_test.mean(0).abs() > 1e-3).any()
    # Undo the training standardization: recovers the raw test ages exactly.
    raw_train_age = adult.frame["age"].to_numpy()[adult.train.index]
    raw_test_age = adult.frame["age"].to_numpy()[adult.test.index]
    age = adult.test.X[:, numeric[0]].double().numpy()
    recovered = age * raw_train_age.std() + raw_train_age.mean()
    np.testing.assert_allclose(recovered, raw_test_age, atol=1e-3)
    assert adult.preprocessor.means["age"] == pytest.approx(raw_train_age.mean())


def test_one_hot_categories_from_train_only(adult: TabularDataset):
    train_rows = adult.frame.iloc[adult.train.index]
    for name in adult.feature_names:
        if "=" in name:
            column, value = name.split("=", 1)
            assert (train_rows[column].astype(str) == value).any(), name
    # One-hot blocks of training rows sum to one (no missing values after dropping).
    columns = [i for i, n in enumerate(adult.feature_names) if n.startswith("workclass=")]
    assert torch.all(adult.train.X[:, columns].sum(1) == 1)


def test_unseen_category_adds_no_column():
    train = pd.DataFrame({"c": ["a", "b", "a"], "x": [1.0, 2.0, np.nan]})
    pre = TabularPreprocessor.fit(train, ["c", "x"], ["x"])
    assert pre.feature_names == ("c=a", "c=b", "x")
    out = pre.transform(pd.DataFrame({"c": ["z", "b", None], "x": [np.nan, 3.0, 1.5]}))
    assert out.dtype == np.float32 and out.shape == (3, 3)
    np.testing.assert_array_equal(out[:, :2], [[0, 0], [0, 1], [0, 0]])
    # NaN imputed with the training median (1.5), standardized with train mean/std
    assert out[0, 2] == pytest.approx(0.0) and out[2, 2] == pytest.approx(0.0)
    assert out[1, 2] == pytest.approx((3.0 - 1.5) / np.std([1.0, 2.0, 1.5]))


def test_rare_category_column_only_if_in_train():
    n = 60
    frame = pd.DataFrame(
        {
            "x": np.arange(n, dtype=float),
            "color": ["red", "blue"] * (n // 2),
            "s": ["a", "b", "c"] * (n // 3),
            "y": [0, 1, 1, 0] * (n // 4),
        }
    )
    frame.loc[7, "color"] = "purple"
    seen_in_train = set()
    for seed in range(8):
        data = load_csv(frame, target="y", sensitive="s", seed=seed)
        in_train = 7 in set(data.train.index.tolist())
        seen_in_train.add(in_train)
        assert ("color=purple" in data.feature_names) == in_train
        assert data.num_features == (4 if in_train else 3)
    assert seen_in_train == {True, False}


def test_sensitive_features_excluded_by_default(adult: TabularDataset):
    assert not any(n.startswith(("sex", "race")) for n in adult.feature_names)
    with_sensitive = load_german(sensitive="sex", include_sensitive=True)
    assert any(n.startswith("personal_status_sex=") for n in with_sensitive.feature_names)
    without = load_german(sensitive="sex")
    assert not any(n.startswith("personal_status_sex") for n in without.feature_names)
    assert "age" in without.feature_names
    assert "age" not in load_german(sensitive="age").feature_names
    compas = load_compas(sensitive="race")
    assert "sex=Male" in compas.feature_names
    assert not any(n.startswith("race") for n in compas.feature_names)


# ------------------------------------------------------------------------- splits


def test_seeded_splits_reproducible_and_disjoint():
    a = load_compas(seed=3)
    b = load_compas(seed=3)
    c = load_compas(seed=4)
    for name in ("train", "validation", "test"):
        np.testing.assert_array_equal(a.split(name).index, b.split(name).index)
        assert torch.equal(a.split(name).X, b.split(name).X)
    assert not np.array_equal(a.test.index, c.test.index)
    parts = [a.train.index, a.validation.index, a.test.index]
    joined = np.concatenate(parts)
    assert len(joined) == len(set(joined.tolist())) == len(a.frame)
    assert len(a.test) == pytest.approx(0.2 * 6172, abs=1)
    assert len(a.validation) == pytest.approx(0.2 * 6172, abs=1)


def test_adult_validation_comes_from_published_train(adult: TabularDataset):
    n_train_file = 30_162
    assert adult.train.index.max() < n_train_file
    assert adult.validation.index.max() < n_train_file
    np.testing.assert_array_equal(adult.test.index, np.arange(n_train_file, 45_222))
    assert not set(adult.train.index.tolist()) & set(adult.validation.index.tolist())
    other = load_adult(sensitive=("sex", "race"), seed=1)
    np.testing.assert_array_equal(other.test.index, adult.test.index)
    assert not np.array_equal(other.validation.index, adult.validation.index)


def test_split_is_stratified_by_group_and_label(compas: TabularDataset):
    def strata(split):
        return np.bincount((split.groups * 2 + split.y.long()).numpy(), minlength=2 * compas.num_groups)

    total = sum(strata(s) for s in compas.splits())
    for split, fraction in zip(compas.splits(), (0.6, 0.2, 0.2)):
        # each stratum is split proportionally to within (less than) two rows
        assert np.all(np.abs(strata(split) - fraction * total) < 2)


def test_validation_fraction_zero_gives_empty_split():
    data = load_german(validation_fraction=0.0, test_fraction=0.3)
    assert len(data.validation) == 0 and data.validation.X.shape == (0, data.num_features)
    assert len(data.test) == 300 and len(data.train) == 700


# ------------------------------------------------------------------------- groups


def test_adult_intersectional_group_names(adult: TabularDataset):
    races = ["Amer-Indian-Eskimo", "Asian-Pac-Islander", "Black", "Other", "White"]
    expected = tuple(f"sex={s}|race={r}" for s in ("Female", "Male") for r in races)
    assert adult.group_names == expected
    assert adult.num_groups == 10
    for split in adult.splits():
        rows = adult.frame.iloc[split.index]
        names = [adult.group_names[g] for g in split.groups.tolist()]
        assert names == [f"sex={s}|race={r}" for s, r in zip(rows["sex"], rows["race"])]


def test_german_groups(german: TabularDataset):
    assert german.group_names == (
        "sex=Female|age=<25",
        "sex=Female|age=>=25",
        "sex=Male|age=<25",
        "sex=Male|age=>=25",
    )
    groups = torch.cat([s.groups for s in german.splits()])
    index = np.concatenate([s.index for s in german.splits()])
    frame = german.frame.iloc[index]
    female = frame["personal_status_sex"].isin(["A92", "A95"]).to_numpy()
    young = (frame["age"] < 25).to_numpy()
    np.testing.assert_array_equal(groups.numpy(), 2 * (~female) + (~young))
    assert int(female.sum()) == 310


def test_compas_groups_cover_absent_combinations():
    data = load_compas(sensitive=("race", "sex", "age_cat"))
    assert data.num_groups == 6 * 2 * 3
    assert data.group_names[0] == "race=African-American|sex=Female|age_cat=25 - 45"
    assert "age" not in data.feature_names


def test_load_csv_group_ids_include_absent_categories():
    frame = pd.DataFrame(
        {
            "x": np.arange(40.0),
            "g": pd.Categorical(["b", "a"] * 20, categories=["c", "b", "a"]),
            "y": [0, 1] * 20,
        }
    )
    data = load_csv(frame, target="y", sensitive=["g"])
    assert data.group_names == ("g=c", "g=b", "g=a")
    assert set(torch.cat([s.groups for s in data.splits()]).tolist()) == {1, 2}
    data = load_csv(
        frame.assign(g=frame["g"].astype(str)),
        target="y",
        sensitive="g",
        sensitive_categories={"g": ["a", "b", "z"]},
    )
    assert data.group_names == ("g=a", "g=b", "g=z")


def test_load_csv_refuses_data_in_one_group():
    frame = pd.DataFrame({"x": np.arange(40.0), "country": ["US"] * 40, "y": [0, 1] * 20})
    with pytest.raises(ValueError, match=r"every row of <DataFrame> is in one group \('country' is always 'US'\)"):
        load_csv(frame, target="y", sensitive="country")
    # one constant column among varying ones, or declared categories the data lacks, still make groups
    assert load_csv(frame.assign(s=["F", "M"] * 20), target="y", sensitive=["country", "s"]).num_groups == 2
    assert (
        load_csv(frame, target="y", sensitive="country", sensitive_categories={"country": ["US", "CA"]}).num_groups == 2
    )


# ------------------------------------------------------------------------ loaders


def test_dataloader_batches(german: TabularDataset):
    batches = list(german.loader("train", batch_size=128, seed=0))
    assert [len(b[0]) for b in batches] == [128, 128, 128, 128, 88]
    x, y, g = batches[0]
    assert x.shape == (128, german.num_features) and x.dtype == torch.float32
    assert y.dtype == torch.float32 and g.dtype == torch.int64
    again = list(german.loader("train", batch_size=128, seed=0))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))
    # Shuffled train covers every row once; test is in order by default.
    assert torch.equal(torch.cat([b[1] for b in batches]).sort().values, german.train.y.sort().values)
    test_batches = list(german.loader("test", batch_size=64))
    assert torch.equal(torch.cat([b[0] for b in test_batches]), german.test.X)
    assert len(list(german.loader("train", batch_size=128, drop_last=True))) == 4


def test_load_dataset_dispatch_and_unknown_names():
    assert load_dataset("german", sensitive="age").sensitive == ("age",)
    with pytest.raises(ValueError, match="valid choices: adult, compas, german"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="valid choices: sex, race"):
        load_adult(sensitive="gender")
    with pytest.raises(ValueError, match="valid choices: race, sex, age_cat"):
        load_compas(sensitive=("race", "ethnicity"))
    with pytest.raises(ValueError, match="valid choices"):
        load_german(features=["salary"])
    with pytest.raises(ValueError, match="include_sensitive=True"):
        load_adult(features=["age", "sex"])
    with pytest.raises(ValueError, match="more than once"):
        load_adult(sensitive=("sex", "sex"))
    with pytest.raises(ValueError, match=r"unknown split 'dev'; did you mean 'validation'\? valid choices"):
        load_german().split("dev")  # a split column's alias: the one name of the split it means
    with pytest.raises(ValueError, match=r"unknown split 'Valid'; did you mean 'validation'\?"):
        load_german().loader("Valid")
    with pytest.raises(ValueError, match=r"unknown split 'holdout'; valid choices"):
        load_german().split("holdout")
    with pytest.raises(ValueError, match="test_fraction"):
        load_german(test_fraction=1.0)


# ----------------------------------------------------------------------- load_csv


@pytest.fixture()
def people_csv(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    n = 200
    frame = pd.DataFrame(
        {
            "age": rng.integers(18, 80, n),
            "job": rng.choice(["clerk", "nurse", "pilot"], n),
            "sex": rng.choice(["F", "M"], n),
            "race": rng.choice(["A", "B", "C"], n),
            "approved": rng.choice(["yes", "no"], n),
            "label": rng.integers(0, 2, n),
        }
    )
    path = tmp_path / "people.csv"
    frame.to_csv(path, index=False)
    return path


def test_load_csv_basic(people_csv: Path):
    data = load_csv(people_csv, target="label", sensitive=["sex", "race"], features=["age", "job"])
    assert data.name == "people"
    assert data.feature_names == ("age", "job=clerk", "job=nurse", "job=pilot")
    assert data.group_names[0] == "sex=F|race=A" and data.num_groups == 6
    assert sum(len(s) for s in data.splits()) == 200
    raw = pd.read_csv(people_csv)
    assert int(_all_labels(data).sum()) == int(raw["label"].sum())
    everything = load_csv(raw, target="label", sensitive="sex", positive_label=None)
    assert not any(n.startswith("sex") for n in everything.feature_names)
    assert any(n.startswith("approved=") for n in everything.feature_names)
    included = load_csv(raw, target="label", sensitive="sex", include_sensitive=True)
    assert "sex=F" in included.feature_names


def test_load_csv_positive_label(people_csv: Path):
    data = load_csv(people_csv, target="approved", sensitive="sex", positive_label="yes")
    raw = pd.read_csv(people_csv)
    assert int(_all_labels(data).sum()) == int((raw["approved"] == "yes").sum())
    assert "label" in data.feature_names and "approved" not in str(data.feature_names)
    with pytest.raises(ValueError, match="'maybe' does not occur"):
        load_csv(people_csv, target="approved", sensitive="sex", positive_label="maybe")


def test_load_csv_missing_column(people_csv: Path):
    with pytest.raises(ValueError) as info:
        load_csv(people_csv, target="label", sensitive=["gender"])
    message = str(info.value)
    assert "'gender'" in message and str(people_csv) in message
    assert "available columns" in message and "'race'" in message
    with pytest.raises(ValueError, match="'income' not found in <DataFrame>"):
        load_csv(pd.read_csv(people_csv), target="income", sensitive="sex")
    with pytest.raises(ValueError, match=r"sensitive column 'Sex' not found in .*; did you mean 'sex'\? available"):
        load_csv(people_csv, target="label", sensitive="Sex")
    with pytest.raises(ValueError, match=r"not found in .*; did you mean 'race'\? available"):
        load_csv(people_csv, target="label", sensitive="rase")
    with pytest.raises(ValueError, match=r"target column '2' not found in <DataFrame>; did you mean 2\? available"):
        load_csv(pd.read_csv(people_csv).rename(columns={"label": 2}), target="2", sensitive="sex")
    with pytest.raises(ValueError, match="'salary'"):
        load_csv(people_csv, target="label", sensitive="sex", features=["age", "salary"])


def test_a_numeric_sensitive_column_with_many_values_warns_and_a_code_does_not():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=600), "age": rng.integers(18, 90, 600), "y": rng.integers(0, 2, 600)})
    frame["code"] = rng.integers(1, 6, 600)  # a numeric code with 5 values: a category, no warning
    with pytest.warns(UserWarning, match=r"'age' is numeric with 72 distinct values.*pd\.cut\(frame\['age'\]"):
        assert load_csv(frame, target="y", sensitive="age").num_groups == 72
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_csv(frame, target="y", sensitive="code").num_groups == 5


def test_close_names_ignore_case_and_separators_then_rank_by_similarity():
    from fairopt._validation import close_names

    names = ["Blond_Hair", "Black_Hair", "Brown_Hair", "Male", "blond-hair"]
    assert close_names("blond hair", names) == ["Blond_Hair", "blond-hair"]  # spelled alike: all of them, only them
    assert close_names("Blond_hare", names, n=1) == ["Blond_Hair"]
    assert close_names("male", names) == ["Male"]
    assert close_names("Eyeglasses", names) == []
    assert close_names("年齢", ["性别", "年龄"]) == [] and close_names("größe", ["Größe", "Grosse"]) == ["Größe"]


def test_load_csv_non_binary_target(people_csv: Path):
    with pytest.raises(ValueError) as info:
        load_csv(people_csv, target="approved", sensitive="sex")
    message = str(info.value)
    assert "'approved'" in message and "'no'" in message and "'yes'" in message
    assert "positive_label=" in message
    with pytest.raises(ValueError, match="positive_label="):
        load_csv(people_csv, target="age", sensitive="sex")


def test_load_csv_bad_values():
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "s": ["a", None, "b", "a"], "y": [0, 1, 0, 1]})
    with pytest.raises(ValueError, match="'s' has 1 missing"):
        load_csv(frame, target="y", sensitive="s")
    frame = pd.DataFrame({"x": [1.0, 2.0], "s": ["a", "b"], "y": [0.0, np.nan]})
    with pytest.raises(ValueError, match="missing"):
        load_csv(frame, target="y", sensitive="s")
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0], "s": ["a", "b", "a"], "y": [True, False, True]})
    assert int(_all_labels(load_csv(frame, target="y", sensitive="s")).sum()) == 2


def test_subsample_train_is_seeded_and_leaves_other_splits():
    from fairopt.datasets import load_german

    data = load_german()
    small = data.subsample_train(100, seed=3)
    assert len(small.train) == 100 and small.validation is data.validation and small.test is data.test
    again = data.subsample_train(100, seed=3)
    assert np.array_equal(small.train.index, again.train.index)
    assert set(small.train.index) <= set(data.train.index)
    row = int(np.searchsorted(data.train.index, small.train.index[0]))
    assert torch.equal(small.train.X[0], data.train.X[row])
    with pytest.raises(ValueError, match="size must be in"):
        data.subsample_train(10_000)


def test_a_positive_label_hint_names_only_the_same_spelling():
    # case, whitespace, "_" and "." only: a fuzzy match or a sign could name the other class, and a user who followed
    # it would train on flipped labels without an error
    from fairopt.datasets._csv import positive_values

    with pytest.raises(ValueError, match=r"did you mean 'yes' for 'Yes '\? values found: \['no', 'yes'\]"):
        positive_values("Yes ", ["no", "yes"], "target column 'y'")
    with pytest.raises(ValueError, match=r"did you mean '>50K' for '>50K\.'\?"):
        positive_values(">50K.", ["<=50K", ">50K"], "target column 'income'")
    for given, values in (("abnormal", ["normal", "Abnormality"]), ("unhealthy", ["healthy", "ill"]), (1, [-1, 0])):
        with pytest.raises(ValueError, match="does not occur") as error:
            positive_values(given, values, "target column 'y'")
        assert "did you mean" not in str(error.value)
    assert positive_values("yes", ["no", "yes"], "target column 'y'") == ["yes"]


def test_an_identifier_like_feature_column_warns():
    # an ID column read as a categorical feature became one one-hot feature per row: a model memorized its training
    # rows (a trial's MLP reached training accuracy 1.000) and nothing said why
    from fairopt.datasets import load_csv

    rng = np.random.default_rng(0)
    n = 200
    frame = pd.DataFrame(
        {
            "applicant_id": [f"A{i:04d}" for i in range(n)],
            "city": rng.choice(["north", "south", "east"], n),
            "x": rng.normal(size=n),
            "g": rng.choice(["f", "m"], n),
            "y": rng.integers(0, 2, n),
        }
    )
    with pytest.warns(UserWarning, match=r"'applicant_id' of <DataFrame> has 200 distinct values in 200 rows") as seen:
        load_csv(frame, target="y", sensitive="g")
    assert all("'city'" not in str(w.message) for w in seen)  # 3 values in 200 rows: a category
    assert "load_csv(features=[...])" in str(seen[0].message)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        load_csv(frame, target="y", sensitive="g", features=["city", "x"])  # left out: no warning
        load_csv(frame.iloc[:15], target="y", sensitive="g", validation_fraction=0.3, test_fraction=0.3)  # too few
    assert not [w for w in seen if "distinct values" in str(w.message)]
