r"""Streaming evaluation of a model on a dataset: one exact ``GroupStats`` table, then a fairness report.

:func:`collect_stats` runs the model over every batch under ``torch.no_grad()`` (an ``nn.Module`` is put in eval
mode for the pass and restored after), reduces each batch to its ``(G, 9)`` :class:`~fairopt.stats.GroupStats`
and ``(G, 7)`` :class:`~fairopt.validation.moments.SecondMoments` tables on the model's device, and adds them up.
Every column is a sum over examples, so the result is *exactly* the table of the whole dataset, whatever the
batching (no per-batch averaging); nothing is copied to the host until the end (the per-batch value checks of
:func:`fairopt.group_stats` do one sync each; ``validate=False`` skips them).

:func:`evaluate` then builds a :class:`~fairopt.validation.report.FairnessReport`.

The model is any callable ``model(x) -> scores`` returning ``(N,)`` (or ``(N, 1)``) logits: an ``nn.Module``, a
function, or a stochastic classifier (a callable that draws a model per example or per call: the table then
counts one draw per example, whose rates are unbiased for the randomized classifier's rates). To evaluate stored
scores, pass ``model=lambda s: s`` with the scores as ``x``. Under ``torch.distributed``, pass ``all_reduce=True``:
each rank evaluates its shard and the tables are summed over ranks before anything is computed from them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from fairopt.constraints.base import Constraint
from fairopt.groups import Groups
from fairopt.stats import GroupStats, group_stats
from fairopt.validation.batches import Unpack, default_unpack, iterate_batches, move_to
from fairopt.validation.moments import SecondMoments, second_moments
from fairopt.validation.options import ReportOptions
from fairopt.validation.report import DEFAULT_RATES, FairnessReport, resolve_group_names

__all__ = ["collect_stats", "evaluate", "log_loss"]

LossFn = Callable[[Tensor, Tensor], Tensor]
_PROGRESS_MIN_BATCHES = 20


def log_loss(scores: Tensor, labels: Tensor) -> Tensor:
    """Per-example binary cross-entropy of logits, ``(N,)`` in nats: the default loss of the report's mean loss."""
    return F.binary_cross_entropy_with_logits(scores, labels.to(scores.dtype), reduction="none")


def _model_device(model: Any) -> torch.device | None:
    if isinstance(model, nn.Module):
        for tensor in (*model.parameters(), *model.buffers()):
            return tensor.device
    return None


@contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    if not isinstance(model, nn.Module):
        yield
        return
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _scores(output: Any, n: int) -> Tensor:
    if not isinstance(output, Tensor):
        raise TypeError(
            f"the model returned {type(output).__name__}, expected a tensor of (N,) logits; "
            "wrap it, e.g. model=lambda x: net(x)[0]"
        )
    if output.dim() == 2 and output.shape[1] == 1:
        output = output.squeeze(1)
    if output.dim() != 1 or output.shape[0] != n:
        raise ValueError(
            f"the model returned shape {tuple(output.shape)}, expected ({n},) logits for {n} examples "
            "(a positive prediction is score > threshold); for two-class outputs pass "
            "model=lambda x: net(x)[:, 1] - net(x)[:, 0]"
        )
    return output.detach()


def _label_count(labels: Any) -> int:
    if not isinstance(labels, Tensor) or labels.dim() != 1:
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels of a batch must be a (N,) tensor, got {shape}")
    return labels.shape[0]


def collect_stats(
    model: Callable[[Any], Tensor],
    data: Any,
    num_groups: int,
    *,
    threshold: float = 0.0,
    loss_fn: LossFn | None = log_loss,
    frequency_weights: bool = False,
    device: torch.device | str | None = None,
    batch_size: int = 4096,
    unpack: Unpack | None = None,
    progress: bool | None = None,
    validate: bool | None = None,
    all_reduce: bool = False,
) -> tuple[GroupStats, SecondMoments]:
    """Stream ``data`` through ``model`` and return the exact tables of the whole dataset.

    Args:
        model: ``model(x) -> (N,)`` logits (module docstring).
        data: a DataLoader, an iterable of batches, a Dataset, or tensors (:mod:`fairopt.validation.batches`).
        num_groups: G, fixed up front (an absent group is a zero row).
        threshold: decision threshold in logit units (a positive prediction is ``score > threshold``).
        loss_fn: per-example loss ``loss_fn(scores, labels) -> (N,)`` for the mean-loss column, called with float64
            scores (default :func:`log_loss`); ``None`` records no loss.
        frequency_weights: weights are replication counts rather than sampling weights (affects intervals only).
        device: where to run the model; default: the module's parameter device, else where the batch is.
        batch_size: batch size when ``data`` is a Dataset or tensors.
        unpack: ``unpack(batch) -> (x, labels, groups, weights_or_None)`` for other batch layouts.
        progress: show a tqdm bar; ``None`` (default): when the data has >= 20 batches and stderr is a terminal.
        validate: value checks of :func:`fairopt.group_stats` (``None``: the global default).
        all_reduce: under ``torch.distributed`` with each rank evaluating its own shard (e.g. a
            ``DistributedSampler``), sum both tables over the ranks in one collective, so that every rank holds
            the tables of the whole dataset (ratios are never averaged). A no-op without a process group.

    Returns:
        ``(stats, moments)``: a ``(G, 9)`` float64 :class:`GroupStats` and a ``(G, 7)`` :class:`SecondMoments`, on
        the CPU.

    Raises:
        TypeError, ValueError: unreadable data or batches, a model output that is not ``(N,)`` logits, and the
            input errors of :func:`fairopt.group_stats` (labels not in {0, 1}, group ids out of range, ...).
    """
    unpack = unpack or default_unpack
    run_device = torch.device(device) if device is not None else _model_device(model)
    batches, length = iterate_batches(data, batch_size)
    show = progress if progress is not None else (None if (length or 0) >= _PROGRESS_MIN_BATCHES else False)
    stats: GroupStats | None = None
    moments: SecondMoments | None = None
    with torch.no_grad(), _eval_mode(model):
        for batch in tqdm(batches, total=length, disable=(not show) if show is not None else None, leave=False):
            x, labels, groups, weights = unpack(batch)
            n = _label_count(labels)
            scores = _scores(model(move_to(x, run_device)), n)
            # Reduce in float64 (MPS has none: its batches are reduced on the CPU). A float64 copy of (N,) scores is
            # cheap next to the forward pass, keeps predictions identical (float32 -> float64 is exact), and makes
            # the proxy and loss sums accurate to ~1e-12 instead of float32's ~1e-7 per example.
            where = torch.device("cpu") if scores.device.type == "mps" else scores.device
            scores = scores.to(where, torch.float64)
            labels, groups = labels.to(where), groups.to(where)
            w = None if weights is None else weights.to(where, torch.float64)
            loss = None if loss_fn is None else loss_fn(scores, labels).detach().double().reshape(-1)
            batch_stats = group_stats(
                scores, labels, groups, num_groups, weights=w, loss=loss, threshold=threshold, validate=validate
            )
            batch_moments = second_moments(
                scores,
                labels,
                groups,
                num_groups,
                weights=w,
                loss=loss,
                threshold=threshold,
                frequency_weights=frequency_weights,
                stats=batch_stats,
            )
            stats = batch_stats if stats is None else stats + batch_stats
            moments = batch_moments if moments is None else moments + batch_moments
    if stats is None or moments is None:  # no batches (e.g. an empty shard): zero tables, where NCCL wants them
        where = run_device if run_device is not None and run_device.type == "cuda" else None
        stats, moments = GroupStats.zeros(num_groups, device=where), SecondMoments.zeros(num_groups, device=where)
    if all_reduce:
        stats, moments = _sum_over_ranks(stats, moments)
    return stats.to("cpu"), moments.to("cpu")


