"""One term per idea (issue 11, item 2): the renamed keywords and names, and their deprecated aliases.

Each old name still works for one deprecation cycle, warns with the new name, and gives the same result; passing
both the old and the new name is an error.
"""

from __future__ import annotations

import pytest
import torch

import fairopt as fo
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
