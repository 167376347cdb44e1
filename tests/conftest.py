"""Fixtures shared by several test modules."""

from __future__ import annotations

import os

# The Triton kernels' tests (tests/test_kernels.py) run in Triton's CPU interpreter. Triton reads TRITON_INTERPRET
# once, when it is first imported (torch._dynamo may import it during collection), so it is set here, before any
# test module is collected, unless the caller set it. Nothing else in the suite launches a Triton kernel.
os.environ.setdefault("TRITON_INTERPRET", "1")

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module")
def agg_backend() -> Iterator[None]:
    """Headless: the figures are built without pyplot, and any pyplot use would get Agg too."""
    matplotlib = pytest.importorskip("matplotlib")
    previous = matplotlib.get_backend()
    matplotlib.use("Agg")
    yield
    matplotlib.use(previous)
