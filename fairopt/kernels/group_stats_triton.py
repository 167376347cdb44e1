r"""Triton kernels for the ``(G, 9)`` group-statistics table: a one-pass forward and a one-pass (gather) backward.

The table is the one of :func:`fairopt.group_stats` (columns ``tn fp fn tp tn_proxy fp_proxy fn_proxy tp_proxy
loss``). For example ``i`` with group ``g``, label bit ``y = label > 0``, margin ``m = score - threshold``, hard
prediction ``p = m > 0`` and weight ``w = max(weight, 0)`` (1 without weights), the forward adds

* ``w`` to the hard cell ``table[g, 2 y + p]``,
* ``w * positive(m)`` to ``table[g, 5 + 2 y]`` and ``w * negative(m)`` to ``table[g, 4 + 2 y]``,
* ``w * loss`` to ``table[g, 8]``,

and the backward is the transpose of that sum, one gather of the example's grad row times the proxy derivative:

.. math::

    \frac{\partial L}{\partial s_i} = w_i \big(positive'(m_i)\, \bar T_{g_i, 5 + 2 y_i}
        + negative'(m_i)\, \bar T_{g_i, 4 + 2 y_i}\big), \qquad
    \frac{\partial L}{\partial \ell_i} = w_i \bar T_{g_i, 8},

    \frac{\partial L}{\partial w_i} = 1\{w_i > 0\}\big(positive(m_i) \bar T_{g_i, 5 + 2 y_i}
        + negative(m_i) \bar T_{g_i, 4 + 2 y_i} + \ell_i \bar T_{g_i, 8}\big).

Two reduction strategies, chosen by G (:func:`choose_strategy`):

* ``"block"`` (G <= :data:`BLOCK_MAX_GROUPS`): a persistent grid; each program folds its tiles into per-group
  register accumulators with a one-hot select-and-sum (``O(G)`` work per example, no memory traffic), then adds
  them to the table with one atomic per program and column.
* ``"atomic"`` (larger G, up to 65,536 and beyond): one atomic add per example and touched cell (3 or 4 per
  example). With many groups the adds spread over many addresses, so they rarely collide; the ``(G, 9)`` table
  (2.4 MB at G = 65,536 in float32) stays in L2.

Why a Triton backward rather than ``index_select`` in torch: the gather, the proxy derivative, the weight and the
casts are fused into one pass that reads each input once and writes each gradient once; the torch version is 6-10
elementwise kernels over ``(N,)`` tensors.

Numbers: the per-example arithmetic is float32 (float64 when any floating input is float64); bf16/fp16 inputs are
read as they are and upcast in registers. Tile sums are in that dtype, the running sums and atomics in float64 when
the table is float64, else float32 (bf16/fp16 tables are cast at the end). Offsets are int64 (N beyond 2**31).
Triton passes Python floats as float32, so the threshold and ``1 / temperature`` go in as three float32 numbers
``hi + mid + lo``: float32 arithmetic uses ``hi`` (what torch's ``scores - threshold`` uses on float32 scores),
float64 arithmetic their exact float64 sum. Group ids outside ``[0, G)`` (possible only with the value checks off)
are dropped rather than written out of bounds.

On a CPU tensor the kernels run only under Triton's interpreter (``TRITON_INTERPRET=1``, set before triton is first
imported, since triton decorates its own language helpers at import; slow, for tests). The kernels here are decorated
on first use, for the setting in force then.
"""

from __future__ import annotations

import struct
from functools import cache

import torch
import triton
import triton.language as tl
from torch import Tensor

from fairopt.kernels._common import (
    KINDS,
    NUM_COLUMNS,
    accumulator_dtype,
    compute_dtype,
    derive_negative_cells,
    gradient_buffers,
    sums_negative_cells,
)

__all__ = [
    "BLOCK_MAX_GROUPS",
    "KINDS",
    "backward",
    "choose_strategy",
    "forward",
    "interpreter_enabled",
    "interpreter_ready",
    "require_runnable",
]

BLOCK_MAX_GROUPS = 32
"""Largest G reduced in registers (strategy ``"block"``); above it, per-example atomics (``"atomic"``). The one-hot
reduction costs about ``9 * G`` operations per example, the atomics 3-4 L2 round trips: to be tuned on a device."""


def interpreter_enabled() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return bool(triton.knobs.runtime.interpret)


