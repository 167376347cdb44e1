"""Protected classes (Cotter et al., ICML 2019, Section 6): classes pool intersectional groups, each is compared
with the overall rate; values hand-computed on a small table, cross-checked against a direct computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fairopt import group_stats
from fairopt.constraints import (
    Constraint,
    EqualOpportunity,
    ProtectedClassDisparateImpact,
    ProtectedClassParity,
    RateRef,
    concat,
    protected_classes,
)
from fairopt.groups import Groups

NAMES = ["sex=F|race=B", "sex=F|race=W", "sex=M|race=B", "sex=M|race=W"]
# (tn, fp, fn, tp) per group: group 0 has 4 positives (1 found) and 2 negatives (1 flagged), ... group 3 no negatives
CELLS = [(1, 1, 3, 1), (2, 0, 0, 2), (2, 2, 1, 1), (0, 0, 2, 0)]


def _table():
    scores, labels, groups = [], [], []
    for g, (tn, fp, fn, tp) in enumerate(CELLS):
        for count, score, label in ((tn, -1.0, 0), (fp, 1.0, 0), (fn, -1.0, 1), (tp, 1.0, 1)):
            scores += [score] * count
            labels += [label] * count
            groups += [g] * count
    return group_stats(
        torch.tensor(scores, dtype=torch.float64),
        labels=torch.tensor(labels),
        groups=torch.tensor(groups),
        num_groups=len(NAMES),
    )


CLASSES = {"race=B": (0, 2), "race=W": (1, 3), "sex=F": (0, 1)}


def test_protected_classes_finds_the_groups_of_each_class():
    assert protected_classes(NAMES, [("race", "B"), "sex=F"]) == {"race=B": (0, 2), "sex=F": (0, 1)}
    groups = Groups({"sex": ["F", "M"], "race": ["B", "W"]})
    assert protected_classes(groups, [("race", "W")]) == {"race=W": (1, 3)}
    with pytest.raises(ValueError, match="'race=X' matches no group; groups are"):
        protected_classes(NAMES, [("race", "X")])
    with pytest.raises(ValueError, match="listed twice"):
        protected_classes(NAMES, ["sex=F", ("sex", "F")])
    with pytest.raises(ValueError, match="attribute=value"):
        protected_classes(NAMES, ["sexF"])
    with pytest.raises(ValueError, match="at least one class"):
        protected_classes(NAMES, [])


def test_class_parity_values_are_the_pooled_rates_against_the_overall_rate():
    constraint = ProtectedClassParity(("tpr", "fpr"), CLASSES, tolerance=0.05)
    value = constraint.evaluate(_table())
    # TPR: race=B pools tp 1+1 of 6 positives = 1/3, race=W 2 of 4, sex=F 3 of 6; overall 4 of 10.
    # FPR: race=B 3 of 6 negatives, race=W 0 of 2, sex=F 1 of 4; overall 3 of 8.
    expected = [abs(1 / 3 - 0.4), abs(0.5 - 0.375), abs(0.5 - 0.4), abs(0.0 - 0.375), abs(0.5 - 0.4), abs(0.25 - 0.375)]
    np.testing.assert_allclose(value.expression_values(constraint.tolerance), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(value.hard.numpy(), np.array(expected) - 0.05, rtol=0, atol=1e-12)
    assert constraint.tolerance == 0.05 and constraint.num_entries(4) == 6
    assert constraint.entry_names(NAMES) == [
        "|tpr[race=B] - tpr[overall]|",
        "|fpr[race=B] - fpr[overall]|",
        "|tpr[race=W] - tpr[overall]|",
        "|fpr[race=W] - fpr[overall]|",
        "|tpr[sex=F] - tpr[overall]|",
        "|fpr[sex=F] - fpr[overall]|",
    ]
    assert constraint.name == "ProtectedClassParity(tolerance=0.05, true_positive_rate, false_positive_rate; " + (
        "race=B, race=W, sex=F)"
    )


def test_class_parity_equals_its_expression_written_by_hand():
    """The hard values (what the optimizer reads) equal those of the form the bench wrote before, with the tolerance
    inside the expression: ``|r_c - r| - t <= 0``, so training is unchanged by the move."""
    table = _table()
    ref = RateRef("tpr")
    by_hand = Constraint(concat(*(abs(ref(ids) - ref()) - 0.05 for ids in CLASSES.values())), 0.0)
    ours = ProtectedClassParity("tpr", CLASSES, 0.05)
    torch.testing.assert_close(ours.evaluate(table).hard, by_hand.evaluate(table).hard, rtol=0, atol=0)
    torch.testing.assert_close(ours.evaluate(table).proxy, by_hand.evaluate(table).proxy, rtol=0, atol=0)


def test_a_class_of_one_group_matches_the_vs_overall_builtin_there():
    constraint = ProtectedClassParity("tpr", {name: (g,) for g, name in enumerate(NAMES)}, 0.05)
    builtin = EqualOpportunity(0.05, convention="vs_overall")
    table = _table()
    torch.testing.assert_close(constraint.evaluate(table).hard, builtin.evaluate(table).hard)


def test_class_disparate_impact_is_the_p_rule_against_the_overall_selection_rate():
    constraint = ProtectedClassDisparateImpact(CLASSES, p=0.8)
    value = constraint.evaluate(_table())
    # selection: race=B 2 + 3 of 12 rows, race=W 2 of 6, sex=F 2 + 2 of 10; overall 7 of 18
    expected = [0.8 * 7 / 18 - 5 / 12, 0.8 * 7 / 18 - 2 / 6, 0.8 * 7 / 18 - 4 / 10]
    np.testing.assert_allclose(value.hard.numpy(), expected, rtol=0, atol=1e-12)
    assert constraint.tolerance == 0.0
    assert constraint.entry_names(NAMES)[0] == "0.8 * selection_rate[overall] - selection_rate[race=B]"


def test_a_class_without_the_rate_is_undefined_not_satisfied():
    # group 3 has no negative labels: its FPR, pooled alone, has a zero denominator
    value = ProtectedClassParity("fpr", {"sex=M|race=W": (3,), "race=B": (0, 2)}, 0.05).evaluate(_table())
    assert value.defined.tolist() == [False, True]
    assert value.hard[0].item() == 0.0 and np.isnan(value.expression_values(0.05)[0])


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ProtectedClassParity("tpr", {}, 0.05), "non-empty mapping"),
        (lambda: ProtectedClassParity((), CLASSES, 0.05), "at least one rate"),
        (lambda: ProtectedClassParity("nope", CLASSES, 0.05), "unknown rate 'nope'"),
        (lambda: ProtectedClassParity("tpr", CLASSES, 1.5), "tolerance is a rate difference"),
        (lambda: ProtectedClassParity("tpr", {"a": ()}, 0.05), "at least one group id"),
        (lambda: ProtectedClassDisparateImpact(CLASSES, p=0.0), r"must be in \(0, 1\]"),
    ],
)
def test_bad_arguments_are_refused_at_construction(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_a_class_referring_to_a_missing_group_is_caught_by_the_group_check():
    constraint = ProtectedClassParity("tpr", {"c": (2, 7)}, 0.05)
    with pytest.raises(ValueError, match="refers to group 7"):
        constraint.check_num_groups(4)
