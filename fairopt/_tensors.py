"""Tensor helpers of the per-step path: :func:`detached`, and :class:`ViewCache` / :func:`numpy_views` for NumPy views
kept across steps."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import numpy as np
import torch
from torch import Tensor


def detached(t: Tensor) -> Tensor:
    """``t.detach()``, or ``t`` itself when it records no graph: the same values and storage, and no tensor operation
    (~1 µs each, several times a training step) for the tables and values that never had a graph. Reverse mode only:
    a forward-mode dual tensor (``torch.autograd.forward_ad``) reports ``requires_grad=False`` and keeps its
    tangent here, which fairopt's step never meets."""
    return t.detach() if t.requires_grad else t


class ViewCache:
    """A slot for NumPy views of tensors (and what was built with them), kept from step to step: a view costs ~1-2 µs
    a call, several a step. Deep copies and pickles of the owner get an empty slot (``deepcopy``, ``pickle``,
    ``torch.save``): a copied view is an array of its own that no longer shares the copied tensor's memory, so a
    copy that kept it would read stale values and write where nothing reads (a shallow ``copy`` of the owner shares
    the slot, as it shares the tensors). Owners check that a cached entry still belongs to their current tensors
    before using it: :func:`numpy_views` by identity, storage address, shape, strides and dtype; the ring of
    :class:`~fairopt.stats.RunningGroupStats` and the proxy-Lagrangian's host buffers by the identity of tensors
    that fairopt replaces (``load_state_dict``, ``reset``) and never re-points."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: Any = None

    def __copy__(self) -> ViewCache:
        return ViewCache()

    def __deepcopy__(self, memo: dict[int, Any]) -> ViewCache:
        return ViewCache()

    def __reduce__(self) -> tuple[type[ViewCache], tuple[()]]:
        return ViewCache, ()


_FLOAT_DTYPES = (torch.float32, torch.float64)


def numpy_views(
    cache: ViewCache, tensor: Tensor, dtypes: Collection[torch.dtype] = _FLOAT_DTYPES
) -> tuple[Tensor, np.ndarray, np.ndarray] | None:
    """``(tensor.data, a NumPy view of it, a read-only one)`` of a CPU ``tensor`` whose dtype is in ``dtypes`` (NumPy
    reads float32 and float64); None otherwise. The same objects from call to call, kept in ``cache``, while
    ``tensor`` keeps its identity, storage address, shape, strides and dtype: an in-place write keeps them; a
    ``.to()`` or an assignment to ``.data`` changes one of them (the cached view keeps the old storage alive, so no
    new storage takes its address). Two views, because a read-only view's flag cannot be set back (a caller that
    hands one out cannot have it written through)."""
    cached = cache.value
    if (
        cached is not None
        and cached[0] is tensor
        and cached[1] == tensor.data_ptr()
        and cached[2].dtype == tensor.dtype
        and cached[2].shape == tensor.shape
        and cached[2].stride() == tensor.stride()
    ):
        return cached[2], cached[3], cached[4]
    if not tensor.is_cpu or tensor.dtype not in dtypes:
        return None
    data = tensor.data
    view, read_only = data.numpy(), data.numpy()
    read_only.flags.writeable = False
    cache.value = (tensor, tensor.data_ptr(), data, view, read_only)
    return data, view, read_only
