r"""One constrained step on a batch that is split: across DDP ranks, or into micro-batches (gradient accumulation).

Both rest on one fact: the ``(G, K)`` statistics table is a sum over examples, so the table of the whole batch is the
sum of its parts' tables. A single process training on the whole batch ``B`` descends on

.. math::
    f(B) + \mu^\top \tilde g(T_B), \qquad T_B = \sum_r T_r,
    \qquad \nabla_\theta = \nabla f(B) + W(T_B) \sum_r \frac{\partial T_r}{\partial \theta},
    \quad W = \mu^\top \frac{\partial \tilde g}{\partial T}\Big|_{T_B},

(the primal player of proxy constraints, Cotter, Jiang, Gupta, Wang, Narayan, You, Sridharan, JMLR 20(172), 2019,
in the linear form ``W · T`` that :meth:`~fairopt.optim.ConstrainedOptimizer.step` builds). So each part ``r`` needs
the *whole* table ``T_B`` (where the constraints and ``W`` are evaluated) and its own table ``T_r`` (what carries its
gradient). :func:`carry_gradient` builds that table: value ``T_B``, gradient ``scale · ∂T_r/∂θ``.

**DDP** (:class:`AllReduceStats`, passed as ``ConstrainedOptimizer(..., stats_reducer=AllReduceStats())``): each
step all-reduces the rank's table once, as counts (a sum; never per-rank ratios, never a running total reduced
again), and every rank evaluates the constraints, ``W`` and the dual step on that global table, so the multipliers
are identical on every rank. DDP *averages* gradients over the ``R`` ranks, so the constraint term is scaled by ``R``:
``(1/R) Σ_r R · W ∂T_r/∂θ = W ∂T_B/∂θ``. The loss term: DDP's average of per-rank means is the global mean only when
every rank has the same number of rows, which ``DistributedSampler`` guarantees (it pads); with uneven shards, or
padding rows given weight 0, pass the loss as :func:`global_mean` of the per-example losses.

**Gradient accumulation** (:func:`accumulated_step`, also ``ConstrainedOptimizer.step_accumulated``): the whole
batch's table is not known until every micro-batch has been seen, and keeping every micro-batch's graph until then
would cost the memory accumulation is meant to save. So it takes two passes: the micro-batches' tables under
``torch.no_grad`` (one forward each; summed, then all-reduced once under DDP), then a forward and backward per
micro-batch against that table, and one optimizer step. Same parameters and multipliers as one step on the whole
batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor

from fairopt.optim.base import as_score_vector
from fairopt.stats import GroupStats

if TYPE_CHECKING:
    from fairopt.optim.constrained import ConstrainedOptimizer, StepResult

__all__ = ["AllReduceStats", "StatsReducer", "accumulated_step", "carry_gradient", "global_mean"]

_BATCH_KEYS = frozenset({"loss", "scores", "groups", "labels", "weights", "example_losses"})


class StatsReducer(Protocol):
    """What ``ConstrainedOptimizer(stats_reducer=...)`` asks of a reducer (:class:`AllReduceStats` is the one).

    Attributes:
        gradient_scale: the factor on this part's constraint gradient (the world size under DDP, which averages).
    """

    gradient_scale: float

    def reduce(self, stats: GroupStats) -> GroupStats:
        """The detached table of the whole batch from this part's ``(G, K)`` table."""
        ...

    def primal_table(self, stats: GroupStats) -> GroupStats:
        """The whole batch's table with this part's gradient (:func:`carry_gradient`)."""
        ...


def carry_gradient(whole: GroupStats, part: GroupStats, scale: float = 1.0) -> GroupStats:
    r"""The table the primal player differentiates: value ``whole``, gradient ``scale · ∂part/∂θ``.

    ``whole.detach() + scale · (part - part.detach())``, so every evaluation downstream (the constraints, ``W``, the
    dual step) sees the whole batch's counts, while backward reaches only this part's graph. ``scale`` is 1 for
    micro-batches and the world size under DDP (whose gradient average divides by it).

    Args:
        whole: ``(G, K)`` table of the whole batch (any gradient on it is dropped).
        part: ``(G, K)`` table of this rank's or micro-batch's rows, with its graph.
        scale: the factor > 0 on the part's gradient.

    Raises:
        ValueError: tables of different shapes; ``scale <= 0``.
    """
    if whole.table.shape != part.table.shape:
        raise ValueError(
            f"the whole batch's table has shape {tuple(whole.table.shape)} and this part's {tuple(part.table.shape)}; "
            "measure both with the same constraint set (same num_groups)"
        )
    if not scale > 0:
        raise ValueError(f"scale must be > 0 (the world size, or 1), got {scale}")
    table = part.table
    delta = table - table.detach()
    return GroupStats(whole.table.detach().to(table) + (delta if scale == 1 else scale * delta))


