"""Reading weights from a local file into a model: the only way weights enter :mod:`fairopt.vision` (it never
downloads).

A file is a ``torch.save`` of a state dict (or of a dict holding one under ``"state_dict"``, ``"model"``,
``"state_dict_ema"`` or ``"model_ema"``, as training scripts and timm write them), or a ``.safetensors`` file.
Prefixes that wrappers add are removed: ``module.`` (DDP, ``nn.DataParallel``) and ``_orig_mod.`` (``torch.compile``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["existing_file", "load_weights", "read_state_dict"]

_NESTED_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def existing_file(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` as a Path, or a FileNotFoundError naming ``what`` and the path (weights are never downloaded)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(
            f"{what} {str(file)!r} does not exist or is not a file; fairopt never downloads weights: give the path of "
            "a weights file on this machine"
        )
    return file


def read_state_dict(path: str | os.PathLike[str], *, what: str = "weights file") -> dict[str, Tensor]:
    """The state dict stored in ``path`` (CPU tensors), unwrapped and with wrapper prefixes removed.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: the file cannot be read as weights (the message names it), or holds no tensors.
    """
    file = existing_file(path, what)
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: object = load_file(str(file), device="cpu")
        else:
            # weights_only: a weights file must not run code when it is opened (torch's default since 2.6)
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling, zip and safetensors errors have no common base
        raise ValueError(f"cannot read {what} {str(file)!r} as a torch state dict: {err}") from err
    while isinstance(state, Mapping) and not any(isinstance(v, Tensor) for v in state.values()):
        nested = next((state[k] for k in _NESTED_KEYS if isinstance(state.get(k), Mapping)), None)
        if nested is None:
            break
        state = nested
    if not isinstance(state, Mapping) or not any(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(
            f"{what} {str(file)!r} holds no state dict (a mapping of parameter names to tensors, e.g. "
            "torch.save(model.state_dict(), path))"
        )
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        for prefix in _WRAPPER_PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def _listing(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def load_weights(
    model: nn.Module,
    state: Mapping[str, Tensor],
    *,
    source: str,
    drop: Callable[[str, Tensor, Tensor], bool] | None = None,
) -> list[str]:
    """Load ``state`` into ``model``: every parameter and buffer of the model must be given, with its shape.

    Args:
        source: what the weights are, for error messages (e.g. ``"checkpoint '/tmp/model.pt'"``).
        drop: optional ``fn(key, saved, current) -> bool``: a saved tensor whose shape differs from the model's is
            left out (the model keeps its fresh initialization) when it returns True, e.g. a 1000-class ImageNet
            head replaced by one output unit; any other difference is an error.

    Returns:
        The keys that were dropped.

    Raises:
        ValueError: missing, unexpected or differently shaped keys (the message lists them and says how to fix it).
    """
    current = model.state_dict()
    dropped = [
        k
        for k, v in state.items()
        if k in current and tuple(v.shape) != tuple(current[k].shape) and drop is not None and drop(k, v, current[k])
    ]
    kept = {k: v for k, v in state.items() if k not in dropped}
    missing = [k for k in current if k not in kept and k not in dropped]
    unexpected = [k for k in kept if k not in current]
    mismatched = [
        f"{k} {tuple(v.shape)} vs {tuple(current[k].shape)}"
        for k, v in kept.items()
        if k in current and tuple(v.shape) != tuple(current[k].shape)
    ]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"missing {_listing(missing)}")
        if unexpected:
            problems.append(f"unexpected {_listing(unexpected)}")
        if mismatched:
            problems.append(f"other shapes (saved vs model) {_listing(mismatched)}")
        raise ValueError(
            f"{source} does not fit this {type(model).__name__}: {'; '.join(problems)}. Build the model with the "
            "name, width, in_chans and options the weights were saved with"
        )
    model.load_state_dict(kept, strict=False)  # strict=False only for the dropped keys, checked above
    return dropped
