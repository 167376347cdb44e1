"""The CPU fast paths of the constrained step (issue 13, section 2) give the generic paths' numbers bit for bit.

Each shortcut is checked against the path it replaces, run in the same process: the count window of
:class:`fairopt.RunningGroupStats` in NumPy vs its tensor path, the direct SGD ascent on the multipliers vs
``torch.optim.SGD.step`` + cooper's projection, the two-op finiteness test vs ``torch.isfinite``, and a whole training
run with every shortcut vs one with each of them switched off.
"""

from __future__ import annotations

import copy
import math
import pickle
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fairopt
from fairopt._batch_checks import _device_flags, _host_flags
from fairopt._validation import finite
from fairopt.optim import ConstrainedOptimizer, Lagrangian
from fairopt.optim.lagrangian import _plain_sgd_lr
from fairopt.optim.multipliers import FairnessMultiplier
from fairopt.stats import GroupStats, RunningGroupStats, example_terms, group_stats


def _stream(num: int, num_groups: int, dtype: torch.dtype) -> list[GroupStats]:
    """Tables of integer hard counts and fractional proxy sums, scaled so the chosen window varies (1 to the cap)."""
    gen = torch.Generator().manual_seed(3)
    tables = []
    for i in range(num):
        table = torch.rand(num_groups, 9, dtype=torch.float64, generator=gen) * (3 + 40 * (i % 5))
        table[:, :4] = table[:, :4].round()
        tables.append(GroupStats(table.to(dtype)))
    return tables


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("window", "min_count"), [(1, 60.0), (4, 60.0), (50, 60.0), (6, 1e9)])
def test_count_window_on_the_host_equals_the_tensor_path(dtype: torch.dtype, window: int, min_count: float) -> None:
    runs = {}
    for host in (True, False):
        running = RunningGroupStats(3, mode="count", window=window, min_count=min_count)
        running.host_bookkeeping = host
        runs[host] = [(running.update(t).table.clone(), int(running.last_window)) for t in _stream(40, 3, dtype)]
    windows = [w for _, w in runs[True]]
    if min_count > 1e6:  # never enough: every window is all there is (the whole ring, once it is full)
        assert windows == [min(i + 1, window) for i in range(40)]
    else:  # windows of one table, longer ones, and the cap all occur
        assert min(windows) == 1 and max(windows) == min(window, 4)
    for (fast, w_fast), (slow, w_slow) in zip(runs[True], runs[False]):
        assert w_fast == w_slow and fast.dtype == slow.dtype == dtype and torch.equal(fast, slow)


def test_count_window_on_the_host_resumes_from_a_state_dict() -> None:
    tables = _stream(30, 2, torch.float64)
    whole = RunningGroupStats(2, mode="count", window=6, min_count=50.0)
    for t in tables:
        expected = whole.update(t).table
    first = RunningGroupStats(2, mode="count", window=6, min_count=50.0)
    for t in tables[:17]:
        first.update(t)
    snapshot = first.state_dict()
    saved = {key: snapshot[key].clone() for key in ("prefix", "times")}
    resumed = RunningGroupStats(2, mode="count", window=6, min_count=50.0)
    resumed.load_state_dict(snapshot)
    for t in tables[17:]:
        got = resumed.update(t).table
        first.update(GroupStats(t.table * 2.0))  # the original goes on with other tables: neither writes into the other
    assert torch.equal(got, expected) and int(resumed.last_window) == int(whole.last_window)
    # a state is a snapshot: the rings written since (in place, through NumPy views) left it as it was
    assert all(torch.equal(snapshot[key], saved[key]) for key in saved)
    again = RunningGroupStats(2, mode="count", window=6, min_count=50.0)
    again.load_state_dict(snapshot)
    for t in tables[17:]:
        got = again.update(t).table
    assert torch.equal(got, expected)


def test_finite_is_isfinite() -> None:
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        info = torch.finfo(dtype)
        values = torch.tensor(
            [0.0, -0.0, 1.0, -2.5, info.max, -info.max, info.tiny, info.tiny / 4, math.inf, -math.inf, math.nan],
            dtype=dtype,
        )
        assert torch.equal(finite(values), torch.isfinite(values))


