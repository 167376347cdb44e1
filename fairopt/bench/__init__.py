"""``fairopt bench``: benchmark constraint satisfaction on train, held-out and test data (see :mod:`.config`)."""

from typing import Any

from fairopt._deprecation import deprecated_alias
from fairopt.bench.config import (
    BENCH_METHODS,
    CONSTRAINTS,
    PRESETS,
    PublishedResult,
    StudyConfig,
    make_constraint,
)
from fairopt.bench.runner import RunResult, run_one
from fairopt.bench.study import StudyResult, load_study_data, run_study, summarize

__all__ = [
    "BENCH_METHODS",
    "CONSTRAINTS",
    "PRESETS",
    "PublishedResult",
    "RunResult",
    "StudyConfig",
    "StudyResult",
    "load_study_data",
    "make_constraint",
    "run_one",
    "run_study",
    "summarize",
]


def __getattr__(name: str) -> Any:
    if name == "METHODS":  # renamed: one public METHODS-like name per idea (fairopt.optim.METHODS: the methods)
        return deprecated_alias("fairopt.bench.METHODS", "fairopt.bench.BENCH_METHODS", BENCH_METHODS)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
