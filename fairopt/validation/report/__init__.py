"""Report: the records a fairness report is made of, and how it prints and serializes.

:mod:`.fairness_report` (:class:`~fairopt.validation.FairnessReport`), :mod:`.results` (group rows, entries, verdicts),
:mod:`.options` (:class:`~fairopt.validation.ReportOptions`), :mod:`.formatting` (text and Markdown), :mod:`.jsonio`
(standard JSON).
"""
