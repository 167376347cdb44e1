"""Rates: hand-computed values, undefined masks, cross-checks against scikit-learn and fairlearn, proxy bounds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fairlearn.metrics import MetricFrame, false_positive_rate, selection_rate, true_positive_rate
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, confusion_matrix, precision_score

from fairopt.rates import RATES, canonical_rate_name, compute_rate, rate_table
from fairopt.stats import group_stats

from .test_stats import GROUPS, LABELS, SCORES


def _hand_stats():
    return group_stats(SCORES, labels=LABELS, groups=GROUPS, num_groups=4)


@pytest.mark.parametrize(
    ("rate", "values", "defined"),
    [
        # cells per group (tn, fp, fn, tp): g0 (0,1,1,1), g1 (2,0,0,1), g2 (1,1,0,0), g3 absent
        ("selection_rate", [2 / 3, 1 / 3, 1 / 2, 0], [1, 1, 1, 0]),
        ("tpr", [1 / 2, 1, 0, 0], [1, 1, 0, 0]),  # g2 has no positive labels: TPR undefined
        ("fpr", [1, 0, 1 / 2, 0], [1, 1, 1, 0]),
        ("tnr", [0, 1, 1 / 2, 0], [1, 1, 1, 0]),
        ("fnr", [1 / 2, 0, 0, 0], [1, 1, 0, 0]),
        ("error_rate", [2 / 3, 0, 1 / 2, 0], [1, 1, 1, 0]),
        ("accuracy", [1 / 3, 1, 1 / 2, 0], [1, 1, 1, 0]),
        ("precision", [1 / 2, 1, 0, 0], [1, 1, 1, 0]),
        ("npv", [0, 1, 1, 0], [1, 1, 1, 0]),
        ("base_rate", [2 / 3, 1 / 3, 0, 0], [1, 1, 1, 0]),
    ],
)
def test_hand_computed_rates(rate, values, defined):
    rv = compute_rate(_hand_stats(), rate)
    torch.testing.assert_close(rv.value, torch.tensor(values, dtype=torch.float64))
    assert rv.defined.tolist() == [bool(d) for d in defined]
    assert not rv.value.isnan().any() and not rv.proxy_upper.isnan().any()


def test_overall_rates_and_mean_loss():
    stats = group_stats(
        SCORES, labels=LABELS, groups=GROUPS, num_groups=4, example_losses=torch.arange(8.0, dtype=torch.float64)
    )
    overall = stats.overall()
    # pooled cells: tn 3, fp 2, fn 1, tp 2
    torch.testing.assert_close(compute_rate(overall, "tpr").value, torch.tensor([2 / 3], dtype=torch.float64))
    torch.testing.assert_close(compute_rate(overall, "selection_rate").value, torch.tensor([0.5], dtype=torch.float64))
    torch.testing.assert_close(
        compute_rate(stats, "mean_loss").value, torch.tensor([1.0, 4.0, 6.5, 0.0], dtype=torch.float64)
    )


def test_undefined_rate_has_finite_zero_gradient():
    scores = SCORES.clone().requires_grad_()
    stats = group_stats(scores, labels=LABELS, groups=GROUPS, num_groups=4, proxy="hinge")
    rv = compute_rate(stats, "tpr")
    (rv.proxy_upper.sum() + rv.proxy_lower.sum()).backward()
    assert torch.isfinite(scores.grad).all()
    assert scores.grad[GROUPS == 2].abs().sum() == 0  # group 2's TPR is undefined: it pushes nothing


def test_aliases_and_unknown_names():
    assert canonical_rate_name("TPR") == "true_positive_rate" and canonical_rate_name("recall") == "true_positive_rate"
    with pytest.raises(ValueError, match="unknown rate 'tpx'"):
        compute_rate(_hand_stats(), "tpx")
    assert set(rate_table(_hand_stats())) == set(RATES)


def _random_data(seed: int, n: int = 400, num_groups: int = 5):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=n)
    labels = (rng.random(n) < 0.4).astype(int)
    groups = rng.integers(0, num_groups, n)
    weights = rng.integers(1, 4, n).astype(float)
    return scores, labels, groups, weights


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_sklearn_confusion_matrix_per_group(seed):
    scores, labels, groups, weights = _random_data(seed)
    stats = group_stats(
        torch.tensor(scores),
        labels=torch.tensor(labels),
        groups=torch.tensor(groups),
        num_groups=5,
        weights=torch.tensor(weights),
    )
    pred = (scores > 0).astype(int)
    for g in range(5):
        m = groups == g
        cm = confusion_matrix(labels[m], pred[m], labels=[0, 1], sample_weight=weights[m]).ravel()  # tn fp fn tp
        np.testing.assert_allclose(stats.table[g, :4].numpy(), cm)
        np.testing.assert_allclose(
            compute_rate(stats, "accuracy").value[g].item(),
            accuracy_score(labels[m], pred[m], sample_weight=weights[m]),
        )
        np.testing.assert_allclose(
            compute_rate(stats, "precision").value[g].item(),
            precision_score(labels[m], pred[m], sample_weight=weights[m], zero_division=0),
        )


@pytest.mark.parametrize("seed", [3, 4])
def test_matches_fairlearn_metricframe_with_weights(seed):
    scores, labels, groups, weights = _random_data(seed)
    stats = group_stats(
        torch.tensor(scores),
        labels=torch.tensor(labels),
        groups=torch.tensor(groups),
        num_groups=5,
        weights=torch.tensor(weights),
    )
    pred = (scores > 0).astype(int)
    frame = MetricFrame(
        metrics={"selection_rate": selection_rate, "tpr": true_positive_rate, "fpr": false_positive_rate},
        y_true=labels,
        y_pred=pred,
        sensitive_features=groups,
        sample_params={k: {"sample_weight": weights} for k in ("selection_rate", "tpr", "fpr")},
    )
    for name in ("selection_rate", "tpr", "fpr"):
        np.testing.assert_allclose(compute_rate(stats, name).value.numpy(), frame.by_group[name].to_numpy())
        np.testing.assert_allclose(compute_rate(stats.overall(), name).value.item(), frame.overall[name])


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(-4, 4, allow_nan=False), st.integers(0, 1), st.integers(0, 2)), min_size=1, max_size=30
    ),
    st.sampled_from(["hinge", "softplus", "hard"]),
)
def test_upper_bounding_proxies_bracket_the_hard_rate(rows, proxy):
    s, y, g = (torch.tensor(c) for c in zip(*rows))
    stats = group_stats(s.double(), labels=y, groups=g, num_groups=3, proxy=proxy)
    for name in ("selection_rate", "tpr", "fpr", "tnr", "fnr", "error_rate", "accuracy"):
        rv = compute_rate(stats, name)
        d = rv.defined
        assert (rv.proxy_lower[d] <= rv.value[d] + 1e-12).all() and (rv.value[d] <= rv.proxy_upper[d] + 1e-12).all()


def test_sigmoid_proxy_is_normalized_so_bounds_coincide():
    stats = group_stats(SCORES, labels=LABELS, groups=GROUPS, num_groups=4, proxy="sigmoid")
    rv = compute_rate(stats, "tpr")
    torch.testing.assert_close(rv.proxy_upper, rv.proxy_lower)
