"""GroupStats forward + backward against the usual alternatives, in the same run.

Implementations (each produces per-group confusion counts plus differentiable proxy counts):

* ``fairopt``: :func:`fairopt.group_stats` (hard + sigmoid proxy + loss columns), forward and backward.
* ``masking_loop``: the common hand-written pattern, a Python loop over groups with boolean masks (forward and
  backward).
* ``torchmetrics``: ``torchmetrics.classification.BinaryFairness`` update+compute (hard rates only, no gradient).
* ``bincount_floor``: one ``torch.bincount(groups, weights=column)`` pass per statistic column (K = 9), the
  practical CPU floor for a scatter reduction (forward only, columns precomputed).
* ``sum_floor``: one ``torch.sum`` over the same input bytes (scores, labels, groups): the streaming floor.

Run: ``python -m pytest benchmarks/bench_group_stats.py --benchmark-only`` (add ``-k "1048576"`` for the large N).

On glibc, every fresh multi-megabyte temporary is mmapped and page-faulted in, which at N = 1M costs more than
the arithmetic of every implementation here; to measure compute rather than page faults, run with
``MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296`` (or jemalloc/tcmalloc). The README gives
both.
"""

from __future__ import annotations

import pytest
import torch
from group_stats_baselines import masking_loop  # benchmarks/ is on sys.path under pytest (rootdir conftest)

from fairopt import group_stats

SIZES = [4_096, 1_048_576]
GROUPS = [2, 16, 256]
K = 9


def _data(n: int, g: int):
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(n, generator=gen)
    labels = torch.randint(0, 2, (n,), generator=gen)
    groups = torch.randint(0, g, (n,), generator=gen)
    return scores, labels, groups


def _fairopt(scores, labels, groups, g):
    s = scores.detach().requires_grad_()
    stats = group_stats(s, labels=labels, groups=groups, num_groups=g, validate_args=False)
    stats.table[:, 4:8].sum().backward()
    return stats


def _bincount_floor(columns, groups, g):
    return torch.stack([torch.bincount(groups, weights=c, minlength=g) for c in columns], dim=1)


@pytest.mark.parametrize("g", GROUPS)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("impl", ["fairopt", "masking_loop", "torchmetrics", "bincount_floor", "sum_floor"])
def test_group_stats(benchmark, impl, n, g):
    scores, labels, groups = _data(n, g)
    benchmark.group = f"group_stats N={n} G={g}"
    benchmark.extra_info["impl"] = impl
    if impl == "fairopt":
        out = benchmark(_fairopt, scores, labels, groups, g)
        assert out.count.sum().item() == n
    elif impl == "masking_loop":
        if n * g > 1_048_576 * 16:
            pytest.skip("masking loop at G=256, N=1M takes minutes; the G=16 ratio is the reported one")
        out = benchmark(masking_loop, scores, labels, groups, g)
        assert out[:, :4].sum().item() == n
    elif impl == "torchmetrics":
        tm = pytest.importorskip("torchmetrics.classification")
        metric = tm.BinaryFairness(num_groups=g, task="all", validate_args=False)

        def run():
            metric.reset()
            metric.update(torch.sigmoid(scores), labels, groups)
            return metric.compute()

        benchmark(run)
    elif impl == "bincount_floor":
        columns = [torch.rand(n, generator=torch.Generator().manual_seed(i)) for i in range(K)]
        out = benchmark(_bincount_floor, columns, groups, g)
        assert out.shape == (g, K)
    else:
        benchmark(lambda: (scores.sum(), labels.sum(), groups.sum()))
