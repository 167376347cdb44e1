"""Reading and writing the JSON documents of :mod:`fairopt.validation` (standard JSON: no NaN or Infinity)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["dump_json", "load_json"]


def dump_json(data: dict[str, Any], path: str | os.PathLike[str] | None = None, indent: int | None = 2) -> str:
    """``data`` as JSON text, also written to ``path`` when given.

    Raises:
        ValueError: a NaN or infinite number in ``data`` (undefined values must be ``None``).
    """
    text = json.dumps(data, indent=indent, allow_nan=False)
    if path is not None:
        Path(path).write_text(text, encoding="utf-8")
    return text


def load_json(source: str | os.PathLike[str]) -> Any:
    """Parse JSON text (a ``str``) or a file (a ``pathlib.Path`` or other path-like)."""
    text = Path(source).read_text(encoding="utf-8") if isinstance(source, os.PathLike) else source
    return json.loads(text)