def _check_process_group(process_group: Any) -> int:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "AllReduceStats needs an initialized torch.distributed process group; call "
            "torch.distributed.init_process_group(...) first (torchrun sets the environment it reads)"
        )
    return dist.get_world_size(process_group)


class AllReduceStats:
    r"""Sum the ranks' statistics tables once per step, so every rank steps on the global batch (DDP).

    Pass it as ``ConstrainedOptimizer(..., stats_reducer=AllReduceStats())`` (module docstring for the math). Each
    :meth:`~fairopt.optim.ConstrainedOptimizer.step` then issues one ``all_reduce`` of the ``(G, K)`` table (``9G``
    numbers), and on every rank:

    * the constraint values, ``W = μᵀ ∂g̃/∂T`` and the dual step read the global table, so the multipliers stay
      identical on every rank (the dual update is a deterministic function of the table);
    * the constraint term's gradient is ``world_size · W · ∂T_rank/∂θ``, which DDP's gradient average turns into
      ``W · ∂T_global/∂θ``: with equal per-rank batch sizes (``DistributedSampler``), the run equals one process
      training on the global batches (``examples/train_ddp.py --check``).

    Tables handed to the optimizer are taken as they are: a ``heldout()`` callable returning a
    :class:`~fairopt.GroupStats`, or ``update_duals(stats)``, must give the global table (e.g.
    ``fairopt.validation.collect_stats(model, loader, G, all_reduce=True)``, which counts a ``DistributedSampler``'s
    padding rows once); batches handed to it (``observe_heldout(scores=..., ...)``) are this rank's and are
    all-reduced there.

    Args:
        process_group: the ``torch.distributed`` group whose ranks share the batch (default: the world).

    Attributes:
        world_size: the number of ranks ``R`` in the group.
        gradient_scale: ``R``, the factor on this rank's constraint gradient.

    Raises:
        RuntimeError: no initialized ``torch.distributed`` process group (at construction).
    """

    def __init__(self, process_group: Any = None) -> None:
        self.process_group = process_group
        self.world_size = _check_process_group(process_group)
        self.gradient_scale = float(self.world_size)

    def reduce(self, stats: GroupStats) -> GroupStats:
        """The detached ``(G, K)`` table summed over the ranks (one ``all_reduce``; same dtype and device)."""
        return stats.all_reduce(self.process_group)

    def primal_table(self, stats: GroupStats) -> GroupStats:
        """The global table with gradient ``world_size · ∂stats/∂θ`` (:func:`carry_gradient`)."""
        return carry_gradient(self.reduce(stats), stats, self.gradient_scale)

    def __repr__(self) -> str:
        return f"AllReduceStats(world_size={self.world_size})"


def global_mean(values: Tensor, weights: Tensor | None = None, *, process_group: Any = None) -> Tensor:
    r"""The loss to pass under DDP when ranks hold different numbers of rows: ``R · Σ_rank w·v / Σ_all w``.

    DDP averages the ranks' gradients, so this rank's term ``R · Σ_rank w v / N`` (with ``N = Σ_all w`` all-reduced
    here) averages to the gradient of the global weighted mean ``Σ_all w v / N``. With equal per-rank row counts
    (a ``DistributedSampler``) a per-rank ``values.mean()`` already does this and needs no collective. Without a
    process group it is the plain weighted mean.

    Args:
        values: ``(N_rank,)`` per-example losses (e.g. ``reduction="none"``), differentiable.
        weights: optional ``(N_rank,)`` non-negative weights (e.g. 0 for a sampler's padding rows).
        process_group: as :class:`AllReduceStats`.

    Returns:
        A scalar tensor (differentiable w.r.t. ``values``).

    Raises:
        ValueError: ``values`` is not 1-D; ``weights`` of another shape; a total weight of 0 over all ranks.
    """
    import torch.distributed as dist

    if values.dim() != 1:
        raise ValueError(f"values must be (N,) per-example losses, got shape {tuple(values.shape)}")
    if weights is not None and weights.shape != values.shape:
        raise ValueError(f"weights must have the shape of values {tuple(values.shape)}, got {tuple(weights.shape)}")
    total = values.sum() if weights is None else (weights * values).sum()
    count = torch.tensor(float(values.shape[0]), dtype=total.dtype, device=total.device)
    if weights is not None:
        count = weights.detach().sum().to(total.dtype)
    world = 1
    if dist.is_available() and dist.is_initialized():
        world = dist.get_world_size(process_group)
        count = count.clone()
        dist.all_reduce(count, op=dist.ReduceOp.SUM, group=process_group)
    if not count.item() > 0:  # one sync: a zero total weight would divide by zero
        raise ValueError("the total weight over all ranks is 0: no row counts; check the weights")
    return total * (world / count)


