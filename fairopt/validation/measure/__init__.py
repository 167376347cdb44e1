"""Measure: stream a model over data into one exact ``(G, 9)`` table and its second moments.

:mod:`.evaluate` (:func:`~fairopt.validation.collect_stats`, :func:`~fairopt.validation.evaluate`), :mod:`.batches`
(what a loader may yield), :mod:`.moments` (:class:`~fairopt.validation.SecondMoments`).
"""
