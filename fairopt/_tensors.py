"""Tensor helpers of the per-step path: :func:`detached`, and :class:`ViewCache` for NumPy views kept across steps."""

from __future__ import annotations

from typing import Any

from torch import Tensor


def detached(t: Tensor) -> Tensor:
    """``t.detach()``, or ``t`` itself when it records no graph: the same values and storage, and no tensor operation
    (~1 µs each, several times a training step) for the tables and values that never had a graph. Reverse mode only:
    a forward-mode dual tensor (``torch.autograd.forward_ad``) reports ``requires_grad=False`` and keeps its
    tangent here, which fairopt's step never meets."""
    return t.detach() if t.requires_grad else t


class ViewCache:
    """A slot for NumPy views of tensors (and what was built with them), kept from step to step: a view costs ~1-2 µs
    a call, several a step. Copies and pickles of the owner get an empty slot (``copy``, ``deepcopy``, ``pickle``,
    ``torch.save``): a copied view is an array of its own that no longer shares the copied tensor's memory, so a
    copy that kept it would read stale values and write where nothing reads. Owners check that a cached entry still
    belongs to their current tensors (identity, storage address, shape, dtype) before using it."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: Any = None

    def __copy__(self) -> ViewCache:
        return ViewCache()

    def __deepcopy__(self, memo: dict[int, Any]) -> ViewCache:
        return ViewCache()

    def __reduce__(self) -> tuple[type[ViewCache], tuple[()]]:
        return ViewCache, ()
