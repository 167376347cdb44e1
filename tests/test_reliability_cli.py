"""fairopt bench and the CSV loader on a new user's mistakes: every option honored or refused, every data problem said.

Each test here failed before the fix it guards (see the CHANGELOG): CSV-only options refused for bundled datasets,
``--positive-label``, ``--num-seeds``, ``--epochs`` for every model, and warnings for constant targets, tiny or empty
files, a capped training split, small groups, constant classifiers and the reports' own warnings.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from fairopt.bench import StudyConfig
from fairopt.bench.config import PRESETS
from fairopt.bench.runner import RunResult, constant_prediction
from fairopt.bench.study import data_notes, load_study_data, run_warnings
from fairopt.cli import _config_from_args, build_parser, main
from fairopt.datasets import SmallSplitWarning, load_csv
from fairopt.stats import COLUMNS, GroupStats


def _config(*options: str) -> StudyConfig:
    return _config_from_args(build_parser().parse_args(["bench", *options]))


@pytest.fixture()
def no_study(monkeypatch: pytest.MonkeyPatch) -> None:
    """An option that should be refused must never start a study (if it did, the default one would take minutes)."""
    import fairopt.bench.study

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the options were accepted and a study started")

    monkeypatch.setattr(fairopt.bench.study, "run_study", refuse)


def _exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.fixture()
def labelled_csv(tmp_path: Path) -> Path:
    """200 rows; ``approved`` is yes/no, ``code`` is 1/2 (ints); group ``s=c`` has one row; ``x`` is constant."""
    rng = np.random.default_rng(0)
    n = 200
    frame = pd.DataFrame(
        {
            "x": np.ones(n),
            "s": ["a", "b"] * (n // 2 - 1) + ["a", "c"],
            "approved": rng.choice(["yes", "no"], n),
            "code": rng.choice([1, 2], n),
        }
    )
    path = tmp_path / "people.csv"
    frame.to_csv(path, index=False)
    return path


# ------------------------------------------------------------------------------------------------ options


def test_positive_label_flag_reaches_the_csv_loader(labelled_csv: Path):
    config = _config("--dataset", f"csv:{labelled_csv}", "--target", "approved", "--sensitive", "s",
                     "--positive-label", "yes", "--train-size", "0")  # fmt: skip
    data = load_study_data(config)
    positives = sum(int(split.y.sum()) for split in (data.train, data.validation, data.audit, data.test))
    assert positives == int((pd.read_csv(labelled_csv)["approved"] == "yes").sum())
    # a command line passes strings: "2" names the integer 2
    coded = load_study_data(config.updated(csv_target="code", csv_positive_label=("2",)))
    assert sum(int(s.y.sum()) for s in coded.splits()) + int(coded.audit.y.sum()) == int(
        (pd.read_csv(labelled_csv)["code"] == 2).sum()
    )


def test_a_non_binary_target_error_names_the_cli_flag(labelled_csv: Path):
    with pytest.raises(ValueError, match="--positive-label VALUE") as info:
        load_csv(labelled_csv, target="approved", sensitive="s")
    assert "positive_label=" in str(info.value)
    # no value is picked for the user (one picked by sort order could be the other class: 'denied' before 'yes'); the
    # values found are listed to choose from
    assert "positive_label='" not in str(info.value) and "'yes'" in str(info.value)


def test_csv_only_options_are_refused_for_bundled_datasets(capsys, no_study):
    err = _exits_2(["bench", "--dataset", "adult", "--target", "y"], capsys)
    assert "fixed target 'income'" in err and "--dataset csv:PATH" in err
    err = _exits_2(["bench", "--dataset", "german", "--positive-label", "1"], capsys)
    assert "--positive-label" in err and "csv" in err
    err = _exits_2(["bench", "--dataset", f"csv:{__file__}", "--sensitive", "s"], capsys)
    assert "--target COLUMN" in err
    # the fixed target itself is harmless, and --sensitive is honored for bundled datasets
    assert _config("--dataset", "adult", "--target", "income").csv_target == "income"
    german = load_study_data(_config("--dataset", "german", "--sensitive", "age", "--train-size", "0"))
    assert german.group_names == ("age=<25", "age=>=25")


def test_num_seeds_counts_and_seeds_numbers(capsys, no_study):
    assert _config("--num-seeds", "3").seeds == (0, 1, 2)
    assert _config("--seeds", "1").seeds == (1,)
    err = _exits_2(["bench", "--seeds", "1", "--num-seeds", "2"], capsys)
    assert "not allowed with" in err
    assert "positive integer" in _exits_2(["bench", "--num-seeds", "0"], capsys)
    # a seed twice is one run twice, reported as a spread of 0 over "2 seeds": refused, as the sweep refuses it
    err = _exits_2(["bench", "--dataset", "loans.csv"], capsys)  # a file without its kind
    assert "unknown dataset 'loans.csv'; did you mean csv:loans.csv? choose from" in err
    err = _exits_2(["sweep", "--tolerances", "0.05", "--models", "mlp"], capsys)  # bench's plural, in a sweep
    assert "fairopt sweep: error: argument --models: a sweep trains one model: use --model mlp" in err
    err = _exits_2(["bench", "--seeds", "0,0"], capsys)
    assert "invalid seeds: (0, 0); it must be one or more distinct integers" in err
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--num-seeds N" in text and "not a count" in text


def test_epochs_applies_to_every_model_unless_epochs_large_is_given():
    config = _config("--epochs", "3")
    assert {m: config.epochs_for(m) for m in ("logistic", "mlp", "mlp-large")} == {
        "logistic": 3, "mlp": 3, "mlp-large": 3
    }  # fmt: skip
    both = _config("--epochs", "3", "--epochs-large", "7")
    assert both.epochs_for("mlp") == 3 and both.epochs_for("mlp-large") == 7
    assert _config().epochs_for("mlp-large") == StudyConfig().epochs_large  # the preset's own when neither is given


# ------------------------------------------------------------------------------------------- data problems


def test_a_constant_target_is_an_error(labelled_csv: Path):
    frame = pd.read_csv(labelled_csv).assign(y=0)
    with pytest.raises(ValueError, match="one label only: all 200 rows are y = 0"):
        load_csv(frame, target="y", sensitive="s")
    with pytest.raises(ValueError, match=r"one label only.*every value being positive_label 'yes'"):
        load_csv(frame.assign(approved="yes"), target="approved", sensitive="s", positive_label="yes")


def test_a_tiny_csv_warns_with_the_rows_it_needs():
    frame = pd.DataFrame({"x": np.arange(30.0), "s": ["a", "b"] * 15, "y": [0, 1, 1, 0, 1, 0] * 5})
    with pytest.warns(UserWarning, match=r"30 data rows.*fewer than 30 rows \(train 18, validation 6, test 6\)"):
        load_csv(frame, target="y", sensitive="s")
    with pytest.warns(UserWarning, match="at least 150 rows"):
        load_csv(frame, target="y", sensitive="s")


def test_a_tiny_csv_study_names_its_own_splits(tmp_path: Path):
    """The bench carves its held-out (audit) split out of load_csv's validation split: its note names the study's
    splits (validation 5, held-out 5, not load_csv's validation 10), and load_csv's own warning is not passed on."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=50), "s": ["a", "b"] * 25, "y": [0, 1] * 25})
    frame.to_csv(tmp_path / "tiny.csv", index=False)
    with pytest.warns(SmallSplitWarning, match=r"\(validation 10, test 10\)"):
        load_csv(frame, target="y", sensitive="s")
    config = StudyConfig(dataset=f"csv:{tmp_path / 'tiny.csv'}", csv_target="y", csv_sensitive=("s",),
                         models=("logistic",), methods=("unconstrained",))  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error", SmallSplitWarning)
        data = load_study_data(config)
    (note,) = [n for n in data_notes(config, data, len(data.train)) if n.startswith("warning: some splits")]
    assert note.startswith("warning: some splits have fewer than 30 rows (validation 5, held-out 5, test 10): ")
    assert note.endswith("about 6 times as many data rows give every split 30")
    # a training split at its cap grows with --train-size, not the file: left to the cap's own note (the sweep
    # passes no train_rows)
    capped = config.updated(train_size=10)
    data = load_study_data(capped)
    for train_rows in (30, None):
        (note,) = [n for n in data_notes(capped, data, train_rows) if n.startswith("warning: some splits")]
        assert note.startswith("warning: some splits have fewer than 30 rows (validation 10, held-out 5, test 10): ")


def test_an_empty_or_header_only_csv_says_so(tmp_path: Path):
    header = tmp_path / "header.csv"
    header.write_text("x,s,y\n")
    with pytest.raises(ValueError, match=r"the CSV .*header\.csv has no data rows"):
        load_csv(header, target="y", sensitive="s")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match="is empty: no header and no data rows"):
        load_csv(empty, target="y", sensitive="s")


