"""DDP with all-reduced statistics, and gradient accumulation: both equal one process stepping on the whole batch.

Two gloo processes on the CPU (one spawn for every DDP case) run ``examples/train_ddp.py``'s training, a resumed run
and an accumulated DDP step; this process replays the same global batches and compares.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import fairopt
from fairopt.constraints import Constraint, FunctionConstraint
from fairopt.optim import ConstrainedOptimizer, StepResult
from fairopt.optim.distributed import AllReduceStats, accumulated_step, carry_gradient, global_mean
from fairopt.stats import GroupStats, group_stats
from tests.optim_data import mlp, tabular

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_ddp.py"
WORLD = 2
# 300 rows: 225 train (113 per rank: the sampler pads one row), 75 held-out (38 + 37: one padding row)
ARGS = ["--synthetic", "300", "--batch-size", "32", "--epochs", "2", "--float64", "--dual-lr", "2", "--tolerance", "0"]
GLOBAL_MEAN_ROWS = [
    (torch.tensor([1.0, 2.0]), torch.tensor([1.0, 1.0])),
    (torch.tensor([4.0, 8.0, 16.0]), torch.tensor([1.0, 0.0, 2.0])),
]
METHODS = ("lagrangian", "proxy_lagrangian", "augmented_lagrangian", "penalty")


def _example() -> ModuleType:
    if "train_ddp" not in sys.modules:
        spec = importlib.util.spec_from_file_location("train_ddp", EXAMPLE)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["train_ddp"] = module  # before exec: the module's dataclasses and pickling look it up
        spec.loader.exec_module(module)
    return sys.modules["train_ddp"]


def _parameters(model: nn.Module) -> Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _forward(model: nn.Module, x: Tensor, y: Tensor, a: Tensor) -> Callable[[slice], dict[str, Tensor]]:
    def forward(rows: slice) -> dict[str, Tensor]:
        scores = model(x[rows]).squeeze(-1)
        loss = F.binary_cross_entropy_with_logits(scores, y[rows])
        return {"loss": loss, "scores": scores, "labels": y[rows], "groups": a[rows]}

    return forward


def _optimizer(
    model: nn.Module, method: str = "lagrangian", constraint: Constraint | None = None, **options: Any
) -> ConstrainedOptimizer:
    return ConstrainedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
        [fairopt.EqualizedOdds(0.0) if constraint is None else constraint],
        2,
        method=method,
        dual_lr=0.5,
        dual_min_count=None,
        **options,
    )


def _full_steps(
    method: str, x: Tensor, y: Tensor, a: Tensor, steps: int, **options: Any
) -> tuple[Tensor, Tensor, StepResult]:
    """The reference: ``steps`` plain steps on the whole batch in one process (parameters, multipliers, last result)."""
    model = mlp(x.shape[1], seed=0).double()
    opt = _optimizer(model, method, **options)
    for _ in range(steps):
        opt.zero_grad()
        result = opt.step(**_forward(model, x, y, a)(slice(None)))
    return _parameters(model), opt.multipliers, result


# the DDP workers --------------------------------------------------------------------------------------------------
def _accumulated_ddp(rank: int) -> dict[str, Tensor]:
    """3 accumulated steps under DDP: rank r holds rows [24r, 24r + 24) in micro-batches of 10 and 14."""
    from torch.nn.parallel import DistributedDataParallel

    x, y, a = (t.double() if t.is_floating_point() else t for t in tabular(48, seed=3))
    rows = slice(24 * rank, 24 * rank + 24)
    model = mlp(x.shape[1], seed=0).double()
    ddp = DistributedDataParallel(model)
    opt = _optimizer(model, stats_reducer=AllReduceStats())
    forward = _forward(ddp, x[rows], y[rows], a[rows])
    first = opt.stats_reducer.primal_table(group_stats(x[rows, 0], labels=y[rows], groups=a[rows], num_groups=2))
    for _ in range(3):
        opt.zero_grad()
        opt.step_accumulated([slice(0, 10), slice(10, 24)], forward, no_sync=ddp.no_sync)
    return {"parameters": _parameters(model), "multipliers": opt.multipliers, "global_table": first.table}


def _observed_ddp(rank: int) -> Tensor:
    """observe_heldout of this rank's rows returns the table of both ranks' rows."""
    x, y, a = (t.double() if t.is_floating_point() else t for t in tabular(30, seed=5))
    model = mlp(x.shape[1], seed=0)
    opt = _optimizer(model, dual_source="heldout", dual_every=None, stats_reducer=AllReduceStats())
    rows = slice(15 * rank, 15 * rank + 15)
    return opt.observe_heldout(scores=x[rows, 0], labels=y[rows], groups=a[rows]).table


def _resume_error(example: Any, checkpoint: str, rank: int, world: int) -> str:
    """Resuming the float64 checkpoint in a float32 run: refused on every rank (before any collective)."""
    float32 = [a for a in ARGS if a != "--float64"]
    try:
        example.train(example.parse_args([*float32, "--resume", checkpoint]), rank, world, torch.device("cpu"))
    except SystemExit as error:
        return str(error)
    return "resumed"


def _worker(rank: int, world: int, store: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    example, cpu = _example(), torch.device("cpu")  # before the try: its finally uses the example's teardown
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        checkpoint = ["--checkpoint", f"{out}/run.pt"]
        results = {
            "full": example.train(example.parse_args([*ARGS, "--heldout-duals"]), rank, world, cpu),
            "proxy": example.train(example.parse_args([*ARGS, "--method", "proxy_lagrangian"]), rank, world, cpu),
            # stopped in the middle of the first epoch (4 steps each), resumed from rank 0's checkpoint
            "stopped": example.train(
                example.parse_args([*ARGS, "--heldout-duals", "--stop-after", "3", *checkpoint]), rank, world, cpu
            ),
            "resumed": example.train(
                example.parse_args([*ARGS, "--heldout-duals", "--resume", f"{out}/run.pt"]), rank, world, cpu
            ),
            "precision": _resume_error(example, f"{out}/run.pt", rank, world),
            "accumulated": _accumulated_ddp(rank),
            "observed": _observed_ddp(rank),
            # uneven shards: rank 0 holds 2 rows, rank 1 holds 3
            "global_mean": global_mean(*GLOBAL_MEAN_ROWS[rank]),
        }
        torch.save(results, f"{out}/rank{rank}.pt")
        dist.barrier()  # only on success: a failing rank must not leave the other waiting here
    finally:
        example.release_process_group()  # the example's own teardown (an abort at exit otherwise, now and then)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(WORLD, str(out / "store"), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.fixture(scope="module")
def one_thread() -> Any:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# DDP --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("run, options", [("full", ["--heldout-duals"]), ("proxy", ["--method", "proxy_lagrangian"])])
def test_ddp_equals_one_process_on_the_global_batches(ranks, one_thread, run, options):
    """examples/train_ddp.py --check: parameters, multipliers and held-out table agree with the replay to 1e-6."""
    example = _example()
    single = example.replay(example.parse_args([*ARGS, *options]), WORLD)
    for rank in ranks:
        differences = example.compare(rank[run], single)
        assert max(differences.values()) <= 1e-6, differences
    assert torch.equal(ranks[0][run]["multipliers"], ranks[1][run]["multipliers"])
    assert ranks[0][run]["multipliers"].abs().sum() > 0  # the constraint was active: the check compares something
    assert ranks[0][run]["step"] == 8


def test_ddp_heldout_table_counts_every_row_once(ranks):
    """75 held-out rows over 2 ranks: the sampler pads one row; the all-reduced table counts 75, group by group as
    the single-process table."""
    example = _example()
    _, heldout, _ = example.load_data(example.parse_args(ARGS), torch.float64)
    _, y, a = heldout.tensors
    assert len(heldout) == 75
    for rank in ranks:
        table = GroupStats(rank["full"]["heldout"])
        assert table.count.sum().item() == 75.0
        torch.testing.assert_close(table.count, torch.bincount(a, minlength=2).double(), rtol=0, atol=0)
        torch.testing.assert_close(table.label_pos, torch.bincount(a, weights=y, minlength=2), rtol=0, atol=0)


def test_a_stop_after_the_run_never_reaches_is_refused():
    """--stop-after past the last step trained to the end and saved no checkpoint, silently (a later --resume then
    failed with FileNotFoundError); now refused up front, as is one at or before a resumed checkpoint's step."""
    example = _example()
    args = example.parse_args([*ARGS, "--stop-after", "500"])
    with pytest.raises(SystemExit, match=r"--stop-after 500 is never reached: this run takes steps 1 to 8 \(2 epochs"):
        example.check_stop_after(args, 0, 8)
    with pytest.raises(SystemExit, match=r"steps 4 to 8 \(2 epochs, and the checkpoint resumed is at step 3\)"):
        example.check_stop_after(example.parse_args([*ARGS, "--stop-after", "3"]), 3, 8)
    example.check_stop_after(example.parse_args([*ARGS, "--stop-after", "8"]), 3, 8)  # the last step: saved
    example.check_stop_after(example.parse_args(ARGS), 0, 8)  # no --stop-after


