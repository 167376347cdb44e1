"""Choosing the final model: best iterate, shrinking LP, iterate records, the stochastic classifier."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.stats import kstest
from torch import nn

from fairopt.optim import IterateRecords, StochasticClassifier, best_distribution, best_iterate, example_uniforms
from tests.optim_data import single_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")


def vertex_optimum(c: np.ndarray, a_ub: np.ndarray, b_ub: np.ndarray, free: int = 0) -> tuple[float, np.ndarray]:
    """min c·z s.t. a_ub z <= b_ub, z[:n] >= 0 and sum(z[:n]) = 1 (z[n:] free), by enumerating every vertex.

    An independent reference for small LPs: a vertex has as many active, linearly independent constraints as
    variables; the simplex equality is always active.
    """
    n = c.size - free
    rows = [(a_ub[i], b_ub[i]) for i in range(a_ub.shape[0])]
    rows += [(-np.eye(c.size)[j], 0.0) for j in range(n)]
    equality = (np.r_[np.ones(n), np.zeros(free)], 1.0)
    best, best_z = np.inf, None
    for active in itertools.combinations(range(len(rows)), c.size - 1):
        a = np.array([equality[0]] + [rows[i][0] for i in active])
        b = np.array([equality[1]] + [rows[i][1] for i in active])
        if abs(np.linalg.det(a)) < 1e-12:
            continue
        z = np.linalg.solve(a, b)
        feasible = all(r @ z <= v + 1e-9 for r, v in rows)
        if feasible and c @ z < best - 1e-12:
            best, best_z = c @ z, z
    return best, best_z


def random_table(seed: int, t: int = 6, m: int = 2) -> tuple[np.ndarray, np.ndarray]:
    gen = np.random.default_rng(seed)
    return gen.uniform(0.1, 0.5, t), gen.uniform(-0.3, 0.3, (t, m))


# shrinking LP ----------------------------------------------------------------------------------------------------
def test_shrinking_lp_on_a_hand_made_table():
    # candidate 0 is best but violates constraint 0; 1 and 2 are feasible but worse; mixing 0 with 3 is optimal.
    objectives = np.array([0.10, 0.30, 0.25, 0.20])
    violations = np.array([[0.20, -0.1], [-0.10, -0.1], [-0.05, 0.0], [-0.20, -0.2]])
    p = best_distribution(objectives, violations)
    np.testing.assert_allclose(p, [0.5, 0.0, 0.0, 0.5], atol=1e-9)
    assert best_iterate(objectives, violations) == 3


@pytest.mark.parametrize("seed", range(12))
def test_shrinking_lp_is_feasible_optimal_and_sparse(seed):
    objectives, violations = random_table(seed)
    t, m = violations.shape
    p = best_distribution(objectives, violations)
    assert p.shape == (t,) and (p >= 0).all() and p.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.count_nonzero(p) <= m + 1
    reference, _ = vertex_optimum(objectives, violations.T, np.zeros(m))
    if np.isfinite(reference):  # feasible table
        assert (violations.T @ p <= 1e-8).all()
        assert objectives @ p == pytest.approx(reference, abs=1e-8)
    else:  # infeasible: the smallest achievable worst expected violation, found by bisection
        achieved = (violations.T @ p).max()
        smallest, _ = vertex_optimum(np.r_[np.zeros(t), 1.0], np.c_[violations.T, -np.ones(m)], np.zeros(m), free=1)
        assert smallest > 0 and achieved == pytest.approx(smallest, abs=2e-6)
        reference, _ = vertex_optimum(objectives, violations.T, np.full(m, achieved))
        assert objectives @ p == pytest.approx(reference, abs=1e-7)


def test_an_infeasible_table_returns_the_least_violating_mixture():
    objectives = np.array([0.1, 0.2, 0.3])
    violations = np.array([[0.3, -0.1], [-0.1, 0.3], [0.25, 0.25]])  # every candidate violates something
    p = best_distribution(objectives, violations, tolerance=1e-9)
    np.testing.assert_allclose(p, [0.5, 0.5, 0.0], atol=1e-6)  # worst expected violation 0.1
    assert (violations.T @ p).max() == pytest.approx(0.1, abs=1e-6)


def test_selection_input_checks():
    with pytest.raises(ValueError, match="shape"):
        best_distribution(np.zeros(3), np.zeros((2, 1)))
    with pytest.raises(ValueError, match="finite"):
        best_iterate(np.array([0.1, np.nan]), np.zeros((2, 1)))
    with pytest.raises(ValueError, match="tolerance"):
        best_distribution(np.zeros(2), np.zeros((2, 1)), tolerance=0.0)


# best iterate -------------------------------------------------------------------------------------------------------
def test_best_iterate_rank_heuristic():
    objectives = np.array([0.30, 0.10, 0.20, 0.15, 0.12])
    violations = np.array([[-0.1], [0.30], [-0.2], [0.01], [0.02]])
    # violation ranks (feasible tie at 1): [1, 5, 1, 3, 4]; objective ranks: [5, 1, 4, 3, 2]; max: [5, 5, 4, 3, 4]
    assert best_iterate(objectives, violations) == 3
    assert best_iterate(objectives, violations, rank_objectives=False) == 2  # feasible ones tie; lower objective
    all_feasible = np.array([[-0.1], [-0.2], [-0.3], [-0.1], [-0.5]])
    assert best_iterate(objectives, all_feasible) == 1
    several = np.array([[-0.1, 0.2], [0.3, -0.1], [-0.2, -0.1], [0.01, 0.0], [0.0, 0.02]])
    # worst entries [0.2, 0.3, 0, 0.01, 0.02] rank [4, 5, 1, 2, 3]; max with objective ranks [5, 5, 4, 3, 3]; tie → 0.12
    assert best_iterate(objectives, several) == 4


# records ----------------------------------------------------------------------------------------------------------
def linear_model(weight: float) -> nn.Module:
    model = nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(weight)
        model.bias.zero_()
    return model


def test_records_select_export_and_round_trip():
    records = IterateRecords()
    table = [(0.10, [0.20, -0.1]), (0.30, [-0.10, -0.1]), (0.25, [-0.05, 0.0]), (0.20, [-0.20, -0.2])]
    for step, (objective, violation) in enumerate(table):
        records.record(step * 10, objective, torch.tensor(violation), model=linear_model(float(step)))
    assert len(records) == 4 and records.values().shape == (4, 2)
    assert records.best_index() == 3
    np.testing.assert_allclose(records.best_distribution(), [0.5, 0.0, 0.0, 0.5], atol=1e-9)
    target = linear_model(-1.0)
    assert records.export_best(target) == 3 and target.weight.item() == 3.0

    clone = IterateRecords()
    clone.load_state_dict(records.state_dict())
    assert (
        clone.best_index() == 3
        and clone[2].step == 20
        and torch.equal(clone[2].state["weight"], records[2].state["weight"])
    )

    with pytest.raises(ValueError, match="m=2"):
        records.record(50, 0.1, torch.zeros(3), model=target)
    with pytest.raises(ValueError, match="model="):
        records.record(50, 0.1, torch.zeros(2))
    with pytest.raises(ValueError, match="no iterates"):
        IterateRecords().best_index()
    numbers_only = IterateRecords(keep_states=False)
    numbers_only.record(0, 0.2, torch.zeros(1))
    with pytest.raises(ValueError, match="no model state"):
        numbers_only.export_best(target)


def test_records_build_the_stochastic_classifier_over_the_lp_support():
    records = IterateRecords()
    table = [(0.10, [0.20, -0.1]), (0.30, [-0.10, -0.1]), (0.25, [-0.05, 0.0]), (0.20, [-0.20, -0.2])]
    for step, (objective, violation) in enumerate(table):
        records.record(step, objective, torch.tensor(violation), model=linear_model(1.0 if step == 0 else -1.0))
    classifier = records.stochastic_classifier(linear_model(0.0), seed=3)
    assert classifier.num_candidates == 2
    x = torch.ones(4000, 1)
    ids = torch.arange(4000)
    scores = classifier(x, ids).squeeze(-1)
    assert set(scores.unique().tolist()) == {-1.0, 1.0}
    assert (scores > 0).float().mean().item() == pytest.approx(0.5, abs=0.03)
    torch.testing.assert_close(classifier.positive_probability(x[:3]), torch.full((3,), 0.5, dtype=torch.float64))


# the stochastic classifier -------------------------------------------------------------------------------------------
def _fmix32(h: int) -> int:
    mask = 0xFFFFFFFF
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & mask
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & mask
    return h ^ (h >> 16)


def _reference_uniform(example_id: int, seed: int) -> float:
    key = _fmix32((seed ^ 0x9E3779B9) & 0xFFFFFFFF)
    h = _fmix32((example_id >> 32) ^ key)
    h = _fmix32((example_id & 0xFFFFFFFF) ^ h)
    return (h + 0.5) / 2**32


def test_example_uniforms_are_a_reproducible_uniform_hash():
    ids = torch.arange(50_000)
    u = example_uniforms(ids, seed=0)
    assert u.dtype == torch.float64 and ((u > 0) & (u < 1)).all()
    assert kstest(u.numpy(), "uniform").pvalue > 1e-3
    torch.testing.assert_close(example_uniforms(ids.flip(0), seed=0), u.flip(0), rtol=0, atol=0)
    assert not torch.equal(example_uniforms(ids, seed=1), u)
    big = torch.tensor([2**40 + 5, 2**40 + 5, 5])
    hashed = example_uniforms(big, seed=0)
    assert hashed[0] == hashed[1] and hashed[0] != hashed[2]
    # exactly MurmurHash3's finalizer computed with Python integers (the int64 tensor arithmetic must not overflow)
    gen = np.random.default_rng(0)
    sample = [0, 1, 2**32 - 1, 2**32, 2**62 + 12345, *gen.integers(0, 2**63 - 1, 500).tolist()]
    for seed in (0, 12345, 2**31 + 7):
        reference = [_reference_uniform(i, seed) for i in sample]
        assert example_uniforms(torch.tensor(sample), seed=seed).tolist() == reference
    # a fixed function across versions and devices (regression guard for saved randomized models)
    assert example_uniforms(torch.tensor([0, 1, 2])).tolist() == [
        0.3913450763793662,
        0.9815961279673502,
        0.4996607267530635,
    ]
    with pytest.raises(ValueError, match=">= 0"):
        example_uniforms(torch.tensor([-1]))
    with pytest.raises(TypeError, match="integer"):
        example_uniforms(torch.tensor([0.5]))


def test_stochastic_classifier_is_per_example_and_batch_independent():
    states = [linear_model(w).state_dict() for w in (1.0, 2.0, 3.0)]
    classifier = StochasticClassifier(linear_model(0.0), states, [0.2, 0.0, 0.8], seed=7)
    assert classifier.num_candidates == 2  # zero-weight candidates are dropped
    x = torch.ones(10_000, 1)
    ids = torch.arange(10_000)
    full = classifier(x, ids)
    frequency = (full.squeeze(-1) == 3.0).float().mean().item()
    assert frequency == pytest.approx(0.8, abs=0.015)
    permutation = torch.randperm(10_000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(classifier(x[permutation], ids[permutation]), full[permutation])
    torch.testing.assert_close(classifier(x[:7], ids[:7]), full[:7])
    clone = StochasticClassifier(linear_model(0.0), [linear_model(0.0).state_dict()] * 2, [0.5, 0.5], seed=0)
    clone.load_state_dict(classifier.state_dict())
    assert clone.seed == 7
    torch.testing.assert_close(clone(x[:50], ids[:50]), full[:50])
    with pytest.raises(TypeError, match=r"call it as final\(x, example_ids\).*positive_probability\(x\)"):
        classifier(x)  # called like the model it wraps
    with pytest.raises(ValueError, match="example_ids has 3 entries but x has 10000 rows"):
        classifier(x, ids[:3])
    with pytest.raises(ValueError, match="one probability per state"):
        StochasticClassifier(linear_model(0.0), states, [1.0, 0.0])
    with pytest.raises(ValueError, match="not all 0"):
        StochasticClassifier(linear_model(0.0), states, [0.0, 0.0, 0.0])