def _multiplier(bound: float | None, kind: str, dtype: torch.dtype) -> FairnessMultiplier:
    init = torch.tensor([0.0, 0.3, 1.0, 0.01, 2.0, 0.7, 0.2, -0.0], dtype=dtype)
    multiplier = FairnessMultiplier(8, init=init, bound=bound, dtype=dtype)
    multiplier.constraint_type = getattr(fairopt.optim.multipliers.ConstraintType, kind.upper())
    return multiplier


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", ["inequality", "equality"])
@pytest.mark.parametrize("bound", [None, 1.5, 0.1])
def test_sgd_ascent_equals_torch_sgd_and_the_projection(bound: float | None, kind: str, dtype: torch.dtype) -> None:
    """Both shortcuts (on tensors; on Python floats, which also set ``.grad`` from the raw hard values) against
    ``torch.optim.SGD.step`` and cooper's projection: NaN, inf, an undefined entry, a float64 value that overflows
    float32, steps below 0 and above the bound, a -0.0 that keeps its sign (undefined, then clamped)."""
    hard = [-0.2, 0.7, math.nan, -0.05, 3.0, math.inf, 1e300, 0.5]
    defined = [True, True, True, False, True, True, True, False]
    observed = torch.tensor(defined) & torch.isfinite(torch.tensor(hard, dtype=torch.float64))
    grad = torch.where(observed, torch.tensor(hard, dtype=torch.float64), 0.0).to(dtype)
    slow, fast, floats = (_multiplier(bound, kind, dtype) for _ in range(3))
    sgd = torch.optim.SGD(slow.parameters(), lr=0.3, maximize=True)
    slow.mask_next_update(observed)
    slow.weight.grad = grad.clone()
    sgd.step()
    slow.post_step_()
    fast.sgd_ascent_(grad, 0.3, observed)
    floats.sgd_ascent_floats_(hard, defined, 0.3)
    assert torch.equal(fast.weight, slow.weight) and torch.equal(floats.weight, slow.weight)
    assert torch.equal(torch.signbit(floats.weight), torch.signbit(slow.weight)) and torch.signbit(slow.weight[7])
    assert floats.weight.dtype == dtype and torch.equal(floats.weight.grad, grad)
    # hand-computed: w + 0.3 g where observed and finite, else w; then the clamp to [0, bound] ([-bound, bound] for
    # an equality). NaN, inf and the undefined entry keep their value; 1e300 overflows float32 (the step is inf: kept)
    top = math.inf if bound is None else bound
    low = 0.0 if kind == "inequality" else -top
    moved = [0.0 - 0.06, 0.3 + 0.21, 1.0, 0.01, 2.0 + 0.9, 0.7, 0.2 + 3e299 if dtype == torch.float64 else 0.2, 0.0]
    expected = [min(max(v, low), top) for v in moved]
    assert floats.weight.tolist() == pytest.approx(expected, rel=1e-6)


