"""fairopt bench, one run: train -> select -> evaluate, every table through collect_stats, the class constraint
from fairopt.constraints."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import fairopt as fo
from fairopt import group_stats
from fairopt.bench import StudyConfig
from fairopt.bench.config import class_constraint
from fairopt.bench.runner import (
    MARGIN_HINT,
    FinalModel,
    _check,
    _scores,
    evaluate_models,
    plain_forward,
    run_one,
    select_models,
    split_stats,
    train_model,
)
from fairopt.bench.study import load_study_data
from fairopt.constraints import ProtectedClassDisparateImpact, ProtectedClassParity, protected_classes
from fairopt.models import create_model
from fairopt.optim import Penalty
from fairopt.validation import collect_stats

TINY = StudyConfig(
    dataset="german", models=("logistic",), methods=("proxy-lagrangian",), epochs=2, train_size=None,
    records_per_run=4, seeds=(0,),
)  # fmt: skip


@pytest.fixture(scope="module")
def data():
    return load_study_data(TINY, 0)


def _model(data, seed: int = 0):
    torch.manual_seed(seed)
    return create_model("logistic", data.num_features, seed=seed)


def test_split_stats_is_the_table_of_the_whole_split(data):
    model = _model(data)
    with torch.no_grad():
        scores = model(data.validation.X).double()
    direct = group_stats(scores, labels=data.validation.y, groups=data.validation.groups, num_groups=data.num_groups)
    torch.testing.assert_close(split_stats(model, data.validation, data.num_groups).table, direct.table, rtol=0, atol=0)


def test_a_final_mixture_is_measured_in_expectation(data):
    first, second = _model(data, 0), _model(data, 1)
    final = FinalModel([first.state_dict(), second.state_dict()], torch.tensor([0.25, 0.75]), [0, 1], "test")
    stats, moments = final.tables(first, data.test, data.num_groups)
    one, _ = collect_stats(first, data.test.tensors(), data.num_groups, progress=False)
    two, _ = collect_stats(second, data.test.tensors(), data.num_groups, progress=False)
    torch.testing.assert_close(stats.table, 0.25 * one.table + 0.75 * two.table)
    assert moments is None  # intervals from the expected counts
    alone, alone_moments = FinalModel([], torch.ones(1), [0], "last").tables(first, data.test, data.num_groups)
    torch.testing.assert_close(alone.table, one.table, rtol=0, atol=0)
    assert alone_moments is not None


def test_run_one_is_train_then_select_then_evaluate(data):
    constraint = TINY.build_constraint(data.group_names)
    runs = run_one(TINY, data, constraint, "logistic", "proxy-lagrangian", 0)
    trained = train_model(TINY, data, constraint, "logistic", "proxy-lagrangian", 0)
    selection = select_models(TINY, data, constraint, trained, "proxy-lagrangian")
    composed = evaluate_models(data, constraint, trained, selection, "logistic", 0)
    assert [r.method for r in runs] == ["proxy-lagrangian", "proxy-lagrangian (best iterate)"]
    assert [r.method for r in composed] == [r.method for r in runs]
    for ours, theirs in zip(runs, composed):
        assert ours.selection == theirs.selection and ours.history == theirs.history
        for split in ours.reports:
            assert ours.reports[split].to_dict() == theirs.reports[split].to_dict()
    assert len(trained.history) == 4 and trained.seconds > 0 and set(trained.history[0]) >= {"train", "test"}


def test_post_processing_is_chosen_in_the_select_step(data):
    constraint = TINY.build_constraint(data.group_names)
    trained = train_model(TINY, data, constraint, "logistic", "unconstrained", 0)
    selection = select_models(TINY, data, constraint, trained, "thresholds")
    (final,) = selection.finals.values()
    assert final.policy is not None and final.selection.startswith("group thresholds on validation")
    stats, moments = final.tables(trained.model, data.validation, data.num_groups)
    values = constraint.expression_values(stats)
    assert moments is None and float(values.max()) <= constraint.tolerance + 1e-6  # fitted there


def test_the_bench_class_constraint_is_the_library_builder():
    names = ["sex=F|race=B", "sex=F|race=W", "sex=M|race=B", "sex=M|race=W"]
    classes = (("race", "B"), ("sex", "F"))
    odds = class_constraint("equalized_odds", 0.05, names, classes)
    assert isinstance(odds, ProtectedClassParity) and odds.rates == ("true_positive_rate", "false_positive_rate")
    assert odds.classes == {"race=B": (0, 2), "sex=F": (0, 1)} and odds.tolerance == 0.05
    assert odds.name == "equalized_odds(tolerance=0.05) per class vs overall [race=B, sex=F]"
    ratio = class_constraint("p_rule", 0.8, names, classes)
    assert isinstance(ratio, ProtectedClassDisparateImpact) and ratio.p == 0.8
    with pytest.raises(ValueError, match="matches no group"):
        class_constraint("equal_opportunity", 0.05, names, (("race", "X"),))


def test_class_groups_is_a_deprecated_alias_of_protected_classes():
    import fairopt.bench.config as config

    with pytest.warns(DeprecationWarning, match="protected_classes"):
        alias = config.class_groups
    assert alias is protected_classes


@pytest.mark.parametrize("method", ["penalty", "lagrangian-heldout", "proxy-lagrangian+thresholds"])
def test_the_bench_calls_the_library_by_its_current_names(data, method):
    # Every deprecated name fairopt still accepts warns; the bench must not use one (issue 11, item 4).
    constraint = TINY.build_constraint(data.group_names)
    config = TINY.updated(epochs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        runs = run_one(config, data, constraint, "logistic", method, 0)
        trained = train_model(config, data, constraint, "logistic", method.split("+")[0], 0)
    assert runs and all(r.method.startswith(method) for r in runs)
    if method == "penalty":  # the option travels on the method object, not as a deprecated keyword
        assert trained.constrained is not None
        assert trained.constrained.method_spec == Penalty(coefficients=config.penalty)


def test_the_history_shows_expression_values_with_the_constraints_own_tolerance(data):
    constraint = TINY.build_constraint(data.group_names)
    trained = train_model(TINY, data, constraint, "logistic", "proxy-lagrangian", 0)
    stats = split_stats(trained.model, data.test, data.num_groups)  # the last point is the last iterate
    value = constraint.evaluate(stats)
    by_hand = float(value.hard[value.defined].max()) + constraint.tolerance  # g + tolerance, the largest entry
    assert trained.history[-1]["test"] == pytest.approx(by_hand, abs=1e-12)
    assert trained.history[-1]["test"] == pytest.approx(float(np.nanmax(constraint.expression_values(stats))))


class _Batched:
    """A split that streams its rows in batches of ``size`` (as an image folder does), for :func:`_scores`."""

    def __init__(self, split, size: int) -> None:
        self.split, self.size, self.name = split, size, split.name

    def __len__(self) -> int:
        return len(self.split)

    def tensors(self):
        return self.split.loader(self.size, shuffle=False)


def test_threshold_scores_stream_over_the_split_in_eval_mode(data):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(data.num_features, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1))
    model = torch.nn.Sequential(model, torch.nn.Flatten(0))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    streamed = _scores(model, _Batched(data.validation, 7), plain_forward)  # 7 rows a batch: a short last batch
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        whole = model.eval()(data.validation.X).double()
    assert streamed.shape == (len(data.validation),) and streamed.dtype == torch.float64
    torch.testing.assert_close(streamed, whole)  # the same scores in the split's order, batch norm's running stats
    empty = data.validation.subset(np.array([], dtype=np.int64))
    with pytest.raises(ValueError, match="split has no rows"):
        _scores(model, _Batched(empty, 7))


def test_train_model_runs_its_forward_hook_on_every_training_and_heldout_batch(data):
    calls = {"train": 0, "eval": 0}
    built = []

    def build(name: str, seed: int) -> torch.nn.Module:
        built.append((name, seed))
        return _model(data, seed)

    def forward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        calls["train" if model.training else "eval"] += 1
        return plain_forward(model, x)

    config = TINY.updated(methods=("lagrangian-heldout",))
    constraint = config.build_constraint(data.group_names)
    hooked = train_model(config, data, constraint, "logistic", "lagrangian-heldout", 0, build_model=build,
                         forward=forward)  # fmt: skip
    plain = train_model(config, data, constraint, "logistic", "lagrangian-heldout", 0)
    batch = config.batch_size_for(len(data.train))
    assert built == [("logistic", 0)]
    assert calls["train"] == config.epochs * -(-len(data.train) // batch)  # every training step, ceil(N / B) an epoch
    assert calls["eval"] >= 1  # the held-out duals' validation batches, in eval mode
    assert hooked.history == plain.history  # the hooks are the defaults here: the same training


def test_below_majority_compares_with_predicting_the_majority_label_for_everyone():
    from fairopt.bench.runner import below_majority, majority_baseline

    labels = torch.tensor([1, 1, 1, 1, 1, 1, 1, 0, 0, 0])  # 7 of 10 positive: the baseline is 0.7, label 1
    groups = torch.tensor([0, 1] * 5)

    def table(predicted: list[int]):
        scores = torch.tensor(predicted, dtype=torch.float64) * 2 - 1  # logits +-1
        return group_stats(scores, labels=labels, groups=groups, num_groups=2)

    weak = table([1, 1, 0, 0, 1, 0, 0, 1, 1, 0])  # right on rows 0, 1, 4 and 9: 4 of 10
    assert majority_baseline(weak) == (pytest.approx(0.7), 1)
    message = below_majority(weak)
    assert message is not None and message.startswith("the final model's test accuracy 0.4000 is below 0.7000")
    assert "that of predicting 1 for every test row" in message
    assert below_majority(table([1, 1, 1, 1, 1, 1, 0, 0, 0, 1])) is None  # 8 of 10 right: above the baseline
    assert below_majority(table([1] * 10)) is None  # constant: constant_prediction's warning, not this one
    assert below_majority(table([1, 1, 1, 1, 1, 1, 1, 0, 0, 0])) is None  # perfect


def test_an_unreachable_margin_warning_names_the_cli_option(data):
    # the library's advice (np.minimum in Python) and, on the command line, the option that sets the margin
    model = _model(data)
    opt = fo.ConstrainedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), [fo.EqualizedOdds(0.05)], data.num_groups
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        opt.margin = 0.2  # above the tolerance: a max - min gap cannot reach -0.2
    (found,) = [w for w in _check(opt, model, data, "proxy-lagrangian") if w.startswith("margin too large")]
    assert "np.minimum(margin" in found and found.endswith(f"(fairopt bench: {MARGIN_HINT})")
    assert "--margin-z 1" in MARGIN_HINT


def test_a_final_model_chosen_without_its_margin_says_so(data):
    """Where no candidate meets the bound with its margin (here 100 standard errors), the final model is chosen, or
    the thresholds fitted, without it: the run's warnings say so (study.md and the log show them), not only the
    selection text in runs.csv; without a margin asked there is nothing to say."""
    constraint = TINY.build_constraint(data.group_names)
    unreachable = TINY.updated(margin_z=100.0)
    trained = train_model(unreachable, data, constraint, "logistic", "unconstrained", 0)
    thresholds = select_models(unreachable, data, constraint, trained, "thresholds")
    (final,) = thresholds.finals.values()
    assert "(margin not met)" in final.selection
    (warning,) = final.warnings
    assert warning.startswith(
        "no group thresholds meet the bound with its margin on validation: the final model was fitted without it"
    )
    assert warning.endswith("more validation rows, or a smaller --margin-z, let a margin be met")
    (run,) = evaluate_models(data, constraint, trained, thresholds, "logistic", 0)
    assert warning in run.warnings
    no_margin = TINY.updated(margin_z=0.0)
    (plain,) = select_models(no_margin, data, constraint, trained, "thresholds").finals.values()
    assert plain.warnings == () and "margin" not in plain.selection

    trained = train_model(unreachable, data, constraint, "logistic", "proxy-lagrangian", 0)
    finals = select_models(unreachable, data, constraint, trained, "proxy-lagrangian").finals
    assert list(finals) == ["proxy-lagrangian", "proxy-lagrangian (best iterate)"]
    for final in finals.values():
        assert "(margin not met)" in final.selection
        (warning,) = final.warnings
        assert warning.startswith("no recorded iterate meets the bound with its margin on train: the final model was")
        assert "more training rows (a larger --train-size, where it caps them)" in warning
