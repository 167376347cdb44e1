r"""The ``(G, 9)`` table as a ``torch.library`` custom op: ``torch.ops.fairopt.group_stats`` and its backward.

Registered with :func:`torch.library.custom_op`, a fake (meta) implementation and :func:`torch.library.
register_autograd`, so ``torch.compile(fullgraph=True)`` traces a function that calls it without a graph break and
AOT autograd sees its backward (``torch.ops.fairopt.group_stats_backward``, itself a custom op with a fake
implementation). Both ops take ``backend="torch"`` (index-add segment sums, any device) or ``backend="triton"`` (the
kernels of :mod:`fairopt.kernels.group_stats_triton`, imported on first use).

Op arguments (all ``(N,)`` tensors on one device):

- ``scores`` floating logits; ``labels`` bool/integer/floating (a label is positive when ``> 0``); ``groups``
  integer ids (ids outside ``[0, num_groups)`` are dropped); ``weights`` and ``loss`` optional floating;
- ``positive``/``negative``: for ``proxy == "values"`` only, the per-example proxy values of a user function
  (``negative=None``: normalized, the negative cells are derived as count - positive);
- ``num_groups`` (G), ``proxy`` (one of :data:`~fairopt.kernels._common.KINDS`), ``temperature`` and
  ``threshold`` (logit units), ``dtype`` of the table, ``backend``, ``strategy`` (``"auto"``, ``"block"``,
  ``"atomic"``; Triton only).

Gradients: ``scores`` (built-in proxies; none for ``"hard"``), ``weights``, ``loss``, ``positive``, ``negative``.
Double backward is not supported.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fairopt.kernels._common import (
    accumulator_dtype,
    compute_dtype,
    derive_negative_cells,
    gradient_buffers,
    sums_negative_cells,
)

__all__ = ["group_stats_backward_op", "group_stats_op"]

_LOG2E = 1.4426950408889634  # 1 / ln 2


def _proxy(kind: str, margin: Tensor, temperature: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``positive(m), negative(m)`` and their derivatives in ``m`` for a built-in kind (the formulas of the
    kernels, written in torch)."""
    inv_t = 1.0 / temperature
    z = margin * inv_t
    if kind == "hard":
        pos = (margin > 0).to(margin.dtype)
        zero = torch.zeros_like(margin)
        return pos, 1.0 - pos, zero, zero
    if kind == "sigmoid":
        pos, neg = torch.sigmoid(z), torch.sigmoid(-z)
        d_pos = pos * neg * inv_t
        return pos, neg, d_pos, -d_pos
    if kind == "hinge":
        pos, neg = torch.relu(z + 1.0), torch.relu(1.0 - z)
        return pos, neg, (z + 1.0 > 0).to(z.dtype) * inv_t, (1.0 - z > 0).to(z.dtype) * -inv_t
    if kind == "softplus":
        scale = inv_t * _LOG2E
        return (
            torch.nn.functional.softplus(z) * _LOG2E,
            torch.nn.functional.softplus(-z) * _LOG2E,
            torch.sigmoid(z) * scale,
            torch.sigmoid(-z) * -scale,
        )
    raise ValueError(f"unknown proxy kind {kind!r}")


