"""fairopt bench: the CLI's options and errors, a tiny real study end to end, exact expected tables of peers."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
import torch

import fairopt
from fairopt.bench import PRESETS, StudyConfig, run_study
from fairopt.bench.output import format_table, published_comparison, write_outputs
from fairopt.bench.peers import expected_stats
from fairopt.bench.study import load_study_data, run_warnings
from fairopt.cli import main
from fairopt.datasets import load_german
from fairopt.datasets._checksums import SHA256
from fairopt.rates import compute_rate

TINY = {
    "dataset": "german",
    "models": ("logistic",),
    "methods": ("unconstrained", "lagrangian", "proxy-lagrangian-heldout"),
    "epochs": 2,
    "train_size": None,
    "records_per_run": 4,
    "seeds": (0,),
}


def test_help_is_complete_and_exits_zero(capsys):
    for argv in (["--help"], ["bench", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--dataset", "--constraint", "--tolerance", "--methods", "--models", "--epochs", "--seeds",
                   "--device", "--out", "--full", "--preset", "--peers"):  # fmt: skip
        assert option in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench", "--methods", "sgd"], "unknown method 'sgd'"),
        (["bench", "--models", "resnet"], "unknown model 'resnet'"),
        (["bench", "--dataset", "mnist"], "unknown dataset 'mnist'"),
        (["bench", "--constraint", "fairness"], "invalid choice"),
        (["bench", "--seeds", "a,b"], "comma-separated integers"),
        (["bench", "--epochs", "0"], "invalid epochs: 0; it must be >= 1"),
        (["bench", "--train-size", "5"], "invalid train_size: 5; it must be >= 10 rows, or None"),
        (["bench", "--lr", "0"], "invalid lr: 0.0; it must be > 0"),
        (["bench", "--dataset", "csv:/nonexistent.csv", "--target", "y", "--sensitive", "s"], "no such file"),
        (["bench", "--preset", "nope"], "invalid choice"),
    ],
)
def test_invalid_options_exit_2_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_entry_point_reports_errors_without_traceback():
    result = subprocess.run(
        [sys.executable, "-m", "fairopt.cli", "bench", "--tolerance", "nan-ish"], capture_output=True, text=True
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr and "--tolerance" in result.stderr


def test_the_progress_bar_stays_out_of_a_pipe(capsys):
    """stderr captured here is not a terminal: the per-run lines come, the bar's carriage returns do not."""
    lines: list[str] = []
    run_study(StudyConfig(**{**TINY, "methods": ("unconstrained",)}), progress=True, log=lines.append)
    err = capsys.readouterr().err
    assert "\r" not in err and "fairopt bench:" not in err
    assert sum("unconstrained" in line and "seed 0" in line for line in lines) == 1


