"""Input checks of one batch ``(scores, labels, groups, weights, example_losses)``, shared by every entry point.

:func:`fairopt.group_stats` and :func:`fairopt.kernels.group_stats_table` take the same batch under the same rules
(DESIGN.md, Conventions) and raise the same errors; both call :func:`check_batch`. It lives below both (it imports
only :mod:`fairopt._validation`), so the kernels package need not import :mod:`fairopt.stats`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from fairopt._tensors import detached
from fairopt._validation import (
    NUMPY_DTYPES,
    describe_bad_values,
    finite,
    require_1d,
    require_device,
    require_tensor,
)

__all__ = [
    "WEIGHT_TOLERANCE",
    "HostViews",
    "LabelValueError",
    "check_batch",
    "check_batch_values",
    "check_num_groups",
    "host_views",
    "weight_tolerance",
]


class LabelValueError(ValueError):
    """Labels outside {0, 1}: a ``ValueError`` of its own class, so that fairopt code that knows how the batch was read
    (:func:`fairopt.validation.collect_stats`, by position) can add a hint without matching the message. Internal:
    users catch ``ValueError``."""


def check_num_groups(num_groups: int) -> None:
    """Raise ``ValueError`` unless ``num_groups`` is an int >= 1 (G, fixed up front; a bool is refused)."""
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
        raise ValueError(
            f"num_groups must be a positive int (the number of groups G, fixed up front), got {num_groups!r}"
        )


def check_batch(
    scores: Tensor,
    labels: Tensor,
    groups: Tensor,
    num_groups: int,
    weights: Tensor | None,
    loss: Tensor | None,
    check_values: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
    """Check one batch by the rules of :func:`fairopt.group_stats` and return its tensors.

    Types, shapes (all ``(N,)``) and devices are always checked (free); the value checks (ids in
    ``[0, num_groups)``, labels in {0, 1}, finite scores/weights/losses, weights ``>= 0`` up to rounding) run when
    ``check_values`` is true and ``N > 0``, with one host sync.

    Raises:
        TypeError: a non-tensor input, non-floating scores/weights/losses, non-integer groups, complex labels.
        ValueError: mismatched shapes or devices; with ``check_values``, a value outside the rules above.
    """
    scores = require_tensor("scores", scores)
    labels = require_tensor("labels", labels)
    groups = require_tensor("groups", groups)
    require_1d("scores", scores, None)
    n, device = scores.shape[0], scores.device
    if not scores.is_floating_point():
        raise TypeError(f"scores must be floating point logits, got {scores.dtype}; pass scores.float()")
    require_1d("labels", labels, n)
    require_1d("groups", groups, n)
    if labels.is_complex():
        raise TypeError(f"labels must be bool, integer or floating 0/1, got {labels.dtype}")
    if groups.is_floating_point() or groups.is_complex() or groups.dtype == torch.bool:
        raise TypeError(
            f"groups must hold integer group ids, got {groups.dtype}; pass groups.long() "
            "(or encode attributes with fairopt.Groups)"
        )
    require_device("labels", labels, device)
    require_device("groups", groups, device)
    for name, extra in (("weights", weights), ("example_losses", loss)):
        if extra is not None:
            require_tensor(name, extra)
            require_1d(name, extra, n)
            require_device(name, extra, device)
            if not extra.is_floating_point():
                raise TypeError(f"{name} must be floating point, got {extra.dtype}; pass {name}.float()")
    if check_values and n > 0:
        check_batch_values(scores, labels, groups, num_groups, weights, loss)
    return scores, labels, groups, weights, loss


WEIGHT_TOLERANCE = 16
"""Weights down to ``-WEIGHT_TOLERANCE * eps * max(1, max|w|)`` (``eps`` of the weights' dtype: 3.6e-15 for float64,
1.9e-6 for float32 at unit scale) are rounding errors of non-negative numbers: accepted, and counted as 0."""


def weight_tolerance(weights: Tensor) -> Tensor:
    """The 0-d tolerance below 0 that :data:`WEIGHT_TOLERANCE` gives for ``weights`` (their dtype's eps, scale)."""
    scale = weights.detach().abs().max().clamp(min=1.0)
    return WEIGHT_TOLERANCE * torch.finfo(weights.dtype).eps * scale


def _device_flags(
    scores: Tensor, labels: Tensor, groups: Tensor, num_groups: int, weights: Tensor | None, loss: Tensor | None
) -> list[bool]:
    """One flag per check (scores, groups, labels, then weights and losses where given), True where it fails: tensor
    reductions stacked into one vector, read with a single host sync."""
    with torch.no_grad():
        low, high = torch.aminmax(groups)
        ok = [
            finite(scores).all(),
            (low >= 0) & (high.long() < num_groups),  # in int64: a uint8/int8 tensor would wrap num_groups
            torch.ones((), dtype=torch.bool, device=labels.device)
            if labels.dtype == torch.bool
            else torch.logical_or(labels == 0, labels == 1).all(),
        ]
        if weights is not None:
            ok.append((finite(weights) & (weights >= -weight_tolerance(weights))).all())
        if loss is not None:
            ok.append(finite(loss).all())
        flags = [not f for f in torch.stack(ok).tolist()]
    return flags


HostViews = tuple[np.ndarray, np.ndarray, np.ndarray]
"""NumPy views ``(scores, labels, groups)`` of a batch's CPU tensors (:func:`host_views`)."""


def host_views(scores: Tensor, labels: Tensor, groups: Tensor) -> HostViews | None:
    """NumPy views (no copy) of the detached ``scores``, ``labels``, ``groups``; None unless all three are CPU tensors
    of a dtype NumPy reads (not bfloat16). Each view costs a call: a caller that checks and then computes on the same
    batch takes them once."""
    if not (scores.is_cpu and labels.is_cpu and groups.is_cpu):  # is_cpu: ~0.1 µs, .device ~0.5
        return None
    if scores.dtype not in NUMPY_DTYPES or labels.dtype not in NUMPY_DTYPES or groups.dtype not in NUMPY_DTYPES:
        return None
    return detached(scores).numpy(), detached(labels).numpy(), detached(groups).numpy()


def _host_flags(
    scores: Tensor,
    labels: Tensor,
    groups: Tensor,
    num_groups: int,
    weights: Tensor | None,
    loss: Tensor | None,
    views: HostViews | None = None,
) -> list[bool] | None:
    """:func:`_device_flags` through NumPy views of CPU tensors (no copy; ~1 µs a reduction instead of ~5 for a
    tensor operation): the same predicates on the same values, so the same flags. None where NumPy cannot read a
    tensor (another device, bfloat16): the caller then takes the tensor path."""
    if views is None:
        views = host_views(scores, labels, groups)
    extra = [t for t in (weights, loss) if t is not None]
    if views is None or any(not t.is_cpu or t.dtype not in NUMPY_DTYPES for t in extra):
        return None
    s, y, g = views
    # As few NumPy calls as possible (in a training step each costs several µs, whatever its size), each predicate
    # exactly the tensor one: ids in [0, G) are one max of their unsigned view (negatives wrap to above G), integer
    # labels in {0, 1} likewise; floating labels are 0/1 where they equal their own bit (NaN equals nothing).
    flags = [
        not np.isfinite(s).all(),
        not g.view(_UNSIGNED.get(g.dtype, g.dtype)).max() < num_groups,
        labels.dtype != torch.bool and not _labels_ok(y),
    ]
    if weights is not None:
        w = weights.detach().numpy()
        # the tolerance in the weights' dtype, as weight_tolerance computes it (16 eps is a power of two: exact)
        scale = max(np.abs(w).max(), w.dtype.type(1.0))
        tolerance = w.dtype.type(WEIGHT_TOLERANCE * torch.finfo(weights.dtype).eps) * scale
        flags.append(not (np.isfinite(w).all() and (w >= -tolerance).all()))
    if loss is not None:
        flags.append(not np.isfinite(loss.detach().numpy()).all())
    return flags


# The unsigned integer type of each signed one, for range checks on a view (two's complement: -1 reads as the maximum).
_UNSIGNED = {np.dtype(np.int8): np.uint8, np.dtype(np.int16): np.uint16, np.dtype(np.int32): np.uint32,
             np.dtype(np.int64): np.uint64}  # fmt: skip


def _labels_ok(y: np.ndarray) -> bool:
    """Every label of a non-empty array is 0 or 1 (``((y == 0) | (y == 1)).all()``) in one or three NumPy calls."""
    if y.dtype.kind in "iu":
        return bool(y.view(_UNSIGNED.get(y.dtype, y.dtype)).max() <= 1)
    return bool((y == (y > 0)).all())


def check_batch_values(
    scores: Tensor,
    labels: Tensor,
    groups: Tensor,
    num_groups: int,
    weights: Tensor | None,
    loss: Tensor | None,
    views: HostViews | None = None,
) -> None:
    """The value checks of :func:`check_batch` (which calls this when ``check_values``) on a non-empty batch whose
    types, shapes and devices it has checked; ``views``: :func:`host_views` of the batch, if the caller has them.

    Raises:
        ValueError: a value outside the rules of :func:`check_batch`, located in the message.
    """
    # All checks reduce to one bool vector and a single host sync (as few tensor operations as possible: this runs
    # every training step), or on the CPU to NumPy reductions on views; the offending values are located only on
    # failure.
    flags = _host_flags(scores, labels, groups, num_groups, weights, loss, views)
    if flags is None:
        flags = _device_flags(scores, labels, groups, num_groups, weights, loss)
    if not any(flags):
        return
    bad_scores = ~torch.isfinite(scores)
    bad_groups = (groups < 0) | (groups >= num_groups)
    bad_labels = (labels != 0) & (labels != 1)
    bad_weights = (~torch.isfinite(weights)) | (weights < -weight_tolerance(weights)) if weights is not None else None
    bad_loss = ~torch.isfinite(loss) if loss is not None else None
    if flags[0]:
        raise ValueError(
            f"scores contain NaN or inf: {describe_bad_values(scores, bad_scores)}; "
            "check the model output (e.g. a diverged loss) before computing fairness statistics"
        )
    if flags[1]:
        raise ValueError(
            f"groups must be ids in [0, {num_groups}) (num_groups={num_groups}): "
            f"{describe_bad_values(groups, bad_groups)}; pass a larger num_groups or re-encode the sensitive "
            "attribute with fairopt.Groups"
        )
    if flags[2]:
        raise LabelValueError(
            f"labels must be 0 or 1: {describe_bad_values(labels, bad_labels)}; map {{-1, 1}} labels with "
            "(labels > 0), and threshold soft labels before computing rates"
        )
    rest = [("weights", bad_weights, weights), ("example_losses", bad_loss, loss)]
    rest = [r for r in rest if r[1] is not None]
    for (name, bad, values), flag in zip(rest, flags[3:]):
        if flag:
            what = "finite and >= 0 (up to rounding)" if name == "weights" else "finite"
            raise ValueError(f"{name} must be {what}: {describe_bad_values(values, bad)}")
