"""What :func:`~fairopt.validation.evaluate` accepts as data, and how a batch is split into its parts.

``data`` may be

* a ``torch.utils.data.DataLoader``, or any iterable of batches (a list, a generator);
* a map-style ``torch.utils.data.Dataset`` (e.g. a ``TensorDataset``): wrapped in a ``DataLoader``;
* one dataset given as tensors: a tuple ``(x, labels, groups)`` or ``(x, labels, groups, weights)``, or a dict
  with the keys below; it is cut into batches of ``batch_size`` examples.

A batch is a tuple/list ``(x, labels, groups[, weights])`` (the layout of ``fairopt.datasets`` loaders) or a
dict with keys ``x``/``inputs``/``features``, ``y``/``labels``/``targets``, ``groups``/``group`` and optionally
``weights``/``sample_weight``. ``x`` may be a tensor or any structure of tensors the model takes (dict, tuple).
For another layout, pass ``unpack=lambda batch: (x, labels, groups, weights_or_None)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset

__all__ = ["Batch", "Unpack", "default_unpack", "iterate_batches", "move_to", "take_rows"]

Batch = tuple[Any, Tensor, Tensor, Tensor | None]
Unpack = Callable[[Any], Batch]

_KEYS: dict[str, tuple[str, ...]] = {
    "x": ("x", "inputs", "input", "features", "X"),
    "labels": ("y", "labels", "label", "targets", "target"),
    "groups": ("groups", "group", "sensitive"),
    "weights": ("weights", "weight", "sample_weight", "sample_weights"),
}


def _lookup(batch: Mapping[str, Any], part: str, required: bool = True) -> Any:
    for key in _KEYS[part]:
        if key in batch:
            return batch[key]
    if required:
        raise ValueError(
            f"batch dict has no {part} (looked for keys {list(_KEYS[part])}, found {list(batch)}); "
            "rename the key or pass unpack=lambda b: (x, labels, groups, weights)"
        )
    return None


def default_unpack(batch: Any) -> Batch:
    """Split a batch into ``(x, labels, groups, weights or None)`` (layouts in the module docstring).

    Raises:
        ValueError: a batch of another layout (the message says how to pass ``unpack=``).
    """
    if isinstance(batch, Mapping):
        return (
            _lookup(batch, "x"),
            _lookup(batch, "labels"),
            _lookup(batch, "groups"),
            _lookup(batch, "weights", required=False),
        )
    if isinstance(batch, Sequence) and not isinstance(batch, (str, bytes)) and len(batch) in (3, 4):
        x, labels, groups, *rest = batch
        return x, labels, groups, (rest[0] if rest else None)
    kind = f"a sequence of {len(batch)}" if isinstance(batch, Sequence) else type(batch).__name__
    raise ValueError(
        f"cannot read a batch that is {kind}: expected (x, labels, groups[, weights]) or a dict; "
        "pass unpack=lambda batch: (x, labels, groups, weights_or_None)"
    )


def _is_tensor_dataset(data: Any) -> bool:
    if isinstance(data, Mapping):
        return all(isinstance(_lookup(data, p, required=False), Tensor) for p in ("labels", "groups"))
    return (
        isinstance(data, tuple)
        and len(data) in (3, 4)
        and all(isinstance(t, Tensor) and t.dim() == 1 for t in data[1:])
    )


def take_rows(x: Any, start: int, stop: int) -> Any:
    """Rows ``start:stop`` of a tensor, or of every tensor inside dicts/lists/tuples (other values as they are)."""
    if isinstance(x, Tensor):
        return x[start:stop]
    if isinstance(x, Mapping):
        return {k: take_rows(v, start, stop) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(take_rows(v, start, stop) for v in x)
    return x


def _chunks(data: tuple[Any, ...] | Mapping[str, Any], batch_size: int) -> Iterator[Any]:
    labels = data[1] if isinstance(data, tuple) else _lookup(data, "labels")
    n = labels.shape[0]
    for start in range(0, max(n, 1), batch_size):
        yield take_rows(data, start, start + batch_size)


def iterate_batches(data: Any, batch_size: int) -> tuple[Iterable[Any], int | None]:
    """The batches of ``data`` and their number (``None`` when unknown), following the module docstring.

    Raises:
        ValueError: ``batch_size < 1``. TypeError: ``data`` is not iterable.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if _is_tensor_dataset(data):
        labels = data[1] if isinstance(data, tuple) else _lookup(data, "labels")
        return _chunks(data, batch_size), max(1, -(-labels.shape[0] // batch_size))
    if isinstance(data, Dataset) and not isinstance(data, IterableDataset) and hasattr(data, "__len__"):
        data = DataLoader(data, batch_size=batch_size)
    if not isinstance(data, Iterable):
        raise TypeError(
            f"data must be a DataLoader, an iterable of batches, a Dataset or a tuple of tensors, "
            f"got {type(data).__name__}"
        )
    try:
        length: int | None = len(data)  # type: ignore[arg-type]
    except TypeError:
        length = None
    return data, length


def move_to(x: Any, device: torch.device | None) -> Any:
    """Move a tensor, or the tensors inside dicts/lists/tuples, to ``device`` (``None``: leave as is)."""
    if device is None:
        return x
    if isinstance(x, Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, Mapping):
        return {k: move_to(v, device) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(move_to(v, device) for v in x)
    return x
