"""Tolerance sweeps in one vectorized run (torch.func): K tolerances x S seeds of one model, trained together, and
the accuracy-fairness frontier chosen on held-out data and re-checked on test.

* :func:`sweep` (and ``fairopt sweep``): the whole recipe on a tabular dataset, as ``fairopt bench`` loads it.
* :func:`replay` (and ``fairopt sweep --replay sweep.json``): run a sweep again from its sweep.json, refusing changed
  data, and compare every estimate with the record.
* :class:`SweepTrainer`: the vectorized training of any M members of one architecture
  (:class:`StackedModel`: ``stack_module_state`` + ``functional_call`` + ``vmap``, or one ``baddbmm`` per layer for
  linear/ReLU stacks), each with its own multipliers and records.
* :class:`BatchedEvaluator`, :func:`batched_constraint_values`: rate expressions on ``(M, G, K)`` tables with
  autograd, by the library's one torch evaluator
  (:func:`fairopt.constraints.device_evaluation.evaluate_device`, which takes a leading batch dimension).
"""

from fairopt.sweep.evaluator import BatchedBounds, BatchedEvaluator, batched_constraint_values
from fairopt.sweep.frontier import FrontierPoint, SplitEstimate, SweepResult, pick_member
from fairopt.sweep.replay import SweepReplay, replay
from fairopt.sweep.run import DEFAULT_PENALTY_COEFFICIENTS, check_tolerances, sweep
from fairopt.sweep.stacked import StackedModel, check_vmappable
from fairopt.sweep.trainer import SWEEP_METHODS, Member, SweepTrainer

__all__ = [
    "DEFAULT_PENALTY_COEFFICIENTS",
    "SWEEP_METHODS",
    "BatchedBounds",
    "BatchedEvaluator",
    "FrontierPoint",
    "Member",
    "SplitEstimate",
    "StackedModel",
    "SweepReplay",
    "SweepResult",
    "SweepTrainer",
    "batched_constraint_values",
    "check_tolerances",
    "check_vmappable",
    "pick_member",
    "replay",
    "sweep",
]
