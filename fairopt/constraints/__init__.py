"""Constraints: a rate-expression algebra, the constraint object, and the built-in fairness definitions."""

from fairopt.constraints.base import Constraint, ConstraintValue, FunctionConstraint, RateView
from fairopt.constraints.builtin import (
    CONVENTIONS,
    BoundedGroupLoss,
    DemographicParity,
    DisparateImpact,
    EqualizedOdds,
    EqualOpportunity,
    ErrorRateParity,
    FalsePositiveRateParity,
    PredictiveParity,
    RateBound,
    rate_parity,
)
from fairopt.constraints.expressions import (
    Bounds,
    Const,
    Expr,
    RateRef,
    compares_groups,
    concat,
    maximum,
    minimum,
    pairwise,
)
from fairopt.constraints.protected_classes import (
    ProtectedClassDisparateImpact,
    ProtectedClassParity,
    protected_classes,
)

__all__ = [
    "CONVENTIONS",
    "BoundedGroupLoss",
    "Bounds",
    "Const",
    "Constraint",
    "ConstraintValue",
    "DemographicParity",
    "DisparateImpact",
    "EqualOpportunity",
    "EqualizedOdds",
    "ErrorRateParity",
    "Expr",
    "FalsePositiveRateParity",
    "FunctionConstraint",
    "PredictiveParity",
    "ProtectedClassDisparateImpact",
    "ProtectedClassParity",
    "RateBound",
    "RateRef",
    "RateView",
    "compares_groups",
    "concat",
    "maximum",
    "minimum",
    "pairwise",
    "protected_classes",
    "rate_parity",
]
