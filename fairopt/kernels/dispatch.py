"""``group_stats_table``: the ``(G, 9)`` table of one batch through the custom op, on the backend asked for.

``backend="auto"`` runs the Triton kernel on CUDA tensors when ``triton`` is importable and the torch
implementation otherwise; ``"torch"`` and ``"triton"`` force one (``"triton"`` on CPU tensors only under
``TRITON_INTERPRET=1``, Triton's interpreter, meant for tests). The result equals the table of
:func:`fairopt.group_stats` (same columns, same conventions) up to float32 rounding; it accumulates in float32, or
float64 when ``dtype`` is float64, whatever the input dtypes (bf16/fp16 inputs included).

This module imports neither :mod:`fairopt.stats` (which calls it; imports point one way) nor ``triton`` (which is
imported on first use of the Triton backend); the input checks are those of :func:`fairopt.group_stats`, shared
through :func:`fairopt._batch_checks.check_batch`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor

import fairopt.proxies as _proxies
from fairopt._batch_checks import check_batch, check_num_groups
from fairopt._validation import validate_args_enabled
from fairopt.kernels.ops import group_stats_op
from fairopt.proxies import Proxy, as_proxy

__all__ = ["BACKENDS", "group_stats_table", "proxy_spec", "resolve_backend", "triton_available"]

BACKENDS = ("auto", "torch", "triton")
STRATEGIES = ("auto", "block", "atomic")

# The built-in proxies of fairopt.proxies are partials of these module functions (sign=+-1, temperature=T); the
# kernel evaluates them itself. Anything else is evaluated in torch first (kind "values").
_BUILTIN = {_proxies._sigmoid: "sigmoid", _proxies._hinge: "hinge", _proxies._softplus: "softplus"}
# Found once, without importing triton (a constant, so torch.compile traces the dispatch without a graph break).
_TRITON_FOUND = importlib.util.find_spec("triton") is not None


def triton_available() -> bool:
    """Whether the ``triton`` package is installed here (looked up once, without importing it)."""
    return _TRITON_FOUND


def resolve_backend(backend: str, device: torch.device) -> str:
    """``"torch"`` or ``"triton"`` for tensors on ``device``.

    ``"auto"`` is ``"triton"`` on a CUDA device when Triton is importable, else ``"torch"``.

    Raises:
        ValueError: ``backend`` not one of :data:`BACKENDS`.
        RuntimeError: ``"triton"`` without an importable Triton, or on a non-CUDA device without
            ``TRITON_INTERPRET=1``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if backend == "triton":
        if not triton_available():
            raise RuntimeError("backend='triton' needs the triton package (pip install triton); or use backend='torch'")
        if not torch.compiler.is_compiling():  # reads triton's settings; the op checks again when it runs
            from fairopt.kernels.group_stats_triton import require_runnable

            require_runnable(device)
    return backend


def proxy_spec(proxy: Proxy) -> tuple[str, float] | None:
    """``(kind, temperature)`` when ``proxy`` is a built-in of :mod:`fairopt.proxies` the kernel evaluates itself
    (``Proxy.sigmoid/hinge/softplus(T)``, ``Proxy.hard()``), else ``None`` (evaluated in torch, kind ``"values"``)."""
    pos, neg = proxy.positive, proxy.negative
    if pos is _proxies._hard_positive and neg is _proxies._hard_negative:
        return "hard", 1.0
    if not (isinstance(pos, partial) and not pos.args and pos.func in _BUILTIN):
        return None
    kw = pos.keywords
    if set(kw) != {"sign", "temperature"} or kw["sign"] != 1.0:
        return None
    mirrored = {"sign": -1.0, "temperature": kw["temperature"]}
    # negative=None means positive(-m), the same function for these odd-symmetric scalings
    if neg is None or (isinstance(neg, partial) and neg.func is pos.func and not neg.args and neg.keywords == mirrored):
        return _BUILTIN[pos.func], float(kw["temperature"])
    return None


