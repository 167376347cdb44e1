"""fairopt: train PyTorch models under group-fairness constraints, framed as constrained optimization.

The data path (see the README): ``scores, labels, groups`` → :func:`group_stats` (a ``(G, K)`` table of additive
per-group statistics) → rates (:mod:`fairopt.rates`) → constraints (:mod:`fairopt.constraints`) → constrained
optimizers (:mod:`fairopt.optim`) → held-out validation and reports (:mod:`fairopt.validation`).
"""

from fairopt._validation import set_validate_args, set_validation
from fairopt._version import __version__
from fairopt.constraints import (
    BoundedGroupLoss,
    Constraint,
    ConstraintValue,
    DemographicParity,
    DisparateImpact,
    EqualizedOdds,
    EqualOpportunity,
    ErrorRateParity,
    FalsePositiveRateParity,
    FunctionConstraint,
    PredictiveParity,
    RateBound,
    RateRef,
    concat,
    maximum,
    minimum,
    pairwise,
)
from fairopt.groups import Groups
from fairopt.models import create_model
from fairopt.optim import (
    AugmentedLagrangian,
    ConstrainedOptimizer,
    FairnessCMP,
    IterateRecords,
    Lagrangian,
    Penalty,
    ProxyLagrangian,
    StochasticClassifier,
)
from fairopt.proxies import Proxy
from fairopt.rates import RateValue, compute_rate, rate_table
from fairopt.stats import COLUMNS, GroupStats, RunningGroupStats, group_stats
from fairopt.sweep.run import sweep  # fairopt.sweep(...): the function; the package is fairopt.sweep.*
from fairopt.validation import (
    FairnessMonitor,
    FairnessReport,
    ReportOptions,
    Verdict,
    evaluate,
    generalization_gap,
    leveling_down,
)

# Rate references for the expression algebra: tpr(1) - tpr(0) <= 0.05, abs(tpr.per_group() - tpr()) <= 0.05.
selection_rate = RateRef("selection_rate")
tpr = RateRef("true_positive_rate")
fpr = RateRef("false_positive_rate")
tnr = RateRef("true_negative_rate")
fnr = RateRef("false_negative_rate")
error_rate = RateRef("error_rate")
accuracy = RateRef("accuracy")
precision = RateRef("precision")
npv = RateRef("negative_predictive_value")
base_rate = RateRef("base_rate")
mean_loss = RateRef("mean_loss")

__all__ = [
    "COLUMNS",
    "AugmentedLagrangian",
    "BoundedGroupLoss",
    "ConstrainedOptimizer",
    "Constraint",
    "ConstraintValue",
    "DemographicParity",
    "DisparateImpact",
    "EqualOpportunity",
    "EqualizedOdds",
    "ErrorRateParity",
    "FairnessCMP",
    "FairnessMonitor",
    "FairnessReport",
    "FalsePositiveRateParity",
    "FunctionConstraint",
    "GroupStats",
    "Groups",
    "IterateRecords",
    "Lagrangian",
    "Penalty",
    "PredictiveParity",
    "Proxy",
    "ProxyLagrangian",
    "RateBound",
    "RateRef",
    "RateValue",
    "ReportOptions",
    "RunningGroupStats",
    "StochasticClassifier",
    "Verdict",
    "__version__",
    "accuracy",
    "base_rate",
    "compute_rate",
    "concat",
    "create_model",
    "error_rate",
    "evaluate",
    "fnr",
    "fpr",
    "generalization_gap",
    "group_stats",
    "leveling_down",
    "maximum",
    "mean_loss",
    "minimum",
    "npv",
    "pairwise",
    "precision",
    "rate_table",
    "selection_rate",
    "set_validate_args",
    "set_validation",
    "sweep",
    "tnr",
    "tpr",
]

# Packages with heavier dependencies (torchvision, timm, triton) or that only the CLI needs are imported on first
# attribute access, so ``import fairopt; fairopt.datasets.load_adult()`` works and ``import fairopt`` stays cheap.
_LAZY_PACKAGES = ("bench", "datasets", "kernels", "postprocessing", "samplers", "vision")


def __getattr__(name: str) -> object:
    if name in _LAZY_PACKAGES:
        import importlib

        return importlib.import_module(f"fairopt.{name}")
    raise AttributeError(f"module 'fairopt' has no attribute {name!r}")