def test_the_cached_host_view_follows_the_weight_to_new_storage() -> None:
    """The cached NumPy view of a multiplier (read by the Lagrangian's primal weights, written by the float step) is
    the weight's own storage; a module ``.to()`` or an assignment to ``.data`` that moves the weight to new storage
    is seen, and a weight NumPy cannot view (bfloat16) gets None."""
    multiplier = _multiplier(None, "inequality", torch.float64)
    data, view, read_only = multiplier.host_view()
    assert data.data_ptr() == multiplier.weight.data_ptr()
    assert multiplier.host_view()[1] is view  # cached
    multiplier.sgd_ascent_floats_([1.0] * 8, [True] * 8, 0.5)
    assert view.tolist() == multiplier.weight.tolist() == read_only.tolist() and view[0] == 0.5
    with pytest.raises(ValueError, match="read-only"):
        read_only[0] = 1.0
    multiplier.to(torch.float32)  # new storage for the same Parameter object
    _, view32, _ = multiplier.host_view()
    assert view32.dtype == np.float32 and view32.tolist() == multiplier.weight.tolist()
    multiplier.sgd_ascent_floats_([1.0] * 8, [True] * 8, 0.5)
    assert multiplier.weight[0].item() == 1.0 and view32[0] == 1.0 and view[0] == 0.5
    multiplier.weight.data = torch.full((8,), 7.0, dtype=torch.float64)
    assert multiplier.host_view()[1].tolist() == [7.0] * 8
    multiplier.weight.data = torch.full((8,), 9.0, dtype=torch.float64)  # only the storage address differs
    assert multiplier.host_view()[1].tolist() == [9.0] * 8
    # the same storage seen with other strides (one element 8 times), shape or dtype
    multiplier.weight.data = torch.arange(8.0, dtype=torch.float64)
    multiplier.host_view()
    multiplier.weight.data = multiplier.weight.data[:1].expand(8)
    assert multiplier.host_view()[1].tolist() == [0.0] * 8
    multiplier.weight.data = torch.full((8,), 7.0, dtype=torch.float64)
    multiplier.weight.data = multiplier.weight.data[:4]
    assert multiplier.host_view()[1].shape == (4,)
    multiplier.weight.data = multiplier.weight.data.view(torch.float32)
    assert multiplier.host_view()[1].dtype == np.float32 and multiplier.host_view()[1].shape == (8,)
    with pytest.raises(ValueError, match="WRITEABLE"):
        multiplier.host_view()[2].flags.writeable = True
    multiplier.to(torch.bfloat16)
    assert multiplier.host_view() is None
    with pytest.raises(ValueError, match="float32 or float64 weight on the CPU"):
        multiplier.sgd_ascent_floats_([1.0] * 8, [True] * 8, 0.5)


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copies_start_without_the_cached_views(how: str) -> None:
    """A copied multiplier and a copied count window (deepcopy, pickle: what torch.save does) write and read their
    own tensors, not the original's cached views: both continue with the same numbers, independently."""

    def copied(obj: Any) -> Any:
        return copy.deepcopy(obj) if how == "deepcopy" else pickle.loads(pickle.dumps(obj))

    multiplier = _multiplier(None, "inequality", torch.float64)
    multiplier.sgd_ascent_floats_([0.5] * 8, [True] * 8, 0.1)
    twin = copied(multiplier)
    for m in (multiplier, twin):
        m.sgd_ascent_floats_([1.0] * 8, [True] * 8, 0.5)
    assert torch.equal(twin.weight, multiplier.weight) and twin.weight.tolist()[1] == 0.3 + 0.05 + 0.5
    twin.sgd_ascent_floats_([1.0] * 8, [True] * 8, 0.5)
    assert twin.weight.tolist()[0] == multiplier.weight.tolist()[0] + 0.5
    tables = _stream(12, 3, torch.float64)
    running = RunningGroupStats(3, mode="count", window=5, min_count=60.0)
    for t in tables[:6]:
        running.update(t)
    other = copied(running)
    for t in tables[6:]:
        assert torch.equal(running.update(t).table, other.update(t).table)
        assert int(running.last_window) == int(other.last_window)
    # the copy's ring tensors themselves were written (what its state_dict saves), not arrays that only look like them
    assert torch.equal(other.state_dict()["prefix"], running.state_dict()["prefix"])


def test_a_bound_the_multiplier_dtype_cannot_hold_is_refused() -> None:
    with pytest.raises(ValueError, match=r"exceeds the largest torch\.float32"):
        FairnessMultiplier(2, bound=1e300, dtype=torch.float32)
    assert FairnessMultiplier(2, bound=1e300, dtype=torch.float64).bound == 1e300


def test_plain_sgd_is_recognized_and_everything_else_is_not() -> None:
    weight = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    assert _plain_sgd_lr(torch.optim.SGD([weight], lr=0.05, maximize=True)) == 0.05
    for options in ({"momentum": 0.9}, {"weight_decay": 1e-3}, {"maximize": False}, {"foreach": True}):
        assert _plain_sgd_lr(torch.optim.SGD([weight], **{"lr": 0.05, "maximize": True, **options})) is None
    assert _plain_sgd_lr(torch.optim.Adam([weight], lr=0.05, maximize=True)) is None
    hooked = torch.optim.SGD([weight], lr=0.05, maximize=True)
    hooked.register_step_pre_hook(lambda opt, args, kwargs: None)
    assert _plain_sgd_lr(hooked) is None
    scheduled = torch.optim.SGD([weight], lr=0.05, maximize=True)
    torch.optim.lr_scheduler.StepLR(scheduled, step_size=1)  # wraps .step to count calls: keep torch's step
    assert _plain_sgd_lr(scheduled) is None


