"""Estimate: confidence intervals for rates and constraint entries, and a verdict for each entry.

:mod:`.intervals` (Wilson, Clopper-Pearson, Newcombe, MOVER), :mod:`.estimates` (per-group rates), :mod:`.forms`
(normal forms of entries for analytic intervals), :mod:`.bootstrap` (the fallback), :mod:`.assess` (an interval and a
verdict per entry).
"""
