r"""Iterate records: the candidates from which the final (possibly randomized) model is chosen.

At chosen steps, keep the model's state together with its objective and its signed hard constraint values ``g``
(``<= 0``: met; the glossary's *constraint values*, of which a *violation* is ``max(0, g)``) measured on held-out
data. Cotter, Jiang, Sridharan (ALT 2019) show that the (proxy-)Lagrangian game's guarantee holds for a
*distribution* over iterates; :meth:`IterateRecords.best_distribution` finds the best one supported on at most
``m + 1`` recorded iterates, and :meth:`IterateRecords.best_index` the best single iterate by the rank heuristic
(see :mod:`fairopt.optim.selection`). :meth:`IterateRecords.stochastic_classifier` turns a distribution into a
reproducible randomized model; :meth:`IterateRecords.export_best` loads the single best state into a model.

States are copied to CPU (``keep_states=False`` records only the numbers). Memory is one model copy per record.

**Undefined entries** (a rate with a zero denominator on the selection data, e.g. a precision of a group in which
an iterate predicts no positives) are never read as satisfied. The policy, applied by every selection rule here:

1. an entry undefined for *every* record carries no information about the candidates: it is left out;
2. a record with an undefined entry that other records define cannot be certified: when some record that defines
   every remaining entry meets the constraints, only such records compete (the others are *skipped*);
3. otherwise (no fully defined record is feasible) a known violation is no better than an unknown: every record
   competes, on the entries that all of them define.

Each case issues a ``UserWarning`` naming the entries and the number of records skipped.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fairopt._deprecation import renamed_attribute, renamed_kwargs
from fairopt._validation import user_stacklevel
from fairopt.optim.base import as_margin
from fairopt.optim.selection import best_distribution, best_iterate, is_feasible
from fairopt.optim.stochastic import StochasticClassifier

__all__ = ["IterateRecord", "IterateRecords"]


@dataclass(frozen=True)
class IterateRecord:
    """One recorded iterate.

    Attributes:
        step: the training step it was taken at.
        objective: objective value (e.g. held-out error rate), lower is better.
        values: ``(m,)`` float64 signed hard constraint values ``g`` (``<= 0`` satisfied; 0 where undefined).
            ``violations`` is its deprecated name.
        defined: ``(m,)`` bool mask of the entries that were defined.
        state: the model's ``state_dict`` (CPU copies), or None.
        margin: ``(m,)`` float64 selection margin (>= 0, constraint units): selection asks ``values + margin <= 0``
            (zeros when none was given).
    """

    step: int
    objective: float
    values: Tensor
    defined: Tensor
    state: dict[str, Tensor] | None
    margin: Tensor | None = None

    @property
    def violations(self) -> Tensor:
        """Deprecated name of :attr:`values` (signed ``g``, not the violation ``max(0, g)``)."""
        return renamed_attribute(self, "violations", "values")


class IterateRecords:
    """A list of :class:`IterateRecord` with the selection rules on top.

    Args:
        keep_states: copy the model state at each record (needed by :meth:`export_best` and
            :meth:`stochastic_classifier`).
    """

    def __init__(self, *, keep_states: bool = True) -> None:
        self.keep_states = bool(keep_states)
        self.records: list[IterateRecord] = []
        self.margin_used = False  # whether the last selection could honour the margins
        # whether the last selection had margins on its candidates' entries and none could be met (it chose without)
        self.margin_missed = False

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> IterateRecord:
        return self.records[index]

    @renamed_kwargs(violations="values")
    def record(
        self,
        step: int,
        objective: float | Tensor,
        values: Tensor,
        *,
        defined: Tensor | None = None,
        model: nn.Module | None = None,
        margin: float | np.ndarray | Tensor | None = None,
    ) -> IterateRecord:
        """Append one iterate.

        Args:
            step: training step. objective: scalar, lower is better.
            values: ``(m,)`` signed hard constraint values ``g`` (e.g. ``optimizer.evaluate(heldout_stats).hard``);
                ``violations=`` is its deprecated name.
            defined: optional ``(m,)`` bool mask (default all True).
            model: the model whose state to keep (required when ``keep_states``).
            margin: optional ``(m,)`` (or one number) margin >= 0 against estimation error: selection treats the
                iterate as feasible only when ``values + margin <= 0`` (e.g. ``1.645 *`` the values' standard
                errors, :meth:`~fairopt.optim.ConstraintSet.standard_errors`).

        Raises:
            ValueError: a different m than earlier records; non-finite values or a negative margin; missing model.
        """
        values = torch.as_tensor(values).detach().to("cpu", torch.float64).reshape(-1)
        defined = (
            torch.ones_like(values, dtype=torch.bool)
            if defined is None
            else torch.as_tensor(defined).detach().to("cpu", torch.bool).reshape(-1)
        )
        objective = float(objective)
        if self.records and values.numel() != self.records[0].values.numel():
            raise ValueError(f"records have m={self.records[0].values.numel()} entries, got {values.numel()}")
        if not (np.isfinite(objective) and bool(torch.isfinite(values).all())):
            raise ValueError("objective and constraint values must be finite")
        if self.keep_states and model is None:
            raise ValueError("pass model=... to record its state (or build IterateRecords(keep_states=False))")
        state = None
        if self.keep_states and model is not None:
            state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        shift = torch.zeros_like(values)
        if margin is not None:  # undefined entries get no margin
            shift = torch.where(defined, torch.from_numpy(as_margin(margin, values.numel())), shift)
        entry = IterateRecord(int(step), objective, values, defined, state, shift)
        self.records.append(entry)
        return entry

    # tables -------------------------------------------------------------------------------------------------
    def objectives(self) -> np.ndarray:
        """``(T,)`` float64 objective values."""
        return np.array([r.objective for r in self.records], dtype=np.float64)

    def values(self) -> np.ndarray:
        """``(T, m)`` float64 signed hard constraint values ``g`` (``<= 0`` met; 0 where undefined)."""
        return np.stack([r.values.numpy() for r in self.records]) if self.records else np.zeros((0, 0))

    def violations(self) -> np.ndarray:
        """Deprecated name of :meth:`values` (signed ``g``, not the violations ``max(0, g)``)."""
        return renamed_attribute(self, "violations", "values")()

    def margins(self) -> np.ndarray:
        """``(T, m)`` float64 selection margins (zeros where none was recorded)."""
        if not self.records:
            return np.zeros((0, 0))
        return np.stack([np.zeros(r.values.numel()) if r.margin is None else r.margin.numpy() for r in self.records])

    def defined(self) -> np.ndarray:
        """``(T, m)`` bool: which entries were defined at each record."""
        return np.stack([r.defined.numpy() for r in self.records]) if self.records else np.zeros((0, 0), dtype=bool)

    # selection ----------------------------------------------------------------------------------------------
    def candidates(self, feasible: Callable[[np.ndarray], bool] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, columns)``: the indices of the records that compete and of the entries selection reads, under the
        undefined-entry policy of the module docstring (with its warnings).

        Args:
            feasible: ``feasible(values)`` says whether a table ``(T', m')`` of candidates' constraint values has a
                feasible choice (default: some row with every entry ``<= 0``).
        """
        self._require_records()
        if feasible is None:
            feasible = _some_feasible_row
        defined, values = self.defined(), self.values()
        informative = defined.any(axis=0)
        everywhere = np.flatnonzero(informative)
        full = np.flatnonzero(defined[:, informative].all(axis=1))
        problems = []
        if not informative.all():
            problems.append(f"entries {np.flatnonzero(~informative).tolist()} are undefined for every record: ignored")
        if full.size == len(self.records):
            rows, columns = full, everywhere
        elif full.size and feasible(values[np.ix_(full, everywhere)]):
            rows, columns = full, everywhere
            problems.append(
                f"{len(self.records) - full.size} of {len(self.records)} records skipped: an entry that other records "
                "define is undefined for them, so they cannot be certified"
            )
        else:
            rows = np.arange(len(self.records))
            columns = np.flatnonzero(defined.all(axis=0))
            dropped = np.setdiff1d(everywhere, columns)
            problems.append(
                "no record that defines every entry meets the constraints, so every record competes on the entries "
                f"all of them define (entries {dropped.tolist()} are ignored)"
            )
        if problems:
            warnings.warn(
                "selection over records with undefined constraint entries (a rate with a zero denominator on the "
                "selection data): " + "; ".join(problems),
                UserWarning,
                stacklevel=user_stacklevel(),
            )
        return rows, columns

    def _values_for_selection(
        self, feasible: Callable[[np.ndarray], bool], rows: np.ndarray, columns: np.ndarray
    ) -> np.ndarray:
        """``values + margin`` of the candidates' entries when some candidate is feasible with the margins, else
        the plain values (the data cannot certify any candidate with its margin: say so, choose as without one).
        Sets :attr:`margin_used` and :attr:`margin_missed`."""
        values = self.values()[np.ix_(rows, columns)]
        margins = self.margins()[np.ix_(rows, columns)]
        with_margin = values + margins
        self.margin_used = bool(margins.any()) and feasible(with_margin)
        self.margin_missed = bool(margins.any()) and not self.margin_used
        if self.margin_missed:
            warnings.warn(
                "no recorded iterate (or distribution over them) meets the constraints with the recorded margins "
                "(the held-out data cannot certify any at this sample size); selecting without the margins",
                UserWarning,
                stacklevel=user_stacklevel(),
            )
        return with_margin if self.margin_used else values

    def best_index(self, *, rank_objectives: bool = True) -> int:
        """Index of the best single iterate (:func:`~fairopt.optim.best_iterate`) on ``values + margin``, or on the
        plain values (with a warning) when no iterate is feasible with the margins. Only the
        :meth:`candidates` compete (undefined entries: see the module docstring)."""
        rows, columns = self.candidates(_some_feasible_row)
        g = self._values_for_selection(_some_feasible_row, rows, columns)
        return int(rows[best_iterate(self.objectives()[rows], g, rank_objectives=rank_objectives)])

    def best_distribution(self, *, tolerance: float = 1e-6) -> np.ndarray:
        """``(T,)`` probabilities of the best distribution over iterates (:func:`~fairopt.optim.best_distribution`)
        on ``values + margin``, or on the plain values (with a warning) when no distribution is feasible with the
        margins. Records that are not :meth:`candidates` get probability 0."""
        objectives = self.objectives()
        rows, columns = self.candidates(lambda v: is_feasible(np.zeros(v.shape[0]), v))
        f = objectives[rows]
        g = self._values_for_selection(lambda v: is_feasible(f, v), rows, columns)
        probabilities = np.zeros(len(self.records))
        probabilities[rows] = best_distribution(f, g, tolerance=tolerance)
        return probabilities

    def export_best(self, model: nn.Module, *, rank_objectives: bool = True) -> int:
        """Load the best single iterate's state into ``model``; returns its index."""
        index = self.best_index(rank_objectives=rank_objectives)
        model.load_state_dict(self._state(index))
        return index

    @renamed_kwargs(weights="probabilities")
    def stochastic_classifier(
        self, model: nn.Module, *, probabilities: np.ndarray | Tensor | None = None, seed: int = 0
    ) -> StochasticClassifier:
        """A :class:`~fairopt.optim.StochasticClassifier` over the recorded states.

        Args:
            model: a module of the recorded architecture (its own parameters are not used).
            probabilities: ``(T,)`` mixture probabilities over the records (default :meth:`best_distribution`);
                ``weights=`` is its deprecated name. seed: per-example sampling seed.

        Raises:
            ValueError: no records; ``probabilities`` of another shape than ``(T,)``; a record without a state.
        """
        self._require_records()
        p = self.best_distribution() if probabilities is None else np.asarray(probabilities, dtype=np.float64)
        if p.shape != (len(self.records),):
            raise ValueError(f"probabilities must have shape ({len(self.records)},), got {p.shape}")
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
                    "values": r.values,
                    "defined": r.defined,
                    "state": r.state,
                    "margin": r.margin,
                }
                for r in self.records
            ],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (a state saved before the rename, with ``"violations"``, loads too)."""
        self.keep_states = bool(state["keep_states"])
        self.records = [
            IterateRecord(
                int(r["step"]),
                float(r["objective"]),
                r["values"] if "values" in r else r["violations"],
                r["defined"],
                r["state"],
                r.get("margin"),
            )
            for r in state["records"]
        ]


def _some_feasible_row(values: np.ndarray) -> bool:
    """Whether some row of a ``(T, m)`` table of constraint values meets every entry (``<= 0``); True without
    entries."""
    return bool((values.max(axis=1) <= 0).any()) if values.shape[1] else True