def _train(
    fast: bool, monkeypatch: pytest.MonkeyPatch, entries: int = 3, **options: object
) -> tuple[torch.Tensor, ...]:
    """Steps of a small problem with every fast path on, or each of them off (the generic path of the same code).
    ``entries``: 3 (equalized odds and demographic parity; the proxy-Lagrangian solves for its 4-state chain) or 2
    (equalized odds alone: a 3-state chain, whose distribution takes the tree weights)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(192, 8, generator=gen)
    y = (torch.rand(192, generator=gen) < 0.3).float()
    a = torch.randint(0, 3, (192,), generator=gen)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    base = torch.optim.Adam(model.parameters(), lr=1e-2)
    constraints = [fairopt.EqualizedOdds(0.02), fairopt.DemographicParity(0.01)][: 1 if entries == 2 else 2]
    opt = ConstrainedOptimizer(base, constraints, 4, dual_lr=0.5, dual_min_count=8, **options)  # group 3: absent
    if not fast:
        if opt.dual_statistics.running is not None:
            opt.dual_statistics.running.host_bookkeeping = False
        if opt.dual_optimizer is not None:
            opt.dual_optimizer.register_step_pre_hook(lambda *args: None)  # not a plain SGD any more
        generic = ConstrainedOptimizer._dual_step
        monkeypatch.setattr(opt, "_dual_step", lambda value, batch=None: generic(opt, value, None))
        monkeypatch.setattr(opt.constraint_set, "measures_terms", lambda scores: False)  # a differentiable table
        if hasattr(opt.player, "host_arithmetic"):  # the proxy-Lagrangian's update on tensors
            opt.player.host_arithmetic = False
    objectives, windows = [], []
    for i in range(24):
        rows = slice(48 * (i % 4), 48 * (i % 4) + 48)
        scores = model(x[rows]).squeeze(-1)
        opt.zero_grad()
        result = opt.step(
            loss=F.binary_cross_entropy_with_logits(scores, y[rows]), scores=scores, labels=y[rows], groups=a[rows]
        )
        objectives.append(result.objective)
        windows.append(opt.dual_window or 0)
    params = torch.cat([p.detach().flatten() for p in model.parameters()])
    return params, opt.multipliers, torch.stack(objectives), torch.tensor(windows)


@pytest.mark.parametrize(
    "options",
    [
        {"method": "lagrangian"},
        {"method": Lagrangian(multiplier_bound=0.05), "dual_update": "alternating", "margin": 0.01},
        {"method": "augmented_lagrangian"},
        {"method": "proxy_lagrangian"},
        {"method": "proxy_lagrangian", "entries": 2},
    ],
    ids=["lagrangian", "bounded, alternating, margin", "augmented_lagrangian", "proxy_lagrangian", "proxy, 2 entries"],
)
def test_a_run_with_the_fast_paths_equals_the_generic_run(
    options: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = _train(True, monkeypatch, **options)
    slow = _train(False, monkeypatch, **options)
    _, multipliers, _, windows = fast
    assert {1, 2} <= set(windows.tolist())  # windows of one batch (values reused) and of several both occur
    assert multipliers.abs().max() > 0  # the duals moved
    for got, expected in zip(fast, slow):
        assert torch.equal(got, expected)


@pytest.mark.parametrize(
    "case", ["plain", "weights", "example_losses", "hinge", "float32", "threshold", "weight_grad", "many_groups"]
)
def test_example_terms_give_the_table_of_group_stats_and_its_gradient(case: str) -> None:
    """ExampleTerms (the step's CPU path) is group_stats' table without a graph, and its linear term has the gradient
    of ``Σ W ∘ T`` through the differentiable table, for every kind of column (derived or explicit negative
    proxy, weights with and without a gradient, the loss column), bit for bit."""
    gen = torch.Generator().manual_seed(7)
    # group 3 absent: a zero row; many groups: the table assembled in NumPy rather than on Python floats
    n, num_groups = 301, 20 if case == "many_groups" else 4
    dtype = torch.float32 if case == "float32" else torch.float64
    inputs = {
        "scores": torch.randn(n, generator=gen, dtype=dtype),
        "weights": torch.rand(n, generator=gen, dtype=dtype),
        "example_losses": torch.rand(n, generator=gen, dtype=dtype),
    }
    labels = (torch.rand(n, generator=gen) < 0.4).float()
    groups = torch.randint(0, num_groups - 1, (n,), generator=gen)
    trainable = {"scores", "example_losses", "weights"} if case == "weight_grad" else {"scores", "example_losses"}
    options: dict[str, object] = {"proxy": "hinge" if case == "hinge" else "sigmoid", "dtype": dtype}
    if case == "threshold":
        options["threshold"] = 0.3
    used = {"scores"} | ({"weights"} if case in ("weights", "weight_grad") else set())
    used |= {"example_losses"} if case in ("example_losses", "weight_grad") else set()
    weight = torch.rand(num_groups, 9, generator=gen, dtype=torch.float64)
    grads = []
    for build in (group_stats, example_terms):
        leaves = {k: v.clone().requires_grad_(k in trainable) for k, v in inputs.items() if k in used}
        extra = {k: v for k, v in leaves.items() if k != "scores"}
        out = build(leaves["scores"], labels=labels, groups=groups, num_groups=num_groups, **extra, **options)
        if build is group_stats:
            table = out.table
            (table * weight.to(table.dtype)).sum().backward()
        else:
            assert not out.stats.table.requires_grad and torch.equal(out.stats.table, table.detach())
            out.linear_term(weight.to(dtype).double().numpy()).backward()
        grads.append({k: v.grad for k, v in leaves.items() if v.requires_grad})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name, expected in grads[0].items():
        assert torch.equal(grads[1][name], expected), name


def test_value_checks_through_numpy_give_the_flags_of_the_tensor_checks() -> None:
    """The CPU checks (NumPy views) and the tensor checks agree on every flag, including the edge cases: NaN/inf,
    ids at the ends of [0, G), labels near 0/1, weights at the rounding tolerance, float16; bfloat16 stays on the
    tensor path."""
    gen = torch.Generator().manual_seed(11)
    eps32 = torch.finfo(torch.float32).eps
    cases = 0
    for trial in range(300):
        n = int(torch.randint(1, 40, (1,), generator=gen))
        dtype = (torch.float32, torch.float64, torch.float16)[trial % 3]
        scores = torch.randn(n, generator=gen).to(dtype)
        labels = torch.randint(0, 2, (n,), generator=gen)
        labels = (labels.bool(), labels.float(), labels.to(torch.int32), labels.double())[trial % 4]
        groups = torch.randint(0, 3, (n,), generator=gen).to((torch.int64, torch.int32, torch.uint8)[trial % 3])
        weights = torch.rand(n, generator=gen, dtype=dtype) if trial % 2 else None
        loss = torch.rand(n, generator=gen, dtype=dtype) if trial % 5 == 0 else None
        i = int(torch.randint(0, n, (1,), generator=gen))
        kind = trial % 10
        if kind == 1:
            scores[i] = (math.nan, math.inf, -math.inf)[trial % 3]
        elif kind == 2 and groups.dtype != torch.uint8:
            groups[i] = (-1, 3)[trial % 2]
        elif kind == 3:
            groups[i] = 2  # the largest id: valid
        elif kind == 4 and labels.dtype != torch.bool:
            labels[i] = (2, -1)[trial % 2] if not labels.is_floating_point() else (0.5, 1 + 1e-7, math.nan)[trial % 3]
        elif kind == 5 and weights is not None and dtype == torch.float32:
            weights[i] = (-16 * eps32, -17 * eps32)[trial % 2]  # at the tolerance (accepted), just past it
        elif kind == 6 and weights is not None:
            weights[i] = math.nan
        elif kind == 7 and loss is not None:
            loss[i] = math.inf
        host = _host_flags(scores, labels, groups, 3, weights, loss)
        assert host == _device_flags(scores, labels, groups, 3, weights, loss), trial
        cases += any(host)
    assert cases > 50  # failing checks of every kind occurred
    bf16 = torch.randn(5).bfloat16()
    assert _host_flags(bf16, torch.ones(5), torch.zeros(5, dtype=torch.int64), 1, None, None) is None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_example_terms_scale_tiny_weights_before_the_cast_as_the_table_does(dtype: torch.dtype) -> None:
    """A loss scale (GradScaler's 65536) multiplies the float64 cell weights before they meet half-precision
    gradients, in both paths: weights far below float16's normal range keep their bits (the same gradient bit for
    bit; cast first, they would flush to 0)."""
    gen = torch.Generator().manual_seed(5)
    scores = torch.randn(64, generator=gen).to(dtype)
    labels = (torch.rand(64, generator=gen) < 0.5).float()
    groups = torch.randint(0, 2, (64,), generator=gen)
    weight = (torch.rand(2, 9, generator=gen, dtype=torch.float64) - 0.5) * 1e-8  # |W| < 5e-9: float16 subnormal
    grads = []
    for build in (group_stats, example_terms):
        leaf = scores.clone().requires_grad_(True)
        out = build(leaf, labels=labels, groups=groups, num_groups=2)
        term = (out.table * weight).sum() if build is group_stats else out.linear_term(weight.numpy())
        (term * 65536.0).backward()
        grads.append(leaf.grad)
    assert grads[0].abs().min() > 0  # nothing flushed to zero
    assert torch.equal(grads[1], grads[0])


def test_small_integer_group_ids_are_checked_in_int64_on_every_path() -> None:
    """uint8 ids up to 255 with num_groups=256 are valid: the tensor checks compare in int64 (uint8 would wrap 256 to
    0 and reject them) and agree with the NumPy checks; 256 itself is out of range on both."""
    groups = torch.tensor([0, 255, 200, 1], dtype=torch.uint8)
    scores, labels = torch.randn(4), torch.tensor([0.0, 1.0, 1.0, 0.0])
    for check in (_host_flags, _device_flags):
        assert check(scores, labels, groups, 256, None, None) == [False, False, False]
        assert check(scores, labels, groups, 255, None, None)[1]
    table = group_stats(scores.bfloat16(), labels=labels, groups=groups, num_groups=256).table  # tensor checks
    assert table[[0, 1, 200, 255], :4].sum().item() == 4


@pytest.mark.parametrize("method", ["lagrangian", "augmented_lagrangian", "proxy_lagrangian", "penalty"])
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copied_optimizer_goes_on_as_the_original(method, how):
    """copy.deepcopy / pickle of a whole ConstrainedOptimizer (with its model's optimizer) recursed without end in
    cooper's problem; the copy must go on training exactly as the original does."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = ConstrainedOptimizer(torch.optim.Adam(model.parameters(), lr=0.05), [fairopt.EqualizedOdds(0.05)],
                                  num_groups=2, method=method, dual_lr=0.5)  # fmt: skip
    gen = torch.Generator().manual_seed(1)
    x, y, a = torch.randn(64, 3, generator=gen), torch.arange(64) % 2, (torch.arange(64) // 2) % 2

    def step(m: torch.nn.Module, o: ConstrainedOptimizer) -> None:
        scores = m(x).squeeze(-1)
        o.zero_grad()
        o.step(loss=F.binary_cross_entropy_with_logits(scores, y.float()), scores=scores, labels=y, groups=a)

    for _ in range(3):
        step(model, opt)
    pair = (model, opt)
    copied_model, copied = copy.deepcopy(pair) if how == "deepcopy" else pickle.loads(pickle.dumps(pair))
    for _ in range(3):
        step(model, opt)
        step(copied_model, copied)
    assert torch.equal(copied.multipliers, opt.multipliers) and bool((opt.multipliers > 0).any())
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), copied_model.parameters()))
    assert copied.num_steps == opt.num_steps == 6
