"""The one computation of a randomized classifier's expected tables (fairopt.optim.stochastic.expected_tables):
hand-computed mixtures, per-example probabilities, and collect_stats / postprocessing going through it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fairopt import group_stats
from fairopt.optim import StochasticClassifier
from fairopt.optim.stochastic import expected_tables
from fairopt.postprocessing import expected_stats
from fairopt.stats import GroupStats
from fairopt.validation import collect_stats

LABELS = torch.tensor([1, 1, 0, 0, 1, 0])
GROUPS = torch.tensor([0, 0, 0, 1, 1, 1])


def _tables(scores: torch.Tensor, weights: torch.Tensor | None) -> tuple[GroupStats]:
    return (group_stats(scores, labels=LABELS, groups=GROUPS, num_groups=2, weights=weights),)


def _cells(stats: GroupStats) -> list[list[float]]:
    """(tn, fp, fn, tp) per group."""
    return [[float(stats.column(c)[g]) for c in ("tn", "fp", "fn", "tp")] for g in range(2)]


def test_candidates_with_one_probability_each_mix_their_tables():
    positive, negative = torch.ones(6, dtype=torch.float64), -torch.ones(6, dtype=torch.float64)
    (stats,) = expected_tables([(0.25, positive), (0.75, negative)], _tables)
    # group 0: 2 positives, 1 negative; group 1: 1 positive, 2 negatives. "All positive" w.p. 1/4.
    assert _cells(stats) == [[0.75, 0.25, 1.5, 0.5], [1.5, 0.5, 0.75, 0.25]]
    (again,) = expected_tables([(0.5, positive)], _tables, into=(stats,))  # streaming: added to running totals
    assert _cells(again) == [[0.75, 0.75, 1.5, 1.5], [1.5, 1.5, 0.75, 0.75]]


def test_per_example_probabilities_weigh_the_examples():
    p = torch.tensor([1.0, 0.5, 0.25, 0.0, 0.5, 1.0], dtype=torch.float64)
    ones = torch.ones(6, dtype=torch.float64)
    (stats,) = expected_tables([(p, ones), (1 - p, -ones)], _tables)
    # group 0: positives p = 1, 0.5 -> tp 1.5, fn 0.5; negative p = 0.25 -> fp 0.25, tn 0.75
    # group 1: positive p = 0.5 -> tp 0.5, fn 0.5; negatives p = 0, 1 -> fp 1, tn 1
    assert _cells(stats) == [[0.75, 0.25, 0.5, 1.5], [1.0, 1.0, 0.5, 0.5]]
    torch.testing.assert_close(expected_stats(p, labels=LABELS, groups=GROUPS, num_groups=2).table, stats.table)


def test_bad_candidates_are_refused():
    with pytest.raises(ValueError, match="at least one candidate"):
        expected_tables([], _tables)
    with pytest.raises(ValueError, match=">= 0"):
        expected_tables([(-0.5, torch.ones(6))], _tables)


def _linear(weight: float, bias: float) -> nn.Module:
    model = nn.Linear(1, 1).double()
    with torch.no_grad():
        model.weight.fill_(weight)
        model.bias.fill_(bias)
    return nn.Sequential(model, nn.Flatten(0))


def test_collect_stats_of_a_stochastic_classifier_is_the_mixture_of_its_candidates():
    x = torch.linspace(-1, 1, 6, dtype=torch.float64).reshape(-1, 1)
    first, second = _linear(1.0, 0.0), _linear(-2.0, 0.5)
    chosen = StochasticClassifier(first, [first.state_dict(), second.state_dict()], [0.25, 0.75])
    stats, moments = collect_stats(chosen, (x, LABELS, GROUPS), 2, batch_size=4, progress=False)
    one, one_moments = collect_stats(first, (x, LABELS, GROUPS), 2, progress=False)
    two, two_moments = collect_stats(second, (x, LABELS, GROUPS), 2, progress=False)
    torch.testing.assert_close(stats.table, 0.25 * one.table + 0.75 * two.table)
    torch.testing.assert_close(moments.table, 0.25 * one_moments.table + 0.75 * two_moments.table)
    # by hand: x = -1, -.6, -.2 (group 0, labels 1 1 0) | .2, .6, 1 (group 1, labels 0 1 0); the first candidate
    # (p = 1/4) predicts x > 0, the second (p = 3/4) -2x + .5 > 0, i.e. x < .25
    assert _cells(stats) == [[0.25, 0.75, 0.5, 1.5], [0.75, 1.25, 0.75, 0.25]]
