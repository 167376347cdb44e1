"""Reading the packaged raw data files, with SHA-256 verification."""

from __future__ import annotations

import gzip
import hashlib
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

from ._checksums import SHA256

__all__ = ["ChecksumError", "read_package_file"]


class ChecksumError(OSError):
    """A packaged data file does not have the SHA-256 it was built with.

    The file is corrupt or was replaced; reinstall fairopt or rebuild the package
    data with ``python tools/build_datasets.py``.
    """


def _data_dir() -> Traversable:
    """Directory of the packaged data files (``fairopt/datasets/data``)."""
    return resources.files(__package__).joinpath("data")


def read_package_file(name: str, directory: Path | str | None = None) -> bytes:
    """Return the decompressed bytes of packaged data file ``name``, verified.

    Parameters
    ----------
    name:
        Packaged file name, e.g. ``"adult.data.gz"``; must be a key of
        ``fairopt.datasets._checksums.SHA256``.
    directory:
        Where to read it from (default: the package's ``data`` directory). Only
        tests pass this.

    Raises
    ------
    ChecksumError
        If the SHA-256 of the decompressed contents differs from the recorded
        one, or the file is not valid gzip. The message names the file, the
        expected and the actual hash.
    FileNotFoundError
        If the file is missing from the installation.
    """
    try:
        expected = SHA256[name]
    except KeyError:
        raise ValueError(f"unknown package data file {name!r}; valid choices: {sorted(SHA256)}") from None
    path: Path | Traversable = Path(directory) / name if directory is not None else _data_dir() / name
    if not path.is_file():
        raise FileNotFoundError(
            f"package data file {path} is missing; reinstall fairopt or run "
            "`python tools/build_datasets.py` in a source checkout"
        )
    compressed = path.read_bytes()
    try:
        raw = gzip.decompress(compressed)
    except (OSError, EOFError) as error:
        raise ChecksumError(
            f"package data file {path} is corrupt (not valid gzip: {error}); "
            f"expected SHA-256 of its contents {expected}, "
            f"actual SHA-256 of the file {hashlib.sha256(compressed).hexdigest()}"
        ) from error
    actual = hashlib.sha256(raw).hexdigest()
    if actual != expected:
        raise ChecksumError(
            f"SHA-256 mismatch for package data file {path}: "
            f"expected {expected}, actual {actual}. The file is corrupt or was "
            "modified; reinstall fairopt or run `python tools/build_datasets.py`."
        )
    return raw