def test_the_progress_bar_is_drawn_on_a_terminal(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    run_study(StudyConfig(**{**TINY, "methods": ("unconstrained",)}), progress=True)
    assert "fairopt bench:" in terminal.getvalue() and "1/1" in terminal.getvalue()
    quiet = Terminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    run_study(StudyConfig(**{**TINY, "methods": ("unconstrained",)}), progress=False)
    assert quiet.getvalue() == ""


def test_a_p_rule_studys_caption_says_what_its_values_are():
    """The p%-rule's values are its linear form p * max - min (<= 0), not the min/max ratio users know."""
    result = run_study(StudyConfig(**{**TINY, "methods": ("unconstrained",), "constraint": "p_rule"}), progress=False)
    text = " ".join(format_table(result).split())
    assert "p * max - min of the group selection rates (<= 0 exactly when min/max >= p" in text
    assert "to compare with its bound 0;" in text
    other = " ".join(format_table(run_study(StudyConfig(**{**TINY, "methods": ("unconstrained",)}),
                                            progress=False)).split())  # fmt: skip
    assert "the constraint's largest entry (e.g. a rate gap), to compare with its bound 0.05" in other
    # protected classes against the overall rate (the cotter2019-adult preset's form)
    config = StudyConfig(**{**TINY, "methods": ("unconstrained",), "constraint": "p_rule",
                            "classes": (("sex", "Female"), ("sex", "Male"))})  # fmt: skip
    by_class = " ".join(format_table(run_study(config, progress=False)).split())
    assert "p * overall rate - a class's selection rate, the largest over the classes" in by_class


def test_tiny_study_end_to_end(tmp_path):
    result = run_study(StudyConfig(**TINY), progress=False)
    # the proxy-Lagrangian run gives two final models: the shrinking-LP distribution and its best single iterate
    methods = [*TINY["methods"], "proxy-lagrangian-heldout (best iterate)"]
    assert [(r.model, r.method) for r in result.runs] == [("logistic", m) for m in methods]
    table = result.table()
    for split in ("train", "validation", "held-out", "test"):
        assert table[f"{split}_value"].between(0, 1).all()
    # held-out is the audit split: as large as what is left of the validation split, and disjoint from it
    assert result.split_sizes["held-out"] == result.split_sizes["validation"]
    heldout, best = result.runs[-2], result.runs[-1]
    assert heldout.selection.startswith("shrinking LP on validation") and 1 <= heldout.support <= 3
    assert best.selection.startswith("best iterate on validation") and best.support == 1
    assert best.wall_time > 0 and heldout.history == best.history
    assert result.runs[0].selection == "last iterate" and result.runs[0].multipliers == []
    # the test accuracy in the table is 1 - the report's overall error rate, exactly
    test_stats = result.runs[0].reports["test"].stats
    assert table["test_accuracy"][0] == pytest.approx(compute_rate(test_stats.overall(), "accuracy").value.item())
    text = format_table(result)
    assert "proxy-lagrangian-heldout" in text and "test [95% CI]" in text
    written = write_outputs(result, tmp_path)
    assert {p.name for p in written} == {
        "study.json", "study.md", "runs.csv", "constraint_vs_epoch.png", "accuracy_vs_constraint.png"
    }  # fmt: skip
    data = json.loads((tmp_path / "study.json").read_text())
    assert data["schema_version"] == "1.1" and len(data["runs"]) == 4  # provenance is additive
    # what the study read besides its settings: the versions and the packaged data files' SHA-256
    provenance = data["provenance"]
    assert provenance["torch"] == torch.__version__ and provenance["fairopt"] == fairopt.__version__
    assert provenance["data"]["source"] == "bundled" and provenance["data"]["rows"] == 1000  # German credit
    assert provenance["data"]["sha256"] == {"german.data.gz": SHA256["german.data.gz"]}
    assert all(
        (tmp_path / name).stat().st_size > 1000 for name in ("constraint_vs_epoch.png", "accuracy_vs_constraint.png")
    )


def test_cli_runs_a_tiny_study_and_names_the_output_folder(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["bench", "--dataset", "german", "--models", "logistic", "--methods", "unconstrained,penalty"]
    argv += ["--epochs", "1", "--seeds", "0", "--train-size", "0", "--out", str(out), "--quiet", "--no-plots"]
    code = main(argv)
    assert code == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "penalty" in printed
    assert (out / "study.md").read_text().startswith("german: DemographicParity") is False  # equalized odds default
    assert "EqualizedOdds" in (out / "study.md").read_text()


def test_presets_are_valid_and_carry_published_numbers():
    compas, adult = PRESETS["cotter2019-compas"], PRESETS["cotter2019-adult"]
    assert {p.test_error for p in compas.published} == {0.353, 0.378}
    assert {p.test_violation for p in adult.published} == {0.011, 0.005}
    assert compas.validation_fraction == 0.4 and compas.models == ("mlp",)


def test_published_comparison_lines_up_with_our_runs():
    config = StudyConfig(**TINY).updated(
        models=("mlp",),
        methods=("proxy-lagrangian", "proxy-lagrangian-heldout"),
        published=PRESETS["cotter2019-adult"].published,
    )
    comparison = published_comparison(run_study(config, progress=False))
    assert list(comparison["method"]) == ["proxy-lagrangian (mlp)", "proxy-lagrangian-heldout (mlp)"]
    assert list(comparison["published error"]) == ["0.156", "0.169"]
    # published numbers are for the 50-unit net: other models are not compared with them
    other = run_study(config.updated(models=("logistic",), methods=("proxy-lagrangian",)), progress=False)
    assert published_comparison(other) is None


def test_expected_stats_of_a_randomized_classifier_are_exact():
    split = load_german().test
    p = torch.linspace(0, 1, len(split.y), dtype=torch.float64)
    stats = expected_stats(p, split, 2)
    # expected true positives of group g = sum of p over its positive examples, and so on for every cell
    for g in range(2):
        pos = (split.groups == g) & (split.y == 1)
        neg = (split.groups == g) & (split.y == 0)
        torch.testing.assert_close(stats.column("tp")[g], p[pos].sum())
        torch.testing.assert_close(stats.column("fn")[g], (1 - p[pos]).sum())
        torch.testing.assert_close(stats.column("fp")[g], p[neg].sum())
        torch.testing.assert_close(stats.column("tn")[g], (1 - p[neg]).sum())


def test_peers_run_on_the_same_splits_with_like_for_like_bounds():
    from fairopt.bench.peers import run_peers

    config = StudyConfig(**{**TINY, "methods": ("unconstrained",)})
    runs = run_peers(config)
    by_method = {r.method: r for r in runs}
    assert set(by_method) == {"fairlearn-expgrad", "fairlearn-threshold", "cooper-sigmoid"}
    threshold = by_method["fairlearn-threshold"]
    # ThresholdOptimizer equalizes TPR and FPR exactly (in expectation) on the split it was fitted on: validation
    validation = max(e.value for e in threshold.reports["validation"].constraints[0].entries)
    assert validation < 1e-6 and threshold.selection == "ThresholdOptimizer on validation (exact)"
    # ExponentiatedGradient at b = t / 2 against the overall rate meets max - min <= t on its training data
    train = max(e.value for e in by_method["fairlearn-expgrad"].reports["train"].constraints[0].entries)
    assert train <= config.tolerance + 0.005


def test_postprocessing_methods_finish_their_training_with_group_thresholds():
    from fairopt.bench.runner import run_one

    config = StudyConfig(**TINY)
    data = load_study_data(config, 0)
    constraint = config.build_constraint(data.group_names)
    (combined,) = run_one(config, data, constraint, "logistic", "proxy-lagrangian+thresholds", 0)
    assert (
        combined.selection.startswith("best iterate on train")
        and "group thresholds on validation" in combined.selection
    )
    (alone,) = run_one(config, data, constraint, "logistic", "thresholds", 0)
    assert alone.selection.startswith("group thresholds on validation") and alone.multipliers == []
    for run in (combined, alone):  # fitted on validation: within the bound there (with or without the margin)
        assert max(e.value for e in run.reports["validation"].constraints[0].entries) <= config.tolerance + 1e-6


def test_a_failing_peer_is_reported_and_the_others_still_run(monkeypatch):
    from fairopt.bench import peers

    def broken(*args, **kwargs):
        raise RuntimeError("no such option")

    monkeypatch.setattr(peers, "_threshold_optimizer", broken)
    config = StudyConfig(**{**TINY, "methods": ("unconstrained",)})
    failures: list[str] = []
    runs = peers.run_peers(config, on_error=failures.append)
    assert {r.method for r in runs} == {"fairlearn-expgrad", "cooper-sigmoid"}
    assert len(failures) == 1 and "RuntimeError: no such option" in failures[0]
    with pytest.raises(RuntimeError, match="no such option"):
        peers.run_peers(config)  # without on_error the failure propagates


def test_bench_and_sweep_parse_their_shared_options_alike(capsys):
    from fairopt.bench.options import study_options
    from fairopt.cli import build_parser

    parser = build_parser()
    argv = ["--seeds", "1,2", "--train-size", "0", "--epochs", "3", "--lr", "0.01", "--sensitive", "sex, race"]
    argv += ["--margin-z", "0", "--constraint", "equal_opportunity"]
    bench = study_options(parser.parse_args(["bench", *argv]))
    sweep = study_options(parser.parse_args(["sweep", "--tolerances", "0.05", *argv]))
    assert bench == sweep == {
        "sensitive": ("sex", "race"), "constraint": "equal_opportunity", "epochs": 3, "seeds": (1, 2), "lr": 0.01,
        "margin_z": 0.0, "train_size": None,
    }  # fmt: skip
    assert study_options(parser.parse_args(["sweep", "--tolerances", "0.05", "--num-seeds", "2"])) == {"seeds": (0, 1)}
    with pytest.raises(SystemExit) as exit_info:  # the sweep offers every constraint but the p%-rule
        parser.parse_args(["sweep", "--tolerances", "0.05", "--constraint", "p_rule"])
    assert exit_info.value.code == 2 and "invalid choice: 'p_rule'" in capsys.readouterr().err


def test_a_trainings_warnings_are_logged_once_for_its_final_models():
    """proxy-lagrangian gives two final models of one training (the distribution and its best iterate): the log
    shows the training's warnings once and says how many the second shares; the study keeps every run's own."""
    lines: list[str] = []
    config = StudyConfig(**{**TINY, "methods": ("proxy-lagrangian",), "margin_z": 100.0})  # no iterate meets it
    result = run_study(config, progress=False, log=lines.append)
    first, best = (run_warnings(run) for run in result.runs)
    assert first and first == best and result.runs[1].method == "proxy-lagrangian (best iterate)"
    warned = [line for line in lines if line.startswith("    warning: ")]
    assert warned == [f"    warning: {w}" for w in first]
    assert lines[-1] == f"    ({len(first)} warning(s) as above)"
