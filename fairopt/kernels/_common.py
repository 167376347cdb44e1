"""What every implementation of ``torch.ops.fairopt.group_stats`` shares: the proxy codes, the dtype rules, the
normalized-proxy cells and the gradient buffers. Imports no ``triton`` (the torch path and the fake implementations
use it too)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

NUM_COLUMNS = 9
"""Columns of the table (:data:`fairopt.COLUMNS`)."""
KINDS: dict[str, int] = {"hard": 0, "sigmoid": 1, "hinge": 2, "softplus": 3, "values": 4}
"""Proxy codes of the kernels: the built-ins of :mod:`fairopt.proxies`, and ``"values"`` (per-example positive
and negative proxy values computed in torch, the fallback for user functions)."""
NORMALIZED_KINDS = frozenset({"hard", "sigmoid"})
"""Built-in kinds with ``negative(m) = 1 - positive(m)``: their negative cells follow from the label counts."""


def compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    """Per-example arithmetic dtype: float64 when any given floating input is float64, else float32 (bf16/fp16
    inputs are upcast)."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype the table is summed in for a table of ``dtype``: float64 for float64, else float32 (then cast)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def sums_negative_cells(kind: str, negative: Tensor | None) -> bool:
    """Whether the negative proxy cells are summed per example (False: a normalized proxy, derived from counts by
    :func:`derive_negative_cells`)."""
    return negative is not None if kind == "values" else kind not in NORMALIZED_KINDS


def derive_negative_cells(table: Tensor) -> None:
    """Fill ``tn_proxy, fn_proxy`` of a ``(G, 9)`` table in place as label count - positive cell (a normalized proxy:
    ``negative = 1 - positive`` per example, so the sums follow without a second pass), as :func:`fairopt.group_stats`
    does."""
    g = table.shape[0]
    torch.sub(table[:, :4].view(g, 2, 2).sum(dim=2), table[:, 5:8:2], out=table[:, 4:8:2])


def gradient_buffers(flags: Sequence[bool], likes: Sequence[Tensor | None], scores: Tensor) -> list[Tensor]:
    """One uninitialized contiguous buffer shaped like ``likes[i]`` where ``flags[i]`` (and the input exists), else an
    empty ``(0,)`` tensor on ``scores``' device: a custom op returns a tensor for every output, and outputs may not
    alias each other, so each unneeded gradient is its own empty tensor."""
    return [
        torch.empty_like(like, memory_format=torch.contiguous_format)
        if flag and like is not None
        else scores.new_empty((0,))
        for flag, like in zip(flags, likes)
    ]
