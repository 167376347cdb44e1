"""What a study or a sweep ran on besides its settings: versions, machine, and the data (a file's SHA-256), written
to ``study.json`` and ``sweep.json`` as ``provenance`` (:func:`fairopt.sweep.replay` checks it)."""

from __future__ import annotations

import hashlib
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fairopt._version import __version__

__all__ = ["file_sha256", "machine", "provenance", "versions"]


def machine() -> str:
    """The operating system and processor, e.g. ``"linux, x86_64"``."""
    return f"{sys.platform}, {platform.machine()}"


def versions() -> dict[str, str]:
    """``python``, ``fairopt``, ``torch``, ``numpy`` and ``platform`` (:func:`machine`) of this process."""
    return {"python": platform.python_version(), "fairopt": __version__, "torch": torch.__version__,
            "numpy": np.__version__, "platform": machine()}  # fmt: skip


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def provenance(dataset: str, data: Any, *, given: bool = False) -> dict[str, Any]:
    """:func:`versions` and ``"data"``: what ``dataset`` (a ``--dataset`` value) loaded as ``data``.

    ``data["source"]`` is ``"csv"`` (with ``path``, absolute, and ``sha256`` of the file's bytes), ``"images"`` (an
    ``images:CSV`` index: its path and SHA-256; the image files it names are not hashed), ``"celeba"`` (the folder and
    the SHA-256 of its attribute and partition files; not of the images), ``"bundled"`` (``sha256`` of the packaged
    files, which fairopt checks when it loads them), ``"in memory"`` (``given``: a dataset passed as an object, which
    no file reproduces) or the dataset's own name (``digits``: built from scikit-learn's copy, nothing hashed). A
    tabular dataset adds its ``name``, ``target``, ``rows`` and ``feature_names`` (the columns the model read); an
    image dataset its ``name``, ``target``, ``sensitive`` and ``rows`` (as loaded: the loader's defaults filled in)."""
    described: dict[str, Any] = {}
    if hasattr(data, "feature_names") and hasattr(data, "frame"):  # a TabularDataset
        described.update(name=data.name, target=data.target, rows=len(data.frame),
                         feature_names=list(data.feature_names))  # fmt: skip
    else:  # an ImageDataset, or the image study's wrapper of one: what the loader's defaults chose
        from fairopt.datasets import ImageDataset

        images = getattr(data, "dataset", data)
        if isinstance(images, ImageDataset):
            described.update(name=images.name, target=images.target, sensitive=list(images.sensitive),
                             rows=len(images.frame))  # fmt: skip
    if given:
        described["source"] = "in memory"
    elif dataset.startswith(("csv:", "images:")):
        path = Path(dataset.partition(":")[2]).resolve()
        described.update(source=dataset.partition(":")[0], path=str(path), sha256=file_sha256(path))
    elif dataset.startswith("celeba:"):
        from fairopt.datasets.celeba import index_files

        files = [f.resolve() for f in index_files(dataset.partition(":")[2]) if f.is_file()]
        described.update(source="celeba", path=str(files[0].parent) if files else dataset.partition(":")[2],
                         sha256={f.name: file_sha256(f) for f in files})  # fmt: skip
    else:
        from fairopt.datasets._checksums import SHA256

        files = {name: digest for name, digest in SHA256.items() if name.split(".")[0] == dataset}
        if files:
            described.update(source="bundled", sha256=files)
        else:  # e.g. digits (built from scikit-learn's copy): nothing hashed
            described["source"] = dataset
    return {**versions(), "data": described}