def test_small_groups_are_named_with_their_split_and_rows():
    config = StudyConfig(dataset="compas", train_size=None)
    notes = data_notes(config, load_study_data(config))
    (native,) = [n for n in notes if "'race=Native American'" in n]
    assert native.startswith("warning: group") and "fewer than 30 rows" in native
    assert "held-out " in native and "test " in native and "intervals" in native
    assert not any("'race=African-American'" in n for n in notes)
    # with protected classes the classes are checked, not the intersectional groups they pool
    classes = config.updated(sensitive=("sex", "race"), classes=(("race", "Caucasian"), ("sex", "Female")))
    assert data_notes(classes, load_study_data(classes)) == []


def test_a_papers_preset_on_other_data_and_a_tiny_p_rule_are_noted():
    # a paper's preset keeps its constraint, methods and splits on another dataset, where its published numbers do
    # not apply; a p_rule tolerance of 0.05 is a 5%-rule (a gap's unit given to a ratio), met by nearly any model
    preset = dataclasses.replace(PRESETS["cotter2019-adult"], dataset="german", sensitive=("sex",), classes=())
    data = load_study_data(preset)
    (note,) = [n for n in data_notes(preset, data) if "preset" in n]
    assert note.startswith("note: the 'cotter2019-adult' preset was made for adult; on german it still sets")
    assert "(p_rule, tolerance 0.8)" in note and "published numbers do not apply" in note
    assert not [n for n in data_notes(dataclasses.replace(preset, dataset="adult"), data) if "preset" in n]
    tiny = StudyConfig(dataset="german", constraint="p_rule", tolerance=0.05)
    (note,) = [n for n in data_notes(tiny, data) if "p_rule" in n]
    assert "0.05 asks every group's selection rate to be at least 5% of the largest" in note
    assert not [n for n in data_notes(tiny.updated(tolerance=0.8), data) if "p_rule" in n]
    assert not [n for n in data_notes(StudyConfig(dataset="german"), data) if "preset" in n]  # the default preset


