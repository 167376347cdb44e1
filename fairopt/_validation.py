"""Argument checks shared by the data path, and the switch that turns the value checks off.

Checks of *values* (ids in range, labels in {0, 1}, finite scores) need one device-to-host copy, so they can be
switched off where that sync matters (e.g. a CUDA training loop): pass ``validate_args=False`` to a call, or switch
the default with :class:`set_validate_args` or the environment variable ``FAIROPT_VALIDATE_ARGS=0`` (the name
follows ``torch.distributions`` and torchmetrics; "validation" in fairopt means held-out validation). Checks of
shapes, dtypes and devices are free and always run.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import sys
import warnings
import weakref
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["set_validate_args", "set_validation", "validate_args_enabled"]

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes a ``warnings.warn`` in the calling function name the first frame outside
    fairopt (the user's line), however deep in fairopt the call is (Python 3.12's ``skip_file_prefixes``)."""
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    return level


def spelling(name: str) -> str:
    """``name`` without case, whitespace and the separators ``_ - .``: ``Blond_hair``, ``blond-hair`` and
    ``Blond_Hair`` spell the same (other characters, ``:`` and non-ASCII letters included, are kept)."""
    return re.sub(r"[\s_.\-]", "", name.casefold())


def close_names(name: str, candidates: Sequence[str], n: int = 5) -> list[str]:
    """For an unknown ``name``: the candidates spelled alike up to case and separators, else up to ``n`` of the
    closest ones, compared so spelled (:func:`difflib.get_close_matches`, cutoff 0.6); maybe none."""
    key = spelling(name)
    by_spelling: dict[str, list[str]] = {}
    for c in candidates:
        by_spelling.setdefault(spelling(c), []).append(c)
    if key in by_spelling:
        return by_spelling[key]
    close = difflib.get_close_matches(key, list(by_spelling), n=n, cutoff=0.6)  # compared as spelled: case aside
    return [c for k in close for c in by_spelling[k]][:n]


def require_columns(named: Mapping[str, Sequence[Hashable]], available: Sequence[Hashable], source: str) -> None:
    """Refuse a column named for a role (``{"target": ["income"], ...}``) that is not among the labels
    ``available`` (a frame's ``columns``, compared as they are: ``"2"`` is not the integer label ``2``).

    Raises:
        ValueError: naming the role, the column, the file, a close name if there is one, and the columns there are.
    """
    labels = list(available)
    for role, columns in named.items():
        for column in columns:
            if column not in labels:
                by_text = {str(c): c for c in labels}
                close = [by_text[c] for c in close_names(str(column), list(by_text), n=3)]
                hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
                raise ValueError(f"{role} column {column!r} not found in {source}; {hint}available columns: {labels}")


_OFF = {"0", "false", "no", "off"}
_VALIDATE_ARGS = (
    os.environ.get("FAIROPT_VALIDATE_ARGS", os.environ.get("FAIROPT_VALIDATE", "1")).strip().lower() not in _OFF
)


class set_validate_args:  # a function-like name, as torch.set_grad_enabled
    """Turn the value checks of every fairopt call on or off (on unless ``FAIROPT_VALIDATE_ARGS=0``).

    Works as a call (``fairopt.set_validate_args(False)``) and as a context manager that restores the previous
    default on exit (``with fairopt.set_validate_args(False): ...``), like ``torch.set_grad_enabled``. A call's own
    ``validate_args=`` argument takes precedence. The old environment variable ``FAIROPT_VALIDATE`` is still read
    when the new one is unset.
    """

    def __init__(self, enabled: bool) -> None:
        global _VALIDATE_ARGS
        self.previous, _VALIDATE_ARGS = _VALIDATE_ARGS, bool(enabled)

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        global _VALIDATE_ARGS
        _VALIDATE_ARGS = self.previous


class set_validation(set_validate_args):
    """Deprecated name of :class:`set_validate_args` (same behaviour, with a ``DeprecationWarning``)."""

    def __init__(self, enabled: bool) -> None:
        warnings.warn(
            "fairopt.set_validation is deprecated; use fairopt.set_validate_args (same behaviour)",
            DeprecationWarning,
            stacklevel=2,
        )
        super().__init__(enabled)