def interpreter_ready() -> bool:
    """Whether the kernels can run in the mode in force: triton's own language helpers (``tl.zeros``, ``tl.sum``)
    are decorated at ``import triton`` for the ``TRITON_INTERPRET`` of that moment, and must match it."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(tl.zeros, InterpretedFunction) == interpreter_enabled()


def choose_strategy(num_groups: int) -> str:
    """``"block"`` for ``num_groups <= BLOCK_MAX_GROUPS``, else ``"atomic"``."""
    return "block" if num_groups <= BLOCK_MAX_GROUPS else "atomic"


def _float32(value: float) -> float:
    try:
        return struct.unpack("f", struct.pack("f", value))[0]
    except OverflowError:
        raise ValueError(
            f"{value!r} is outside the float32 range the kernels take for the threshold and 1 / temperature"
        ) from None


def _split(value: float) -> tuple[float, float, float]:
    """``value`` as three float32 numbers ``hi + mid + lo`` whose float64 sum is ``value`` (72 significant bits;
    ``hi = float32(value)``, the number torch uses for ``float32_tensor - value``)."""
    hi = _float32(value)
    mid = _float32(value - hi)
    return hi, mid, _float32(value - hi - mid)


# The kernels are plain functions decorated in _kernels(): triton.jit reads TRITON_INTERPRET when it decorates.
# They call no helper jit functions for the same reason (a helper would be decorated once, for one mode), so the
# proxy code is written out in both kernels.
def _forward_kernel(
    scores_ptr,
    labels_ptr,
    groups_ptr,
    weights_ptr,
    loss_ptr,
    pos_ptr,
    neg_ptr,
    out_ptr,
    n,
    num_groups,
    num_tiles,
    thr_hi,
    thr_mid,
    thr_lo,
    inv_t_hi,
    inv_t_mid,
    inv_t_lo,
    KIND: tl.constexpr,
    HAS_WEIGHTS: tl.constexpr,
    HAS_LOSS: tl.constexpr,
    HAS_NEG: tl.constexpr,
    NEED_NEG: tl.constexpr,
    CDT: tl.constexpr,
    F64: tl.constexpr,
    ACC: tl.constexpr,
    ONEHOT: tl.constexpr,
    GP: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    gid = tl.arange(0, GP)
    if F64:
        thr = tl.cast(thr_hi, tl.float64) + tl.cast(thr_mid, tl.float64) + tl.cast(thr_lo, tl.float64)
        inv_t = tl.cast(inv_t_hi, tl.float64) + tl.cast(inv_t_mid, tl.float64) + tl.cast(inv_t_lo, tl.float64)
    else:
        thr = tl.cast(thr_hi, tl.float32)
        inv_t = tl.cast(inv_t_hi, tl.float32)
    acc_tn = tl.zeros([GP], dtype=ACC)
    acc_fp = tl.zeros([GP], dtype=ACC)
    acc_fn = tl.zeros([GP], dtype=ACC)
    acc_tp = tl.zeros([GP], dtype=ACC)
    acc_neg0 = tl.zeros([GP], dtype=ACC)
    acc_pos0 = tl.zeros([GP], dtype=ACC)
    acc_neg1 = tl.zeros([GP], dtype=ACC)
    acc_pos1 = tl.zeros([GP], dtype=ACC)
    acc_loss = tl.zeros([GP], dtype=ACC)
    for tile in range(pid, num_tiles, nprog):
        offs = tl.cast(tile, tl.int64) * BLOCK + tl.arange(0, BLOCK)
        inb = offs < n
        g = tl.load(groups_ptr + offs, mask=inb, other=0).to(tl.int64)
        valid = inb & (g >= 0) & (g < num_groups)
        y = tl.load(labels_ptr + offs, mask=inb, other=0) > 0
        m = tl.load(scores_ptr + offs, mask=inb, other=0).to(CDT) - thr
        p = m > 0
        if HAS_WEIGHTS:
            w = tl.maximum(tl.load(weights_ptr + offs, mask=inb, other=0).to(CDT), 0.0)
        else:
            w = tl.full([BLOCK], 1.0, CDT)
        w = tl.where(valid, w, 0.0)
        z = m * inv_t
        # proxy values (see fairopt.proxies): positive(m) and negative(m)
        if KIND == 0:
            pos = tl.where(p, 1.0, 0.0).to(CDT)
            neg = 1.0 - pos
        elif KIND == 1:
            pos = tl.sigmoid(z)
            neg = tl.sigmoid(-z)
        elif KIND == 2:
            pos = tl.maximum(z + 1.0, 0.0)
            neg = tl.maximum(1.0 - z, 0.0)
        elif KIND == 3:
            # softplus(x) = max(x, 0) + log1p(exp(-|x|)); log1p(t) = log(u) * t / (u - 1) with u = 1 + t (exact
            # to a few ulps where 1 + t rounds), and t when u == 1
            t = tl.exp(-tl.abs(z))
            u = 1.0 + t
            l1p = tl.where(u == 1.0, t, tl.log(u) * (t / (u - 1.0)))
            pos = (tl.maximum(z, 0.0) + l1p) * 1.4426950408889634
            neg = (tl.maximum(-z, 0.0) + l1p) * 1.4426950408889634
        else:
            pos = tl.load(pos_ptr + offs, mask=inb, other=0).to(CDT)
            if HAS_NEG:  # noqa: SIM108 (a constexpr branch: only one side is compiled)
                neg = tl.load(neg_ptr + offs, mask=inb, other=0).to(CDT)
            else:
                neg = 1.0 - pos
        hard_col = tl.where(y, 2, 0) + tl.where(p, 1, 0)
        wpos = tl.where(valid, w * pos, 0.0)
        wneg = tl.where(valid, w * neg, 0.0)
        if HAS_LOSS:
            wloss = tl.where(valid, w * tl.load(loss_ptr + offs, mask=inb, other=0).to(CDT), 0.0)
        if ONEHOT:
            oh = (g[:, None] == gid[None, :]) & valid[:, None]  # (BLOCK, GP)
            c_tn = tl.where(hard_col == 0, w, 0.0)
            c_fp = tl.where(hard_col == 1, w, 0.0)
            c_fn = tl.where(hard_col == 2, w, 0.0)
            c_tp = tl.where(hard_col == 3, w, 0.0)
            acc_tn += tl.sum(tl.where(oh, c_tn[:, None], 0.0), axis=0).to(ACC)
            acc_fp += tl.sum(tl.where(oh, c_fp[:, None], 0.0), axis=0).to(ACC)
            acc_fn += tl.sum(tl.where(oh, c_fn[:, None], 0.0), axis=0).to(ACC)
            acc_tp += tl.sum(tl.where(oh, c_tp[:, None], 0.0), axis=0).to(ACC)
            acc_pos0 += tl.sum(tl.where(oh, tl.where(y, 0.0, wpos)[:, None], 0.0), axis=0).to(ACC)
            acc_pos1 += tl.sum(tl.where(oh, tl.where(y, wpos, 0.0)[:, None], 0.0), axis=0).to(ACC)
            if NEED_NEG:
                acc_neg0 += tl.sum(tl.where(oh, tl.where(y, 0.0, wneg)[:, None], 0.0), axis=0).to(ACC)
                acc_neg1 += tl.sum(tl.where(oh, tl.where(y, wneg, 0.0)[:, None], 0.0), axis=0).to(ACC)
            if HAS_LOSS:
                acc_loss += tl.sum(tl.where(oh, wloss[:, None], 0.0), axis=0).to(ACC)
        else:
            row = out_ptr + g * 9
            ycol = tl.where(y, 2, 0)
            tl.atomic_add(row + hard_col, w.to(ACC), mask=valid, sem="relaxed")
            tl.atomic_add(row + 5 + ycol, wpos.to(ACC), mask=valid, sem="relaxed")
            if NEED_NEG:
                tl.atomic_add(row + 4 + ycol, wneg.to(ACC), mask=valid, sem="relaxed")
            if HAS_LOSS:
                tl.atomic_add(row + 8, wloss.to(ACC), mask=valid, sem="relaxed")
    if ONEHOT:
        gmask = gid < num_groups
        row = out_ptr + gid.to(tl.int64) * 9
        tl.atomic_add(row + 0, acc_tn, mask=gmask, sem="relaxed")
        tl.atomic_add(row + 1, acc_fp, mask=gmask, sem="relaxed")
        tl.atomic_add(row + 2, acc_fn, mask=gmask, sem="relaxed")
        tl.atomic_add(row + 3, acc_tp, mask=gmask, sem="relaxed")
        tl.atomic_add(row + 5, acc_pos0, mask=gmask, sem="relaxed")
        tl.atomic_add(row + 7, acc_pos1, mask=gmask, sem="relaxed")
        if NEED_NEG:
            tl.atomic_add(row + 4, acc_neg0, mask=gmask, sem="relaxed")
            tl.atomic_add(row + 6, acc_neg1, mask=gmask, sem="relaxed")
        if HAS_LOSS:
            tl.atomic_add(row + 8, acc_loss, mask=gmask, sem="relaxed")


def _backward_kernel(
    grad_ptr,
    scores_ptr,
    labels_ptr,
    groups_ptr,
    weights_ptr,
    loss_ptr,
    pos_ptr,
    neg_ptr,
    d_scores_ptr,
    d_weights_ptr,
    d_loss_ptr,
    d_pos_ptr,
    d_neg_ptr,
    n,
    num_groups,
    thr_hi,
    thr_mid,
    thr_lo,
    inv_t_hi,
    inv_t_mid,
    inv_t_lo,
    KIND: tl.constexpr,
    HAS_WEIGHTS: tl.constexpr,
    HAS_LOSS: tl.constexpr,
    HAS_NEG: tl.constexpr,
    NEED_DS: tl.constexpr,
    NEED_DW: tl.constexpr,
    NEED_DLOSS: tl.constexpr,
    NEED_DPOS: tl.constexpr,
    NEED_DNEG: tl.constexpr,
    CDT: tl.constexpr,
    F64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inb = offs < n
    if F64:
        thr = tl.cast(thr_hi, tl.float64) + tl.cast(thr_mid, tl.float64) + tl.cast(thr_lo, tl.float64)
        inv_t = tl.cast(inv_t_hi, tl.float64) + tl.cast(inv_t_mid, tl.float64) + tl.cast(inv_t_lo, tl.float64)
    else:
        thr = tl.cast(thr_hi, tl.float32)
        inv_t = tl.cast(inv_t_hi, tl.float32)
    g = tl.load(groups_ptr + offs, mask=inb, other=0).to(tl.int64)
    valid = inb & (g >= 0) & (g < num_groups)
    y = tl.load(labels_ptr + offs, mask=inb, other=0) > 0
    # the gather: this example's two proxy cells and its loss cell of the (G, 9) grad table
    row = grad_ptr + g * 9 + tl.where(y, 2, 0)
    g_neg = tl.load(row + 4, mask=valid, other=0).to(CDT)
    g_pos = tl.load(row + 5, mask=valid, other=0).to(CDT)
    if HAS_WEIGHTS:
        w_raw = tl.load(weights_ptr + offs, mask=inb, other=0).to(CDT)
        w = tl.where(valid, tl.maximum(w_raw, 0.0), 0.0)
    else:
        w = tl.where(valid, 1.0, 0.0).to(CDT)
    if HAS_LOSS or NEED_DLOSS:
        g_loss = tl.load(grad_ptr + g * 9 + 8, mask=valid, other=0).to(CDT)
    if NEED_DLOSS:
        tl.store(d_loss_ptr + offs, (w * g_loss).to(d_loss_ptr.dtype.element_ty), mask=inb)
    if KIND == 4:
        pos = tl.load(pos_ptr + offs, mask=inb, other=0).to(CDT)
        if HAS_NEG:
            neg = tl.load(neg_ptr + offs, mask=inb, other=0).to(CDT)
            d_pos = w * g_pos
        else:  # normalized: the negative cells are count - positive (count carries no gradient)
            neg = 1.0 - pos
            d_pos = w * (g_pos - g_neg)
        if NEED_DPOS:
            tl.store(d_pos_ptr + offs, d_pos.to(d_pos_ptr.dtype.element_ty), mask=inb)
        if NEED_DNEG:
            tl.store(d_neg_ptr + offs, (w * g_neg).to(d_neg_ptr.dtype.element_ty), mask=inb)
    else:
        m = tl.load(scores_ptr + offs, mask=inb, other=0).to(CDT) - thr
        z = m * inv_t
        # proxy values and derivatives d/dm (the chain rule's 1/temperature included)
        if KIND == 0:
            pos = tl.where(m > 0, 1.0, 0.0).to(CDT)
            neg = 1.0 - pos
            d_pos = tl.zeros([BLOCK], dtype=CDT)
            d_neg = tl.zeros([BLOCK], dtype=CDT)
        elif KIND == 1:
            pos = tl.sigmoid(z)
            neg = tl.sigmoid(-z)
            d_pos = pos * neg * inv_t
            d_neg = -d_pos
        elif KIND == 2:
            pos = tl.maximum(z + 1.0, 0.0)
            neg = tl.maximum(1.0 - z, 0.0)
            d_pos = tl.where(z + 1.0 > 0, inv_t, 0.0)
            d_neg = tl.where(1.0 - z > 0, -inv_t, 0.0)
        else:
            t = tl.exp(-tl.abs(z))
            u = 1.0 + t
            l1p = tl.where(u == 1.0, t, tl.log(u) * (t / (u - 1.0)))
            pos = (tl.maximum(z, 0.0) + l1p) * 1.4426950408889634
            neg = (tl.maximum(-z, 0.0) + l1p) * 1.4426950408889634
            d_pos = tl.sigmoid(z) * (inv_t * 1.4426950408889634)
            d_neg = -tl.sigmoid(-z) * (inv_t * 1.4426950408889634)
        if NEED_DS:
            d_s = w * (d_pos * g_pos + d_neg * g_neg)
            tl.store(d_scores_ptr + offs, d_s.to(d_scores_ptr.dtype.element_ty), mask=inb)
    if NEED_DW:
        d_w = pos * g_pos + neg * g_neg
        if HAS_LOSS:
            d_w += tl.load(loss_ptr + offs, mask=inb, other=0).to(CDT) * g_loss
        d_w = tl.where(valid & (w_raw > 0), d_w, 0.0)  # clamp(min=0) passes the gradient where w > 0
        tl.store(d_weights_ptr + offs, d_w.to(d_weights_ptr.dtype.element_ty), mask=inb)


@cache
def _kernels(interpret: bool) -> tuple[object, object]:
    # ``interpret`` is the cache key: triton.jit builds an InterpretedFunction or a JITFunction from the knob.
    if not interpreter_ready():
        state = "set" if interpret else "unset"
        raise RuntimeError(
            f"TRITON_INTERPRET is {state} now but was not when triton was first imported; set (or unset) it before "
            "anything imports triton (torch._dynamo does), e.g. in the environment of the process"
        )
    return triton.jit(_forward_kernel), triton.jit(_backward_kernel)


_TL_DTYPES = {torch.float32: tl.float32, torch.float64: tl.float64}


@cache
def _num_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _pointer(t: Tensor) -> Tensor:
    t = t.contiguous()
    return t.view(torch.uint8) if t.dtype == torch.bool else t  # bytes: triton's i1 pointers are not portable


def _launch_inputs(
    scores: Tensor,
    labels: Tensor,
    groups: Tensor,
    weights: Tensor | None,
    loss: Tensor | None,
    positive: Tensor | None,
    negative: Tensor | None,
    kind: str,
    temperature: float,
    threshold: float,
) -> tuple[list[Tensor], list[float], dict[str, object]]:
    """What both kernels take first: the seven input pointers (an absent input is ``scores`` again, never read: a
    constexpr flag compiles its load away), the split threshold and ``1 / temperature``, and the shared constexprs."""
    values = kind == "values"
    pos = positive if values else None
    neg = negative if values else None
    pointers = [_pointer(t) for t in (scores, labels, groups)]
    pointers += [pointers[0] if t is None else _pointer(t) for t in (weights, loss, pos, neg)]
    cdt = compute_dtype(scores, weights, loss, pos, neg)
    constexprs: dict[str, object] = {
        "KIND": KINDS[kind],
        "HAS_WEIGHTS": weights is not None,
        "HAS_LOSS": loss is not None,
        "HAS_NEG": neg is not None,
        "CDT": _TL_DTYPES[cdt],
        "F64": cdt == torch.float64,
    }
    return pointers, [*_split(threshold), *_split(1.0 / temperature)], constexprs


def require_runnable(device: torch.device) -> None:
    """Raise unless Triton can run on ``device`` (a CUDA device, or any device under ``TRITON_INTERPRET=1``)."""
    if device.type != "cuda" and not interpreter_enabled():
        raise RuntimeError(
            f"backend='triton' needs CUDA tensors, got tensors on {device}; use backend='torch' (or 'auto') there, "
            "or set TRITON_INTERPRET=1 before the first Triton call to run the kernels in Triton's CPU interpreter "
            "(slow: meant for tests)"
        )


def forward(
    scores: Tensor,
    labels: Tensor,
    groups: Tensor,
    weights: Tensor | None,
    loss: Tensor | None,
    positive: Tensor | None,
    negative: Tensor | None,
    num_groups: int,
    kind: str,
    temperature: float,
    threshold: float,
    dtype: torch.dtype,
    strategy: str = "auto",
) -> Tensor:
    """The ``(num_groups, 9)`` table of one batch in ``dtype`` (see the module docstring).

    Inputs are ``(N,)`` tensors on one device; ``positive``/``negative`` are read only for ``kind == "values"``
    (``negative=None``: a normalized proxy, negative cells derived as count - positive). ``strategy`` is
    ``"auto"``, ``"block"`` or ``"atomic"``.
    """
    require_runnable(scores.device)
    if strategy == "auto":
        strategy = choose_strategy(num_groups)
    if strategy not in ("block", "atomic"):
        raise ValueError(f"strategy must be 'auto', 'block' or 'atomic', got {strategy!r}")
    acc_dtype = accumulator_dtype(dtype)
    buf = torch.zeros((num_groups, NUM_COLUMNS), dtype=acc_dtype, device=scores.device)
    n = scores.shape[0]
    need_neg = sums_negative_cells(kind, negative)
    if n > 0:
        pointers, floats, constexprs = _launch_inputs(
            scores, labels, groups, weights, loss, positive, negative, kind, temperature, threshold
        )
        onehot = strategy == "block"
        gp = max(2, triton.next_power_of_2(num_groups)) if onehot else 2
        block = min(1024, max(32, 8192 // gp)) if onehot else 1024
        num_tiles = triton.cdiv(n, block)
        # a persistent grid of a few programs per SM; the interpreter runs programs one after another, and 4 of
        # them still exercise the tile loop
        on_gpu = scores.device.type == "cuda"
        cap = _num_sms(scores.device.index or 0) * (4 if onehot else 32) if on_gpu else 4
        grid = (min(num_tiles, cap),)
        fwd, _ = _kernels(interpreter_enabled())
        fwd[grid](  # type: ignore[index]
            *pointers,
            buf,
            n,
            num_groups,
            num_tiles,
            *floats,
            **constexprs,
            NEED_NEG=need_neg,
            ACC=_TL_DTYPES[acc_dtype],
            ONEHOT=onehot,
            GP=gp,
            BLOCK=block,
            num_warps=4 if onehot else 8,
        )
    if not need_neg:
        derive_negative_cells(buf)
    return buf if buf.dtype == dtype else buf.to(dtype)


def backward(
    grad: Tensor,
    scores: Tensor,
    labels: Tensor,
    groups: Tensor,
    weights: Tensor | None,
    loss: Tensor | None,
    positive: Tensor | None,
    negative: Tensor | None,
    num_groups: int,
    kind: str,
    temperature: float,
    threshold: float,
    needs: tuple[bool, bool, bool, bool, bool],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients ``(d_scores, d_weights, d_loss, d_positive, d_negative)`` for a ``(G, 9)`` ``grad``.

    ``needs`` says which to compute (only gradients that exist: ``d_scores`` for a built-in kind other than
    ``"hard"``, ``d_positive``/``d_negative`` for ``kind == "values"``, ``d_weights``/``d_loss`` when given); the
    others come back as empty ``(0,)`` tensors.
    """
    require_runnable(scores.device)
    need_ds, need_dw, need_dloss, need_dpos, need_dneg = needs  # already restricted to the gradients that exist
    n = scores.shape[0]
    outputs = gradient_buffers(needs, (scores, weights, loss, positive, negative), scores)
    if n > 0 and any(needs):
        pointers, floats, constexprs = _launch_inputs(
            scores, labels, groups, weights, loss, positive, negative, kind, temperature, threshold
        )
        block = 1024
        _, bwd = _kernels(interpreter_enabled())
        bwd[(triton.cdiv(n, block),)](  # type: ignore[index]
            grad.contiguous(),
            *pointers,
            *(out if flag else pointers[0] for flag, out in zip(needs, outputs)),  # unneeded: never written
            n,
            num_groups,
            *floats,
            **constexprs,
            NEED_DS=need_ds,
            NEED_DW=need_dw,
            NEED_DLOSS=need_dloss,
            NEED_DPOS=need_dpos,
            NEED_DNEG=need_dneg,
            BLOCK=block,
            num_warps=4,
        )
    d_s, d_w, d_l, d_p, d_n = outputs
    return d_s, d_w, d_l, d_p, d_n
