"""Diagnose: what a report alone does not show: the generalization gap, leveling down, the illusion of fairness,
and the constraint history during training.

:mod:`.gap` (train / held-out / test), :mod:`.leveling` (vs a reference report), :mod:`.illusion` (error-based
constraints met on memorized data), :mod:`.monitor` (:class:`~fairopt.validation.FairnessMonitor`).
"""
