r"""Constrained optimizers: wrap any torch optimizer with fairness constraints.

The user-facing entry point is :class:`ConstrainedOptimizer`. Its parts, one concept per module:

- :mod:`~fairopt.optim.constraint_set`: constraints measured on a batch (``scores, labels, groups`` → ``g``, ``g̃``);
- :mod:`~fairopt.optim.methods`: the methods as objects (:class:`Lagrangian`, :class:`AugmentedLagrangian`,
  :class:`ProxyLagrangian`, :class:`Penalty`): their options, flags, and the λ-player each builds;
- :mod:`~fairopt.optim.base`: the λ-player interface; :mod:`~fairopt.optim.lagrangian` (cooper-based Lagrangian and
  augmented Lagrangian), :mod:`~fairopt.optim.proxy_lagrangian` (swap / external regret),
  :mod:`~fairopt.optim.penalty` (fixed weights); :mod:`~fairopt.optim.simplex` (their stochastic-matrix kernels);
- :mod:`~fairopt.optim.multipliers` and :mod:`~fairopt.optim.cooper_problem`: the cooper bridge (:class:`FairnessCMP`);
- :mod:`~fairopt.optim.dual_stats`: which table the dual reads (training batches, held-out stream, EMA/window);
- :mod:`~fairopt.optim.records`, :mod:`~fairopt.optim.selection`, :mod:`~fairopt.optim.stochastic`: iterate records,
  best iterate / shrinking LP, and the reproducible stochastic classifier.
"""

from fairopt.optim.base import DualPlayer
from fairopt.optim.constrained import METHODS, ConstrainedOptimizer, StepResult
from fairopt.optim.constraint_set import ConstraintSet
from fairopt.optim.cooper_problem import FairnessCMP
from fairopt.optim.distributed import AllReduceStats, StatsReducer, accumulated_step, carry_gradient, global_mean
from fairopt.optim.dual_stats import DualStatistics
from fairopt.optim.lagrangian import LagrangianPlayer, make_dual_optimizer
from fairopt.optim.methods import AugmentedLagrangian, Lagrangian, Method, Penalty, ProxyLagrangian, resolve_method
from fairopt.optim.multipliers import FairnessMultiplier
from fairopt.optim.penalty import PenaltyPlayer
from fairopt.optim.proxy_lagrangian import ProxyLagrangianPlayer
from fairopt.optim.records import IterateRecord, IterateRecords
from fairopt.optim.selection import best_distribution, best_iterate
from fairopt.optim.simplex import project_simplex, stationary_distribution
from fairopt.optim.stochastic import StochasticClassifier, example_uniforms

__all__ = [
    "METHODS",
    "AllReduceStats",
    "AugmentedLagrangian",
    "ConstrainedOptimizer",
    "ConstraintSet",
    "DualPlayer",
    "DualStatistics",
    "FairnessCMP",
    "FairnessMultiplier",
    "IterateRecord",
    "IterateRecords",
    "Lagrangian",
    "LagrangianPlayer",
    "Method",
    "Penalty",
    "PenaltyPlayer",
    "ProxyLagrangian",
    "ProxyLagrangianPlayer",
    "StatsReducer",
    "StepResult",
    "StochasticClassifier",
    "accumulated_step",
    "best_distribution",
    "best_iterate",
    "carry_gradient",
    "example_uniforms",
    "global_mean",
    "make_dual_optimizer",
    "project_simplex",
    "resolve_method",
    "stationary_distribution",
]
