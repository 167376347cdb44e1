"""Interval math of fairopt.validation: agreement with references, published values, and coverage by simulation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

import fairopt as fo
from fairopt.stats import GroupStats
from fairopt.validation import (
    ReportOptions,
    SecondMoments,
    assess_constraint,
    clopper_pearson_interval,
    effective_counts,
    mover_interval,
    newcombe_interval,
    rate_estimates,
    wilson_interval,
)
from tests.validation_data import binomial_cells, stats_from_cells

# ---- agreement with references ------------------------------------------------------------------------------


@pytest.mark.parametrize(("k", "n"), [(0, 10), (1, 10), (5, 10), (10, 10), (81, 263), (3, 1000)])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_wilson_and_clopper_pearson_match_scipy(k, n, confidence):
    ref = sps.binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    lo, hi = wilson_interval(k, n, confidence)
    assert (float(lo), float(hi)) == pytest.approx((ref.low, ref.high), abs=1e-12)
    ref = sps.binomtest(k, n).proportion_ci(confidence_level=confidence, method="exact")
    lo, hi = clopper_pearson_interval(k, n, confidence)
    assert (float(lo), float(hi)) == pytest.approx((ref.low, ref.high), abs=1e-10)


@pytest.mark.parametrize(
    ("counts", "expected"),
    [  # Newcombe (1998), Table II, method 10
        ((56, 70, 48, 80), (0.0524, 0.3339)),
        ((9, 10, 3, 10), (0.1705, 0.8090)),
        ((5, 56, 0, 29), (-0.0381, 0.1926)),
        ((0, 10, 0, 20), (-0.1611, 0.2775)),
    ],
)
def test_newcombe_reproduces_published_values(counts, expected):
    lo, hi = newcombe_interval(*counts, confidence=0.95)
    assert (round(float(lo), 4), round(float(hi), 4)) == expected


def test_mover_reduces_to_the_term_interval_and_to_newcombe():
    lo, hi = (float(v) for v in wilson_interval(30, 80))
    assert mover_interval([30 / 80], [lo], [hi], [1.0]) == pytest.approx((lo, hi))
    # a negative coefficient flips the interval; a constant shifts it
    assert mover_interval([30 / 80], [lo], [hi], [-1.0], 1.0) == pytest.approx((1 - hi, 1 - lo))
    l1, u1 = wilson_interval(56, 70)
    l2, u2 = wilson_interval(48, 80)
    assert mover_interval([0.8, 0.6], [l1, l2], [u1, u2], [1.0, -1.0]) == pytest.approx(
        newcombe_interval(56, 70, 48, 80)
    )


def test_zero_trials_give_nan_and_bad_counts_raise():
    assert np.isnan(wilson_interval(0, 0)).all() and np.isnan(clopper_pearson_interval(0, 0)).all()
    with pytest.raises(ValueError, match="successes <= trials"):
        wilson_interval(5, 3)
    with pytest.raises(ValueError, match="confidence"):
        wilson_interval(1, 3, confidence=95)


def test_effective_counts_are_exact_without_weights_and_scale_free():
    x, n = effective_counts(30.0, 80.0, 30.0, 80.0)
    assert (float(x), float(n)) == pytest.approx((30.0, 80.0))
    rng = np.random.default_rng(0)
    w = rng.uniform(0.1, 3.0, 200)
    y = rng.random(200) < 0.3
    a = effective_counts(w[y].sum(), w.sum(), (w[y] ** 2).sum(), (w**2).sum())
    b = effective_counts(1e3 * w[y].sum(), 1e3 * w.sum(), 1e6 * (w[y] ** 2).sum(), 1e6 * (w**2).sum())
    assert np.allclose(a, b)
    assert 0 < float(a[1]) < 200  # unequal weights lose information
    # p in {0, 1}: Kish's effective size
    x, n = effective_counts(0.0, w.sum(), 0.0, (w**2).sum())
    assert float(x) == 0.0 and float(n) == pytest.approx(w.sum() ** 2 / (w**2).sum())


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 400).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))),
    st.integers(0, 400).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))),
    st.sampled_from([0.8, 0.9, 0.95, 0.99]),
)
def test_intervals_contain_the_estimate_and_stay_in_range(a, b, confidence):
    (x1, n1), (x2, n2) = a, b
    for fn in (wilson_interval, clopper_pearson_interval):
        lo, hi = fn(x1, n1, confidence)
        if n1 == 0:
            assert np.isnan(lo) and np.isnan(hi)
        else:
            assert 0.0 <= lo <= x1 / n1 + 1e-12 and x1 / n1 - 1e-12 <= hi <= 1.0
    if n1 and n2:
        lo, hi = newcombe_interval(x1, n1, x2, n2, confidence)
        d = x1 / n1 - x2 / n2
        assert -1.0 - 1e-12 <= lo <= d + 1e-12 and d - 1e-12 <= hi <= 1.0 + 1e-12


# ---- coverage: nominal 95% intervals cover the truth 93-97% of the time ------------------------------------


def _coverage(lo, hi, truth) -> float:
    return float(np.mean((lo <= truth) & (truth <= hi)))


def test_coverage_of_rate_and_difference_intervals():
    rng = np.random.default_rng(2024)
    sims = 20000
    p = rng.uniform(0.05, 0.95, sims)
    n = rng.integers(40, 400, sims)
    x = rng.binomial(n, p)
    assert 0.93 <= _coverage(*wilson_interval(x, n), p) <= 0.97
    assert 0.93 <= _coverage(*clopper_pearson_interval(x, n), p) <= 0.97
    p2 = rng.uniform(0.05, 0.95, sims)
    n2 = rng.integers(40, 400, sims)
    x2 = rng.binomial(n2, p2)
    assert 0.93 <= _coverage(*newcombe_interval(x, n, x2, n2), p - p2) <= 0.97


def test_weighted_rates_use_effective_counts():
    """Weighted proportions: the report's interval (effective counts) covers; Wilson on weighted sums does not.

    Each simulated dataset is one row of the table, so ``rate_estimates`` computes all intervals at once.
    """
    rng = np.random.default_rng(7)
    sims, n, p = 4000, 150, 0.3
    y = rng.random((sims, n)) < p
    w = rng.lognormal(0.0, 0.8, (sims, n))
    table = np.zeros((sims, 9))
    table[:, 0], table[:, 3] = (w * ~y).sum(1), (w * y).sum(1)  # negatives in tn, positives in tp
    moments = np.zeros((sims, 7))
    moments[:, 0], moments[:, 3], moments[:, 6] = (w**2 * ~y).sum(1), (w**2 * y).sum(1), n
    stats = GroupStats(torch.as_tensor(table))
    est = rate_estimates(stats, "base_rate", moments=SecondMoments(torch.as_tensor(moments)))
    assert 0.93 <= _coverage(est.lower, est.upper, p) <= 0.97
    naive = rate_estimates(GroupStats(torch.as_tensor(table * 10)), "base_rate")  # weights as if counts
    assert _coverage(naive.lower, naive.upper, p) < 0.7


@pytest.mark.parametrize("weighted", [False, True])
def test_coverage_of_the_mean_loss_interval(weighted):
    """Each simulated dataset is one row of the table, so rate_estimates computes all intervals at once."""
    rng = np.random.default_rng(12)
    sims, n = 4000, 300
    loss = rng.gamma(2.0, 0.5, (sims, n))  # skewed, mean 1.0
    w = rng.uniform(0.3, 3.0, (sims, n)) if weighted else np.ones((sims, n))
    table = np.zeros((sims, 9))
    table[:, 0], table[:, 8] = w.sum(1), (w * loss).sum(1)
    moments = np.zeros((sims, 7))  # all examples in the tn cell; columns as MOMENT_COLUMNS
    moments[:, 0], moments[:, 4], moments[:, 5] = (w**2).sum(1), (w**2 * loss).sum(1), (w**2 * loss**2).sum(1)
    moments[:, 6] = n
    est = rate_estimates(
        GroupStats(torch.as_tensor(table)), "mean_loss", moments=SecondMoments(torch.as_tensor(moments))
    )
    assert 0.93 <= _coverage(est.lower, est.upper, 1.0) <= 0.97


def _pipeline_coverage(constraint, cells, truth, options=None) -> float:
    hits = []
    for table in cells:
        entry = assess_constraint(constraint, stats_from_cells(table), options=options).entries[0]
        hits.append(entry.lower <= truth <= entry.upper)
    return float(np.mean(hits))


def test_pipeline_uses_newcombe_for_a_difference_of_group_rates():
    """The report's interval for tpr(1) - tpr(0) is exactly Newcombe's interval on the simulated tables."""
    rng = np.random.default_rng(3)
    cells = binomial_cells(rng, [300, 200], [0.4, 0.5], [0.7, 0.6], [0.2, 0.25], sims=20)
    for table in cells:
        entry = assess_constraint(fo.tpr(1) - fo.tpr(0) <= 0.0, stats_from_cells(table)).entries[0]
        lo, hi = newcombe_interval(table[1, 3], table[1, 2:].sum(), table[0, 3], table[0, 2:].sum())
        assert entry.method == "newcombe"
        assert (entry.lower, entry.upper) == pytest.approx((float(lo), float(hi)), abs=1e-12)


def test_pipeline_coverage_small():
    rng = np.random.default_rng(11)
    cells = binomial_cells(rng, [300, 200], [0.4, 0.5], [0.7, 0.6], [0.2, 0.25], sims=600)
    cov = _pipeline_coverage(fo.tpr(1) - fo.tpr(0) <= 0.0, cells, 0.6 - 0.7)
    assert 0.92 <= cov <= 0.98  # 600 simulations: +-1.8 points at 2 standard errors


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "constraint", "truth", "options"),
    [
        ("newcombe difference", fo.tpr(1) - fo.tpr(0) <= 0.0, -0.1, None),
        # group vs overall (MOVER over all groups): overall TPR = (0.7*120 + 0.6*100 + 0.8*60)/280 in expectation
        ("mover vs overall", fo.tpr(1) - fo.tpr() <= 0.0, 0.6 - (0.7 * 120 + 0.6 * 100 + 0.8 * 60) / 280, None),
        ("p%-rule form", 0.8 * fo.selection_rate(0) - fo.selection_rate(2) <= 0.0, None, None),
        (
            "bootstrap",
            fo.tpr(1) - fo.tpr(0) <= 0.0,
            -0.1,
            ReportOptions(constraint_method="bootstrap", n_resamples=1000),
        ),
    ],
)
def test_pipeline_coverage_full(name, constraint, truth, options):
    rng = np.random.default_rng(5)
    sizes, base, tpr, fpr = [300, 200, 120], [0.4, 0.5, 0.5], [0.7, 0.6, 0.8], [0.2, 0.25, 0.1]
    cells = binomial_cells(rng, sizes, base, tpr, fpr, sims=2000)
    if truth is None:  # selection rate = base * tpr + (1 - base) * fpr
        sel = [b * t + (1 - b) * f for b, t, f in zip(base, tpr, fpr)]
        truth = 0.8 * sel[0] - sel[2]
    cov = _pipeline_coverage(constraint, cells, truth, options)
    assert 0.93 <= cov <= 0.97, (name, cov)


@pytest.mark.slow
def test_extremum_intervals_are_valid_for_max_min():
    """max_min over 3 groups uses Bonferroni over the 3 pairs: conservative, so coverage >= 95%."""
    rng = np.random.default_rng(9)
    cells = binomial_cells(rng, [300, 200, 150], [0.4, 0.5, 0.5], [0.7, 0.6, 0.65], [0.2, 0.25, 0.2], sims=1500)
    cov = _pipeline_coverage(fo.EqualOpportunity(0.0), cells, 0.1)
    assert cov >= 0.95


def test_rate_estimates_of_a_table_match_the_interval_functions():
    table = stats_from_cells([[50, 10, 5, 35], [30, 30, 20, 20]])
    est = rate_estimates(table, "tpr", confidence=0.9, method="clopper-pearson")
    lo, hi = clopper_pearson_interval([35, 20], [40, 40], 0.9)
    assert np.allclose(est.lower, lo) and np.allclose(est.upper, hi)
    assert np.allclose(est.value, [35 / 40, 20 / 40]) and est.defined.all()
