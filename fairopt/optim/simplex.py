r"""Column-stochastic matrices and distributions: the numerical kernels of the proxy-Lagrangian λ-player.

Every function acts on the columns of an ``(n, k)`` tensor (a distribution is an ``(n, 1)`` column) and takes a
``(n,)`` bool ``mask`` of the rows that may change: rows outside the mask keep their values, and the masked rows of
each column are renormalized to the mass the column has left (``1 − Σ`` of the frozen entries). This is how an
undefined constraint (a rate with a zero denominator) is kept from moving the λ-player's state.

Every function also takes a stack of them, ``(..., n, k)`` with ``(..., n)`` masks (``(..., n)`` distributions for
:func:`stationary_distribution`): reductions run over ``dim=-2``, so one call updates the λ-players of all the members
of a sweep (:class:`~fairopt.sweep.SweepTrainer`) without ``vmap``. An unbatched input takes the same ops as
before; a stack gives each matrix's result bit for bit, except the power method of :func:`stationary_distribution`
(batched products may sum in another order: equal to rounding).

No function synchronizes with the host; all are deterministic for a given input.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "TREE_STATES",
    "additive_step",
    "multiplicative_step",
    "project_simplex",
    "stationary_distribution",
    "tree_weights",
]

# Chains of up to this many states take the spanning-tree weights of tree_weights instead of a linear solve.
TREE_STATES = 3


def project_simplex(values: Tensor, mass: Tensor | float = 1.0, mask: Tensor | None = None) -> Tensor:
    r"""Euclidean projection of each column onto ``{x >= 0, Σ_i x_i = mass}`` (over the rows in ``mask``).

    Sort-based algorithm of Duchi, Shalev-Shwartz, Singer, Chandra, "Efficient Projections onto the l1-Ball for
    Learning in High Dimensions", ICML 2008, Figure 1, vectorized over columns. Rows outside ``mask`` are set to
    ``-inf`` so they sort last and never enter the support (their comparisons are NaN, i.e. False); they get 0 and
    the caller restores them. The result is rescaled to the exact ``mass`` against rounding.

    Args:
        values: ``(..., n, k)`` finite floating.
        mass: scalar or ``(..., k)`` target sum per column (>= 0).
        mask: optional ``(..., n)`` bool rows to project (at least one True per matrix).

    Returns:
        ``(..., n, k)`` projected columns (0 at rows outside ``mask``).
    """
    n = values.shape[-2]
    mass_t = torch.as_tensor(mass, dtype=values.dtype, device=values.device)
    mass_t = mass_t.expand(*values.shape[:-2], values.shape[-1])
    if mask is not None:
        values = torch.where(mask[..., None], values, -math.inf)
    ordered = torch.sort(values, dim=-2, descending=True).values
    excess = ordered.cumsum(dim=-2) - mass_t[..., None, :]
    k = torch.arange(1, n + 1, dtype=values.dtype, device=values.device)[:, None]
    in_support = ordered - excess / k > 0
    rho = (in_support * k).amax(dim=-2, keepdim=True).clamp(min=1)  # largest index in the support (1-based)
    theta = excess.gather(-2, (rho - 1).long()) / rho
    projected = (values - theta).clamp(min=0)
    total = projected.sum(dim=-2)
    return projected * torch.where(total > 0, mass_t / total, torch.zeros_like(total))[..., None, :]


def multiplicative_step(log_state: Tensor, gradient: Tensor, lr: float, mask: Tensor, floor: float) -> Tensor:
    r"""Exponentiated-gradient (Hedge) ascent on the columns of a log-stochastic matrix, in log space.

    .. math::
        M_{ij} \leftarrow \frac{M_{ij}\, e^{η G_{ij}}}{\sum_{l} M_{lj}\, e^{η G_{lj}}}
        \quad\text{then}\quad M_{ij} \leftarrow (1-γ) M_{ij} + γ\, \frac{s_j}{|D|},

    over the masked rows ``D``, whose columns sum to ``s_j`` (the mass left by the frozen rows). The mixing with
    ``γ = floor`` keeps every entry ``>= γ s_j/|D|`` (like TFCO's ``minimum_multiplier_radius``), so ``M`` stays
    positive and its stationary distribution unique (Cotter, Jiang, Sridharan, ALT 2019, Algorithm 2).

    Args:
        log_state: ``(..., n, k)`` element-wise log of a column-stochastic matrix (or a stack of them).
        gradient: ``(..., n, k)`` ascent direction ``G`` (``Δ λᵀ`` for swap regret, ``Δ`` for external regret).
        lr: step size η > 0. mask: ``(..., n)`` bool rows that move. floor: γ in [0, 1).

    Returns:
        ``(..., n, k)`` the new log-state; frozen rows unchanged, every column sums to 1 (to rounding).
    """
    frozen = ~mask[..., None]
    # scalar branches of torch.where: the same values as zeros_like/full_like, one tensor operation fewer each
    free_mass = 1.0 - torch.where(frozen, log_state.exp(), 0.0).sum(dim=-2, keepdim=True)
    log_free = torch.log(free_mass.clamp(min=torch.finfo(log_state.dtype).tiny))
    logits = torch.where(frozen, -math.inf, log_state + lr * gradient)
    # Shift by the column maximum first and normalize the O(1) values: logsumexp would add the (possibly huge)
    # maximum back and lose the low digits of every entry.
    shifted = logits - logits.amax(dim=-2, keepdim=True)
    new = shifted - torch.log(torch.exp(shifted).sum(dim=-2, keepdim=True)) + log_free
    if floor > 0:
        free_rows = mask.sum(dim=-1, keepdim=True).to(log_state.dtype)[..., None]  # |D| per matrix
        log_share = log_free - torch.log(free_rows) + math.log(floor)
        new = torch.logaddexp(new + math.log1p(-floor), log_share.expand_as(new))
    return torch.where(frozen, log_state, new)


def additive_step(state: Tensor, gradient: Tensor, lr: float, mask: Tensor) -> Tensor:
    r"""Projected gradient ascent on the columns of a column-stochastic matrix:
    ``M ← Π(M + η G)``, each column's masked rows projected onto the simplex of their free mass
    (Euclidean projection, :func:`project_simplex`; TFCO's "additive" update).

    Args:
        state: ``(..., n, k)`` column-stochastic. gradient: ``(..., n, k)``. lr: η > 0. mask: ``(..., n)`` bool.
    """
    frozen = ~mask[..., None]
    free_mass = (1.0 - torch.where(frozen, state, torch.zeros_like(state)).sum(dim=-2)).clamp(min=0)
    projected = project_simplex(state + lr * gradient, free_mass, mask)
    return torch.where(frozen, state, projected)


def stationary_distribution(
    matrix: Tensor,
    init: Tensor | None = None,
    squarings: int = 24,
    *,
    eye: Tensor | None = None,
    ones: Tensor | None = None,
) -> Tensor:
    r"""A stationary distribution ``λ = M λ`` of a column-stochastic ``(n, n)`` matrix ``M``.

    Two ways, both without host synchronization and bitwise reproducible:

    * ``init=None``: solve ``(I − M + 1 1ᵀ) λ = 1`` (one ``n × n`` solve). Exact when the stationary distribution
      is unique (e.g. every entry of ``M`` positive, as with multiplicative updates and a floor): summing the
      equations gives ``1ᵀλ = 1``, and then ``(I − M) λ = 0``. For ``n <= 3`` (:data:`TREE_STATES`: one or two
      constraint entries, e.g. equalized odds as the range of TPR and of FPR, whatever the number of groups) the
      same distribution by the Markov chain tree theorem (:func:`tree_weights`) instead: sums of products of
      entries, with no cancellation and no solve (elementwise operations, the same numbers on the host). It is
      the more accurate of the two: on 3-state chains with entries down to 1e-6, against exact rational arithmetic,
      4e-16 relative error against the solve's 5e-11.
    * ``init`` given: repeated squaring of the lazy chain ``P = (M + I)/2`` (same stationary distributions,
      aperiodic), ``λ = P^{2^s} init`` with ``s = squarings``; columns are renormalized after each product. Use it
      when ``M`` may be reducible (additive updates): the result is the limit reached from ``init`` (pass the
      previous λ for continuity). TFCO uses the power method for the same eigenvector.

    Args:
        matrix: ``(..., n, n)`` column-stochastic (or a stack of them). init: optional ``(..., n)`` distribution.
        squarings: see above.
        eye, ones: optional constants a caller that solves every step keeps (``torch.eye(n)`` and, for ``init=None``,
            ones of shape ``matrix.shape[:-1]``, in the matrix's dtype and device): the same result, two tensor
            operations fewer.

    Returns:
        ``(..., n)`` non-negative, summing to 1.
    """
    n = matrix.shape[-1]
    if init is None and 1 <= n <= TREE_STATES:
        lam = torch.stack(tree_weights(lambda i, j: matrix[..., i, j], n), dim=-1)
    elif init is None:
        if eye is None:
            eye = torch.eye(n, dtype=matrix.dtype, device=matrix.device)
        # solve_ex: no singularity check, which would synchronize with the host on CUDA (the system is regular here).
        if ones is None:
            ones = torch.ones(matrix.shape[:-1], dtype=matrix.dtype, device=matrix.device)
        lam = torch.linalg.solve_ex(eye - matrix + 1.0, ones).result
    else:
        if eye is None:
            eye = torch.eye(n, dtype=matrix.dtype, device=matrix.device)
        power = 0.5 * (matrix + eye)
        for _ in range(squarings):
            power = power @ power
            power = power / power.sum(dim=-2, keepdim=True)
        lam = power @ init if init.dim() == 1 else (power @ init[..., None])[..., 0]
    lam = lam.clamp(min=0)
    return lam / lam.sum(dim=-1, keepdim=True)


def tree_weights(entry: Callable[[int, int], Any], n: int) -> list[Any]:
    r"""Unnormalized stationary weights of a column-stochastic ``n × n`` chain, ``n <= 3``, by the Markov chain tree
    theorem (Leighton and Rivest, "Estimating a probability using finite memory", IEEE Trans. Inf. Theory 32(6),
    1986; Anantharam and Tsoucas, Stat. Probab. Lett. 8, 1989): the weight of state ``i`` is the sum, over the
    spanning trees directed to ``i``, of the products of their transition probabilities ``M[k, j]`` (edge
    ``j -> k``). For ``n = 2``: ``(M[0, 1], M[1, 0])``. For ``n = 3``:
    :math:`w_0 = M_{01} (M_{02} + M_{12}) + M_{02} M_{21}`, and the same with the states relabelled.

    Sums of products of non-negative entries, so no cancellation; positive entries give positive weights. Written
    once for tensors and scalars: ``entry(i, j)`` returns ``M[..., i, j]`` (a tensor: a stack of matrices) or one
    float (NumPy or Python scalars: the host path of :class:`~fairopt.optim.ProxyLagrangianPlayer`), and the same
    IEEE operations in the same order give the same numbers.

    Returns:
        ``n`` weights (tensors of the stack's shape, or scalars): :func:`stationary_distribution` normalizes them.

    Raises:
        ValueError: ``n`` outside ``1..3``.
    """
    if n == 1:
        return [entry(0, 0)]
    if n == 2:
        return [entry(0, 1), entry(1, 0)]
    if n != 3:
        raise ValueError(f"tree_weights covers chains of 1 to {TREE_STATES} states, got {n}")
    m01, m02, m10, m12, m20, m21 = (entry(i, j) for i, j in ((0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)))
    return [m01 * (m02 + m12) + m02 * m21, m10 * (m12 + m02) + m12 * m20, m20 * (m21 + m01) + m21 * m10]
