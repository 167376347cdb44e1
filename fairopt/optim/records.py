r"""Iterate records: the candidates from which the final (possibly randomized) model is chosen.

At chosen steps, keep the model's state together with its objective and hard constraint values measured on
held-out data. Cotter, Jiang, Sridharan (ALT 2019) show that the (proxy-)Lagrangian game's guarantee holds for a
*distribution* over iterates; :meth:`IterateRecords.best_distribution` finds the best one supported on at most
``m + 1`` recorded iterates, and :meth:`IterateRecords.best_index` the best single iterate by the rank heuristic
(see :mod:`fairopt.optim.selection`). :meth:`IterateRecords.stochastic_classifier` turns a distribution into a
reproducible randomized model; :meth:`IterateRecords.export_best` loads the single best state into a model.

States are copied to CPU (``keep_states=False`` records only the numbers). Memory is one model copy per record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fairopt.optim.selection import best_distribution, best_iterate
from fairopt.optim.stochastic import StochasticClassifier

__all__ = ["IterateRecord", "IterateRecords"]


@dataclass(frozen=True)
class IterateRecord:
    """One recorded iterate.

    Attributes:
        step: the training step it was taken at.
        objective: objective value (e.g. held-out error rate), lower is better.
        violations: ``(m,)`` float64 hard constraint values ``g`` (``<= 0`` satisfied; 0 where undefined).
        defined: ``(m,)`` bool mask of the entries that were defined.
        state: the model's ``state_dict`` (CPU copies), or None.
    """

    step: int
    objective: float
    violations: Tensor
    defined: Tensor
    state: dict[str, Tensor] | None


class IterateRecords:
    """A list of :class:`IterateRecord` with the selection rules on top.

    Args:
        keep_states: copy the model state at each record (needed by :meth:`export_best` and
            :meth:`stochastic_classifier`).
    """

    def __init__(self, *, keep_states: bool = True) -> None:
        self.keep_states = bool(keep_states)
        self.records: list[IterateRecord] = []

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> IterateRecord:
        return self.records[index]

    def record(
        self,
        step: int,
        objective: float | Tensor,
        violations: Tensor,
        *,
        defined: Tensor | None = None,
        model: nn.Module | None = None,
    ) -> IterateRecord:
        """Append one iterate.

        Args:
            step: training step. objective: scalar, lower is better.
            violations: ``(m,)`` hard constraint values (e.g. ``optimizer.evaluate(heldout_stats).hard``).
            defined: optional ``(m,)`` bool mask (default all True).
            model: the model whose state to keep (required when ``keep_states``).

        Raises:
            ValueError: a different m than earlier records; non-finite values; missing model.
        """
        violations = torch.as_tensor(violations).detach().to("cpu", torch.float64).reshape(-1)
        defined = (
            torch.ones_like(violations, dtype=torch.bool)
            if defined is None
            else torch.as_tensor(defined).detach().to("cpu", torch.bool).reshape(-1)
        )
        objective = float(objective)
        if self.records and violations.numel() != self.records[0].violations.numel():
            raise ValueError(f"records have m={self.records[0].violations.numel()} entries, got {violations.numel()}")
        if not (np.isfinite(objective) and bool(torch.isfinite(violations).all())):
            raise ValueError("objective and violations must be finite")
        if self.keep_states and model is None:
            raise ValueError("pass model=... to record its state (or build IterateRecords(keep_states=False))")
        state = None
        if self.keep_states and model is not None:
            state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        entry = IterateRecord(int(step), objective, violations, defined, state)
        self.records.append(entry)
        return entry

    # tables -------------------------------------------------------------------------------------------------
    def objectives(self) -> np.ndarray:
        """``(T,)`` float64 objective values."""
        return np.array([r.objective for r in self.records], dtype=np.float64)

    def violations(self) -> np.ndarray:
        """``(T, m)`` float64 hard constraint values."""
        return np.stack([r.violations.numpy() for r in self.records]) if self.records else np.zeros((0, 0))

    # selection ----------------------------------------------------------------------------------------------
    def best_index(self, *, rank_objectives: bool = True) -> int:
        """Index of the best single iterate (:func:`~fairopt.optim.best_iterate`)."""
        self._require_records()
        return best_iterate(self.objectives(), self.violations(), rank_objectives=rank_objectives)

    def best_distribution(self, *, tolerance: float = 1e-6) -> np.ndarray:
        """``(T,)`` weights of the best distribution over iterates (:func:`~fairopt.optim.best_distribution`)."""
        self._require_records()
        return best_distribution(self.objectives(), self.violations(), tolerance=tolerance)

    def export_best(self, model: nn.Module, *, rank_objectives: bool = True) -> int:
        """Load the best single iterate's state into ``model``; returns its index."""
        index = self.best_index(rank_objectives=rank_objectives)
        model.load_state_dict(self._state(index))
        return index

    def stochastic_classifier(
        self, model: nn.Module, *, weights: np.ndarray | Tensor | None = None, seed: int = 0
    ) -> StochasticClassifier:
        """A :class:`~fairopt.optim.StochasticClassifier` over the recorded states.

        Args:
            model: a module of the recorded architecture (its own parameters are not used).
            weights: ``(T,)`` distribution (default :meth:`best_distribution`). seed: per-example sampling seed.
        """
        self._require_records()
        p = self.best_distribution() if weights is None else np.asarray(weights, dtype=np.float64)
        if p.shape != (len(self.records),):
            raise ValueError(f"weights must have shape ({len(self.records)},), got {p.shape}")
        support = [i for i in range(len(self.records)) if p[i] > 0]
        return StochasticClassifier(model, [self._state(i) for i in support], p[support], seed=seed)

    def _state(self, index: int) -> dict[str, Tensor]:
        state = self.records[index].state
        if state is None:
            raise ValueError("this record has no model state; record with keep_states=True and model=...")
        return state

    def _require_records(self) -> None:
        if not self.records:
            raise ValueError("no iterates recorded yet; call record(...) during training")

    # state --------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "keep_states": self.keep_states,
            "records": [
                {
                    "step": r.step,
                    "objective": r.objective,
                    "violations": r.violations,
                    "defined": r.defined,
                    "state": r.state,
                }
                for r in self.records
            ],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.keep_states = bool(state["keep_states"])
        self.records = [
            IterateRecord(int(r["step"]), float(r["objective"]), r["violations"], r["defined"], r["state"])
            for r in state["records"]
        ]