def validate_args_enabled(validate_args: bool | None = None) -> bool:
    """Resolve a call's ``validate_args`` argument against the global default."""
    return _VALIDATE_ARGS if validate_args is None else bool(validate_args)


validation_enabled = validate_args_enabled  # the internal name before the rename; callers move to the new one


def as_number(value: object) -> float | None:
    """``value`` as a float when it is one real number (a Python or NumPy number, a 0-d tensor or array, anything
    else with ``__float__``), else None: a string (``float("0.05")`` would accept one that is a typo away from an
    error), a bool (Python, NumPy, or a bool tensor or array: a typo more often than a bound), an array or tensor
    with dimensions (even of one element), a complex number. NaN and inf are numbers here."""
    if isinstance(value, (bool, np.bool_, str, bytes)) or not hasattr(value, "__float__"):
        return None
    if isinstance(value, (Tensor, np.ndarray)) and (value.ndim != 0 or value.dtype in (torch.bool, np.bool_)):
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, RuntimeError):  # e.g. a complex tensor
        return None


def require_number(name: str, value: object, hint: str) -> float:
    """``value`` as a finite float (:func:`as_number`: one real number, not a string or a bool).

    Raises:
        TypeError: not one number (:func:`as_number` is None). ValueError: NaN or inf. Both messages name ``name``
            and say what it holds (``hint``, e.g. "a rate difference such as 0.05").
    """
    number = as_number(value)
    if number is None:
        if isinstance(value, (Tensor, np.ndarray)) and value.ndim != 0:
            raise TypeError(f"{name} must be a single number ({hint}), got a {type(value).__name__} of shape "
                            f"{tuple(value.shape)}; pass one number, e.g. {name}=float(x)")  # fmt: skip
        raise TypeError(f"{name} must be a number ({hint}), got {value!r} ({type(value).__name__})")
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite ({hint}), got {number}")
    return number


def require_tensor(name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        fix = f"convert it with torch.as_tensor({name})"
        if name == "groups" and _holds_text(value):  # as_tensor cannot read names: encode them as ids
            fix = "encode the names as int64 ids with fairopt.Groups: groups = fairopt.Groups.fit(names).encode(names)"
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}; {fix}")
    return value


def _holds_text(value: object) -> bool:
    """Whether ``value`` (a list, tuple or array) holds strings, which ``torch.as_tensor`` refuses."""
    if isinstance(value, np.ndarray):
        return value.dtype.kind in "OUS"
    return isinstance(value, (list, tuple)) and any(isinstance(v, (str, bytes)) for v in value[:1])


def require_1d(name: str, value: Tensor, n: int | None, hint: str = "") -> None:
    if value.dim() != 1:
        fix = (
            f"; if it is {tuple(value.shape)} with a trailing 1, pass {name}.squeeze(-1)"
            if (value.dim() == 2 and value.shape[-1] == 1)
            else ""
        )
        raise ValueError(f"{name} must have shape (N,), got {tuple(value.shape)}{fix}{hint}")
    if n is not None and value.shape[0] != n:
        raise ValueError(f"{name} has {value.shape[0]} entries but scores has {n}; pass one entry per example")


def require_device(name: str, value: Tensor, device: torch.device) -> None:
    if value.device != device:
        raise ValueError(
            f"{name} is on {value.device} but scores is on {device}; move it with {name}.to(scores.device)"
        )


# dtypes NumPy holds (bfloat16 it does not): CPU tensors of these can be read through NumPy views
NUMPY_DTYPES = frozenset(
    {torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float16, torch.float32,
     torch.float64}
)  # fmt: skip


def finite(values: Tensor) -> Tensor:
    """``torch.isfinite(values)`` for a floating tensor, in two tensor operations instead of torch's five (``==``,
    ``abs``, ``!=``, ``*``, ``&``): ``values - values == 0`` holds exactly for the finite numbers (``inf - inf`` and
    ``nan - nan`` are NaN); measured 15-35% faster on small CPU tensors. Used by every training step's checks and
    dual update."""
    return values - values == 0


