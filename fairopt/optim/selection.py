r"""Choosing the final model from recorded iterates: the best single one, or the best distribution over them.

Given ``T`` candidates (iterates) with objective values ``f_t`` and constraint values ``g_{t,i}`` (hard rates,
measured on held-out data; ``g <= 0`` feasible):

* :func:`best_iterate`: the rank heuristic of Cotter, Jiang, Sridharan, ALT 2019, Section 5.2 (TFCO's
  ``find_best_candidate_index``): rank candidates by objective and by worst violation ``max(0, max_i g_{t,i})``,
  score each by the larger of its two ranks, take the smallest score, break ties by objective.
* :func:`best_distribution`: the "shrinking" linear program of the same paper, Lemma 3:

  .. math::
      \min_{p \in Δ^T} \sum_t p_t f_t \quad\text{s.t.}\quad \sum_t p_t g_{t,i} \le ε \quad (i = 1..m),

  with ``ε = 0`` when feasible, else the smallest achievable ``ε`` found by bisection. A vertex solution has at most
  ``m + 1`` non-zero probabilities (``m`` inequalities plus the simplex equality), so the randomized model mixes at most
  ``m + 1`` iterates. Solved with ``scipy.optimize.linprog(method="highs")``.

These functions read finite numbers only: an undefined entry has no value to read. Records with undefined entries
are handled by :class:`~fairopt.optim.IterateRecords` (skipped, never read as satisfied; see
:mod:`fairopt.optim.records`).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from fairopt._deprecation import renamed_kwargs

__all__ = ["best_distribution", "best_iterate", "is_feasible"]

# Probabilities below this are rounding noise from the LP solver; they are set to 0 (and the rest renormalized).
_WEIGHT_EPS = 1e-10


def _check_table(objectives: ArrayLike, values: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(objectives, dtype=np.float64)
    g = np.asarray(values, dtype=np.float64)
    if f.ndim != 1 or f.size == 0:
        raise ValueError(f"objectives must have shape (T,) with T >= 1, got {f.shape}")
    if g.ndim == 1 and f.size == g.size:
        g = g[:, None]
    if g.ndim != 2 or g.shape[0] != f.size:
        raise ValueError(f"values must have shape (T, m) = ({f.size}, m), got {g.shape}")
    if not (np.isfinite(f).all() and np.isfinite(g).all()):
        raise ValueError("objectives and constraint values must be finite")
    return f, g


@renamed_kwargs(violations="values")
def best_iterate(objectives: ArrayLike, values: ArrayLike, *, rank_objectives: bool = True) -> int:
    """Index of the best single candidate by the rank heuristic (Cotter, Jiang, Sridharan, ALT 2019, Sec. 5.2).

    Args:
        objectives: ``(T,)`` objective values (lower is better), e.g. held-out error rates.
        values: ``(T, m)`` signed hard constraint values ``g`` (``<= 0`` satisfied); ``violations=`` is its
            deprecated name.
        rank_objectives: rank the objective too (default); if False only the violation is ranked and the objective
            breaks ties.

    Returns:
        The index in ``[0, T)``.

    Raises:
        ValueError: inconsistent shapes, empty input, or non-finite values.
    """
    from scipy.stats import rankdata  # scipy is imported when first needed: `import fairopt` stays light

    f, g = _check_table(objectives, values)
    worst = np.maximum(0.0, g.max(axis=1)) if g.shape[1] else np.zeros(f.size)
    ranks = rankdata(worst, method="min")  # every feasible candidate ties at rank 1
    if rank_objectives:
        ranks = np.maximum(ranks, rankdata(f, method="min"))
    best = ranks.min()
    tied = np.flatnonzero(ranks == best)
    return int(tied[np.argmin(f[tied])])


def _solve(f: np.ndarray, g: np.ndarray, bound: float, method: str = "highs") -> np.ndarray | None:
    """Probabilities minimizing ``f·p`` s.t. ``gᵀp <= bound``, ``p`` on the simplex; None when infeasible."""
    from scipy.optimize import linprog

    t = f.size
    result = linprog(
        f,
        A_ub=g.T if g.shape[1] else None,
        b_ub=np.full(g.shape[1], bound) if g.shape[1] else None,
        A_eq=np.ones((1, t)),
        b_eq=np.ones(1),
        bounds=(0.0, None),
        method=method,
    )
    if result.status != 0:
        return None
    p = np.where(result.x > _WEIGHT_EPS, result.x, 0.0)
    return p / p.sum()


@renamed_kwargs(violations="values")
def is_feasible(objectives: ArrayLike, values: ArrayLike) -> bool:
    """Whether some distribution over the candidates meets every constraint in expectation (``Σ_t p_t g_t <= 0``).

    Args:
        objectives: ``(T,)`` objective values. values: ``(T, m)`` signed hard constraint values (``violations=``
            is its deprecated name).

    Raises:
        ValueError: bad shapes or values.
    """
    f, g = _check_table(objectives, values)
    return _solve(f, g, 0.0) is not None


@renamed_kwargs(violations="values")
def best_distribution(objectives: ArrayLike, values: ArrayLike, *, tolerance: float = 1e-6) -> np.ndarray:
    r"""The best distribution over candidates: the shrinking LP (Cotter, Jiang, Sridharan, ALT 2019, Lemma 3).

    If some distribution satisfies every constraint in expectation, returns the one with the smallest expected
    objective. Otherwise bisects on the relaxation ``ε`` in ``[0, min_t max_i g_{t,i}]`` (the upper end is reached by
    the single least-violating candidate) until the bracket is narrower than ``tolerance``, and returns the best
    distribution with every expected constraint value ``<= ε``.

    Args:
        objectives: ``(T,)`` objective values. values: ``(T, m)`` signed hard constraint values (``violations=``
            is its deprecated name).
        tolerance: width of the final bisection bracket, in constraint units (> 0).

    Returns:
        ``(T,)`` float64 probabilities, non-negative, summing to 1, with at most ``m + 1`` non-zeros.

    Raises:
        ValueError: bad shapes or values, ``tolerance <= 0``.
    """
    if not tolerance > 0:
        raise ValueError(f"tolerance must be > 0, got {tolerance!r}")
    f, g = _check_table(objectives, values)
    m = g.shape[1]
    p = _solve(f, g, 0.0)
    if p is None:
        lower, upper = 0.0, float(g.max(axis=1).min())
        p = _solve(f, g, upper)
        while upper - lower > tolerance:
            middle = 0.5 * (lower + upper)
            candidate = _solve(f, g, middle)
            if candidate is None:
                lower = middle
            else:
                upper, p = middle, candidate
        if p is None:  # the single least-violating candidate always achieves `upper`
            p = np.zeros(f.size)
            p[int(np.argmin(g.max(axis=1)))] = 1.0
    if np.count_nonzero(p) > m + 1:
        # HiGHS returned an interior optimum; the dual simplex returns a vertex (at most m + 1 non-zeros).
        bound = float(np.max(g.T @ p)) if m else 0.0
        vertex = _solve(f, g, max(bound, 0.0) + 1e-12, method="highs-ds")
        p = vertex if vertex is not None else p
    return p