# -------------------------------------------------------------------------------------------- run warnings


def _stats(tn: float, fp: float, fn: float, tp: float) -> GroupStats:
    row = [tn, fp, fn, tp] + [0.0] * (len(COLUMNS) - 4)
    return GroupStats(torch.tensor([row], dtype=torch.float64))


def test_constant_prediction_is_flagged_for_either_label():
    assert "predicts 0 for every test row" in constant_prediction(_stats(5, 0, 3, 0))
    assert "predicts 1 for every held-out row" in constant_prediction(_stats(0, 5, 0, 3), "held-out")
    assert constant_prediction(_stats(4, 1, 2, 1)) is None and constant_prediction(_stats(0, 0, 0, 0)) is None


def test_report_warnings_are_listed_once_with_their_splits():
    reports = {
        "train": SimpleNamespace(warnings=("train only",)),
        "held-out": SimpleNamespace(warnings=("shared", "held-out only", "shared")),
        "test": SimpleNamespace(warnings=("shared",)),
    }
    run = RunResult("logistic", "unconstrained", 0, reports, [], "last iterate", 1, [], 0.0, warnings=("own",))  # type: ignore[arg-type]
    assert run_warnings(run) == ["own", "held-out, test: shared", "held-out: held-out only"]


def test_cli_flags_a_constant_classifier_the_cap_and_the_reports_warnings(labelled_csv: Path, tmp_path: Path, capsys):
    out = tmp_path / "run"
    argv = ["bench", "--dataset", f"csv:{labelled_csv}", "--target", "approved", "--positive-label", "yes",
            "--sensitive", "s", "--models", "logistic", "--methods", "unconstrained", "--epochs", "1", "--seeds", "0",
            "--train-size", "60", "--out", str(out), "--no-plots"]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    log = captured.err
    # x is constant, so the logistic model's score is its bias: one label for every row
    assert "constant classifier" in log and "constant classifier" in (out / "study.md").read_text()
    study = json.loads((out / "study.json").read_text())
    (run,) = study["runs"]
    # the reports' own warning, once per split (the bench no longer adds a copy of its own)
    assert any("constant classifier" in w for w in run["reports"]["test"]["warnings"])
    assert not any("constant classifier" in w for w in run["warnings"])
    assert "training on 60 of the 120 training rows" in log and "--train-size 0" in log
    assert any("training on 60" in n for n in study["notes"])
    assert "group 's=c'" in log  # one row in the whole file
    # the held-out and test reports' warnings are printed under the run, prefixed with their split
    shown = [(split, w) for split in ("held-out", "test") for w in run["reports"][split]["warnings"]]
    assert shown, "group s=c is missing from held-out or test, so one of their reports warns"
    for split, warning in shown:
        assert any(split in line and warning in line for line in log.splitlines())
    assert "warnings on 1 of 1 run(s)" in captured.out


