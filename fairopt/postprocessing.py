r"""Post-processing: group-specific decision thresholds fitted on held-out data (Hardt, Price, Srebro 2016).

Given a trained model's scores, choose for every group ``g`` a threshold ``t_g`` (deterministic) or a distribution
over thresholds (randomized) so that the predictions meet the constraints on the data they are fitted on, at the
smallest expected error. It needs the sensitive attribute *at prediction time*; in-training constraints do not.
Use it after any training, including a constrained one: a constrained model whose gaps are already small loses
less accuracy to the thresholds than an unconstrained one.

The problem, for group ``g`` with candidate thresholds ``t_{g,1..K}`` (cut points between its distinct scores,
plus "all positive" and "all negative") and confusion cells ``C_{g,k} = (tn, fp, fn, tp)`` when predicting
``score > t_{g,k}``: the randomized policy ``q_g`` on the simplex over candidates has the expected table row
``T_g(q) = Σ_k q_{g,k} C_{g,k}``, linear in ``q``, and

.. math::
    \min_q \sum_{g,k} q_{g,k} (fp_{g,k} + fn_{g,k}) / N \quad\text{s.t.}\quad c_i(T(q)) + \text{margin}_i \le 0.

Hardt et al. (2016, Section 4) solve it for equalized odds on the groups' ROC curves; here any fairopt constraint
is accepted. The constraint values are evaluated exactly on ``T(q)``, and Kelley's cutting-plane method adds the
linearization ``c_i(q^*) + ∇c_i·(q - q^*) <= 0`` of every violated entry until the LP solution meets them all. For
constraints that are convex in the table at fixed label counts (every parity, equal-opportunity, equalized-odds and
bounded-rate constraint on selection rate, TPR, FPR, TNR, FNR or error rate: maxima and absolute values of rates
with fixed denominators) each cut is valid and the method converges to the optimum; for ratio rates of predictions
(precision, NPV) it is a heuristic. The deterministic policy (one threshold per group) is found by coordinate
descent from the randomized solution's most likely thresholds: not convex, not guaranteed optimal or feasible
(:attr:`GroupThresholds.feasible` says).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import linprog
from torch import Tensor

from fairopt._batch_checks import check_batch
from fairopt._validation import MIN_SCORES_FOR_PROBABILITY_CHECK, require_tensor, user_stacklevel
from fairopt.constraints import Constraint
from fairopt.optim.constraint_set import ConstraintSet
from fairopt.optim.stochastic import expected_tables
from fairopt.stats import COLUMNS, GroupStats, group_stats

__all__ = ["GroupThresholds", "InfeasibleFitWarning", "expected_stats"]


class InfeasibleFitWarning(UserWarning):
    """:meth:`GroupThresholds.fit` found no policy that meets the constraints (with the margin) on the data it was
    fitted on: the policy it returns does not meet them (:attr:`GroupThresholds.feasible` is False). Its own
    category, so that code which handles the case itself (e.g. fits again without the margin) can leave it out."""


_FEASIBLE = 1e-7  # constraint units (rate units: 1e-5 percentage points): what counts as met after the cuts
_CELLS = [COLUMNS.index(c) for c in ("tn", "fp", "fn", "tp")]


def expected_stats(positive_probability: Tensor, *, labels: Tensor, groups: Tensor, num_groups: int) -> GroupStats:
    """Exact expected table of a randomized classifier that predicts positive with probability ``p_i``.

    The mixture of two deterministic candidates with per-example probabilities
    (:func:`~fairopt.optim.stochastic.expected_tables`): "always positive" with probability ``p_i`` and "always
    negative" with ``1 - p_i`` (tables are additive, so no sampling noise enters). Shapes: ``(N,)`` each; ``p`` in
    [0, 1]; float64 ``(G, K)`` table. Its proxy columns are those of scores ±1, not of the underlying model's scores.
    """
    p = positive_probability.double().clamp(0.0, 1.0)  # a solver's 1 + 2e-16 is 1
    ones = torch.ones_like(p)

    def table(scores: Tensor, probability: Tensor | None) -> tuple[GroupStats]:
        return (group_stats(scores, labels=labels, groups=groups, num_groups=num_groups, weights=probability),)

    return expected_tables([(p, ones), (1.0 - p, -ones)], table)[0]


@dataclass(frozen=True)
class _Candidates:
    """Per group: candidate thresholds ``(K_g,)`` ascending and their cells ``(K_g, 4)``."""

    thresholds: list[np.ndarray]
    cells: list[np.ndarray]


def _candidates(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray, num_groups: int, most: int) -> _Candidates:
    thresholds, cells = [], []
    for g in range(num_groups):
        s, y = scores[groups == g], labels[groups == g]
        distinct = np.unique(s)
        if distinct.size > most:  # quantiles of the group's scores
            distinct = np.unique(np.quantile(s, np.linspace(0.0, 1.0, most)))
        cuts = (distinct[1:] + distinct[:-1]) / 2 if distinct.size > 1 else np.zeros(0)
        t = np.concatenate([[-np.inf], cuts, [np.inf]]) if s.size else np.array([np.inf])
        positives, negatives = np.sort(s[y == 1]), np.sort(s[y == 0])
        tp = positives.size - np.searchsorted(positives, t, side="right")
        fp = negatives.size - np.searchsorted(negatives, t, side="right")
        cells.append(np.stack([negatives.size - fp, fp, positives.size - tp, tp], axis=1).astype(np.float64))
        thresholds.append(t)
    return _Candidates(thresholds, cells)


def _table(rows: list[np.ndarray]) -> GroupStats:
    """A GroupStats from ``(G, 4)`` expected cells (proxy columns = the hard ones; no loss)."""
    cells = np.stack(rows)
    table = np.zeros((cells.shape[0], len(COLUMNS)))
    table[:, _CELLS] = cells
    table[:, [c + 4 for c in _CELLS]] = cells
    return GroupStats(torch.from_numpy(table))


class GroupThresholds:
    """A fitted post-processing policy: per group, thresholds and their probabilities (use :meth:`fit`).

    Attributes:
        thresholds: ``(G, S)`` float64 thresholds in score (logit) units, padded with ``inf``.
        probabilities: ``(G, S)`` float64, each row on the simplex (one 1 for a deterministic policy).
        randomized: whether some group mixes two or more thresholds.
        feasible: whether the policy met every constraint (with the margin) on the data it was fitted on.
        values: ``(m,)`` the constraint values there (hard, expected for a randomized policy; NaN marks an entry
            that is undefined on those data, e.g. a group without positives for a TPR gap).
        error: the expected error rate there.
        score_kind: what the fit's scores looked like, ``"logits"`` or ``"probabilities"`` (None: too few, or a
            narrow band in [0, 1]); :meth:`positive_probability` warns (``UserWarning``) on scores of the other
            kind, whose thresholds these are not.
    """

    def __init__(
        self, thresholds: np.ndarray, probabilities: np.ndarray, *, feasible: bool, values: np.ndarray, error: float
    ) -> None:
        self.thresholds, self.probabilities = thresholds, probabilities
        self.randomized = bool(((probabilities > 0).sum(axis=1) > 1).any())
        self.feasible, self.values, self.error = feasible, values, error
        self.score_kind: str | None = None  # set by fit

    @property
    def num_groups(self) -> int:
        return self.thresholds.shape[0]

    # fitting ------------------------------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        scores: Tensor,
        *,
        labels: Tensor,
        groups: Tensor,
        constraints: Constraint | Sequence[Constraint],
        num_groups: int,
        randomized: bool = True,
        margin: float | np.ndarray | None = None,
        max_candidates: int = 4096,
        max_cuts: int = 300,
    ) -> GroupThresholds:
        """Fit the thresholds on held-out ``(scores, labels, groups)`` (never on the data that trained the model).

        Args:
            scores: ``(N,)`` logits of the trained model. labels: ``(N,)`` 0/1. groups: ``(N,)`` int64 in ``[0, G)``.
            constraints: fairopt constraint(s) the predictions must meet.
            num_groups: G.
            randomized: allow a distribution over thresholds per group (default; the optimum of the LP above) or
                one threshold per group (coordinate descent).
            margin: ``(m,)`` or one number >= 0: meet ``c_i + margin_i <= 0`` (e.g. ``1.645 *`` the standard errors,
                :meth:`~fairopt.optim.ConstraintSet.standard_errors`), so the policy holds on new data.
            max_candidates: thresholds per group (quantiles of its scores beyond that).
            max_cuts: cutting-plane rounds.

        Returns:
            The policy; :attr:`feasible` False when no policy met the constraints: the cutting-plane LP became
            infeasible or ran out of ``max_cuts`` rounds (the policy returned is then the last LP solution, which
            meets the cuts found before it, not the constraints), or the deterministic search found none.

        Warns:
            InfeasibleFitWarning: no policy met the constraints with the margin (:attr:`feasible` False), naming
                the entries, and those whose margin no policy can meet on any data (for a gap ``max - min``, a
                margin above the tolerance).

        Raises:
            TypeError: an input that is not a tensor, non-floating scores, non-integer groups (as
                :func:`fairopt.group_stats`). ValueError: mismatched shapes, labels not 0/1, a group id out of range,
                non-finite scores, a margin that is negative, not finite or of another shape than one number or
                ``(m,)``.
        """
        # (N, 1) columns read as (N,); labels and groups on the scores' device (all are read on the host below);
        # then group_stats' own checks (types, shapes, values) with its messages
        scores, labels, groups = (_column(t) for t in (scores, labels, groups))
        labels, groups = (_on_device_of(scores, t) for t in (labels, groups))
        scores, labels, groups, _, _ = check_batch(scores, labels, groups, num_groups, None, None, True)
        s = scores.detach().double().cpu().numpy()
        y = labels.detach().cpu().numpy()
        a = groups.detach().cpu().numpy()
        cs = ConstraintSet(constraints, num_groups)
        try:
            shift = np.zeros(cs.num_constraints) if margin is None else np.broadcast_to(margin, (cs.num_constraints,))
        except ValueError:
            raise ValueError(
                f"margin must be one number or {cs.num_constraints} (one per constraint entry: "
                f"{', '.join(cs.entry_names())}), got shape {np.shape(margin)}"
            ) from None
        if not (np.isfinite(shift).all() and (shift >= 0).all()):
            raise ValueError(f"margin must be finite and >= 0, got {np.asarray(margin).tolist()}")
        cand = _candidates(s, y.astype(np.int64), a, num_groups, max_candidates)
        n = max(s.size, 1)

        def evaluate(rows: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
            lin = cs.linearize(_table(rows), gradients=False)
            return np.where(lin.defined, lin.hard + shift, -np.inf), lin.defined

        q, feasible = _randomized(cs, cand, n, shift, max_cuts)
        if not randomized:
            q, feasible = _deterministic(cand, q, n, evaluate)
        rows = [qg @ c for qg, c in zip(q, cand.cells)]
        values, _ = evaluate(rows)
        error = float(sum(r[1] + r[2] for r in rows) / n)
        width = max(int((qg > 0).sum()) for qg in q)
        thresholds = np.full((num_groups, width), np.inf)
        probabilities = np.zeros((num_groups, width))
        for g, (qg, t) in enumerate(zip(q, cand.thresholds)):
            keep = np.flatnonzero(qg > 0)
            thresholds[g, : keep.size], probabilities[g, : keep.size] = t[keep], qg[keep] / qg[keep].sum()
        values = np.where(np.isfinite(values), values - shift, np.nan)  # NaN: undefined on these data
        if not feasible:
            _warn_infeasible(cs, values, shift, margin is not None)
        policy = cls(thresholds, probabilities, feasible=feasible, values=values, error=error)
        policy.score_kind = _score_kind(s)
        return policy

    # prediction ---------------------------------------------------------------------------------------------
    def positive_probability(self, scores: Tensor, groups: Tensor) -> Tensor:
        """``(N,)`` float64 probability that each example is predicted positive (exact; 0/1 when deterministic).

        Raises:
            TypeError: ``scores`` or ``groups`` not a tensor, non-floating scores, non-integer groups.
            ValueError: other shapes than ``(N,)`` (or ``(N, 1)``), a group id outside ``[0, G)``.
        """
        scores, groups = _column(scores), _on_device_of(scores, _column(groups))
        # group_stats' checks of scores and groups (labels: zeros of the scores' shape and device, which pass)
        scores = require_tensor("scores", scores)
        check_batch(scores, torch.zeros_like(scores, dtype=torch.int64), groups, self.num_groups, None, None, True)
        values = scores.detach().double()
        fitted = getattr(self, "score_kind", None)  # (a policy pickled before it existed: unknown)
        kind = None if fitted is None else _score_kind(values.cpu().numpy())
        if kind is not None and kind != fitted:
            warnings.warn(
                f"the thresholds were fitted on {fitted}, these scores look like {kind}: each kind needs its own "
                "thresholds (a logit of 0.4 is a probability of 0.6), so the predictions would be wrong; pass the "
                "same kind of scores to fit and to positive_probability / predict / stats",
                UserWarning,
                stacklevel=user_stacklevel(),
            )
        thresholds = torch.as_tensor(self.thresholds, device=scores.device)
        probabilities = torch.as_tensor(self.probabilities, device=scores.device)
        above = values.reshape(-1, 1) > thresholds[groups]
        return (probabilities[groups] * above).sum(dim=1)

    def predict(self, scores: Tensor, groups: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """``(N,)`` bool predictions, drawn with :meth:`positive_probability` (pass a seeded generator to repeat)."""
        p = self.positive_probability(scores, groups)
        return torch.bernoulli(p, generator=generator).bool() if self.randomized else p > 0.5

    def stats(self, scores: Tensor, *, labels: Tensor, groups: Tensor) -> GroupStats:
        """The policy's exact expected :class:`~fairopt.GroupStats` table on ``(scores, labels, groups)`` (each
        ``(N,)`` or ``(N, 1)``; checks and errors as :meth:`positive_probability` and :func:`fairopt.group_stats`)."""
        scores, labels, groups = (_column(t) for t in (scores, labels, groups))
        labels, groups = (_on_device_of(scores, t) for t in (labels, groups))
        return expected_stats(
            self.positive_probability(scores, groups), labels=labels, groups=groups, num_groups=self.num_groups
        )

    def __repr__(self) -> str:
        kind = "randomized" if self.randomized else "deterministic"
        return f"GroupThresholds({kind}, G={self.num_groups}, feasible={self.feasible}, error={self.error:.4f})"


def _randomized(
    cs: ConstraintSet, cand: _Candidates, n: int, shift: np.ndarray, max_cuts: int
) -> tuple[list[np.ndarray], bool]:
    """Kelley's cutting planes on the LP over per-group threshold distributions."""
    sizes = [c.shape[0] for c in cand.cells]
    offsets = np.cumsum([0, *sizes])
    cost = np.concatenate([(c[:, 1] + c[:, 2]) / n for c in cand.cells])
    equality = np.zeros((len(sizes), offsets[-1]))
    for g, (lo, hi) in enumerate(itertools.pairwise(offsets)):
        equality[g, lo:hi] = 1.0
    cuts: list[np.ndarray] = []
    bounds: list[float] = []

    def solve() -> np.ndarray | None:
        result = linprog(
            cost,
            A_ub=np.stack(cuts) if cuts else None,
            b_ub=np.asarray(bounds) if cuts else None,
            A_eq=equality,
            b_eq=np.ones(len(sizes)),
            bounds=(0.0, None),
            method="highs",
        )
        return result.x if result.status == 0 else None

    x = solve()
    assert x is not None  # the unconstrained LP is always feasible
    for rounds in range(max_cuts + 1):
        q = [np.maximum(x[lo:hi], 0.0) for lo, hi in itertools.pairwise(offsets)]
        stats = _table([qg @ c for qg, c in zip(q, cand.cells)])
        lin = cs.linearize(stats, gradients=False)
        values = np.where(lin.defined, lin.hard + shift, -np.inf)
        violated = np.flatnonzero(values > _FEASIBLE)
        if violated.size == 0:
            return q, True
        if rounds == max_cuts:  # the last solution is checked above; no cut rounds left
            break
        jacobian, _, _ = cs.hard_jacobian(stats)  # (m, G, 4)
        for i in violated:
            gradient = np.concatenate([c @ jacobian[i, g] for g, c in enumerate(cand.cells)])
            cuts.append(gradient)
            bounds.append(float(gradient @ x - values[i]) + 1e-12)  # slack: near-parallel cuts stay solvable
        new = solve()
        if new is None:  # no policy meets the cuts: none meets the (convex) constraints
            return q, False
        x = new
    return q, False