# gradient accumulation -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _WholeBatch:
    """The reducer of the last micro-batch's ``step``: the accumulated table, with that micro-batch's gradient;
    held-out batches still go through the optimizer's own reducer."""

    whole: GroupStats
    gradient_scale: float
    inner: StatsReducer | None

    def reduce(self, stats: GroupStats) -> GroupStats:
        return stats.detach() if self.inner is None else self.inner.reduce(stats)

    def primal_table(self, stats: GroupStats) -> GroupStats:
        return carry_gradient(self.whole, stats, self.gradient_scale)


def _batch(outputs: Any, index: int) -> Mapping[str, Any]:
    if not isinstance(outputs, Mapping):
        raise TypeError(
            f"forward(micro_batch) must return a mapping with loss, scores, groups (and labels, weights, "
            f"example_losses as the constraints need), got {type(outputs).__name__} for micro-batch {index}"
        )
    missing = {"loss", "scores", "groups"} - set(outputs)
    unknown = set(outputs) - _BATCH_KEYS
    if missing or unknown:
        what = f"missing {sorted(missing)}" if missing else f"unknown keys {sorted(unknown)}"
        raise ValueError(
            f"forward(micro_batch) returned {what} for micro-batch {index}; it returns the keyword arguments of "
            f"ConstrainedOptimizer.step: {sorted(_BATCH_KEYS)}"
        )
    return outputs


def _rng_states() -> tuple[Tensor, list[Tensor] | None]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda


def _restore_rng(states: tuple[Tensor, list[Tensor] | None]) -> None:
    torch.set_rng_state(states[0])
    if states[1] is not None:
        torch.cuda.set_rng_state_all(states[1])


