"""Held-out validation of fairness constraints: streaming evaluation, intervals, verdicts, diagnostics, reports.

Large models overfit fairness constraints: a constraint met on the training set says little about new data
(Cherepanova et al., arXiv:2102.06764). This package measures constraints on any dataset with honest uncertainty
and puts the answer in the tools people read:

==========================  ==============================================================================
job                         entry point
==========================  ==========================================================================
evaluate a model            :func:`evaluate` → :class:`FairnessReport` (per-group rates with intervals,
                            constraint entries with intervals and satisfied / violated / cannot-tell)
from a table you have       :meth:`FairnessReport.from_stats`
train / held-out / test     :func:`generalization_gap` → :class:`GeneralizationGap`
leveling down               :func:`leveling_down` (vs a reference report)
during training             :class:`FairnessMonitor` (every k steps on held-out data)
output                      ``report.group_table()`` / ``constraint_table()`` (pandas), ``to_markdown()``,
                            ``to_json()`` / ``from_json()`` (versioned schema), :mod:`.plots` (PNG)
interval math               :func:`wilson_interval`, :func:`clopper_pearson_interval`,
                            :func:`newcombe_interval`, :func:`mover_interval`
==========================  ==========================================================================

The package has four rooms, in the order data flows through them: :mod:`.measure` (the table), :mod:`.estimate`
(intervals and verdicts), :mod:`.report` (records, text, JSON), :mod:`.diagnose` (gap, leveling down, illusion,
monitor). Everything above is importable from here; the rooms are for contributors.

Plots live in :mod:`fairopt.validation.plots` (needs ``pip install fairopt[plots]``); they are not imported here
so that matplotlib stays optional.
"""

from fairopt.validation.diagnose.gap import GeneralizationGap, generalization_gap
from fairopt.validation.diagnose.illusion import ILLUSION_FLAG, flag_illusion
from fairopt.validation.diagnose.leveling import LevelingDownReport, LevelingFinding, RateChange, leveling_down
from fairopt.validation.diagnose.monitor import FairnessMonitor, multiplier_values
from fairopt.validation.estimate.assess import assess_constraint
from fairopt.validation.estimate.bootstrap import bootstrap_constraint_interval
from fairopt.validation.estimate.estimates import RateEstimates, rate_estimates
from fairopt.validation.estimate.intervals import (
    clopper_pearson_interval,
    effective_counts,
    mean_interval,
    mover_interval,
    newcombe_interval,
    wilson_interval,
)
from fairopt.validation.measure.evaluate import collect_stats, eval_mode, evaluate, log_loss
from fairopt.validation.measure.moments import SecondMoments, second_moments
from fairopt.validation.report.fairness_report import DEFAULT_RATES, SCHEMA_VERSION, FairnessReport
from fairopt.validation.report.options import ReportOptions
from fairopt.validation.report.results import ConstraintResult, EntryResult, Estimate, GroupRow, Verdict

__all__ = [
    "DEFAULT_RATES",
    "ILLUSION_FLAG",
    "SCHEMA_VERSION",
    "ConstraintResult",
    "EntryResult",
    "Estimate",
    "FairnessMonitor",
    "FairnessReport",
    "GeneralizationGap",
    "GroupRow",
    "LevelingDownReport",
    "LevelingFinding",
    "RateChange",
    "RateEstimates",
    "ReportOptions",
    "SecondMoments",
    "Verdict",
    "assess_constraint",
    "bootstrap_constraint_interval",
    "clopper_pearson_interval",
    "collect_stats",
    "effective_counts",
    "eval_mode",
    "evaluate",
    "flag_illusion",
    "generalization_gap",
    "leveling_down",
    "log_loss",
    "mean_interval",
    "mover_interval",
    "multiplier_values",
    "newcombe_interval",
    "rate_estimates",
    "second_moments",
    "wilson_interval",
]