def _deterministic(cand: _Candidates, q: list[np.ndarray], n: int, evaluate) -> tuple[list[np.ndarray], bool]:
    """Coordinate descent over one threshold per group, from the most likely ones of ``q``."""
    choice = [int(np.argmax(qg)) for qg in q]

    def score(rows: list[np.ndarray]) -> tuple[float, float]:
        values, _ = evaluate(rows)
        worst = float(values.max()) if values.size else 0.0
        return max(worst, 0.0), float(sum(r[1] + r[2] for r in rows) / n)  # (violation, error), lexicographic

    best = score([c[k] for c, k in zip(cand.cells, choice)])
    for _ in range(20):
        changed = False
        for g, cells in enumerate(cand.cells):
            for k in range(cells.shape[0]):
                rows = [c[choice[h]] if h != g else cells[k] for h, c in enumerate(cand.cells)]
                candidate = score(rows)
                if candidate < best:
                    best, choice[g], changed = candidate, k, True
        if not changed:
            break
    out = [np.eye(c.shape[0])[k] for c, k in zip(cand.cells, choice)]
    return out, best[0] <= _FEASIBLE


def _score_kind(scores: np.ndarray) -> str | None:
    """``"probabilities"`` for scores that all lie in [0, 1] spread over half of it, ``"logits"`` for scores outside
    [0, 1], None when too few to tell (fewer than ``MIN_SCORES_FOR_PROBABILITY_CHECK``) or a narrow band inside
    [0, 1] (near-constant logits sit there too): the rule of :func:`fairopt.validation.collect_stats`' check."""
    if scores.size < MIN_SCORES_FOR_PROBABILITY_CHECK:
        return None
    low, high = float(scores.min()), float(scores.max())
    if low < 0.0 or high > 1.0:
        return "logits"
    return "probabilities" if high - low >= 0.5 else None