def test_a_checkpoint_of_another_precision_is_refused(ranks):
    """--check and --float64 train in float64: a float32 checkpoint loaded there silently was another run (and
    --check failed with a bare assertion); the dtypes must match."""
    for r in ranks:
        assert "was saved by a float64 run, this one trains in float32" in r["precision"]
        assert r["precision"].endswith("resume with --float64")


def test_resume_under_ddp_gives_the_uninterrupted_run(ranks):
    for rank in ranks:
        assert rank["stopped"]["step"] == 3 and rank["resumed"]["step"] == 8
        for key in ("parameters", "multipliers", "heldout"):
            torch.testing.assert_close(rank["resumed"][key], rank["full"][key], rtol=0, atol=1e-12)
        assert not torch.equal(rank["stopped"]["parameters"], rank["full"]["parameters"])


def test_ddp_accumulated_steps_equal_full_batch_steps(ranks, one_thread):
    x, y, a = (t.double() if t.is_floating_point() else t for t in tabular(48, seed=3))
    parameters, multipliers, _ = _full_steps("lagrangian", x, y, a, 3)
    for rank in ranks:
        torch.testing.assert_close(rank["accumulated"]["parameters"], parameters, rtol=0, atol=1e-6)
        torch.testing.assert_close(rank["accumulated"]["multipliers"], multipliers, rtol=0, atol=1e-6)
    # the reducer's table is the sum of both ranks' tables
    whole = group_stats(x[:, 0], labels=y, groups=a, num_groups=2).table
    torch.testing.assert_close(ranks[0]["accumulated"]["global_table"], whole)
    assert multipliers.abs().sum() > 0


