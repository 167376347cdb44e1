"""GroupStats: hand-computed tables, additivity, weights, gradients, input validation, running estimates."""

from __future__ import annotations

import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fairopt as fo
from fairopt.proxies import Proxy
from fairopt.stats import COLUMNS, GroupStats, RunningGroupStats, group_stats

# 8 examples, 3 groups; group 2 has no positive labels. Hand-computed confusion cells (threshold 0):
#   g0: (s=2.0,y=1) tp, (s=-1.0,y=1) fn, (s=0.5,y=0) fp         -> tn 0, fp 1, fn 1, tp 1
#   g1: (s=-0.5,y=0) tn, (s=3.0,y=1) tp, (s=0.0,y=0) tn (0 is not > 0)  -> tn 2, fp 0, fn 0, tp 1
#   g2: (s=1.5,y=0) fp, (s=-2.0,y=0) tn                        -> tn 1, fp 1, fn 0, tp 0
SCORES = torch.tensor([2.0, -1.0, 0.5, -0.5, 3.0, 0.0, 1.5, -2.0], dtype=torch.float64)
LABELS = torch.tensor([1, 1, 0, 0, 1, 0, 0, 0])
GROUPS = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
HARD = torch.tensor([[0, 1, 1, 1], [2, 0, 0, 1], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.float64)


def test_hand_computed_hard_cells_and_absent_group():
    stats = group_stats(SCORES, labels=LABELS, groups=GROUPS, num_groups=4)
    assert stats.table.shape == (4, len(COLUMNS))
    torch.testing.assert_close(stats.table[:, :4], HARD)
    torch.testing.assert_close(stats.table[3], torch.zeros(9, dtype=torch.float64))  # absent group: zero row
    torch.testing.assert_close(stats.count, torch.tensor([3.0, 3.0, 2.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(stats.label_pos, torch.tensor([2.0, 1.0, 0.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(stats.label_neg, torch.tensor([1.0, 2.0, 2.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(stats.pred_pos, torch.tensor([2.0, 1.0, 1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(stats.errors, torch.tensor([2.0, 0.0, 1.0, 0.0], dtype=torch.float64))


def test_hand_computed_proxy_columns_sigmoid_and_hinge():
    sig = group_stats(SCORES, labels=LABELS, groups=GROUPS, num_groups=3, proxy="sigmoid")

    def s(x: float) -> float:
        return torch.sigmoid(torch.tensor(x, dtype=torch.float64)).item()

    # g0: tn_proxy = σ(-0.5), fp_proxy = σ(0.5) (label 0); fn_proxy = σ(-2) + σ(1), tp_proxy = σ(2) + σ(-1) (label 1)
    expected_g0 = torch.tensor([s(-0.5), s(0.5), s(-2.0) + s(1.0), s(2.0) + s(-1.0)], dtype=torch.float64)
    torch.testing.assert_close(sig.table[0, 4:8], expected_g0)
    hinge = group_stats(SCORES, labels=LABELS, groups=GROUPS, num_groups=3, proxy="hinge")
    # g1 label 0: s = -0.5, 0.0 → fp_proxy = relu(0.5) + relu(1) = 1.5; tn_proxy = relu(1.5) + relu(1) = 2.5
    # g1 label 1: s = 3.0 → tp_proxy = 4.0, fn_proxy = 0
    torch.testing.assert_close(hinge.table[1, 4:8], torch.tensor([2.5, 1.5, 0.0, 4.0], dtype=torch.float64))


def test_threshold_moves_the_hard_prediction():
    stats = group_stats(SCORES, labels=LABELS, groups=GROUPS, num_groups=3, threshold=1.0)
    # predicted positive only where s > 1: 2.0 (g0, y1), 3.0 (g1, y1), 1.5 (g2, y0)
    torch.testing.assert_close(stats.pred_pos, torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64))


def test_loss_column_sums_weighted_loss_and_is_differentiable():
    loss = torch.arange(8, dtype=torch.float64, requires_grad=True)
    w = torch.tensor([1.0, 2, 1, 1, 1, 1, 3, 1], dtype=torch.float64)
    stats = group_stats(SCORES, labels=LABELS, groups=GROUPS, num_groups=3, example_losses=loss, weights=w)
    torch.testing.assert_close(stats.column("loss"), torch.tensor([0 + 2 + 2, 3 + 4 + 5, 18 + 7], dtype=torch.float64))
    stats.column("loss").sum().backward()
    torch.testing.assert_close(loss.grad, w)


def test_label_dtypes_agree():
    base = group_stats(SCORES, labels=LABELS, groups=GROUPS, num_groups=3).table
    for labels in (LABELS.bool(), LABELS.float(), LABELS.double(), LABELS.to(torch.int32)):
        torch.testing.assert_close(group_stats(SCORES, labels=labels, groups=GROUPS, num_groups=3).table, base)


def test_integer_weights_equal_duplicated_rows():
    g = torch.Generator().manual_seed(1)
    n = 50
    scores, labels = torch.randn(n, generator=g, dtype=torch.float64), torch.randint(0, 2, (n,), generator=g)
    groups, counts = torch.randint(0, 4, (n,), generator=g), torch.randint(0, 4, (n,), generator=g)
    weighted = group_stats(scores, labels=labels, groups=groups, num_groups=4, weights=counts.double(), proxy="hinge")
    rep = torch.repeat_interleave(torch.arange(n), counts)
    duplicated = group_stats(scores[rep], labels=labels[rep], groups=groups[rep], num_groups=4, proxy="hinge")
    torch.testing.assert_close(weighted.table, duplicated.table)


def test_split_batches_sum_to_one_batch():
    whole = group_stats(SCORES, labels=LABELS, groups=GROUPS, num_groups=3, proxy="softplus")
    parts = [
        group_stats(
            SCORES[i : i + 3], labels=LABELS[i : i + 3], groups=GROUPS[i : i + 3], num_groups=3, proxy="softplus"
        )
        for i in (0, 3, 6)
    ]
    torch.testing.assert_close((parts[0] + parts[1] + parts[2]).table, whole.table)
    torch.testing.assert_close(sum(parts[1:], parts[0]).overall().table, whole.table.sum(0, keepdim=True))


def test_hard_columns_have_no_gradient_and_proxy_columns_do():
    scores = SCORES.clone().requires_grad_()
    stats = group_stats(scores, labels=LABELS, groups=GROUPS, num_groups=3)
    (grad,) = torch.autograd.grad(stats.table[:, :4].sum() * 0 + stats.column("tp_proxy").sum(), scores)
    expected = torch.sigmoid(SCORES) * (1 - torch.sigmoid(SCORES)) * LABELS  # d σ(s)/ds on label-1 rows only
    torch.testing.assert_close(grad, expected)


@pytest.mark.parametrize(
    "proxy",
    ["sigmoid", "hinge", "softplus", Proxy.sigmoid(0.5), Proxy.softplus(2.0), lambda m: torch.tanh(m) + 1.0],
    ids=["sigmoid", "hinge", "softplus", "sigmoid-T0.5", "softplus-T2", "custom-tanh"],
)
def test_gradcheck_every_proxy_path(proxy):
    g = torch.Generator().manual_seed(0)
    # margins kept away from the hinge kinks at ±1 so finite differences are valid
    scores = (torch.rand(12, generator=g, dtype=torch.float64) * 1.6 - 0.8).requires_grad_()
    weights = (torch.rand(12, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    loss = torch.rand(12, generator=g, dtype=torch.float64).requires_grad_()
    labels, groups = torch.randint(0, 2, (12,), generator=g), torch.randint(0, 3, (12,), generator=g)

    def proxy_and_loss_columns(s, w, lo):
        return group_stats(
            s, labels=labels, groups=groups, num_groups=3, weights=w, example_losses=lo, proxy=proxy
        ).table[:, 4:]

    assert torch.autograd.gradcheck(proxy_and_loss_columns, (scores, weights, loss))


def test_proxy_converges_to_hard_as_temperature_shrinks():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2000, generator=g, dtype=torch.float64)
    scores = scores[scores.abs() > 1e-3]
    labels, groups = torch.randint(0, 2, scores.shape, generator=g), torch.randint(0, 3, scores.shape, generator=g)
    hard = group_stats(scores, labels=labels, groups=groups, num_groups=3).table[:, :4]
    gaps = []
    for t in (1.0, 0.1, 0.01, 1e-4):
        proxy = group_stats(scores, labels=labels, groups=groups, num_groups=3, proxy=Proxy.sigmoid(t)).table[:, 4:8]
        gaps.append((proxy - hard).abs().max().item())
    assert gaps == sorted(gaps, reverse=True) and gaps[0] > 10 and gaps[-1] < 1e-6


def test_hard_proxy_equals_hard_columns():
    stats = group_stats(SCORES, labels=LABELS, groups=GROUPS, num_groups=3, proxy="hard")
    torch.testing.assert_close(stats.table[:, 4:8], stats.table[:, :4])


def test_float32_scores_float32_table():
    stats = group_stats(SCORES.float(), labels=LABELS, groups=GROUPS, num_groups=3, dtype=torch.float32)
    assert stats.dtype == torch.float32
    torch.testing.assert_close(stats.table[:, :4], HARD[:3].float())


def test_empty_batch_gives_zero_table():
    e = torch.zeros(0)
    stats = group_stats(e, labels=e.long(), groups=e.long(), num_groups=2)
    assert torch.equal(stats.table, torch.zeros(2, 9, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------------------------
# Input validation: a clear error naming the argument, and nothing computed.


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"groups": torch.tensor([0, 0, 0, 1, 1, 1, 2, 3])}, ValueError, r"groups must be ids in \[0, 3\)"),
        ({"groups": torch.tensor([0, 0, 0, 1, 1, 1, 2, -1])}, ValueError, r"groups.*\[7\]=-1"),
        ({"labels": torch.tensor([1, -1, 0, 0, 1, 0, 0, 0])}, ValueError, r"labels must be 0 or 1.*\[1\]=-1"),
        ({"labels": torch.tensor([1.0, 0.5, 0, 0, 1, 0, 0, 0])}, ValueError, r"labels must be 0 or 1.*0\.5"),
        ({"scores": torch.tensor([float("nan"), 0, 0, 0, 0, 0, 0, 0])}, ValueError, r"scores contain NaN or inf"),
        ({"weights": -torch.ones(8)}, ValueError, r"weights must be finite and >= 0"),
        ({"example_losses": torch.full((8,), float("inf"))}, ValueError, r"example_losses must be finite"),
        ({"scores": torch.zeros(8, 1)}, ValueError, r"scores must have shape \(N,\).*squeeze\(-1\)"),
        ({"labels": torch.zeros(7)}, ValueError, r"labels has 7 entries but scores has 8"),
        ({"scores": torch.zeros(8, dtype=torch.long)}, TypeError, r"scores must be floating point"),
        ({"groups": torch.zeros(8)}, TypeError, r"groups must hold integer group ids"),
        ({"weights": torch.ones(8, dtype=torch.long)}, TypeError, r"weights must be floating point"),
        ({"labels": [1, 0, 1, 0, 1, 0, 1, 0]}, TypeError, r"labels must be a torch.Tensor.*torch.as_tensor"),
        ({"labels": torch.zeros(8, device="meta")}, ValueError, r"labels is on meta but scores is on cpu"),
        ({"num_groups": 0}, ValueError, r"num_groups must be a positive int"),
        ({"proxy": "tanh"}, ValueError, r"unknown proxy 'tanh'"),
    ],
)
def test_bad_input_raises_clear_error(kwargs, error, match):
    args = {"scores": SCORES.float(), "labels": LABELS, "groups": GROUPS, "num_groups": 3} | kwargs
    with pytest.raises(error, match=match):
        group_stats(**args)


def test_value_checks_can_be_switched_off():
    bad_labels = torch.tensor([2, 0, 0, 0, 1, 0, 0, 0])
    with fo.set_validate_args(False):
        group_stats(SCORES, labels=bad_labels, groups=GROUPS, num_groups=3)  # no check, no host sync
    group_stats(SCORES, labels=bad_labels, groups=GROUPS, num_groups=3, validate_args=False)
    with pytest.raises(ValueError):
        group_stats(SCORES, labels=bad_labels, groups=GROUPS, num_groups=3)
    fo.set_validate_args(False)
    try:
        group_stats(SCORES, labels=bad_labels, groups=GROUPS, num_groups=3)
    finally:
        fo.set_validate_args(True)
    with pytest.raises(ValueError):
        group_stats(SCORES, labels=bad_labels, groups=GROUPS, num_groups=3)


# ---------------------------------------------------------------------------------------------------------------
# Properties.

batches = st.integers(min_value=1, max_value=40).flatmap(
    lambda n: st.tuples(
        st.lists(st.floats(-5, 5, allow_nan=False), min_size=n, max_size=n),
        st.lists(st.integers(0, 1), min_size=n, max_size=n),
        st.lists(st.integers(0, 3), min_size=n, max_size=n),
        st.lists(st.floats(0, 3, allow_nan=False), min_size=n, max_size=n),
        st.integers(0, n),
    )
)


@settings(max_examples=60, deadline=None)
@given(batches)
def test_additivity_and_permutation_invariance(batch):
    scores, labels, groups, weights, cut = batch
    s, y, g = torch.tensor(scores, dtype=torch.float64), torch.tensor(labels), torch.tensor(groups)
    w = torch.tensor(weights, dtype=torch.float64)
    whole = group_stats(s, labels=y, groups=g, num_groups=4, weights=w, proxy="hinge").table
    split = (
        group_stats(s[:cut], labels=y[:cut], groups=g[:cut], num_groups=4, weights=w[:cut], proxy="hinge")
        + group_stats(s[cut:], labels=y[cut:], groups=g[cut:], num_groups=4, weights=w[cut:], proxy="hinge")
    ).table
    torch.testing.assert_close(split, whole)
    perm = torch.randperm(len(scores), generator=torch.Generator().manual_seed(len(scores)))
    torch.testing.assert_close(
        group_stats(s[perm], labels=y[perm], groups=g[perm], num_groups=4, weights=w[perm], proxy="hinge").table, whole
    )


# ---------------------------------------------------------------------------------------------------------------
# Running estimates.


def _stats(rows: list[list[float]]) -> GroupStats:
    table = torch.zeros(len(rows), 9, dtype=torch.float64)
    table[:, :4] = torch.tensor(rows, dtype=torch.float64)
    return GroupStats(table)


def test_running_ema_and_window():
    a, b = _stats([[1, 0, 0, 1], [2, 0, 0, 0]]), _stats([[0, 1, 1, 0], [0, 0, 0, 0]])  # group 1 absent from b
    ema = RunningGroupStats(2, mode="ema", decay=0.5)
    ema.update(a)
    out = ema.update(b)
    torch.testing.assert_close(out.table, 0.5 * a.table + b.table)
    assert out.count[1].item() == 1.0  # the absent group keeps its (decayed) history, no fake row
    win = RunningGroupStats(2, mode="window", window=2)
    for stats in (b, a, b):
        win.update(stats)
    torch.testing.assert_close(win.value.table, a.table + b.table)


def test_running_state_dict_round_trip_and_pickles():
    run = RunningGroupStats(2, mode="window", window=3)
    run.update(_stats([[1, 0, 0, 1], [2, 0, 0, 0]]))
    clone = RunningGroupStats(2, mode="window", window=3)
    clone.load_state_dict(pickle.loads(pickle.dumps(run.state_dict())))
    torch.testing.assert_close(clone.value.table, run.value.table)
    with pytest.raises(ValueError, match="num_groups"):
        RunningGroupStats(3).load_state_dict(run.state_dict())
    assert pickle.loads(pickle.dumps(Proxy.hinge(2.0))).positive(torch.tensor([0.0])).item() == 1.0


def test_running_rejects_mismatched_groups_and_keeps_state():
    run = RunningGroupStats(2, decay=0.9)
    run.update(_stats([[1, 0, 0, 1], [2, 0, 0, 0]]))
    before = run.value.table.clone()
    with pytest.raises(ValueError, match="expected a GroupStats with 2 groups"):
        run.update(_stats([[1, 0, 0, 1]]))
    torch.testing.assert_close(run.value.table, before)
    with pytest.raises(ValueError, match="decay"):
        RunningGroupStats(2, decay=1.0)


def test_add_rejects_different_group_counts():
    with pytest.raises(ValueError, match="same num_groups"):
        _ = _stats([[1, 0, 0, 0]]) + _stats([[1, 0, 0, 0], [0, 0, 0, 0]])


def test_all_reduce_sums_tables_across_ranks(tmp_path):
    import torch.distributed as dist
    import torch.multiprocessing as mp

    mp.spawn(_all_reduce_worker, args=(2, str(tmp_path / "store")), nprocs=2, join=True)
    assert not dist.is_initialized()
    # without a process group the table comes back unchanged (and detached)
    stats = group_stats(SCORES.clone().requires_grad_(), labels=LABELS, groups=GROUPS, num_groups=3)
    reduced = stats.all_reduce()
    assert not reduced.table.requires_grad and torch.equal(reduced.table, stats.table.detach())


def _all_reduce_worker(rank: int, world: int, store: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        part = slice(0, 4) if rank == 0 else slice(4, 8)
        local = group_stats(SCORES[part], labels=LABELS[part], groups=GROUPS[part], num_groups=3)
        torch.testing.assert_close(
            local.all_reduce().table, group_stats(SCORES, labels=LABELS, groups=GROUPS, num_groups=3).table
        )
        # both ranks finish before gloo tears down (a rank exiting early aborts the other at exit); only on
        # success, so that a failing rank cannot leave the other waiting in the barrier
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_scaling_accepts_real_numbers_and_refuses_negative_factors():
    import numpy as np

    stats = _stats([[1, 0, 0, 1]])
    torch.testing.assert_close((np.float32(0.5) * stats).table, 0.5 * stats.table)
    with pytest.raises(ValueError, match="factor >= 0"):
        _ = stats * -1.0
