"""fairopt.optim.simplex on stacks: a (P, n, k) call equals P separate (n, k) calls (bit for bit but the power
method, whose batched products round differently); hand-computed
cases for the multiplicative step and the stationary distribution."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fairopt.optim.simplex import (
    TREE_STATES,
    additive_step,
    multiplicative_step,
    project_simplex,
    stationary_distribution,
    tree_weights,
)

F64 = torch.float64
P, N = 5, 4


def stochastic(gen: torch.Generator, *shape: int) -> torch.Tensor:
    m = torch.rand(*shape, generator=gen, dtype=F64) + 0.05
    return m / m.sum(dim=-2, keepdim=True)


def masks(gen: torch.Generator) -> torch.Tensor:
    mask = torch.rand(P, N, generator=gen) < 0.7
    mask[:, 0] = True  # the objective's row always moves
    mask[1] = True
    return mask


@pytest.mark.parametrize("floor", [0.0, 1e-3])
def test_a_stack_of_multiplicative_steps_equals_each_alone(floor: float) -> None:
    gen = torch.Generator().manual_seed(0)
    log_state, gradient, mask = (
        stochastic(gen, P, N, N).log(),
        torch.randn(P, N, N, generator=gen, dtype=F64),
        masks(gen),
    )
    got = multiplicative_step(log_state, gradient, 0.3, mask, floor)
    for p in range(P):
        assert torch.equal(got[p], multiplicative_step(log_state[p], gradient[p], 0.3, mask[p], floor))
    torch.testing.assert_close(got.exp().sum(dim=-2), torch.ones(P, N, dtype=F64))


def test_a_stack_of_additive_steps_and_projections_equals_each_alone() -> None:
    gen = torch.Generator().manual_seed(1)
    state, gradient, mask = stochastic(gen, P, N, N), torch.randn(P, N, N, generator=gen, dtype=F64), masks(gen)
    got = additive_step(state, gradient, 0.3, mask)
    values = torch.randn(P, N, 3, generator=gen, dtype=F64)
    mass = torch.rand(P, 3, generator=gen, dtype=F64)
    projected = project_simplex(values, mass, mask)
    for p in range(P):
        assert torch.equal(got[p], additive_step(state[p], gradient[p], 0.3, mask[p]))
        assert torch.equal(projected[p], project_simplex(values[p], mass[p], mask[p]))
    torch.testing.assert_close(projected.sum(dim=-2), mass)


@pytest.mark.parametrize("n", [2, 3, N])  # the tree weights (up to 3 states) and the solve
def test_a_stack_of_stationary_distributions_equals_each_alone(n: int) -> None:
    gen = torch.Generator().manual_seed(2)
    matrix = stochastic(gen, P, n, n)
    init = stochastic(gen, P, n, 1)[..., 0]
    solved, powered = stationary_distribution(matrix), stationary_distribution(matrix, init=init)
    for p in range(P):
        assert torch.equal(solved[p], stationary_distribution(matrix[p]))
        # batched matrix products may sum in another order: equal to rounding, not bit for bit
        torch.testing.assert_close(powered[p], stationary_distribution(matrix[p], init=init[p]), rtol=1e-13, atol=1e-15)
    torch.testing.assert_close((matrix @ solved[..., None])[..., 0], solved)
    torch.testing.assert_close(powered, solved)


def test_hand_computed_cases() -> None:
    # [[0.9, 0.2], [0.1, 0.8]]: λ = (2/3, 1/3), since 0.1 · 2/3 = 0.2 · 1/3 (detailed balance)
    matrix = torch.tensor([[[0.9, 0.2], [0.1, 0.8]], [[0.5, 0.5], [0.5, 0.5]]], dtype=F64)
    torch.testing.assert_close(stationary_distribution(matrix), torch.tensor([[2 / 3, 1 / 3], [0.5, 0.5]], dtype=F64))
    # Hedge with η = ln 2 on uniform columns, the second row's gradient 1: weights 1 : 2 -> (1/3, 2/3)
    log_state = torch.full((2, 2, 2), math.log(0.5), dtype=F64)
    gradient = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=F64).expand(2, 2, 2)
    mask = torch.tensor([[True, True], [True, False]])  # the second matrix's second row is frozen
    got = multiplicative_step(log_state, gradient, math.log(2.0), mask, 0.0).exp()
    torch.testing.assert_close(got[0], torch.tensor([[1 / 3, 1 / 3], [2 / 3, 2 / 3]], dtype=F64))
    torch.testing.assert_close(got[1], torch.full((2, 2), 0.5, dtype=F64))  # frozen row kept; the free one has 0.5


@pytest.mark.parametrize("n", [1, 2, 3])
def test_tree_weights_give_the_solved_distribution_and_the_same_numbers_on_scalars(n: int) -> None:
    """Chains of up to 3 states take the Markov chain tree theorem instead of the solve: the same distribution to
    rounding (the solve still covers n > 3), the same numbers bit for bit on a stack, on NumPy scalars and on
    Python floats (the proxy-Lagrangian's host path), in float64 and float32."""
    assert TREE_STATES == 3
    gen = torch.Generator().manual_seed(5)
    matrix = stochastic(gen, P, n, n)
    eye, ones = torch.eye(n, dtype=F64), torch.ones(P, n, dtype=F64)
    solved = torch.linalg.solve(eye - matrix + 1.0, ones).clamp(min=0)
    solved = solved / solved.sum(dim=-1, keepdim=True)
    lam = stationary_distribution(matrix)
    torch.testing.assert_close(lam, solved, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close((matrix @ lam[..., None])[..., 0], lam, rtol=1e-13, atol=1e-15)
    for dtype in (torch.float64, torch.float32):
        typed = matrix.to(dtype)
        stack = torch.stack(tree_weights(lambda i, j, m=typed: m[..., i, j], n), dim=-1)
        assert stack.dtype == dtype
        for p in range(P):
            array = typed[p].numpy()
            scalars = tree_weights(lambda i, j, a=array: a[i, j], n)
            assert all(w.dtype == array.dtype for w in scalars)  # NumPy scalars compute in the matrix's dtype
            assert np.array_equal(np.array(scalars), stack[p].numpy())
            if dtype == torch.float64:  # Python floats (the host path's float64 route): the same IEEE operations
                rows = array.tolist()
                floats = tree_weights(lambda i, j, r=rows: r[i][j], n)
                assert all(type(w) is float for w in floats) and np.array_equal(np.array(floats), stack[p].numpy())


def test_tree_weights_hand_computed() -> None:
    # state 0 -> 1; 1 -> 0 or 2 (1/2 each); 2 -> 0 (column j: where state j goes): π = (2, 2, 1) / 5, as
    # π0 = π1 / 2 + π2, π1 = π0, π2 = π1 / 2
    matrix = torch.tensor([[0.0, 0.5, 1.0], [1.0, 0.0, 0.0], [0.0, 0.5, 0.0]], dtype=F64)
    assert [float(w) for w in tree_weights(lambda i, j: matrix[i, j], 3)] == [1.0, 1.0, 0.5]
    assert stationary_distribution(matrix).tolist() == [0.4, 0.4, 0.2]
    assert stationary_distribution(torch.tensor([[0.9, 0.2], [0.1, 0.8]], dtype=F64)).tolist() == [2 / 3, 1 / 3]
    with pytest.raises(ValueError, match="1 to 3 states"):
        tree_weights(lambda i, j: 0.0, 4)