def _column(t: Any) -> Any:
    """An ``(N, 1)`` tensor as ``(N,)``; anything else as it is (the checks refuse other shapes)."""
    return t[:, 0] if isinstance(t, Tensor) and t.dim() == 2 and t.shape[1] == 1 else t


def _on_device_of(scores: Any, t: Any) -> Any:
    """``t`` on the device of ``scores`` when both are tensors: labels and groups often stay on the CPU while the
    scores come from a model on a GPU, and the policy reads them all on the host anyway."""
    if isinstance(scores, Tensor) and isinstance(t, Tensor) and t.device != scores.device:
        return t.to(scores.device)
    return t


def _warn_infeasible(cs: ConstraintSet, values: np.ndarray, shift: np.ndarray, with_margin: bool) -> None:
    """The :class:`InfeasibleFitWarning` of a fit whose policy misses the constraints (``with_margin``: a margin
    was asked): each entry missed, its value and what it needed, and the entries whose margin no policy meets on any
    data (:meth:`ConstraintSet.unreachable_margins`)."""
    names = cs.entry_names()
    missed = [i for i, v in enumerate((values + shift).tolist()) if v > _FEASIBLE]  # NaN (undefined): not missed
    shown = "; ".join(f"{names[i]}: value {values[i]:+.4f}, needs <= {-shift[i]:+.4g}" for i in missed[:5])
    unreachable = cs.unreachable_margins(shift)
    if unreachable.size:
        lowest = cs.lowest_values()
        why = (
            f"; the margin of {len(unreachable)} entr{'y' if len(unreachable) == 1 else 'ies'} is out of reach on "
            "any data (g = expr - tolerance is never below "
            + ", ".join(f"{lowest[i]:.3g} for {names[i]}" for i in unreachable[:5].tolist())
            + "): the data it was estimated on is too small to certify this tolerance; use a smaller multiple of the "
            "standard error, or cap it (np.minimum(margin, 0.5 * tolerance))"
        )
    else:
        why = ""
    fix = (
        "fit without a margin, or on more rows"
        if with_margin
        else "raise max_cuts, or fit with randomized=True (the deterministic search is not exhaustive)"
    )
    warnings.warn(
        f"no policy found that meets the constraints{' with the margin' if with_margin else ''} on these data "
        f"({shown or 'the search stopped before one was found'}){why}. The policy returned does not meet them "
        f"(feasible=False): {fix}, and check the result on test data",
        InfeasibleFitWarning,
        stacklevel=user_stacklevel(),
    )