def test_observe_heldout_under_ddp_sums_the_ranks_batches(ranks):
    x, y, a = (t.double() if t.is_floating_point() else t for t in tabular(30, seed=5))
    whole = group_stats(x[:, 0], labels=y, groups=a, num_groups=2).table
    for rank in ranks:
        torch.testing.assert_close(rank["observed"], whole)


def test_global_mean_under_ddp_averages_to_the_weighted_mean_of_all_rows(ranks):
    """DDP averages the ranks' terms: (1 + 2 + 4 + 2 * 16) / (1 + 1 + 1 + 2) = 39 / 5, whatever the shard sizes."""
    terms = [rank["global_mean"] for rank in ranks]
    torch.testing.assert_close(terms[0], torch.tensor(2 * 3.0 / 5.0))  # R * (1 + 2) / 5
    torch.testing.assert_close(sum(terms) / WORLD, torch.tensor(39.0 / 5.0))


# gradient accumulation (one process) ------------------------------------------------------------------------------
def _tpr_gap(view: Any) -> Tensor:
    return (view.tpr[1:2] - view.tpr[0:1]).abs()


@pytest.mark.parametrize(
    "method, options",
    [(method, {}) for method in METHODS]
    + [
        ("lagrangian", {"evaluator": "device"}),  # the device-side evaluator: a differentiable table all the way
        ("lagrangian", {"constraint": FunctionConstraint(_tpr_gap, num_entries=1)}),  # evaluated by its function
    ],
)
def test_accumulated_step_equals_the_full_batch_step(one_thread, method, options):
    """Micro-batches of 40, 30 and 26 rows (unequal: each loss is weighted by its share of rows), 3 steps."""
    x, y, a = (t.double() if t.is_floating_point() else t for t in tabular(96, seed=1))
    parameters, multipliers, expected = _full_steps(method, x, y, a, 3, **options)
    model = mlp(x.shape[1], seed=0).double()
    opt = _optimizer(model, method, **options)
    for _ in range(3):
        opt.zero_grad()
        result = opt.step_accumulated([slice(0, 40), slice(40, 70), slice(70, 96)], _forward(model, x, y, a))
    torch.testing.assert_close(_parameters(model), parameters, rtol=0, atol=1e-6)
    torch.testing.assert_close(opt.multipliers, multipliers, rtol=0, atol=1e-6)
    if method != "penalty":
        assert multipliers.abs().sum() > 0
    # the result reports the whole batch: its mean loss, objective and constraint values
    torch.testing.assert_close(result.loss, expected.loss, rtol=0, atol=1e-12)
    torch.testing.assert_close(result.objective, expected.objective, rtol=0, atol=1e-12)
    torch.testing.assert_close(result.value.hard, expected.value.hard, rtol=0, atol=1e-12)