def test_many_small_groups_are_summed_up_in_one_warning(tmp_path: Path):
    """A numeric sensitive column (an age) makes each of its 60 values a group: 60 lines of "fewer than 30 rows"
    with no hint at the cause; the first five are named, the rest in one line that says to bin the column."""
    rng = np.random.default_rng(0)
    n = 800
    frame = pd.DataFrame({"x": rng.normal(size=n), "age": rng.integers(20, 80, n), "y": rng.integers(0, 2, n)})
    frame.to_csv(tmp_path / "people.csv", index=False)
    config = StudyConfig(dataset=f"csv:{tmp_path / 'people.csv'}", csv_target="y", csv_sensitive=("age",),
                         models=("logistic",), methods=("unconstrained",), train_size=None)  # fmt: skip
    notes = data_notes(config, load_study_data(config))
    assert len(notes) == 6 and all("fewer than 30 rows" in n for n in notes[:5])
    assert notes[5].startswith("warning: and 55 more of the 60 groups have fewer than 30 rows in some splits (")
    assert (
        "age=25, age=26, age=27, age=28, age=29, ...); if a --sensitive column is numeric (an age, a score)" in notes[5]
    )


@pytest.mark.parametrize("command", ["bench", "sweep"])
def test_nearly_one_group_per_row_is_refused_before_training(tmp_path: Path, capsys, command: str):
    """A numeric sensitive column with a value per row (an income) made 1,677 groups of 1,200 training rows: the
    sweep stalled for minutes without a word (the margins' standard errors cost O(G^2) each)."""
    rng = np.random.default_rng(0)
    n = 400
    frame = pd.DataFrame(
        {"x": rng.normal(size=n), "income": rng.normal(50, 10, n).round(2), "y": rng.integers(0, 2, n)}
    )
    frame.to_csv(tmp_path / "people.csv", index=False)
    argv = [command, "--dataset", f"csv:{tmp_path / 'people.csv'}", "--target", "y", "--sensitive", "income",
            "--epochs", "1", "--quiet", "--no-plots", "--out", str(tmp_path / "out")]  # fmt: skip
    argv += ["--tolerances", "0.05"] if command == "sweep" else ["--models", "logistic", "--methods", "unconstrained"]
    try:  # the bench returns its status for an error found while loading, the sweep exits through argparse
        code = main(argv)
    except SystemExit as exit_info:
        code = exit_info.code
    err = capsys.readouterr().err
    assert code == 2
    assert "groups for 240 training rows: nearly every row is its own group" in err and "bin it" in err
    assert not (tmp_path / "out").exists()  # a failed run leaves no (empty) output folder
    (tmp_path / "mine" / "sub").mkdir(parents=True)  # ... but never removes one that was there
    argv[argv.index("--out") + 1] = str(tmp_path / "mine" / "sub")
    with contextlib.suppress(SystemExit):
        main(argv)
    assert (tmp_path / "mine" / "sub").is_dir()
    argv[argv.index("--out") + 1] = str(tmp_path / "new" / "deeper" / "out")  # nor leaves the parents it made
    with contextlib.suppress(SystemExit):
        main(argv)
    assert not (tmp_path / "new").exists()
    # a folder holding an earlier run's output is refused, untouched: with --no-plots the new tables would have sat
    # beside the earlier run's plots, one folder describing two runs
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    for name in ("study.json" if command == "bench" else "sweep.json", "accuracy_vs_constraint.png"):
        (earlier / name).write_text("earlier run")
    argv[argv.index("--out") + 1] = str(earlier)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert f"--out {earlier} holds an earlier run" in capsys.readouterr().err
    assert sorted(p.name for p in earlier.iterdir()) == [
        "accuracy_vs_constraint.png",
        "study.json" if command == "bench" else "sweep.json",
    ]


def test_one_positive_label_of_three_values_warns_with_the_merged_ones():
    """positive_label names one value of a three-valued target: the other two both become y = 0, which the user may
    not have meant (a 'pending' decision counted as a denial); a list (of every positive value, or of the one meant),
    or a binary target, is quiet."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=300), "s": ["a", "b"] * 150,
                          "status": ["approved", "denied", "pending"] * 100})  # fmt: skip
    with pytest.warns(UserWarning, match=r"target column 'status' in <DataFrame> has 3 distinct values: positive_"):
        data = load_csv(frame, target="status", sensitive="s", positive_label="approved")
    assert sorted(np.concatenate([split.y for split in data.splits()]).tolist()).count(1) == 100
    with pytest.warns(UserWarning, match=r"y = 0 for the 2 others together \('denied', 'pending'\)"):
        load_csv(frame, target="status", sensitive="s", positive_label="approved")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_csv(frame, target="status", sensitive="s", positive_label=["approved", "pending"])
        load_csv(frame, target="status", sensitive="s", positive_label=["approved"])  # a list: meant as it is
        load_csv(frame[frame.status != "pending"], target="status", sensitive="s", positive_label="approved")