def _sum_over_ranks(stats: GroupStats, moments: SecondMoments) -> tuple[GroupStats, SecondMoments]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return stats, moments
    both = torch.cat([stats.table.detach(), moments.table.to(stats.table)], dim=1)
    dist.all_reduce(both, op=dist.ReduceOp.SUM)
    k = stats.table.shape[1]
    return GroupStats(both[:, :k]), SecondMoments(both[:, k:])


def evaluate(
    model: Callable[[Any], Tensor],
    data: Any,
    constraints: Constraint | Sequence[Constraint] = (),
    *,
    num_groups: int | None = None,
    group_names: Sequence[str] | Groups | None = None,
    split: str | None = None,
    options: ReportOptions | None = None,
    rates: Sequence[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
    threshold: float = 0.0,
    loss_fn: LossFn | None = log_loss,
    frequency_weights: bool = False,
    device: torch.device | str | None = None,
    batch_size: int = 4096,
    unpack: Unpack | None = None,
    progress: bool | None = None,
    validate: bool | None = None,
    all_reduce: bool = False,
) -> FairnessReport:
    """Evaluate a model on a dataset: per-group rates and constraint entries with intervals and verdicts.

    Example::

        report = evaluate(model, heldout_loader, [EqualOpportunity(0.05)], group_names=groups, split="held-out")
        print(report.to_markdown()); report.group_table(); report.to_json("heldout.json")

    Args:
        model, data: as :func:`collect_stats`.
        constraints: one constraint or several (checked against G before any batch is run).
        num_groups: G; may be left out when ``group_names`` gives it.
        group_names: G names, or the :class:`~fairopt.groups.Groups` that encoded the ids.
        split: the data's role (``"train"``, ``"held-out"``, ``"test"``); ``"train"`` turns on the illusion-of-
            fairness check.
        options: :class:`ReportOptions` (confidence level, interval methods, bootstrap size and seed).
        rates: rates of the group table (default :data:`~fairopt.validation.report.DEFAULT_RATES`).
        metadata: JSON-serializable extras stored in the report (``threshold`` and ``loss`` are added).
        threshold, loss_fn, frequency_weights, device, batch_size, unpack, progress, validate, all_reduce: as
            :func:`collect_stats`.

    Returns:
        :class:`~fairopt.validation.report.FairnessReport`.

    Raises:
        ValueError: no G given, names that disagree with G, a constraint referring to a group ``>= G``, and the
            errors of :func:`collect_stats`.
    """
    names = resolve_group_names(group_names, num_groups)
    constraint_list = [constraints] if isinstance(constraints, Constraint) else list(constraints)
    for c in constraint_list:
        c.check_num_groups(len(names))
    options = options or ReportOptions()
    stats, moments = collect_stats(
        model,
        data,
        len(names),
        threshold=threshold,
        loss_fn=loss_fn,
        frequency_weights=frequency_weights,
        device=device,
        batch_size=batch_size,
        unpack=unpack,
        progress=progress,
        validate=validate,
        all_reduce=all_reduce,
    )
    extra = {
        "threshold": float(threshold),
        "loss": None if loss_fn is None else getattr(loss_fn, "__name__", type(loss_fn).__name__),
        "frequency_weights": bool(frequency_weights),
        **dict(metadata or {}),
    }
    if rates is None and loss_fn is None:
        rates = [r for r in DEFAULT_RATES if r != "mean_loss"]
    return FairnessReport.from_stats(
        stats,
        constraint_list,
        moments=moments,
        group_names=names,
        split=split,
        options=options,
        rates=rates,
        metadata=extra,
    )
