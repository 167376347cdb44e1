"""Under DDP, an all-reduced dual table keeps the multipliers identical on every rank (two gloo processes)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import fairopt
from fairopt.optim import ConstrainedOptimizer
from fairopt.stats import GroupStats, group_stats
from tests.optim_data import mlp, tabular

METHODS = ("lagrangian", "proxy_lagrangian")
STEPS = 4


def _train(rank: int) -> dict[str, dict[str, torch.Tensor]]:
    from torch.nn.parallel import DistributedDataParallel

    x, y, a = tabular(256, seed=0)
    rows = slice(rank * 128, (rank + 1) * 128)  # each rank sees its own half
    results = {}
    for method in METHODS:
        model = DistributedDataParallel(mlp(x.shape[1], seed=0))
        opt = ConstrainedOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.1),
            [fairopt.EqualizedOdds(0.0)],
            2,
            method=method,
            dual_lr=0.5,
            sync=GroupStats.all_reduce,
        )
        first = None
        for _ in range(STEPS):
            scores = model(x[rows]).squeeze(-1)
            opt.zero_grad()
            result = opt.step(
                loss=F.binary_cross_entropy_with_logits(scores, y[rows]),
                scores=scores,
                labels=y[rows],
                groups=a[rows],
            )
            first = result.dual_value.hard if first is None else first
        results[method] = {"multipliers": opt.multipliers, "first_dual_value": first}
    return results


def _worker(rank: int, world: int, store: str, out: str) -> None:
    import gc

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        torch.save(_train(rank), f"{out}/rank{rank}.pt")  # the DDP models are garbage once _train returns
        # both ranks finish before gloo tears down (a rank exiting early aborts the other at exit); only on
        # success, so that a failing rank cannot leave the other waiting in the barrier
        dist.barrier()
    finally:
        gc.collect()  # as examples/train_ddp.py's release_process_group: no DDP reducer left to the exit
        dist.destroy_process_group()


def test_multipliers_are_identical_on_every_rank_and_read_the_global_table(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    x, y, a = tabular(256, seed=0)
    # The first dual step reads the table of the global batch at the shared initial model: the sum of the two ranks'
    # tables (scores computed per half on one thread, exactly as the workers do).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            model = mlp(x.shape[1], seed=0)
            scores = torch.cat([model(x[:128]), model(x[128:])]).squeeze(-1)
    finally:
        torch.set_num_threads(previous)
    global_value = fairopt.EqualizedOdds(0.0).evaluate(group_stats(scores, labels=y, groups=a, num_groups=2))
    for method in METHODS:
        assert torch.equal(ranks[0][method]["multipliers"], ranks[1][method]["multipliers"]), method
        assert ranks[0][method]["multipliers"].abs().sum() > 0
        for rank in ranks:
            torch.testing.assert_close(rank[method]["first_dual_value"], global_value.hard)
