"""``fairopt bench``: benchmark constraint satisfaction on train, held-out and test data (see :mod:`.config`)."""

from fairopt.bench.config import CONSTRAINTS, METHODS, PRESETS, PublishedResult, StudyConfig, make_constraint
from fairopt.bench.runner import RunResult, run_one
from fairopt.bench.study import StudyResult, load_study_data, run_study, summarize

__all__ = [
    "CONSTRAINTS",
    "METHODS",
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