def describe_bad_values(values: Tensor, bad: Tensor, limit: int = 5) -> str:
    """A short readable list of the offending values and their first positions (host sync: error path only)."""
    idx = bad.nonzero().flatten()
    shown = ", ".join(f"[{i}]={values[i].item()!r}" for i in idx[:limit].tolist())
    more = f" (and {idx.numel() - limit} more)" if idx.numel() > limit else ""
    return f"{idx.numel()} bad value(s): {shown}{more}"


def ends_in_probabilities(model: object) -> str | None:
    """The name of the output layer when ``model`` visibly ends in a sigmoid or softmax (its outputs are then
    probabilities, not the logits fairopt reads), else None. Looks at the last submodule of ``nn.Sequential``s,
    recursively (the registration order of other modules says nothing about what ``forward`` returns)."""
    from torch import nn

    if not isinstance(model, nn.Module):
        return None
    last: nn.Module = model
    while isinstance(last, nn.Sequential) and len(last):
        last = last[-1]
    probabilities = (nn.Sigmoid, nn.Softmax, nn.Softmax2d, nn.Hardsigmoid)
    return type(last).__name__ if isinstance(last, probabilities) else None


def probability_hint(fix: str) -> str:
    """Why probabilities are wrong where fairopt reads logits, and ``fix``: what to pass in the caller's terms."""
    return (
        "fairopt reads scores as logits (a positive prediction is score > threshold, default 0; the proxies and the "
        "log loss take logits), so with probabilities in [0, 1] nearly every prediction is positive. Remove the "
        f"final sigmoid (train with BCEWithLogitsLoss) or {fix}"
    )


PROBABILITY_HINT = probability_hint("pass model=lambda x: torch.logit(net(x), eps=1e-6)")  # collect_stats' terms


MIN_SCORES_FOR_PROBABILITY_CHECK = 20
"""Fewer scores than this can all lie in [0, 1] as logits by chance: no probability warning."""

# Autograd nodes that only reshape or select: looked through to find the operation that made the scores.
_VIEW_NODES = ("Squeeze", "Unsqueeze", "View", "Reshape", "Select", "Slice", "Index", "Clone", "ToCopy", "Alias")
_PROBABILITY_NODES = ("SigmoidBackward", "SoftmaxBackward", "HardsigmoidBackward")


def probability_op(scores: object) -> str | None:
    """The name of the autograd operation that produced ``scores`` when it is a sigmoid or a softmax (seen through
    reshapes and selections), else None: free (no host sync), for scores that carry a graph."""
    node = getattr(scores, "grad_fn", None)
    for _ in range(8):
        if node is None:
            return None
        name = type(node).__name__
        if name.startswith(_PROBABILITY_NODES):
            return name.replace("Backward0", "").replace("Backward1", "").lower()
        if not name.startswith(_VIEW_NODES):
            return None
        node = node.next_functions[0][0] if node.next_functions else None
    return None


class OutputOp(torch.overrides.TorchFunctionMode):
    """Records which tensors come out of a sigmoid or softmax (through reshapes, selections and casts) while a model
    runs, so that :meth:`made` can tell whether its output is probabilities: it watches the real forward pass (no
    extra pass, no autograd graph needed), e.g. ``return torch.sigmoid(self.head(x))``, which the module structure
    does not show."""

    _PROBABILITY = frozenset({"sigmoid", "softmax", "hardsigmoid"})
    _VIEWS = frozenset(
        {"squeeze", "unsqueeze", "reshape", "view", "flatten", "__getitem__", "select", "contiguous", "clone", "to"}
        | {"float", "double", "half", "detach"}
    )

    def __init__(self) -> None:
        super().__init__()
        self._made: dict[int, tuple[weakref.ref[Tensor], str]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        if isinstance(out, Tensor):
            name = getattr(func, "__name__", "")
            if name in self._PROBABILITY:
                self._made[id(out)] = (weakref.ref(out), name)
            elif name in self._VIEWS and args and isinstance(args[0], Tensor):
                source = self.made(args[0])
                if source is not None:
                    self._made[id(out)] = (weakref.ref(out), source)
        return out

    def made(self, tensor: object) -> str | None:
        """The probability function ``tensor`` came out of, if one of those recorded, else None."""
        entry = self._made.get(id(tensor))
        return entry[1] if entry is not None and entry[0]() is tensor else None