def test_accumulated_step_replays_dropout_masks(one_thread):
    """With dropout, pass 1 (the table) and pass 2 (the gradient) draw the same masks as one plain step would from
    the same seed: without the replay, pass 2 would draw new ones and the step would differ."""
    x, y, a = (t.double() if t.is_floating_point() else t for t in tabular(60, seed=2))

    def model_with_dropout() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(x.shape[1], 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1)).double()

    model, reference = model_with_dropout(), model_with_dropout()
    opt, full = _optimizer(model), _optimizer(reference)
    torch.manual_seed(7)
    opt.step_accumulated([slice(0, 60)], _forward(model, x, y, a))
    torch.manual_seed(7)
    full.step(**_forward(reference, x, y, a)(slice(None)))
    torch.testing.assert_close(_parameters(model), _parameters(reference), rtol=0, atol=1e-12)


def test_accumulation_errors():
    x, y, a = tabular(20, seed=0)
    model = mlp(x.shape[1], seed=0)
    forward = _forward(model, x, y, a)
    with pytest.raises(ValueError, match="empty"):
        _optimizer(model).step_accumulated([], forward)
    with pytest.raises(ValueError, match="simultaneous"):
        _optimizer(model, dual_update="alternating").step_accumulated([slice(0, 10)], forward)
    with pytest.raises(TypeError, match="mapping"):
        accumulated_step(_optimizer(model), [slice(0, 10)], lambda rows: (1, 2))
    with pytest.raises(ValueError, match=r"missing \['groups'\]"):
        _optimizer(model).step_accumulated([slice(0, 10)], lambda rows: {"loss": 0, "scores": x[rows, 0]})
    with pytest.raises(ValueError, match="unknown keys"):
        _optimizer(model).step_accumulated([slice(0, 10)], lambda rows: {**forward(rows), "label": y[rows]})


# the pieces -------------------------------------------------------------------------------------------------------
def test_carry_gradient_has_the_whole_value_and_the_parts_gradient():
    scores = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    part = group_stats(scores, labels=torch.tensor([1, 0, 1]), groups=torch.tensor([0, 0, 1]), num_groups=2)
    whole = GroupStats(torch.arange(18, dtype=torch.float64).reshape(2, 9))
    carried = carry_gradient(whole, part, scale=3.0)
    torch.testing.assert_close(carried.table, whole.table)
    carried.table[:, 7].sum().backward()  # tp_proxy: sigmoid(s) over label-1 rows
    s = scores.detach()
    expected = torch.where(torch.tensor([True, False, True]), 3 * torch.sigmoid(s) * (1 - torch.sigmoid(s)), 0.0)
    torch.testing.assert_close(scores.grad, expected.float())
    with pytest.raises(ValueError, match="same constraint set"):
        carry_gradient(GroupStats.zeros(3), part)
    with pytest.raises(ValueError, match="scale"):
        carry_gradient(whole, part, scale=0.0)


def test_without_a_process_group():
    with pytest.raises(RuntimeError, match="init_process_group"):
        AllReduceStats()
    values, weights = torch.tensor([1.0, 2.0, 4.0]), torch.tensor([1.0, 0.0, 3.0])
    torch.testing.assert_close(global_mean(values, weights), torch.tensor(13.0 / 4.0))
    torch.testing.assert_close(global_mean(values), torch.tensor(7.0 / 3.0))
    with pytest.raises(ValueError, match="total weight"):
        global_mean(values, torch.zeros(3))
    with pytest.raises(ValueError, match=r"\(N,\)"):
        global_mean(values[None])


def test_stats_reducer_and_sync_are_exclusive():
    class Reducer:
        gradient_scale = 1.0

        def reduce(self, stats: GroupStats) -> GroupStats:
            return stats.detach()

        def primal_table(self, stats: GroupStats) -> GroupStats:
            return stats

    model = mlp(5, seed=0)
    with pytest.raises(ValueError, match="not both"):
        _optimizer(model, sync=GroupStats.all_reduce, stats_reducer=Reducer())
