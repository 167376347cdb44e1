"""A step counter that a compiled training step can carry without a Python number in its graphs.

A Python ``int`` attribute that a step increments becomes, under ``torch.compile``, a symbolic integer *input* of the
graphs that read or write it (dynamo marks it dynamic after its second value), and CUDA graphs
(``mode="reduce-overhead"``) record a new graph for every value an integer input takes
(``torch._inductor.cudagraph_trees``: one recording per distinct tuple of integer inputs), i.e. at every step, each
recording holding its own memory. :class:`StepCount` counts eager increments in a Python int (free, no device work)
and increments made inside a compiled region in a 0-d int64 tensor on the training device (an in-place add, part of
the graph, at a fixed address), so no compiled graph takes the count as an input. The count is their sum. This is
what ``torch.optim`` does for its own ``step`` (a tensor, on the device with ``capturable=True``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["CountAttribute", "StepCount"]


class StepCount:
    """A non-negative count: eager increments in :attr:`host`, compiled ones in :attr:`device` (see the module).

    Attributes:
        host: increments made eagerly (plus the value set by :meth:`set`), a Python int.
        device: a 0-d int64 tensor of the increments made while compiling, or None before the first one.
    """

    __slots__ = ("device", "host")

    def __init__(self, value: int = 0) -> None:
        self.host = int(value)
        self.device: Tensor | None = None

    def increment(self, like: Tensor) -> None:
        """Add one: to :attr:`host` eagerly; while compiling, to :attr:`device` on ``like``'s device."""
        if not torch.compiler.is_compiling():
            self.host += 1
            return
        if self.device is None or self.device.device != like.device:
            # a normal tensor even under torch.inference_mode (later training steps write it in place)
            with torch.inference_mode(False):
                start = torch.zeros((), dtype=torch.int64, device=like.device)
            self.device = start if self.device is None else start + self.device.to(like.device)
        self.device.add_(1)

    def set(self, value: int) -> None:
        """Set the count (e.g. from a checkpoint); drops the device part."""
        self.host, self.device = int(value), None

    def __int__(self) -> int:
        """The count; after compiled increments this reads the device tensor (a host sync on a GPU)."""
        return self.host if self.device is None else self.host + int(self.device)

    def __bool__(self) -> bool:
        """Whether the count is nonzero, without reading the device (increments only add)."""
        return self.host != 0 or self.device is not None

    def as_tensor(self, device: torch.device) -> Tensor:
        """The count as a ``(1,)`` int64 tensor on ``device``, built without a host read or a host-to-device copy (a
        fill, plus the device part): for indexing in code that must not synchronize or is being compiled."""
        count = torch.full((1,), self.host, dtype=torch.int64, device=device)
        return count if self.device is None else count + self.device.to(device)

    def __repr__(self) -> str:
        return f"StepCount(host={self.host}, device={self.device})"


class CountAttribute:
    """A read/write ``int`` attribute kept in the :class:`StepCount` that the instance holds as ``field``: reading it
    gives the count (after compiled increments, a read of the device), assigning it sets the count.

    .. code-block:: python

        class Stats:
            num_updates = CountAttribute("_updates", "Tables folded in so far.")

            def __init__(self) -> None:
                self._updates = StepCount()
    """

    def __init__(self, field: str, doc: str) -> None:
        self.field = field
        self.__doc__ = f"{doc} After compiled steps, reading it waits for the device (a host sync on a GPU)."

    def __get__(self, obj: object, owner: type | None = None) -> Any:
        return self if obj is None else int(getattr(obj, self.field))

    def __set__(self, obj: object, value: int) -> None:
        getattr(obj, self.field).set(value)