def group_stats_table(
    scores: Tensor,
    *,
    labels: Tensor,
    groups: Tensor,
    num_groups: int,
    weights: Tensor | None = None,
    example_losses: Tensor | None = None,
    proxy: str | Proxy | Callable[[Tensor], Tensor] = "sigmoid",
    threshold: float = 0.0,
    dtype: torch.dtype = torch.float64,
    backend: str = "auto",
    strategy: str = "auto",
    validate_args: bool | None = None,
) -> Tensor:
    """The ``(num_groups, 9)`` table of :func:`fairopt.group_stats` (columns :data:`fairopt.COLUMNS`) as one
    ``torch.ops.fairopt.group_stats`` call: differentiable, ``torch.compile``-able, no host sync (checks off).

    Args:
        scores: ``(N,)`` float32/float64/bf16/fp16 logits; a positive prediction is ``score > threshold``.
        labels: ``(N,)`` bool, integer or floating 0/1 labels.
        groups: ``(N,)`` integer group ids in ``[0, num_groups)``.
        num_groups: G >= 1 (any G: up to 65,536 and beyond on the Triton backend).
        weights: optional ``(N,)`` floating non-negative example weights (negatives count as 0).
        example_losses: optional ``(N,)`` floating per-example loss, summed into the ``loss`` column.
        proxy: ``"sigmoid"``, ``"hinge"``, ``"softplus"``, ``"hard"``, a :class:`~fairopt.proxies.Proxy` or an
            elementwise callable. Built-ins (any temperature) are evaluated inside the kernel; any other function is
            evaluated in torch first (``positive(m)``, and ``negative(m)`` unless the proxy is normalized) and the
            kernel sums the values, so autograd differentiates the user function as usual.
        threshold: decision threshold in logit units.
        dtype: floating dtype of the table (default float64, as :func:`fairopt.group_stats`).
        backend: ``"auto"``, ``"torch"`` or ``"triton"`` (see :func:`resolve_backend`).
        strategy: Triton reduction, ``"auto"`` (by G), ``"block"`` or ``"atomic"``; see
            :mod:`fairopt.kernels.group_stats_triton`.
        validate_args: run the value checks (one host sync); ``None`` uses :class:`fairopt.set_validate_args`.
            With them off, group ids outside ``[0, num_groups)`` are dropped (never written out of bounds).

    Returns:
        ``(num_groups, 9)`` tensor of ``dtype`` on ``scores.device``: hard cells (weighted counts), proxy cells
        (differentiable w.r.t. ``scores`` and ``weights``), loss sum (w.r.t. ``example_losses`` and ``weights``).

    Raises:
        TypeError: a non-tensor input, non-floating scores/weights/loss, non-integer groups, a non-floating dtype.
        ValueError: mismatched shapes or devices, ``num_groups < 1``, an unknown backend/strategy/proxy; with the
            value checks on, ids outside ``[0, num_groups)``, labels not 0/1, non-finite values, negative weights.
        RuntimeError: ``backend="triton"`` where it cannot run (see :func:`resolve_backend`).
    """
    proxy_obj = as_proxy(proxy)
    check_num_groups(num_groups)
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype for the table, got {dtype!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    scores, labels, groups, weights, example_losses = check_batch(
        scores, labels, groups, num_groups, weights, example_losses, validate_args_enabled(validate_args)
    )
    resolved = resolve_backend(backend, scores.device)
    spec = proxy_spec(proxy_obj)
    positive = negative = None
    if spec is None:  # a user function: evaluate it in torch (autograd records it), sum the values in the op
        margin = scores if threshold == 0 else scores - threshold
        positive = proxy_obj.positive(margin)
        if not proxy_obj.normalized:
            negative = proxy_obj.negative_fn(margin)
        kind, temperature = "values", 1.0
    else:
        kind, temperature = spec
    return group_stats_op(
        scores, labels, groups, weights, example_losses, positive, negative, num_groups, kind, temperature,
        float(threshold), dtype, resolved, strategy,
    )  # fmt: skip
