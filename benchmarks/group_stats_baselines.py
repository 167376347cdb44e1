"""Hand-written group-statistics baselines shared by the benchmarks (``bench_group_stats.py`` on the CPU,
``device/kernel_bench.py`` on a GPU), so that both time the same code.

Imports only torch (no pytest, no fairopt): ``device/kernel_bench.py`` imports it as a plain script.
"""

from __future__ import annotations

import torch


def masking_loop(scores: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor, g: int) -> torch.Tensor:
    """The common hand-written pattern: a Python loop over the ``g`` groups with boolean masks, then a backward.

    ``scores (N,)`` logits, ``labels (N,)`` 0/1 (any dtype), ``groups (N,)`` ids in ``[0, g)``. Returns the ``(g, 8)``
    table (hard then sigmoid-proxy ``tn fp fn tp``, as :data:`fairopt.COLUMNS`) after ``table[:, 4:].sum()`` has been
    back-propagated into a leaf copy of ``scores``.
    """
    s = scores.detach().requires_grad_()
    prob, pred, y = torch.sigmoid(s), (s > 0).float(), labels.float()
    rows = []
    for k in range(g):
        m = groups == k
        pk, hk, yk = prob[m], pred[m], y[m]
        rows.append(torch.stack([
            ((1 - hk) * (1 - yk)).sum(), (hk * (1 - yk)).sum(), ((1 - hk) * yk).sum(), (hk * yk).sum(),
            ((1 - pk) * (1 - yk)).sum(), (pk * (1 - yk)).sum(), ((1 - pk) * yk).sum(), (pk * yk).sum(),
        ]))  # fmt: skip
    table = torch.stack(rows)
    table[:, 4:].sum().backward()
    return table
