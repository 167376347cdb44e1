r"""Streaming evaluation of a model on a dataset: one exact ``GroupStats`` table, then a fairness report.

:func:`collect_stats` runs the model over every batch under ``torch.no_grad()`` (an ``nn.Module`` is put in eval
mode for the pass and restored after), reduces each batch to its ``(G, 9)`` :class:`~fairopt.stats.GroupStats`
and ``(G, 7)`` :class:`~fairopt.validation.SecondMoments` tables on the model's device, and adds them up.
Every column is a sum over examples, so the result is *exactly* the table of the whole dataset, whatever the
batching (no per-batch averaging); nothing is copied to the host until the end (the per-batch value checks of
:func:`fairopt.group_stats` do one sync each; ``validate_args=False`` skips them).

:func:`evaluate` then builds a :class:`~fairopt.validation.report.fairness_report.FairnessReport`.

The model is any callable ``model(x) -> scores`` returning ``(N,)`` (or ``(N, 1)``) logits: an ``nn.Module``, a
function, or a :class:`~fairopt.optim.StochasticClassifier` (from ``records.stochastic_classifier(model)``), which is
evaluated in expectation: the table is the probability-weighted sum of its candidates' tables
(:func:`~fairopt.optim.stochastic.expected_tables`, the one computation of an expected table; exact expected counts;
no example ids needed; its second moments are the same weighted sums, so intervals treat the expected counts as
counts, which errs wide). Another randomized model (a callable that draws per example or per call) gives a
table of one draw per example, whose rates are unbiased for its rates. To evaluate stored scores, pass
``model=lambda s: s`` with the scores as ``x``.

Scores are always read as logits, never guessed per batch; one ``UserWarning`` says when they look like
probabilities: the module ends in ``nn.Sigmoid``/``nn.Softmax``; or the first batch's output comes out of a sigmoid
or softmax (watched by a torch function mode during that forward pass, so ``torch.sigmoid`` in ``forward`` is seen);
or, for a model that is a plain function (whose layers cannot be seen) at ``threshold=0``, every score of the whole
evaluation (20 or more) lies in [0, 1] and they span at least half of it.

Under ``torch.distributed``, pass ``all_reduce=True``: each rank evaluates its shard and the tables are summed over
ranks before anything is computed from them.

**Distributed shards are counted exactly once.** ``torch.utils.data.DistributedSampler`` (``drop_last=False``, its
default) pads the index list by repeating its first rows so that every rank gets the same number: counted as they
come, the table would change with the world size, and a duplicated row could tip a rate. When ``data`` is a
``DataLoader`` over a ``DistributedSampler`` (its ``sampler``, or the sampler of its ``batch_sampler``),
:func:`collect_stats` counts only the first
``len(range(rank, len(dataset), num_replicas))`` examples of the rank's stream (the padding is the tail of each
rank's share), so the all-reduced table equals the single-process table for any world size. A
``DistributedSampler(drop_last=True)`` leaves rows out instead (when the dataset does not divide evenly), so it is
refused, as is a ``DataLoader(drop_last=True)`` whose last batch is incomplete. Other shardings must be disjoint
and cover the dataset: fairopt cannot see their padding.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from fairopt._batch_checks import LabelValueError
from fairopt._deprecation import renamed_kwargs
from fairopt._validation import (
    MIN_SCORES_FOR_PROBABILITY_CHECK,
    PROBABILITY_HINT,
    OutputOp,
    ends_in_probabilities,
)
from fairopt.constraints.base import Constraint
from fairopt.groups import Groups
from fairopt.optim.stochastic import StochasticClassifier, expected_tables
from fairopt.stats import GroupStats, group_stats
from fairopt.validation.measure.batches import Unpack, default_unpack, iterate_batches, move_to
from fairopt.validation.measure.moments import SecondMoments, second_moments
from fairopt.validation.report.fairness_report import DEFAULT_RATES, FairnessReport, resolve_group_names
from fairopt.validation.report.options import ReportOptions

__all__ = ["collect_stats", "eval_mode", "evaluate", "log_loss"]

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
def eval_mode(model: Any) -> Iterator[None]:
    """``model`` in eval mode inside the block, the mode of each of its submodules restored after (also on an error;
    a layer frozen in eval mode stays frozen): a held-out batch must
    not move the batch-norm running statistics of the model it judges, nor use the batch's own statistics. A callable
    that is not an ``nn.Module`` is left as it is."""
    if not isinstance(model, nn.Module):
        yield
        return
    # each submodule's own mode (model.train(True) would also unfreeze a batch-norm layer kept in eval on purpose)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


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
            "model=lambda x: net(x).diff(dim=1).squeeze(1) (logit 1 - logit 0, one forward pass)"
        )
    return output.detach()


def _label_count(labels: Any) -> int:
    if not isinstance(labels, Tensor) or labels.dim() != 1:
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels of a batch must be a (N,) tensor, got {shape}")
    return labels.shape[0]


def _with_order_hint(
    error: ValueError, batch: Any, unpack: Unpack, labels: Any, groups: Any, num_groups: int
) -> ValueError:
    """``error`` with a hint when a positional batch holds its group ids before its labels: then the labels
    read are group ids (the label check fails) and the group ids read are 0/1. Only where swapping the two would
    pass both checks (so not for {-1, 1} labels, nor for a num_groups that is too small)."""
    if not (unpack is default_unpack and isinstance(batch, Sequence) and isinstance(error, LabelValueError)):
        return error
    if not (isinstance(labels, Tensor) and isinstance(groups, Tensor)) or labels.is_floating_point():
        return error
    labels_are_ids = bool(((labels >= 0) & (labels < num_groups)).all())
    groups_are_labels = bool(((groups == 0) | (groups == 1)).all())
    if not (labels_are_ids and groups_are_labels):
        return error
    return LabelValueError(
        f"{error}. Batches are read by position as (x, labels, groups[, weights]): if yours hold the groups "
        "before the labels, reorder them, pass dicts ({'x': ..., 'labels': ..., 'groups': ...}) or "
        "unpack=lambda batch: (x, labels, groups, weights_or_None)"
    )


@renamed_kwargs(validate="validate_args")
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
    validate_args: bool | None = None,
    all_reduce: bool = False,
) -> tuple[GroupStats, SecondMoments]:
    """Stream ``data`` through ``model`` and return the exact tables of the whole dataset.

    Args:
        model: ``model(x) -> (N,)`` logits (module docstring).
        data: a DataLoader, an iterable of batches, a Dataset, or tensors (:mod:`fairopt.validation.measure.batches`).
        num_groups: G, fixed up front (an absent group is a zero row).
        threshold: decision threshold in logit units (a positive prediction is ``score > threshold``).
        loss_fn: per-example loss ``loss_fn(scores, labels) -> (N,)`` for the mean-loss column, called with float64
            scores (default :func:`log_loss`); ``None`` records no loss.
        frequency_weights: weights are replication counts rather than sampling weights (affects intervals only).
        device: where to run the model; default: the module's parameter device, else where the batch is.
        batch_size: batch size when ``data`` is a Dataset or tensors.
        unpack: ``unpack(batch) -> (x, labels, groups, weights_or_None)`` for other batch layouts.
        progress: show a tqdm bar; ``None`` (default): when the data has >= 20 batches and stderr is a terminal.
        validate_args: value checks of :func:`fairopt.group_stats` (``None``: the global default); ``validate=`` is
            its deprecated name.
        all_reduce: under ``torch.distributed`` with each rank evaluating its own shard, sum both tables over
            the ranks in one collective, so that every rank holds the tables of the whole dataset (ratios are never
            averaged). A no-op without a process group. Shard with a ``DataLoader(dataset,
            sampler=DistributedSampler(dataset, shuffle=False))``: its padding rows are not counted (module
            docstring); with any other sharding, the shards must be disjoint and cover the dataset.

    Returns:
        ``(stats, moments)``: a ``(G, 9)`` float64 :class:`GroupStats` and a ``(G, 7)`` :class:`SecondMoments`, on
        the CPU.

    Raises:
        TypeError, ValueError: unreadable data or batches, a model output that is not ``(N,)`` logits, a
            loader that leaves rows out (``drop_last=True``, module docstring), and the input errors of
            :func:`fairopt.group_stats` (labels not in {0, 1}, group ids out of range, ...).
    """
    unpack = unpack or default_unpack
    run_device = torch.device(device) if device is not None else _model_device(model)
    remaining = _unpadded_count(data)
    output_layer = ends_in_probabilities(model.model if isinstance(model, StochasticClassifier) else model)
    # A module's structure tells probabilities apart (checked above); the range test is for plain callables only,
    # since a fresh or weak module's logits can all sit inside [0, 1].
    check_range = output_layer is None and not isinstance(model, nn.Module)
    # The warnings below use stacklevel=3: past the renamed_kwargs wrapper, so they name the caller's line.
    if output_layer is not None:
        warnings.warn(
            f"the model ends in {output_layer}: its outputs look like probabilities. {PROBABILITY_HINT}",
            UserWarning,
            stacklevel=3,
        )
    count = 0
    low_high: list[Tensor] = []  # running min and max of the scores, to see whether all lie in [0, 1]
    batches, length = iterate_batches(data, batch_size)
    show = progress if progress is not None else (None if (length or 0) >= _PROGRESS_MIN_BATCHES else False)
    stats: GroupStats | None = None
    moments: SecondMoments | None = None
    with torch.no_grad(), eval_mode(model):
        for batch in tqdm(batches, total=length, disable=(not show) if show is not None else None, leave=False):
            x, labels, groups, weights = unpack(batch)
            n = _label_count(labels)
            inputs = move_to(x, run_device)
            watch = OutputOp() if output_layer is None and stats is None else None  # first batch: see the output op
            with watch or nullcontext():
                outputs = (
                    model.candidate_outputs(inputs)
                    if isinstance(model, StochasticClassifier)
                    else [(1.0, model(inputs))]
                )
            made = None if watch is None else next((m for _, o in outputs if (m := watch.made(o))), None)
            if made is not None:
                output_layer, check_range = made, False
                warnings.warn(
                    f"the model's output comes out of a {made}: it looks like probabilities. {PROBABILITY_HINT}",
                    UserWarning,
                    stacklevel=3,
                )
            weighted_scores = [(p, _scores(out, n)) for p, out in outputs]
            if remaining is not None:  # a DistributedSampler's padding is the tail of the rank's stream
                keep = min(n, remaining)
                remaining -= keep
                if keep < n:
                    weighted_scores = [(p, scores[:keep]) for p, scores in weighted_scores]
                    labels, groups = labels[:keep], groups[:keep]
                    weights = None if weights is None else weights[:keep]
                    n = keep
            count += n
            if n and check_range:
                for _, scores in weighted_scores:
                    lo, hi = torch.aminmax(scores)
                    low_high = [lo, hi] if not low_high else [low_high[0].minimum(lo), low_high[1].maximum(hi)]

            tables = partial(
                _batch_tables,
                labels=labels,
                groups=groups,
                weights=weights,
                num_groups=num_groups,
                threshold=threshold,
                loss_fn=loss_fn,
                frequency_weights=frequency_weights,
                validate_args=validate_args,
            )
            # A stochastic classifier is evaluated in expectation: its candidates' tables weighted by their
            # probabilities (exact expected counts, no sampling noise and no example ids needed), added to the totals.
            try:
                stats, moments = expected_tables(
                    weighted_scores, tables, into=None if stats is None else (stats, moments)
                )
            except ValueError as error:
                raise _with_order_hint(error, batch, unpack, labels, groups, num_groups) from None
    enough = count >= MIN_SCORES_FOR_PROBABILITY_CHECK and threshold == 0.0 and low_high
    # In [0, 1] *and* spread over half of it: near-constant logits can sit in a narrow band inside [0, 1].
    looks = (low_high[0] >= 0) & (low_high[1] <= 1) & (low_high[1] - low_high[0] >= 0.5) if enough else None
    if looks is not None and bool(looks):  # one sync, after the last batch
        warnings.warn(
            f"every one of the {count} scores lies in [0, 1]: they look like probabilities. {PROBABILITY_HINT}",
            UserWarning,
            stacklevel=3,
        )
    if stats is None or moments is None:  # no batches (e.g. an empty shard): zero tables, where NCCL wants them
        where = run_device if run_device is not None and run_device.type == "cuda" else None
        stats, moments = GroupStats.zeros(num_groups, device=where), SecondMoments.zeros(num_groups, device=where)
    if all_reduce:
        stats, moments = _sum_over_ranks(stats, moments)
    return stats.to("cpu"), moments.to("cpu")


def _batch_tables(
    scores: Tensor,
    per_example: Tensor | None,
    *,
    labels: Tensor,
    groups: Tensor,
    weights: Tensor | None,
    num_groups: int,
    threshold: float,
    loss_fn: LossFn | None,
    frequency_weights: bool,
    validate_args: bool | None,
) -> tuple[GroupStats, SecondMoments]:
    """The ``GroupStats`` and ``SecondMoments`` of one candidate's scores on a batch (the ``tables`` of
    :func:`~fairopt.optim.stochastic.expected_tables`).

    A :class:`~fairopt.optim.StochasticClassifier`'s probabilities are numbers, so ``per_example`` is None and
    ``expected_tables`` scales both tables; per-example probabilities would need the second moments of a draw per
    example, which these tables do not hold (refused).
    """
    if per_example is not None:
        raise ValueError("collect_stats mixes candidates with one probability each, not per-example probabilities")
    # Reduce in float64 (MPS has none: its batches are reduced on the CPU). A float64 copy of (N,) scores is cheap
    # next to the forward pass, keeps predictions identical (float32 -> float64 is exact), and makes the proxy and
    # loss sums accurate to ~1e-12 instead of float32's ~1e-7 per example.
    where = torch.device("cpu") if scores.device.type == "mps" else scores.device
    scores = scores.to(where, torch.float64)
    labels, groups = labels.to(where), groups.to(where)
    w = None if weights is None else weights.to(where, torch.float64)
    loss = None if loss_fn is None else loss_fn(scores, labels).detach().double().reshape(-1)
    stats = group_stats(
        scores,
        labels=labels,
        groups=groups,
        num_groups=num_groups,
        weights=w,
        example_losses=loss,
        threshold=threshold,
        validate_args=validate_args,
    )
    moments = second_moments(
        scores,
        labels=labels,
        groups=groups,
        num_groups=num_groups,
        weights=w,
        example_losses=loss,
        threshold=threshold,
        frequency_weights=frequency_weights,
        stats=stats,
    )
    return stats, moments


def _unpadded_count(data: Any) -> int | None:
    """For a ``DataLoader`` over a ``DistributedSampler`` (as its ``sampler`` or inside its ``batch_sampler``): how
    many of this rank's examples are real rows (the rest is the sampler's padding); else None.

    Raises:
        ValueError: a loader that leaves rows out: ``DistributedSampler(drop_last=True)`` or ``DataLoader(...,
            drop_last=True)`` (or a ``BatchSampler`` with it) when the rows do not fill the last batch.
    """
    if not isinstance(data, DataLoader):
        return None
    batches = data.batch_sampler
    drop_last = bool(getattr(batches, "drop_last", False))
    batch_size = getattr(batches, "batch_size", None)
    sampler = getattr(batches, "sampler", data.sampler)
    try:
        rows = len(sampler)  # type: ignore[arg-type]
    except TypeError:
        rows = None
    if drop_last and batch_size and rows is not None and rows % batch_size:
        raise ValueError(
            f"the DataLoader drops the last {rows % batch_size} of its {rows} rows (drop_last=True), so the "
            "evaluation would leave them out; evaluate with drop_last=False"
        )
    if not isinstance(sampler, DistributedSampler):
        return None
    n = len(sampler.dataset)  # type: ignore[arg-type]
    if sampler.drop_last and n % sampler.num_replicas:
        raise ValueError(
            f"DistributedSampler(drop_last=True) leaves {n % sampler.num_replicas} of {n} rows out of the "
            "evaluation, so the result would depend on the world size; build the evaluation sampler with "
            "drop_last=False (fairopt does not count its padding rows)"
        )
    return len(range(sampler.rank, n, sampler.num_replicas))


def _sum_over_ranks(stats: GroupStats, moments: SecondMoments) -> tuple[GroupStats, SecondMoments]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return stats, moments
    both = torch.cat([stats.table.detach(), moments.table.to(stats.table)], dim=1)
    dist.all_reduce(both, op=dist.ReduceOp.SUM)
    k = stats.table.shape[1]
    return GroupStats(both[:, :k]), SecondMoments(both[:, k:])


@renamed_kwargs(validate="validate_args")
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
    validate_args: bool | None = None,
    all_reduce: bool = False,
) -> FairnessReport:
    """Evaluate a model on a dataset: per-group rates and constraint entries with intervals and verdicts.

    Example::

        report = evaluate(model, heldout_loader, [EqualOpportunity(0.05)], group_names=groups, split="validation")
        print(report.to_markdown()); report.group_table(); report.to_json("heldout.json")

    Args:
        model: ``model(x) -> (N,)`` logits, as :func:`collect_stats`.
        data: batches or tensors, as :func:`collect_stats`.
        constraints: one constraint or several (checked against G before any batch is run).
        num_groups: G; may be left out when ``group_names`` gives it.
        group_names: G names, or the :class:`~fairopt.groups.Groups` that encoded the ids.
        split: the data's role (``"train"``, ``"validation"``, ``"audit"``, ``"test"``); ``"train"`` turns on the
            illusion-of-fairness check.
        options: :class:`ReportOptions` (confidence level, interval methods, bootstrap size and seed).
        rates: rates of the group table (default :data:`~fairopt.validation.report.fairness_report.DEFAULT_RATES`).
        metadata: JSON-serializable extras stored in the report (``threshold`` and ``loss`` are added).
        threshold: as :func:`collect_stats`.
        loss_fn: as :func:`collect_stats`.
        frequency_weights: as :func:`collect_stats`.
        device: as :func:`collect_stats`.
        batch_size: as :func:`collect_stats`.
        unpack: as :func:`collect_stats`.
        progress: as :func:`collect_stats`.
        validate_args: as :func:`collect_stats` (``validate=``: its deprecated name).
        all_reduce: as :func:`collect_stats`.

    Returns:
        :class:`~fairopt.validation.report.fairness_report.FairnessReport`.

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
        validate_args=validate_args,
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
