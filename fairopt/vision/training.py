"""Training helpers for image models that work with :class:`fairopt.ConstrainedOptimizer` as it is: mixed precision,
channels-last memory layout (on CUDA) and ``torch.compile``.

.. code-block:: python

    from fairopt.vision import autocast, create_image_model, move_images, prepare_model

    model = prepare_model(create_image_model("preact-resnet18-w8"), device="cuda")  # channels-last on CUDA
    opt = fairopt.ConstrainedOptimizer(
        torch.optim.Adam(model.parameters(), lr=1e-4), [fairopt.EqualizedOdds(0.05)], num_groups=2
    )
    for x, y, a in loader:
        x, y, a = move_images(x, "cuda"), y.to("cuda"), a.to("cuda")
        with autocast("cuda", "bf16"):
            logits = model(x)  # (N,) float32: the models of fairopt.vision return float32 logits
        opt.zero_grad()
        opt.step(loss=F.binary_cross_entropy_with_logits(logits, y.float()), scores=logits, labels=y, groups=a)

The loss and the fairness statistics are computed outside autocast on the float32 logits; the convolutions run in
bfloat16. bfloat16 has float32's exponent range and needs no loss scaling; float16 (``"fp16"``, CUDA only) does:
pass ``grad_scaler=torch.amp.GradScaler("cuda")`` to the optimizer.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from fairopt._validation import user_stacklevel

__all__ = ["AMP_MODES", "autocast", "move_images", "prepare_model"]

AMP_MODES = ("none", "bf16", "fp16")
_ALIASES = {None: "none", False: "none", "off": "none", "bfloat16": "bf16", "float16": "fp16", "half": "fp16"}


def _amp_mode(amp: str | bool | None) -> str:
    mode = _ALIASES.get(amp, amp)  # type: ignore[call-overload]
    if mode not in AMP_MODES:
        raise ValueError(f"amp must be one of {AMP_MODES} (or None), got {amp!r}")
    return mode


def autocast(device: str | torch.device, amp: str | None = "bf16") -> contextlib.AbstractContextManager[Any]:
    """A context in which the model's forward runs in mixed precision (``torch.autocast``), or does nothing.

    Args:
        device: where the model runs (``"cuda"``, ``"cuda:1"``, ``"cpu"``, or a ``torch.device``).
        amp: ``"bf16"`` (default; bfloat16 on CUDA and CPU), ``"fp16"`` (float16, CUDA only: needs a
            ``GradScaler``, see the module docstring), ``"none"`` or None (full precision).

    Raises:
        ValueError: an unknown ``amp``; ``"fp16"`` on a CPU; a device type other than CUDA and CPU with mixed precision;
            ``"bf16"`` on a GPU without bfloat16 support (before Ampere).
    """
    mode = _amp_mode(amp)
    kind = torch.device(device).type
    if mode == "none":
        return contextlib.nullcontext()
    if kind not in ("cuda", "cpu"):
        raise ValueError(f"mixed precision here is for CUDA and CPU, got device {str(device)!r}; pass amp='none'")
    if mode == "fp16" and kind == "cpu":
        raise ValueError("amp='fp16' is for CUDA (with a GradScaler); on a CPU use amp='bf16' or 'none'")
    if mode == "bf16" and kind == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("this GPU has no bfloat16 support; use amp='fp16' (with a GradScaler) or 'none'")
    return torch.autocast(kind, dtype=torch.bfloat16 if mode == "bf16" else torch.float16)


def prepare_model(
    model: nn.Module,
    *,
    device: str | torch.device | None = None,
    channels_last: bool | None = None,
    compile: bool = False,
    compile_options: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Move a model to ``device``, to the channels-last layout, and optionally compile it.

    Channels-last (NHWC) is the layout cuDNN's tensor-core convolutions prefer; feed it images in the same layout
    (:func:`move_images`, whose default follows the same rule). Build the optimizer *after* this call, on the returned
    model's parameters (moving keeps the parameter objects, so an optimizer built before also works; compiling does
    not copy them either).

    Args:
        model: e.g. from :func:`~fairopt.vision.create_image_model`; modified in place.
        device: optional target device.
        channels_last: convert 4-d parameters and buffers to ``torch.channels_last``; None (the default): on a CUDA
            device only, the model's device after the move (pass ``device="cuda"`` here, or ``channels_last=True``,
            for a model moved to the GPU later: prepared on the CPU, it stays channels-first). On the CPU, oneDNN's
            channels-last backward of a 1x1 convolution with stride > 1 and 2 to 7 input channels (2 to 15 with
            AVX-512; the shortcut of a narrow ResNet, e.g. ``preact-resnet18-w4``) writes past its workspace
            (uxlfoundation/oneDNN#6035): with torch 2.14.1 the process aborts ("double free or corruption"), or the
            weight gradients are wrong. ``channels_last=True`` on a CPU model with such a layer warns, naming the
            layers; keep the default there.
        compile: wrap the model in ``torch.compile`` (the first steps compile, later ones run the compiled graph).
            The returned module's state dict keys gain the prefix ``_orig_mod.``; ``create_image_model``'s
            ``checkpoint_path`` accepts them.
        compile_options: keyword arguments of ``torch.compile`` (e.g. ``{"mode": "max-autotune"}``).

    Returns:
        The model (the compiled wrapper when ``compile``).

    Raises:
        ValueError: ``compile_options`` without ``compile``.
    """
    if compile_options and not compile:
        raise ValueError("compile_options were given with compile=False; pass compile=True to use them")
    if device is not None:
        model = model.to(device)
    on_cuda = any(p.is_cuda for p in model.parameters())
    if channels_last is None:
        channels_last = on_cuda
    if channels_last and not on_cuda and (layers := _cpu_channels_last_hazards(model)):
        shown = ", ".join(layers[:4]) + (f" and {len(layers) - 4} more" if len(layers) > 4 else "")
        warnings.warn(
            f"channels_last=True on the CPU with {shown}: 1x1 convolutions with stride > 1 and few input channels "
            "(fewer than this CPU's block of 8, or 16 with AVX-512), whose channels-last backward in oneDNN writes "
            "past its workspace (uxlfoundation/oneDNN#6035): training may abort the process ('double free or "
            "corruption') or compute wrong weight gradients. Pass channels_last=False (the CPU default), and "
            "move_images(..., channels_last=False)",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
    if channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if compile:
        model = torch.compile(model, **dict(compile_options or {}))  # type: ignore[assignment]
    return model


def _cpu_channels_last_hazards(model: nn.Module) -> list[str]:
    """Names of the ``Conv2d`` layers that oneDNN's CPU channels-last backward mishandles: a 1x1 kernel, a stride
    above 1, and more than 1 but fewer input channels than its block, 8 with AVX2 and 16 with AVX-512 (oneDNN#6035;
    measured here on AVX2: 2 to 7 abort, 1 and 8 or more do not)."""
    block = 16 if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else 8
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d)
        and tuple(m.kernel_size) == (1, 1)
        and max(m.stride) > 1
        and 1 < m.in_channels // m.groups < block
    ]


def move_images(
    images: Tensor, device: str | torch.device, *, channels_last: bool | None = None, non_blocking: bool = True
) -> Tensor:
    """``(N, C, H, W)`` images on ``device``, channels-last on a CUDA device by default (None), as
    :func:`prepare_model` lays out the model (a channels-last input also sends a CPU convolution down oneDNN's
    channels-last path, see there). ``non_blocking`` overlaps the copy with compute when the loader pins memory.

    Raises:
        ValueError: ``images`` is not 4-d.
    """
    if images.dim() != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
    if channels_last is None:
        channels_last = torch.device(device).type == "cuda"
    layout = torch.channels_last if channels_last else torch.contiguous_format
    return images.to(device, non_blocking=non_blocking, memory_format=layout)
