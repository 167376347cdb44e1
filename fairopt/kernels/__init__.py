"""Fused kernels for the statistics step: the ``(G, 9)`` group-statistics table in one pass (issue 13).

- :func:`group_stats_table` (:mod:`fairopt.kernels.dispatch`): the table of :func:`fairopt.group_stats` through
  one custom op, ``backend="auto" | "torch" | "triton"``.
- :mod:`fairopt.kernels.ops`: ``torch.ops.fairopt.group_stats`` and its backward, registered with
  ``torch.library.custom_op`` (fake implementations, autograd) so ``torch.compile`` traces them.
- :mod:`fairopt.kernels.group_stats_triton`: the Triton kernels (imported on first use; ``triton`` is optional).

Importing this package registers the ops and does not import ``triton``.
"""

from fairopt.kernels.dispatch import BACKENDS, group_stats_table, proxy_spec, resolve_backend, triton_available

__all__ = ["BACKENDS", "group_stats_table", "proxy_spec", "resolve_backend", "triton_available"]
