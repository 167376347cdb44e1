"""Old keyword names kept for one deprecation cycle, in one place.

The glossary (docs/glossary.md) fixes one term per idea; where a public keyword was renamed to follow it, the old
name still works through :func:`renamed_kwargs` and emits a :class:`DeprecationWarning` that names the new one.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["deprecated_alias", "renamed_attribute", "renamed_kwargs"]

F = TypeVar("F", bound=Callable[..., Any])


def renamed_kwargs(**old_to_new: str) -> Callable[[F], F]:
    """Accept each old keyword ``old`` as ``new`` with a :class:`DeprecationWarning`.

    ``@renamed_kwargs(validate="validate_args")`` on ``def f(*, validate_args=None)`` makes ``f(validate=False)``
    warn and call ``f(validate_args=False)``.

    Raises (from the wrapped call):
        TypeError: both the old and the new name given (the message names both).
    """

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in old_to_new.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(
                            f"{fn.__qualname__}() got both {old}= (deprecated) and {new}=; pass only {new}="
                        )
                    warnings.warn(
                        f"{fn.__qualname__}({old}=...) is deprecated; pass {new}= (same meaning; see the glossary)",
                        DeprecationWarning,
                        stacklevel=2,
                    )
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def deprecated_alias(old: str, new: str, value: Any) -> Any:
    """Return ``value`` (the object now called ``new``) for a module ``__getattr__`` that serves ``old``, warning."""
    warnings.warn(f"{old} is deprecated; use {new} (same object)", DeprecationWarning, stacklevel=3)
    return value


def renamed_attribute(obj: object, old: str, new: str) -> Any:
    """``obj.new``, for a deprecated property ``old`` that forwards to it, warning."""
    warnings.warn(
        f"{type(obj).__name__}.{old} is deprecated; use .{new} (same value; see the glossary)",
        DeprecationWarning,
        stacklevel=3,
    )
    return getattr(obj, new)
