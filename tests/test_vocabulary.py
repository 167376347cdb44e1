"""One term per idea (issue 11, item 2): the renamed keywords and names, and their deprecated aliases.

Each old name still works for one deprecation cycle, warns with the new name, and gives the same result; passing
both the old and the new name is an error.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fairopt as fo
from fairopt.optim.selection import is_feasible
from fairopt.validation import second_moments

SCORES = torch.tensor([-1.5, 0.3, 2.0, -0.2, 0.9, -2.2], dtype=torch.float64)
LABELS = torch.tensor([0, 1, 1, 0, 1, 0])
GROUPS = torch.tensor([0, 0, 1, 1, 1, 0])
LOSSES = torch.tensor([0.1, 0.7, 0.2, 0.5, 0.3, 0.05], dtype=torch.float64)
DATA = {"labels": LABELS, "groups": GROUPS, "num_groups": 2}


def test_group_stats_takes_example_losses_and_warns_on_the_old_loss_keyword():
    new = fo.group_stats(SCORES, **DATA, example_losses=LOSSES)
    assert new.table[:, 8].tolist() == pytest.approx([0.1 + 0.7 + 0.05, 0.2 + 0.5 + 0.3])
    with pytest.warns(DeprecationWarning, match="example_losses="):
        old = fo.group_stats(SCORES, **DATA, loss=LOSSES)
    assert torch.equal(old.table, new.table)


def test_validate_args_replaces_validate_and_the_old_keyword_still_switches_the_checks_off():
    bad = torch.tensor([0, 2, 1, 0, 1, 0])
    with pytest.raises(ValueError, match="labels"):
        fo.group_stats(SCORES, labels=bad, groups=GROUPS, num_groups=2, validate_args=True)
    fo.group_stats(SCORES, labels=bad, groups=GROUPS, num_groups=2, validate_args=False)
    with pytest.warns(DeprecationWarning, match="validate_args="):
        fo.group_stats(SCORES, labels=bad, groups=GROUPS, num_groups=2, validate=False)


def test_the_old_and_the_new_name_together_are_refused():
    with pytest.raises(TypeError, match=r"both loss= .*example_losses="):
        fo.group_stats(SCORES, **DATA, loss=LOSSES, example_losses=LOSSES)


def test_set_validation_is_a_deprecated_alias_of_set_validate_args():
    bad = torch.tensor([0, 2, 1, 0, 1, 0])
    with pytest.warns(DeprecationWarning, match="set_validate_args"), fo.set_validation(False):
        fo.group_stats(SCORES, labels=bad, groups=GROUPS, num_groups=2)
    with pytest.raises(ValueError):  # restored on exit
        fo.group_stats(SCORES, labels=bad, groups=GROUPS, num_groups=2)


def test_second_moments_takes_example_losses_and_warns_on_loss():
    new = second_moments(SCORES, **DATA, example_losses=LOSSES)
    with pytest.warns(DeprecationWarning, match="example_losses="):
        old = second_moments(SCORES, **DATA, loss=LOSSES)
    assert torch.equal(old.table, new.table)
    assert new.table[0, 4].item() == pytest.approx(0.1 + 0.7 + 0.05)  # Σ w·loss with w = 1


def test_plot_violation_history_is_a_deprecated_alias_of_plot_constraint_history():
    pytest.importorskip("matplotlib")
    from fairopt.validation import FairnessMonitor
    from fairopt.validation.plots import plot_constraint_history, plot_violation_history

    monitor = FairnessMonitor([fo.DemographicParity(0.1)], {"validation": [(SCORES, LABELS, GROUPS)]}, num_groups=2)
    for step in (1, 2):
        monitor.record(step, "validation", fo.group_stats(SCORES * step, **DATA))
    new = plot_constraint_history(monitor)
    with pytest.warns(DeprecationWarning, match="plot_constraint_history"):
        old = plot_violation_history(monitor)
    assert [list(line.get_ydata()) for line in old.axes[0].lines] == [
        list(line.get_ydata()) for line in new.axes[0].lines
    ]


def test_measure_of_a_constraint_set_takes_validate_args():
    cs = fo.optim.ConstraintSet([fo.DemographicParity(0.1)], num_groups=2)
    bad = torch.tensor([0, 2, 1, 0, 1, 0])
    cs.measure(SCORES, labels=bad, groups=GROUPS, validate_args=False)
    with pytest.warns(DeprecationWarning, match="validate_args="):
        cs.measure(SCORES, labels=bad, groups=GROUPS, validate=False)


def test_the_optimizer_takes_validate_args_and_warns_on_validate():
    model = torch.nn.Linear(1, 1)
    opt = fo.ConstrainedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), [fo.DemographicParity(0.1)], 2)
    assert opt.validate_args is None
    with pytest.warns(DeprecationWarning, match="validate_args="):
        old = fo.ConstrainedOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.1), [fo.DemographicParity(0.1)], 2, validate=False
        )
    assert old.validate_args is False


def test_proxy_bounds_are_proxy_upper_and_proxy_lower_and_the_old_names_warn():
    stats = fo.group_stats(SCORES, **DATA, proxy="hinge")
    rv = fo.compute_rate(stats, "tpr")
    bounds = (fo.tpr(1) - fo.tpr(0)).evaluate(stats)
    lin = fo.optim.ConstraintSet([fo.DemographicParity(0.1)], num_groups=2).linearize(stats)
    for value in (rv, bounds, lin):
        with pytest.warns(DeprecationWarning, match="proxy_upper"):
            old_upper = value.upper
        with pytest.warns(DeprecationWarning, match="proxy_lower"):
            old_lower = value.lower
        assert old_upper is value.proxy_upper and old_lower is value.proxy_lower
    # hinge: an upper-bounding proxy, so the bounds enclose the hard TPR of each group
    assert (rv.proxy_lower <= rv.value).all() and (rv.value <= rv.proxy_upper).all()


# Constraint values are the signed g; a violation is max(0, g) (docs/glossary.md).
RECORD_TABLE = [(0.10, [0.20, -0.1]), (0.30, [-0.10, -0.1]), (0.25, [-0.05, 0.0]), (0.20, [-0.20, -0.2])]


def _records():
    records = fo.optim.IterateRecords(keep_states=False)
    for step, (objective, values) in enumerate(RECORD_TABLE):
        records.record(step, objective, torch.tensor(values, dtype=torch.float64))
    return records


def test_iterate_records_hold_values_and_the_old_violations_names_warn():
    records = _records()
    expected = [values for _, values in RECORD_TABLE]
    assert records.values().tolist() == expected  # signed: the feasible rows keep their negative values
    assert records[0].values.tolist() == [0.20, -0.1]
    with pytest.warns(DeprecationWarning, match=r"\.values"):
        assert records.violations().tolist() == expected
    with pytest.warns(DeprecationWarning, match=r"\.values"):
        assert records[0].violations is records[0].values
    old = fo.optim.IterateRecords(keep_states=False)
    with pytest.warns(DeprecationWarning, match="values="):
        old.record(0, 0.10, violations=torch.tensor([0.20, -0.1], dtype=torch.float64))
    assert old.values().tolist() == [[0.20, -0.1]]
    with pytest.raises(TypeError, match=r"both violations= .*values="):
        old.record(1, 0.1, values=torch.zeros(2), violations=torch.zeros(2))
    assert records.best_index() == 3  # feasible and lowest objective among the feasible


def test_a_records_state_saved_under_the_old_key_still_loads():
    records = _records()
    state = records.state_dict()
    assert "values" in state["records"][0] and "violations" not in state["records"][0]
    for entry in state["records"]:
        entry["violations"] = entry.pop("values")  # as saved before the rename
    clone = fo.optim.IterateRecords()
    clone.load_state_dict(state)
    assert clone.values().tolist() == records.values().tolist()


def test_the_selection_functions_take_values_and_warn_on_violations():
    objectives = [objective for objective, _ in RECORD_TABLE]
    values = np.array([v for _, v in RECORD_TABLE])
    assert fo.optim.best_iterate(objectives, values=values) == 3
    with pytest.warns(DeprecationWarning, match="values="):
        assert fo.optim.best_iterate(objectives, violations=values) == 3
    with pytest.warns(DeprecationWarning, match="values="):
        assert is_feasible(objectives, violations=values)
    # iterates 1, 2 and 3 are feasible (best: 3, objective 0.2); 0 (objective 0.1) violates its first entry by 0.2
    # and 3 has slack 0.2 there: the half-half mix meets it exactly, at objective 0.15 (mixing 0 with 2: 0.22)
    np.testing.assert_allclose(fo.optim.best_distribution(objectives, values=values), [0.5, 0, 0, 0.5], atol=1e-9)
    with pytest.warns(DeprecationWarning, match="values="):
        old = fo.optim.best_distribution(objectives, violations=values)
    np.testing.assert_allclose(old, [0.5, 0, 0, 0.5], atol=1e-9)


def _linear(weight: float) -> torch.nn.Linear:
    model = torch.nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(weight)
        model.bias.zero_()
    return model


def test_stochastic_classifier_takes_probabilities_and_the_old_weights_names_warn():
    states = [_linear(w).state_dict() for w in (1.0, 2.0, 3.0)]
    new = fo.StochasticClassifier(_linear(0.0), states, probabilities=[1.0, 0.0, 3.0], seed=5)
    assert new.probabilities.tolist() == [0.25, 0.75]  # normalized; the candidate with probability 0 is dropped
    with pytest.warns(DeprecationWarning, match="probabilities="):
        old = fo.StochasticClassifier(_linear(0.0), states, weights=[1.0, 0.0, 3.0], seed=5)
    assert torch.equal(old.probabilities, new.probabilities)
    with pytest.warns(DeprecationWarning, match=r"\.probabilities"):
        assert old.weights is old.probabilities
    x, ids = torch.ones(64, 1), torch.arange(64)
    torch.testing.assert_close(old(x, ids), new(x, ids), rtol=0, atol=0)
    with pytest.raises(TypeError, match=r"both weights= .*probabilities="):
        fo.StochasticClassifier(_linear(0.0), states, probabilities=[1, 0, 3], weights=[1, 0, 3])


def test_a_stochastic_classifier_saved_with_a_weights_buffer_still_loads():
    states = [_linear(w).state_dict() for w in (1.0, 3.0)]
    saved = fo.StochasticClassifier(_linear(0.0), states, [0.2, 0.8], seed=7).state_dict()
    assert "probabilities" in saved and "weights" not in saved
    saved["weights"] = saved.pop("probabilities")  # the buffer's name before the rename
    clone = fo.StochasticClassifier(_linear(0.0), states, [0.5, 0.5])
    clone.load_state_dict(saved)  # strict: no missing or unexpected key
    assert clone.probabilities.tolist() == pytest.approx([0.2, 0.8]) and clone.seed == 7


def test_records_stochastic_classifier_takes_probabilities_and_warns_on_weights():
    records = fo.optim.IterateRecords()
    for step, weight in enumerate((1.0, -1.0)):
        records.record(step, 0.1 * (step + 1), torch.tensor([0.0]), model=_linear(weight))
    new = records.stochastic_classifier(_linear(0.0), probabilities=np.array([0.25, 0.75]))
    with pytest.warns(DeprecationWarning, match="probabilities="):
        old = records.stochastic_classifier(_linear(0.0), weights=np.array([0.25, 0.75]))
    assert new.probabilities.tolist() == old.probabilities.tolist() == [0.25, 0.75]
    with pytest.raises(ValueError, match=r"probabilities must have shape \(2,\)"):
        records.stochastic_classifier(_linear(0.0), probabilities=np.ones(3) / 3)


def test_bench_methods_is_the_one_name_and_methods_is_a_deprecated_alias():
    import fairopt.bench
    import fairopt.bench.config as config

    assert "METHODS" not in fairopt.bench.__all__ and "METHODS" not in config.__all__
    assert fairopt.bench.BENCH_METHODS is config.BENCH_METHODS
    assert config.BENCH_METHODS[:3] == ("unconstrained", "penalty", "lagrangian") and len(config.BENCH_METHODS) == 8
    for module, name in ((config, "fairopt.bench.config"), (fairopt.bench, "fairopt.bench")):
        with pytest.warns(DeprecationWarning, match=f"{name}.BENCH_METHODS"):
            assert module.METHODS is config.BENCH_METHODS
    with pytest.raises(AttributeError):
        _ = fairopt.bench.NOT_A_NAME


def test_collect_stats_and_evaluate_take_validate_args_and_warn_on_validate():
    from fairopt.validation import collect_stats, evaluate

    bad = torch.tensor([0, 2, 1, 0, 1, 0])  # a label outside {0, 1}: only the value checks see it
    data = (SCORES[:, None], bad, GROUPS)
    with pytest.raises(ValueError, match="labels"):
        collect_stats(lambda x: x[:, 0], data, 2, loss_fn=None, validate_args=True)
    new, _ = collect_stats(lambda x: x[:, 0], data, 2, loss_fn=None, validate_args=False)
    with pytest.warns(DeprecationWarning, match="validate_args="):
        old, _ = collect_stats(lambda x: x[:, 0], data, 2, loss_fn=None, validate=False)
    assert torch.equal(old.table, new.table)
    with pytest.warns(DeprecationWarning, match="validate_args="):
        evaluate(lambda x: x[:, 0], (SCORES[:, None], LABELS, GROUPS), num_groups=2, validate=False)


def test_a_constraint_reports_its_expression_values_with_its_own_tolerance():
    stats = fo.group_stats(SCORES, **DATA)
    parity = fo.DemographicParity(0.1)
    # selection rates: group 0 (scores -1.5, 0.3, -2.2) 1/3, group 1 (2.0, -0.2, 0.9) 2/3: the gap is 1/3
    np.testing.assert_allclose(parity.expression_values(stats), [1 / 3], rtol=0, atol=1e-12)
    value = parity.evaluate(stats)
    assert value.hard.tolist() == pytest.approx([1 / 3 - 0.1])  # g = gap - tolerance
    np.testing.assert_array_equal(parity.expression_values(value), value.expression_values(0.1))
    no_positives = fo.group_stats(SCORES, labels=torch.tensor([0, 0, 1, 0, 1, 0]), groups=GROUPS, num_groups=2)
    assert np.isnan(fo.EqualOpportunity(0.05).expression_values(no_positives)).all()  # group 0's TPR is undefined
    with pytest.raises(TypeError, match="GroupStats table or this constraint's ConstraintValue"):
        parity.expression_values(np.zeros(1))
