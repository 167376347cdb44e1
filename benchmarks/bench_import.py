"""``import fairopt`` after ``import torch``, against ``import torch`` alone, in fresh interpreters of the same run.

Implementations: ``import_torch`` (the baseline, ``import torch``) and ``import_fairopt`` (``import torch;
import fairopt``). The difference is fairopt's own cost: scipy and pandas are imported where first used, so it is
fairopt's modules plus cooper (target: at most 0.25 s).

Run: ``python -m pytest benchmarks/bench_import.py --benchmark-only``.
"""

from __future__ import annotations

import subprocess
import sys

import pytest


def _fresh(code: str) -> None:
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("impl", ["import_torch", "import_fairopt"])
def test_import_time(benchmark, impl):
    benchmark.group = "import"
    benchmark.extra_info["impl"] = impl
    code = "import torch" if impl == "import_torch" else "import torch; import fairopt"
    benchmark.pedantic(_fresh, args=(code,), rounds=5, iterations=1, warmup_rounds=1)
