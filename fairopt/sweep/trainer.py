r"""Train the members of a sweep in one vectorized run: one forward, one table, one backward, one dual step for all.

Each member ``j`` is one model trained under ``expr - tolerance_j <= 0`` with its own method:

* ``"proxy_lagrangian"`` (the recommended in-training method, see the README): the swap-regret proxy-Lagrangian game
  of Cotter, Jiang, Sridharan (ALT 2019, Algorithm 2; JMLR 20(172), 2019, Section 4). The primal player descends on
  :math:`λ_{j,0} f_j + \sum_i λ_{j,i} \tilde g_{j,i}`; the λ-player keeps its own ``(m+1)×(m+1)`` column-stochastic
  matrix, updated from the hard values of its dual table (plus its margin) by
  :func:`fairopt.optim.simplex.multiplicative_step` and played as its
  :func:`~fairopt.optim.simplex.stationary_distribution`, both called once on the stack of all members' matrices.
* ``"penalty"``: the fixed-weight baseline :math:`f_j + c_j \sum_i \max(0, \tilde g_{j,i})`
  (:class:`~fairopt.optim.Penalty`), swept over ``c_j``.

One step is exactly what :class:`~fairopt.ConstrainedOptimizer` does for each member alone (``dual_update=
"simultaneous"``, ``dual_every=1``, ``dual_value="hard"``, ``dual_source="train"`` or ``"heldout"``): the member
tables come from :func:`fairopt.group_stats` (the members' groups offset so that one call writes all ``M × G``
rows), their constraint values from :func:`~fairopt.constraints.device_evaluation.evaluate_device` on the
``(M, G, K)`` stack, and the dual table of each
member from a :class:`~fairopt.RunningGroupStats` in mode ``"count"`` (``dual_min_count``). Members that share a
seed read the same batches, so their label counts and hence their windows agree: one running table per seed holds
all its members' rows. ``tests/test_sweep.py`` checks each member against the same member trained alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from fairopt.constraints import Constraint, ConstraintValue
from fairopt.constraints.expressions import upgrade_pooled_names
from fairopt.optim.base import as_margin, check_positive, observed_values
from fairopt.optim.proxy_lagrangian import MAX_VIOLATION
from fairopt.optim.records import IterateRecords
from fairopt.optim.simplex import multiplicative_step, stationary_distribution
from fairopt.proxies import Proxy, as_proxy
from fairopt.rates import compute_rate
from fairopt.stats import COLUMNS, GroupStats, RunningGroupStats, group_stats

from .evaluator import BatchedBounds, batched_constraint_values
from .stacked import StackedModel

__all__ = ["SWEEP_METHODS", "Member", "SweepTrainer"]

SWEEP_METHODS = ("proxy_lagrangian", "penalty")
_K = len(COLUMNS)
_STATE_FORMAT = 1


@dataclass(frozen=True)
class Member:
    """One member of a sweep: a method, the tolerance it trains under, its seed, and (penalty) its coefficient.

    Attributes:
        method: ``"proxy_lagrangian"`` or ``"penalty"``.
        tolerance: the bound of the constraint, in the units of its expression (> 0).
        seed: the member's seed (its initialization and its batch order; members with one seed read the same batches).
        penalty_coefficient: the penalty coefficient ``c >= 0`` (``"penalty"`` only).

    Raises:
        ValueError: an unknown method, a tolerance that is not a finite number > 0, a missing or negative penalty
            coefficient, a coefficient given to a proxy-Lagrangian member, a negative seed.
    """

    method: str
    tolerance: float
    seed: int = 0
    penalty_coefficient: float | None = None

    def __post_init__(self) -> None:
        if self.method not in SWEEP_METHODS:
            raise ValueError(f"unknown sweep method {self.method!r}; choose one of {SWEEP_METHODS}")
        if isinstance(self.tolerance, bool) or not (
            isinstance(self.tolerance, (int, float)) and math.isfinite(self.tolerance) and self.tolerance > 0
        ):
            raise ValueError(f"a tolerance must be a finite number > 0 (constraint units), got {self.tolerance!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")
        if self.method == "penalty":
            w = self.penalty_coefficient
            if w is None or isinstance(w, bool) or not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
                raise ValueError(f"a penalty member needs penalty_coefficient, a finite number >= 0, got {w!r}")
        elif self.penalty_coefficient is not None:
            raise ValueError("penalty_coefficient applies to penalty members only")

    @property
    def label(self) -> str:
        """A short readable name, e.g. ``"proxy_lagrangian tol=0.05 seed=0"``."""
        knob = f"c={self.penalty_coefficient:g}" if self.method == "penalty" else f"tol={self.tolerance:g}"
        return f"{self.method} {knob} seed={self.seed}"


class SweepTrainer:
    r"""M members of one architecture trained together under one constraint expression with per-member bounds.

    Args:
        models: one module per member, same architecture (e.g. ``create_model("mlp", d, seed=s)``); copied.
        members: the M :class:`Member` descriptions, in the order of ``models``.
        constraint: an expression constraint (its ``expr``; every member's own tolerance replaces its tolerance).
        num_groups: G.
        lr: Adam's learning rate over the stacked parameters (Adam is elementwise: each member's step is the step
            it would take alone).
        dual_lr: the proxy-Lagrangian step size η > 0.
        proxy: the primal surrogate (``"sigmoid"`` default, as :class:`~fairopt.ConstrainedOptimizer`).
        threshold: decision threshold in logit units.
        dual_min_count: examples per group and label of every dual table (mode ``"count"`` of
            :class:`~fairopt.RunningGroupStats`); None: each batch alone.
        dual_max_window: the cap on that window, in batches.
        dual_source: ``"train"`` (default: the λ-players read the training batches) or ``"heldout"`` (they read the
            validation batch given to each :meth:`step`: held-out duals, Cotter et al., ICML 2019).
        minimum_weight: the λ-player's floor γ (as :class:`~fairopt.optim.ProxyLagrangianPlayer`, default 1e-3).
        keep_states: keep each recorded iterate's parameters in the member's records (needed to export the chosen one).

    Attributes:
        model: the :class:`~fairopt.sweep.stacked.StackedModel`. optimizer: the Adam over its parameters.
        records: one :class:`~fairopt.optim.IterateRecords` per member (filled by :meth:`record`).
        margin: ``(M, m)`` float64 margins the dual players add to their hard values (None: none), settable.
        num_steps: primal steps taken.

    Raises:
        ValueError: the errors of :class:`Member` and :class:`~fairopt.sweep.stacked.StackedModel`; a different number
            of models and members; two identical members; a function constraint; a bad step size, window or
            ``dual_source``.
    """

    def __init__(
        self,
        models: Sequence[nn.Module],
        members: Sequence[Member],
        constraint: Constraint,
        num_groups: int,
        *,
        lr: float = 3e-3,
        dual_lr: float = 0.2,
        proxy: str | Proxy = "sigmoid",
        threshold: float = 0.0,
        dual_min_count: float | None = 100.0,
        dual_max_window: int = 100,
        dual_source: str = "train",
        minimum_weight: float = 1e-3,
        keep_states: bool = True,
    ) -> None:
        members = list(members)
        if len(models) != len(members):
            raise ValueError(f"got {len(models)} models for {len(members)} members: pass one model per member")
        if len(set(members)) != len(members):
            seen = [m.label for i, m in enumerate(members) if m in members[:i]]
            raise ValueError(f"repeated sweep members: {', '.join(seen)}; every member needs its own tolerance, "
                             "penalty coefficient or seed")  # fmt: skip
        if not constraint.linearizable:
            raise ValueError(f"a sweep needs an expression constraint; {constraint.name!r} is a FunctionConstraint")
        constraint.check_num_groups(num_groups)
        if dual_source not in ("train", "heldout"):
            raise ValueError(f"dual_source must be 'train' or 'heldout', got {dual_source!r}")
        if not 0.0 < minimum_weight < 1.0:
            raise ValueError(f"minimum_weight must be in (0, 1), got {minimum_weight!r}")
        if dual_min_count is not None and not dual_min_count > 0:
            raise ValueError(
                f"dual_min_count must be > 0 (examples per group and label) or None, got {dual_min_count!r}"
            )
        if isinstance(dual_max_window, bool) or not isinstance(dual_max_window, int) or dual_max_window < 1:
            raise ValueError(f"dual_max_window must be an int >= 1 (batches), got {dual_max_window!r}")
        self.members = tuple(members)
        self.constraint, self.num_groups = constraint, num_groups
        self.num_constraints = constraint.num_entries(num_groups)
        self.lr, self.dual_lr = check_positive("lr", lr), check_positive("dual_lr", dual_lr)
        self.proxy, self.threshold = as_proxy(proxy), float(threshold)
        self.dual_min_count, self.dual_max_window, self.dual_source = dual_min_count, dual_max_window, dual_source
        self.floor = float(minimum_weight)
        self.model = StackedModel(models)
        self.optimizer = torch.optim.Adam(list(self.model.params.values()), lr=self.lr, foreach=True)
        device = next(iter(self.model.params.values())).device
        self.tolerances = torch.tensor([m.tolerance for m in members], dtype=torch.float64, device=device)
        # int64 index tensors also when empty (a float tensor cannot index)
        index = {k: [i for i, m in enumerate(members) if m.method == k] for k in SWEEP_METHODS}
        self._pl = torch.tensor(index["proxy_lagrangian"], dtype=torch.int64, device=device)
        self._pen = torch.tensor(index["penalty"], dtype=torch.int64, device=device)
        # Every member proxy-Lagrangian (the common sweep): the step skips the gathers and scatters by member kind.
        self._all_pl = len(index["proxy_lagrangian"]) == len(members)
        # the tolerances of the stack [batch tables; dual tables of the proxy-Lagrangian members], fixed
        self._stacked_tolerances = torch.cat([self.tolerances, self.tolerances[self._pl]]).reshape(-1, 1)
        coefficients = [m.penalty_coefficient for m in members if m.method == "penalty"]
        self._coefficients = torch.tensor(coefficients, dtype=torch.float64, device=device)
        # The λ-players' state, as ProxyLagrangianPlayer starts it: all weight on the objective but the floor.
        n, p = self.num_constraints + 1, len(self._pl)
        column = torch.full((n,), self.floor / n, dtype=torch.float64, device=device)
        column[0] = 1.0 - self.floor * (n - 1) / n
        self._log_state = column[:, None].expand(p, n, n).log().clone()
        self._lam = column.expand(p, n).clone()
        self.seeds = tuple(sorted({m.seed for m in members}))
        self._seed_rows = {s: [i for i, m in enumerate(members) if m.seed == s] for s in self.seeds}
        self._running = {
            s: None if dual_min_count is None else RunningGroupStats(
                len(rows) * num_groups, mode="count", window=dual_max_window, min_count=dual_min_count
            )
            for s, rows in self._seed_rows.items()
        }  # fmt: skip
        self.records = [IterateRecords(keep_states=keep_states) for _ in members]
        self._margin: np.ndarray | None = None
        self.num_steps = 0

    @property
    def num_members(self) -> int:
        return len(self.members)

    # multipliers --------------------------------------------------------------------------------------------
    @property
    def multipliers(self) -> Tensor:
        """``(M, m)`` each member's constraint weights: the proxy-Lagrangian's λ_{1:}, a penalty member's fixed c."""
        out = torch.empty(self.num_members, self.num_constraints, dtype=torch.float64, device=self._lam.device)
        out[self._pl] = self._lam[:, 1:]
        out[self._pen] = self._coefficients[:, None].expand(len(self._pen), self.num_constraints)
        return out

    @property
    def objective_weights(self) -> Tensor:
        """``(M,)`` the weight of the loss in each member's primal objective (λ_0; 1 for penalty members)."""
        out = torch.ones(self.num_members, dtype=torch.float64, device=self._lam.device)
        out[self._pl] = self._lam[:, 0]
        return out

    @property
    def margin(self) -> np.ndarray | None:
        """``(M, m)`` margins (constraint units, >= 0) the dual players add to their hard values, or None."""
        return self._margin

    @margin.setter
    def margin(self, value: np.ndarray | Sequence[Sequence[float]] | None) -> None:
        if value is None:
            self._margin = None
            return
        rows = np.asarray(value, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[0] != self.num_members:
            raise ValueError(f"margin must have shape (M={self.num_members}, m={self.num_constraints}), got "
                             f"{rows.shape}")  # fmt: skip
        self._margin = np.stack([as_margin(r, self.num_constraints) for r in rows])

    # measurement --------------------------------------------------------------------------------------------
    def tables(self, scores: Tensor, labels: Tensor, groups: Tensor) -> Tensor:
        """``(M, G, K)`` member tables of ``scores (M, N)`` with ``labels``/``groups`` ``(M, N)`` or ``(N,)``: one
        :func:`fairopt.group_stats` call, member ``j``'s group ``g`` written to row ``j * G + g``."""
        m, n = scores.shape
        labels, groups = labels.expand(m, n), groups.expand(m, n)
        offsets = torch.arange(m, device=groups.device)[:, None] * self.num_groups
        stats = group_stats(
            scores.reshape(-1),
            labels=labels.reshape(-1),
            groups=(groups.to(torch.int64) + offsets).reshape(-1),
            num_groups=m * self.num_groups,
            proxy=self.proxy,
            threshold=self.threshold,
            validate_args=False,
        )
        return stats.table.view(m, self.num_groups, _K)

    def values(self, tables: Tensor) -> BatchedBounds:
        """``(M, m)`` constraint values of each member on its table (its own tolerance subtracted)."""
        return batched_constraint_values(self.constraint, tables, self.tolerances)

    @torch.no_grad()
    def evaluate(self, x: Tensor, labels: Tensor, groups: Tensor) -> Tensor:
        """``(M, G, K)`` detached member tables on one shared batch (e.g. a whole split, ``x (N, D)``)."""
        return self.tables(self.model(x, shared=True), labels, groups).detach()

    # the step -----------------------------------------------------------------------------------------------
    def step(
        self, x: Tensor, labels: Tensor, groups: Tensor, *, heldout: tuple[Tensor, Tensor, Tensor] | None = None
    ) -> Tensor:
        """One primal step of every member on its batch, then one dual step of every proxy-Lagrangian member.

        Args:
            x: ``(M, B, ...)`` features, member ``j``'s batch in row ``j`` (members with one seed: the same batch).
            labels: ``(M, B)`` 0/1. groups: ``(M, B)`` int group ids in ``[0, G)``.
            heldout: with ``dual_source="heldout"``: ``(x, labels, groups)`` of a validation batch per member, shapes
                as above; measured at the current parameters before the primal step, it is what the λ-players read
                (Cotter et al., ICML 2019).

        Returns:
            ``(M,)`` the members' mean binary cross-entropy on their batch (detached).

        Raises:
            ValueError: ``heldout`` missing with ``dual_source="heldout"``, or given with ``dual_source="train"``.
        """
        if (heldout is None) != (self.dual_source == "train"):
            raise ValueError(
                "dual_source='heldout' reads a validation batch per step: pass step(..., heldout=(x, labels, groups))"
                if heldout is None
                else "heldout= feeds the λ-players; build the trainer with dual_source='heldout'"
            )
        dual_source = None
        if heldout is not None:
            with torch.no_grad():  # measured at the same θ as the batch, before the primal step
                dual_source = self.tables(self.model(heldout[0]), heldout[1], heldout[2])
        scores = self.model(x)
        target = labels.to(scores.dtype)
        loss = F.binary_cross_entropy_with_logits(scores, target, reduction="none").mean(dim=1)  # (M,)
        tables = self.tables(scores, labels, groups)
        m, pl = self.num_members, self._pl
        # One evaluation for both players: the batch tables (primal, differentiable) stacked with the proxy-Lagrangian
        # members' dual tables (their running windows, this batch included, measured at the same θ).
        if len(pl):
            dual = self._dual_tables(tables.detach() if dual_source is None else dual_source)
            stacked = torch.cat([tables, dual if self._all_pl else dual[pl]])
        else:
            stacked = tables
        value = batched_constraint_values(self.constraint, stacked, self._stacked_tolerances)
        proxy = value.proxy_upper[:m]
        # The members' objectives, summed: members share no parameters, so the sum's gradient is each member's own.
        # Summed term by term (no scatter into an (M,) vector): the same gradients, fewer operations.
        if self._all_pl:
            objective = (loss.to(torch.float64) * self._lam[:, 0]).sum() + (self._lam[:, 1:] * proxy).sum()
        else:
            objective = (loss.to(torch.float64) * self.objective_weights).sum()
            if len(pl):
                objective = objective + (self._lam[:, 1:] * proxy[pl]).sum()
            if len(self._pen):
                objective = objective + (self._coefficients[:, None] * proxy[self._pen].clamp(min=0)).sum()
        self.optimizer.zero_grad(set_to_none=True)
        objective.backward()
        self.optimizer.step()
        self.num_steps += 1
        if len(pl):  # simultaneous: the dual steps after the primal step, on the values measured before it
            self._dual_step(value.hard[m:], value.defined[m:])
        return loss.detach()

    def _dual_tables(self, tables: Tensor) -> Tensor:
        """Every member's dual table: its batch table folded into its seed's running window."""
        if len(self._seed_rows) == 1:  # one seed: its window holds every member's rows, in member order
            (running,) = self._running.values()
            if running is None:
                return tables
            return running.update(GroupStats(tables.reshape(-1, _K))).table.view(tables.shape).to(tables)
        out = torch.empty_like(tables)
        for seed, rows in self._seed_rows.items():
            running = self._running[seed]
            block = tables[rows]
            if running is not None:
                block = running.update(GroupStats(block.reshape(-1, _K))).table.view(len(rows), self.num_groups, _K)
            out[rows] = block.to(out)
        return out

    def _dual_step(self, hard: Tensor, defined: Tensor) -> None:
        """One λ step of every proxy-Lagrangian member from its dual table's hard values ``(P, m)`` (plus margin):
        :meth:`fairopt.optim.ProxyLagrangianPlayer.update` (swap regret, multiplicative) for all P members at once,
        the simplex kernels taking the ``(P, n, n)`` stack directly (no ``vmap``: 0.21 vs 0.55 ms for 8 members, same
        values bit for bit)."""
        if self._margin is not None:
            shift = torch.as_tensor(self._margin, device=hard.device)[self._pl]
            hard = hard + torch.where(defined, shift, 0.0)
        hard, defined = observed_values(ConstraintValue(hard, hard, defined))
        hard = hard.clamp(-MAX_VIOLATION, MAX_VIOLATION)
        delta = torch.cat([hard.new_zeros(hard.shape[0], 1), hard], dim=-1)  # (P, n): the objective's entry is 0
        mask = torch.cat([defined.new_ones(defined.shape[0], 1), defined], dim=-1)
        gradient = delta[:, :, None] * self._lam[:, None, :]  # (P, n, n): Δ λᵀ per member
        self._log_state = multiplicative_step(self._log_state, gradient, self.dual_lr, mask, self.floor)
        self._lam = stationary_distribution(self._log_state.exp())

    # records ------------------------------------------------------------------------------------------------
    def record(self, tables: Tensor, *, margin: np.ndarray | None = None) -> None:
        """Record every member's current iterate with its values on ``tables`` ``(M, G, K)`` (e.g. the validation
        split, :meth:`evaluate`): objective = the overall error rate there, as
        :meth:`fairopt.ConstrainedOptimizer.record`; ``margin`` ``(M, m)`` the selection margins (default
        :attr:`margin`)."""
        value = self.values(tables.detach())
        margins = self._margin if margin is None else margin
        errors = compute_rate(GroupStats(tables.detach().sum(dim=1)), "error_rate").value
        for j, records in enumerate(self.records):
            module = self.model.member_module(j) if records.keep_states else None
            records.record(
                self.num_steps,
                errors[j],
                value.hard[j],
                defined=value.defined[j],
                model=module,
                margin=None if margins is None else margins[j],
            )

    # state --------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: stacked parameters and buffers, Adam, the λ-players, the running dual tables,
        the records, the margin and the step count (tensors, numbers, strings and lists/dicts of them)."""
        return {
            "format": _STATE_FORMAT,
            "members": [asdict(m) for m in self.members],
            "constraint": self.constraint.entry_names(self.num_groups),
            "num_steps": self.num_steps,
            "params": {n: p.detach().clone() for n, p in self.model.params.items()},
            "buffers": {n: b.detach().clone() for n, b in self.model.buffers.items()},
            "optimizer": self.optimizer.state_dict(),
            "log_state": self._log_state.clone(),
            "lam": self._lam.clone(),
            "running": {s: None if r is None else r.state_dict() for s, r in self._running.items()},
            "records": [r.state_dict() for r in self.records],
            "margin": None if self._margin is None else torch.from_numpy(self._margin.copy()),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` saved by a trainer with the same members and constraint entries.

        Raises:
            ValueError: an unknown format, other members, or other constraint entries (nothing is restored then).
        """
        if state.get("format") != _STATE_FORMAT:
            raise ValueError(f"unknown sweep state format {state.get('format')!r} (this version reads {_STATE_FORMAT})")
        saved = [Member(**m) for m in state["members"]]
        if saved != list(self.members):
            raise ValueError(f"the state was saved for members {[m.label for m in saved]}, this trainer has "
                             f"{[m.label for m in self.members]}")  # fmt: skip
        if [upgrade_pooled_names(name) for name in state["constraint"]] != self.constraint.entry_names(self.num_groups):
            raise ValueError(
                f"the state was saved for the constraint entries {list(state['constraint'])}, this trainer has "
                f"{self.constraint.entry_names(self.num_groups)}"
            )
        with torch.no_grad():
            for table, saved_table in ((self.model.params, state["params"]), (self.model.buffers, state["buffers"])):
                for n, t in table.items():
                    t.copy_(saved_table[n])
        self.optimizer.load_state_dict(state["optimizer"])
        self._log_state, self._lam = state["log_state"].clone(), state["lam"].clone()
        for s, r in self._running.items():
            if r is not None:
                r.load_state_dict(state["running"][s])
        for records, saved_records in zip(self.records, state["records"]):
            records.load_state_dict(saved_records)
        self.margin = None if state["margin"] is None else state["margin"].numpy()
        self.num_steps = int(state["num_steps"])