def accumulated_step(
    opt: ConstrainedOptimizer,
    micro_batches: Iterable[Any],
    forward: Callable[[Any], Mapping[str, Any]],
    *,
    no_sync: Callable[[], AbstractContextManager[Any]] | None = None,
) -> StepResult:
    r"""One constrained step on the union of ``micro_batches``, equal to ``opt.step`` on the whole batch.

    Pass 1 runs ``forward`` on every micro-batch under ``torch.no_grad`` and sums their ``(G, K)`` tables (all-reduced
    once with the optimizer's ``stats_reducer``); pass 2 runs ``forward`` again on each micro-batch and backpropagates
    its share: ``(n_k / n) · loss_k`` plus the constraint term against the whole table (:func:`carry_gradient`),
    ``W`` evaluated once at it; then one optimizer step and the dual step, exactly as
    :meth:`~fairopt.optim.ConstrainedOptimizer.step` (which takes the last micro-batch, so clipping, the grad scaler,
    ``heldout=``, the schedule and the result are its own). Memory: one micro-batch's graph at a time. Cost: one
    extra forward per micro-batch, without a graph.

    The random state is replayed for pass 2 (dropout draws the same masks in both passes), so with a deterministic
    ``forward`` the two passes see the same scores. Batch-norm layers in train mode update their running statistics
    in both passes (their batch statistics, hence the scores, are unaffected).

    Args:
        opt: the optimizer (``dual_update="simultaneous"``, its default).
        micro_batches: the micro-batches, iterated twice (a sequence, or an iterable that is read once into a list).
        forward: ``forward(micro_batch) -> mapping`` of :meth:`~fairopt.optim.ConstrainedOptimizer.step`'s keyword
            arguments for that micro-batch: ``loss`` (the micro-batch's *mean* loss, a differentiable scalar),
            ``scores (n_k,)``, ``groups``, and ``labels``, ``weights``, ``example_losses`` as the constraints need.
            It runs the model (and must not call ``backward``).
        no_sync: optional context manager factory for the backward passes before the last one, e.g. a DDP model's
            ``model.no_sync``, so the gradients are all-reduced once (correct without it, only slower).

    Returns:
        The :class:`~fairopt.optim.StepResult` of the whole batch: ``loss`` its mean loss (``Σ_k (n_k/n) loss_k``),
        ``objective`` the whole batch's primal objective, ``value``/``dual_value`` read on the whole table.

    Raises:
        ValueError: no micro-batches; ``dual_update="alternating"`` (its dual step would have to precede every
            micro-batch's backward; use the default ``"simultaneous"``); a ``forward`` output without ``loss``,
            ``scores`` or ``groups``, or with unknown keys; and what :meth:`~fairopt.optim.ConstrainedOptimizer.step`
            raises. TypeError: ``forward`` does not return a mapping.
    """
    batches = micro_batches if isinstance(micro_batches, Sequence) else list(micro_batches)
    if len(batches) == 0:
        raise ValueError("micro_batches is empty; pass the micro-batches of one step")
    if opt.dual_update != "simultaneous":
        raise ValueError(
            f"accumulated steps need dual_update='simultaneous' (got {opt.dual_update!r}): an alternating dual step "
            "would have to come before the backward pass of every micro-batch"
        )
    opt._check_earlier_gradients()  # a stray loss.backward() before the first micro-batch (whose are there by design)
    cs, reducer = opt.constraint_set, opt.stats_reducer
    rng = _rng_states()
    local: GroupStats | None = None
    rows: list[int] = []
    with torch.no_grad():  # pass 1: the whole batch's table, no graph kept
        for k, micro in enumerate(batches):
            out = _batch(forward(micro), k)
            measured = cs.measure(
                out["scores"],
                groups=out["groups"],
                labels=out.get("labels"),
                weights=out.get("weights"),
                example_losses=out.get("example_losses"),
                validate_args=opt.validate_args,
            )
            local = measured if local is None else local + measured
            rows.append(as_score_vector(out["scores"]).shape[0])
    assert local is not None
    total = sum(rows)
    if total == 0:
        raise ValueError("the micro-batches hold no rows")
    whole = _WholeBatch(
        local.detach() if reducer is None else reducer.reduce(local),
        1.0 if reducer is None else reducer.gradient_scale,
        reducer,
    )
    _restore_rng(rng)  # pass 2 replays pass 1's random draws (dropout masks)
    shares: list[Tensor] = []
    w0 = opt.objective_weight.detach()  # the λ_0 every micro-batch's objective uses (no dual step before the last)
    scaler = opt.grad_scaler
    for k, micro in enumerate(batches[:-1]):  # pass 2, all but the last: backward only
        with nullcontext() if no_sync is None else no_sync():
            out = _batch(forward(micro), k)
            share = out["loss"] * (rows[k] / total)  # the whole batch's mean loss is Σ_k (n_k / n) loss_k
            opt._check_loss(share)
            part = cs.measure(
                out["scores"],
                groups=out["groups"],
                labels=out.get("labels"),
                weights=out.get("weights"),
                example_losses=out.get("example_losses"),
                validate_args=opt.validate_args,
            )
            # Generic path (same value and gradient as step's W · T form): the values at the whole table.
            objective = opt.player.primal_objective(share, cs.evaluate(whole.primal_table(part)))
            (objective if scaler is None else scaler.scale(objective)).backward()
        shares.append(share.detach())
    last = len(batches) - 1
    out = dict(_batch(forward(batches[last]), last))
    out["loss"] = out["loss"] * (rows[last] / total)
    # The last micro-batch goes through step itself, with the accumulated table standing in for its own.
    opt.stats_reducer = whole
    try:
        result = opt.step(**out)
    finally:
        opt.stats_reducer = reducer
    earlier = torch.stack(shares).sum() if shares else torch.zeros_like(result.loss)
    return replace(
        result,
        loss=result.loss + earlier.to(result.loss),
        objective=result.objective + (w0.to(result.objective) * earlier.to(result.objective)),
    )