def _torch_common(
    scores: Tensor, labels: Tensor, groups: Tensor, weights: Tensor | None, num_groups: int, cdt: torch.dtype
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """Group index (0 where invalid), label bit, validity mask, clamped weight (0 where invalid) and the raw weight."""
    g = groups.to(torch.int64)
    valid = (g >= 0) & (g < num_groups)
    g = torch.where(valid, g, 0)
    y = labels if labels.dtype == torch.bool else labels > 0
    w_raw = None if weights is None else weights.to(cdt)
    w = valid.to(cdt) if w_raw is None else torch.where(valid, w_raw.clamp(min=0), 0.0)
    return g, y, valid, w, w_raw


def _torch_forward(
    scores: Tensor,
    labels: Tensor,
    groups: Tensor,
    weights: Tensor | None,
    loss: Tensor | None,
    positive: Tensor | None,
    negative: Tensor | None,
    num_groups: int,
    proxy: str,
    temperature: float,
    threshold: float,
    dtype: torch.dtype,
    strategy: str = "auto",
) -> Tensor:
    """The op's torch implementation (``strategy`` is unused: one reduction, index-add segment sums)."""
    cdt = compute_dtype(scores, weights, loss, positive, negative)
    acc = accumulator_dtype(dtype)
    g, y, _, w, _ = _torch_common(scores, labels, groups, weights, num_groups, cdt)
    margin = scores.to(cdt) - threshold
    if proxy == "values":
        assert positive is not None
        pos, neg = positive.to(cdt), negative
    else:
        pos, neg, _, _ = _proxy(proxy, margin, temperature)
    neg = None if neg is None or not sums_negative_cells(proxy, negative) else neg.to(cdt)  # None: from the counts
    code2 = 2 * g + y
    code4 = 2 * code2 + (margin > 0)
    gsz, device = num_groups, scores.device

    def segment_sum(index: Tensor, values: Tensor, bins: int) -> Tensor:
        return torch.zeros(bins, dtype=acc, device=device).index_add_(0, index, values.to(acc))

    table = torch.zeros((gsz, 9), dtype=acc, device=device)
    table[:, :4] = segment_sum(code4, w, 4 * gsz).view(gsz, 4)
    table[:, 5:8:2] = segment_sum(code2, w * pos, 2 * gsz).view(gsz, 2)
    if neg is None:
        derive_negative_cells(table)
    else:
        table[:, 4:8:2] = segment_sum(code2, w * neg, 2 * gsz).view(gsz, 2)
    if loss is not None:
        table[:, 8] = segment_sum(g, w * loss.to(cdt), gsz)
    return table.to(dtype)


def _torch_backward(
    grad: Tensor,
    scores: Tensor,
    labels: Tensor,
    groups: Tensor,
    weights: Tensor | None,
    loss: Tensor | None,
    positive: Tensor | None,
    negative: Tensor | None,
    num_groups: int,
    proxy: str,
    temperature: float,
    threshold: float,
    needs: tuple[bool, bool, bool, bool, bool],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The backward op's torch implementation: the gather of the grad table, as the Triton backward kernel."""
    cdt = compute_dtype(scores, weights, loss, positive, negative)
    g, y, valid, w, w_raw = _torch_common(scores, labels, groups, weights, num_groups, cdt)
    grad = grad.to(cdt)
    code2 = 2 * g + y
    zero = torch.zeros((), dtype=cdt, device=scores.device)
    g_pos = torch.where(valid, grad[:, 5:8:2].reshape(-1).index_select(0, code2), zero)
    g_neg = torch.where(valid, grad[:, 4:8:2].reshape(-1).index_select(0, code2), zero)
    g_loss = torch.where(valid, grad[:, 8].index_select(0, g), zero)
    # an unneeded gradient is its own empty tensor: custom-op outputs may not alias each other
    d_s, d_w, d_l, d_p, d_n = (scores.new_empty((0,)) for _ in range(5))
    need_ds, need_dw, need_dloss, need_dpos, need_dneg = needs
    if proxy == "values":
        assert positive is not None
        pos = positive.to(cdt)
        if negative is None:
            neg = 1.0 - pos
            d_pos = w * (g_pos - g_neg)
        else:
            neg = negative.to(cdt)
            d_pos = w * g_pos
            if need_dneg:
                d_n = (w * g_neg).to(negative.dtype)
        if need_dpos:
            d_p = d_pos.to(positive.dtype)
    else:
        pos, neg, dpos, dneg = _proxy(proxy, scores.to(cdt) - threshold, temperature)
        if need_ds and proxy != "hard":
            d_s = (w * (dpos * g_pos + dneg * g_neg)).to(scores.dtype)
    if need_dloss and loss is not None:
        d_l = (w * g_loss).to(loss.dtype)
    if need_dw and weights is not None and w_raw is not None:
        d_w = pos * g_pos + neg * g_neg
        if loss is not None:
            d_w = d_w + loss.to(cdt) * g_loss
        d_w = torch.where(valid & (w_raw > 0), d_w, zero).to(weights.dtype)
    return d_s, d_w, d_l, d_p, d_n


class _TorchImplementation:
    """The torch path, with the ``forward``/``backward`` names of :mod:`fairopt.kernels.group_stats_triton`."""

    forward = staticmethod(_torch_forward)
    backward = staticmethod(_torch_backward)


def _implementation(backend: str) -> Any:
    """The module (or namespace) whose ``forward``/``backward`` run ``backend``; Triton is imported on first use."""
    if backend == "triton":
        import fairopt.kernels.group_stats_triton as group_stats_triton

        return group_stats_triton
    return _TorchImplementation


@torch.library.custom_op("fairopt::group_stats", mutates_args=())
def group_stats_op(
    scores: Tensor,
    labels: Tensor,
    groups: Tensor,
    weights: Tensor | None,
    loss: Tensor | None,
    positive: Tensor | None,
    negative: Tensor | None,
    num_groups: int,
    proxy: str,
    temperature: float,
    threshold: float,
    dtype: torch.dtype,
    backend: str,
    strategy: str,
) -> Tensor:
    """The ``(num_groups, 9)`` table in ``dtype`` (see the module docstring for the arguments)."""
    forward = _implementation(backend).forward
    return forward(
        scores, labels, groups, weights, loss, positive, negative, num_groups, proxy, temperature, threshold, dtype,
        strategy,
    )  # fmt: skip


@group_stats_op.register_fake
def _(
    scores: Tensor,
    labels: Tensor,
    groups: Tensor,
    weights: Tensor | None,
    loss: Tensor | None,
    positive: Tensor | None,
    negative: Tensor | None,
    num_groups: int,
    proxy: str,
    temperature: float,
    threshold: float,
    dtype: torch.dtype,
    backend: str,
    strategy: str,
) -> Tensor:
    return scores.new_empty((num_groups, 9), dtype=dtype)


@torch.library.custom_op("fairopt::group_stats_backward", mutates_args=())
def group_stats_backward_op(
    grad: Tensor,
    scores: Tensor,
    labels: Tensor,
    groups: Tensor,
    weights: Tensor | None,
    loss: Tensor | None,
    positive: Tensor | None,
    negative: Tensor | None,
    num_groups: int,
    proxy: str,
    temperature: float,
    threshold: float,
    backend: str,
    needs: list[bool],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(d_scores, d_weights, d_loss, d_positive, d_negative)``; an unneeded one is an empty ``(0,)`` tensor."""
    flags = _needs(needs, weights, loss, positive, negative, proxy)
    backward = _implementation(backend).backward
    return backward(
        grad, scores, labels, groups, weights, loss, positive, negative, num_groups, proxy, temperature, threshold,
        flags,
    )  # fmt: skip


def _needs(
    needs: list[bool],
    weights: Tensor | None,
    loss: Tensor | None,
    positive: Tensor | None,
    negative: Tensor | None,
    proxy: str,
) -> tuple[bool, bool, bool, bool, bool]:
    """The gradients that exist and are asked for, in the op's output order (one rule for every implementation)."""
    values = proxy == "values"
    return (
        bool(needs[0]) and not values and proxy != "hard",
        bool(needs[1]) and weights is not None,
        bool(needs[2]) and loss is not None,
        bool(needs[3]) and values and positive is not None,
        bool(needs[4]) and values and negative is not None,
    )


@group_stats_backward_op.register_fake
def _(
    grad: Tensor,
    scores: Tensor,
    labels: Tensor,
    groups: Tensor,
    weights: Tensor | None,
    loss: Tensor | None,
    positive: Tensor | None,
    negative: Tensor | None,
    num_groups: int,
    proxy: str,
    temperature: float,
    threshold: float,
    backend: str,
    needs: list[bool],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    flags = _needs(needs, weights, loss, positive, negative, proxy)
    return tuple(gradient_buffers(flags, (scores, weights, loss, positive, negative), scores))  # type: ignore[return-value]


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    scores, labels, groups, weights, loss, positive, negative = inputs[:7]
    ctx.save_for_backward(scores, labels, groups, weights, loss, positive, negative)
    ctx.num_groups, ctx.proxy, ctx.temperature, ctx.threshold, _, ctx.backend, _ = inputs[7:]


def _backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
    scores, labels, groups, weights, loss, positive, negative = ctx.saved_tensors
    needs = [ctx.needs_input_grad[i] for i in (0, 3, 4, 5, 6)]
    d_s, d_w, d_l, d_p, d_n = group_stats_backward_op(
        grad, scores, labels, groups, weights, loss, positive, negative, ctx.num_groups, ctx.proxy,
        ctx.temperature, ctx.threshold, ctx.backend, needs,
    )  # fmt: skip
    flags = _needs(needs, weights, loss, positive, negative, ctx.proxy)
    d_s, d_w, d_l, d_p, d_n = (t if f else None for t, f in zip((d_s, d_w, d_l, d_p, d_n), flags))
    return d_s, None, None, d_w, d_l, d_p, d_n, None, None, None, None, None, None, None


group_stats_op.register_autograd(_backward, setup_context=_setup_context)
