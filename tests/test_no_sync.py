"""The constrained step with no host round trip (issue 13, section 2), checked on the CPU.

With ``validate_args=False`` and ``evaluator="device"``, :meth:`fairopt.ConstrainedOptimizer.step` must never read a
tensor on the host: the methods that would (``Tensor.item``, ``.tolist``, ``.numpy``, ``.cpu``, ``bool(t)``,
``float(t)``, ``int(t)``) are patched to raise while steps of every method run. On a GPU the same code then never
waits for the device (``benchmarks/device/kernel_bench.py`` checks that under ``torch.cuda.set_sync_debug_mode``).
The device evaluator must also agree with the NumPy one: values, defined masks, gradients w.r.t. the table, and
the multipliers after several steps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fairopt
from fairopt import fpr, selection_rate, tpr
from fairopt.constraints.device_evaluation import evaluate_device
from fairopt.constraints.evaluation import host_table, linearize
from fairopt.constraints.expressions import concat, maximum, minimum, pairwise
from fairopt.optim import AugmentedLagrangian, ConstrainedOptimizer, ConstraintSet, Lagrangian, Penalty, ProxyLagrangian

G = 3
HOST_READS = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__")


@contextmanager
def no_host_reads() -> Iterator[None]:
    """Every way to read a tensor's value on the host raises inside the block."""
    saved = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def refuse(name: str) -> Callable[..., Any]:
        def method(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            raise AssertionError(f"host read: Tensor.{name} called during the step")

        return method

    try:
        for name in HOST_READS:
            setattr(torch.Tensor, name, refuse(name))
        yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)


def test_the_patch_catches_host_reads() -> None:
    t = torch.ones(2)
    with no_host_reads():
        for read in (lambda: t.sum().item(), t.tolist, t.numpy, t.cpu, lambda: bool(t[0]), lambda: float(t[0])):
            with pytest.raises(AssertionError, match="host read"):
                read()
    assert t.sum().item() == 2.0  # restored


CONSTRAINTS = {
    "demographic parity": lambda: [fairopt.DemographicParity(0.01)],
    "equalized odds": lambda: [fairopt.EqualizedOdds(0.01)],
    "equal opportunity (vs overall)": lambda: [fairopt.EqualOpportunity(0.0, convention="vs_overall")],
    "bounded group loss": lambda: [fairopt.BoundedGroupLoss(0.3)],
    "custom expression + disparate impact": lambda: [
        abs(tpr(1) - tpr(0)) <= 0.03,
        maximum(fpr.per_group(), 0.1).max() <= 0.2,
        fairopt.DisparateImpact(0.8),
    ],
}
METHODS = {
    "lagrangian": lambda: Lagrangian(),
    "augmented_lagrangian": lambda: AugmentedLagrangian(),
    "proxy_lagrangian": lambda: ProxyLagrangian(),
    "proxy_lagrangian, external additive": lambda: ProxyLagrangian(regret="external", regret_update="additive"),
    "penalty": lambda: Penalty(),
}


def batches(steps: int, n: int = 96, d: int = 5, seed: int = 0) -> list[tuple[torch.Tensor, ...]]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        x = torch.randn(n, d, generator=gen)
        a = torch.randint(0, G, (n,), generator=gen)
        y = (torch.rand(n, generator=gen) < torch.sigmoid(x[:, 0] + 0.5 * a)).float()
        out.append((x, y, a))
    return out


def run(
    constraints: str,
    method: str,
    evaluator: str,
    *,
    source: str = "train",
    steps: int = 4,
    guard: bool = False,
    **options: Any,
) -> tuple[ConstrainedOptimizer, torch.nn.Module]:
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 1, dtype=torch.float64)
    data = batches(steps)
    heldout_batch = batches(1, n=128, seed=1)[0]
    kwargs: dict[str, Any] = dict(options)
    if source == "heldout":
        xv, yv, av = heldout_batch

        def heldout() -> dict[str, torch.Tensor]:
            scores = model(xv.double()).squeeze(-1)
            return {"scores": scores, "labels": yv, "groups": av, "example_losses": torch.zeros_like(scores)}

        kwargs.update(dual_source="heldout", heldout=heldout)
    opt = ConstrainedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
        CONSTRAINTS[constraints](),
        G,
        method=METHODS[method](),
        dual_lr=0.5,
        evaluator=evaluator,
        validate_args=False,
        **kwargs,
    )
    for x, y, a in data:
        scores = model(x.double()).squeeze(-1)
        losses = F.binary_cross_entropy_with_logits(scores, y.double(), reduction="none")
        opt.zero_grad()
        if guard:
            with no_host_reads():
                opt.step(loss=losses.mean(), scores=scores, labels=y, groups=a, example_losses=losses)
        else:
            opt.step(loss=losses.mean(), scores=scores, labels=y, groups=a, example_losses=losses)
    return opt, model


CASES = [(c, m, "train") for c in CONSTRAINTS for m in METHODS] + [
    (c, m, "heldout")
    for c in ("equalized odds", "custom expression + disparate impact")
    for m in METHODS
    if m != "penalty"
]


@pytest.mark.parametrize(("constraints", "method", "source"), CASES)
def test_device_step_never_reads_the_host(constraints: str, method: str, source: str) -> None:
    opt, _ = run(constraints, method, "device", source=source, guard=True)
    assert opt.num_steps == 4
    assert torch.isfinite(opt.multipliers).all()


@pytest.mark.parametrize("options", [{"dual_min_count": None}, {"dual_every": 2, "dual_min_count": 50.0}])
def test_device_step_never_reads_the_host_other_schedules(options: dict[str, Any]) -> None:
    opt, _ = run("equalized odds", "lagrangian", "device", guard=True, **options)
    assert opt.num_steps == 4


@pytest.mark.parametrize(("constraints", "method", "source"), CASES)
def test_device_and_numpy_evaluators_train_the_same(constraints: str, method: str, source: str) -> None:
    steps = 6
    device_opt, device_model = run(constraints, method, "device", source=source, steps=steps)
    numpy_opt, numpy_model = run(constraints, method, "numpy", source=source, steps=steps)
    torch.testing.assert_close(device_opt.multipliers, numpy_opt.multipliers, rtol=1e-9, atol=1e-12)
    for p, q in zip(device_model.parameters(), numpy_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12)
    if method != "penalty":  # the multipliers moved: the comparison is not one of two initial states
        assert not torch.equal(
            numpy_opt.multipliers, run(constraints, method, "numpy", source=source, steps=0)[0].multipliers
        )


EXPRESSIONS = [
    tpr(1) - tpr(0),
    abs(tpr.per_group() - tpr()),
    tpr.per_group().max() - tpr.per_group().min(),
    pairwise(fpr.per_group()),
    abs(pairwise(tpr.per_group(), symmetric=True)).max(),
    maximum(tpr.per_group(), 0.3) - minimum(fpr.per_group(), 0.2),
    selection_rate.per_group() * 2 / (selection_rate() + 0.1),
    selection_rate.per_group() / selection_rate(),
    concat(tpr(1), fpr.per_group()).max(),
    fairopt.precision.per_group() - fairopt.precision(),
    fairopt.mean_loss.per_group() - 0.5,
    tpr((0, 1)) / tpr(2),
    (tpr.per_group() - 1) * (fpr.per_group() + 0.5),
    fairopt.base_rate.per_group() - fairopt.base_rate(),
]


def stats_for(seed: int, proxy: str, empty_group: bool = False) -> fairopt.GroupStats:
    gen = torch.Generator().manual_seed(seed)
    n = 150
    scores = torch.randn(n, dtype=torch.float64, generator=gen).requires_grad_()
    labels = (torch.rand(n, generator=gen) < 0.4).long()
    groups = torch.randint(0, G, (n,), generator=gen)
    if empty_group:  # group 2 has no positive labels: its TPR and every entry reading it are undefined
        labels = torch.where(groups == 2, 0, labels)
    losses = torch.rand(n, dtype=torch.float64, generator=gen).requires_grad_()
    return fairopt.group_stats(scores, labels=labels, groups=groups, num_groups=G, proxy=proxy, example_losses=losses)


@pytest.mark.parametrize("proxy", ["hinge", "sigmoid"])
@pytest.mark.parametrize("empty_group", [False, True])
@pytest.mark.parametrize("expr", EXPRESSIONS, ids=str)
def test_device_evaluator_equals_numpy(expr: fairopt.Expr, proxy: str, empty_group: bool) -> None:
    stats = stats_for(3, proxy, empty_group)
    lin = linearize(expr, host_table(stats))
    got = evaluate_device(expr, stats.table)
    np.testing.assert_allclose(got.hard.numpy(), lin.hard, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(got.proxy_upper.detach().numpy(), lin.proxy_upper, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(got.proxy_lower.detach().numpy(), lin.proxy_lower, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(got.defined.numpy(), lin.defined)
    assert not got.hard.requires_grad
    k = lin.hard.shape[0]
    c_upper, c_lower = np.linspace(0.5, 1.5, k), np.linspace(-1.0, 2.0, k)
    objective = (got.proxy_upper * torch.from_numpy(c_upper)).sum() + (
        got.proxy_lower * torch.from_numpy(c_lower)
    ).sum()
    (grad,) = torch.autograd.grad(objective, stats.table, allow_unused=True)
    grad = torch.zeros_like(stats.table) if grad is None else grad
    np.testing.assert_allclose(grad.reshape(-1).numpy(), lin.vjp(c_upper, c_lower), rtol=1e-10, atol=1e-14)


def test_undefined_entries_are_zero_with_zero_gradient() -> None:
    stats = stats_for(4, "sigmoid", empty_group=True)
    got = evaluate_device(tpr.per_group() - tpr(), stats.table)
    assert got.defined.tolist() == [True, True, False]
    assert got.hard[2] == 0 and got.proxy_upper[2] == 0
    (grad,) = torch.autograd.grad(got.proxy_upper[2], stats.table, allow_unused=True)
    assert grad is None or bool((grad == 0).all())


def test_hand_computed_gap() -> None:
    # group 0: 4 positives, tp_proxy 3.0 -> TPR proxy 0.75, hard 2/4; group 1: 2 positives, tp_proxy 0.5, hard 1/2
    table = torch.zeros(2, 9, dtype=torch.float64)
    table[0, [2, 3, 6, 7]] = torch.tensor([2.0, 2.0, 1.0, 3.0], dtype=torch.float64)
    table[1, [2, 3, 6, 7]] = torch.tensor([1.0, 1.0, 1.5, 0.5], dtype=torch.float64)
    table.requires_grad_()
    got = evaluate_device(tpr(0) - tpr(1), table)
    assert got.hard.tolist() == [0.0]
    assert got.proxy_upper.tolist() == [0.75 - 0.25]  # upper of a - b: upper(a) - lower(b) = 0.75 - (1 - 1.5/2)
    (grad,) = torch.autograd.grad(got.proxy_upper.sum(), table)
    expected = torch.zeros(2, 9, dtype=torch.float64)
    expected[0, 7] = 1 / 4  # d(tp_proxy/4)
    expected[1, 6] = 1 / 2  # -d(1 - fn_proxy/2) = +1/2
    torch.testing.assert_close(grad, expected)


def test_constraint_set_evaluates_the_same_either_way() -> None:
    constraints = [fairopt.EqualizedOdds(0.05), fairopt.DisparateImpact(0.8), tpr(1) - tpr(0) <= 0.02]
    stats = stats_for(5, "sigmoid")
    numpy_value = ConstraintSet(constraints, G, evaluator="numpy").evaluate(stats)
    device_set = ConstraintSet(constraints, G, evaluator="device")
    assert device_set.on_device(torch.device("cpu"))
    assert not ConstraintSet(constraints, G).on_device(torch.device("cpu"))  # auto: NumPy on the CPU
    assert ConstraintSet(constraints, G).on_device(torch.device("cuda"))  # auto: the device evaluator on a GPU
    device_value = device_set.evaluate(stats)
    forced = ConstraintSet(constraints, G, evaluator="numpy").evaluate_device(stats)
    torch.testing.assert_close(forced.proxy, device_value.proxy)
    function = fairopt.FunctionConstraint(lambda view: view.tpr[1:2] - view.tpr[0:1], 1, name="tpr gap")
    with pytest.raises(TypeError, match="FunctionConstraint"):
        ConstraintSet([function], G).evaluate_device(stats)
    assert not ConstraintSet([function], G, evaluator="device").on_device(torch.device("cpu"))  # its own function
    torch.testing.assert_close(device_value.hard, numpy_value.hard, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(device_value.proxy.detach(), numpy_value.proxy.detach(), rtol=1e-12, atol=1e-15)
    assert torch.equal(device_value.defined, numpy_value.defined)
    (g_device,) = torch.autograd.grad(device_value.proxy.sum(), stats.table, retain_graph=True)
    (g_numpy,) = torch.autograd.grad(numpy_value.proxy.sum(), stats.table)
    torch.testing.assert_close(g_device, g_numpy, rtol=1e-10, atol=1e-14)


def test_bad_options_are_refused_at_construction() -> None:
    model = torch.nn.Linear(2, 1)
    with pytest.raises(ValueError, match="evaluator must be one of"):
        ConstrainedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), fairopt.EqualizedOdds(), 2, evaluator="gpu")
    with pytest.raises(ValueError, match="backend must be one of"):
        ConstrainedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), fairopt.EqualizedOdds(), 2, backend="cuda")


def test_device_evaluator_refuses_a_bad_table() -> None:
    with pytest.raises(ValueError, match=r"\(G, 9\)"):
        evaluate_device(tpr(0), torch.zeros(2, 4))
    with pytest.raises(TypeError, match="floating point"):
        evaluate_device(tpr(0), torch.zeros(2, 9, dtype=torch.int64))
    with pytest.raises(ValueError, match="refers to group 5"):
        evaluate_device(tpr(5), torch.zeros(2, 9))


def test_statistics_and_constraints_compile_without_graph_breaks() -> None:
    cs = ConstraintSet([fairopt.EqualizedOdds(0.05), fairopt.DemographicParity(0.1)], G, evaluator="device")

    def values(scores: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, ...]:
        stats = cs.measure(scores, labels=labels, groups=groups, validate_args=False)
        value = cs.evaluate(stats)
        return value.hard, value.proxy, value.defined

    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(64, dtype=torch.float64, generator=gen, requires_grad=True)
    labels = (torch.rand(64, generator=gen) < 0.5).long()
    groups = torch.randint(0, G, (64,), generator=gen)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(values)(scores, labels, groups)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(values, fullgraph=True, backend="eager")
    hard, proxy, defined = compiled(scores, labels, groups)
    ref_hard, ref_proxy, ref_defined = values(scores, labels, groups)
    torch.testing.assert_close(hard, ref_hard)
    torch.testing.assert_close(proxy, ref_proxy)
    assert torch.equal(defined, ref_defined)
    (g_compiled,) = torch.autograd.grad(proxy.sum(), scores)
    (g_eager,) = torch.autograd.grad(ref_proxy.sum(), scores)
    torch.testing.assert_close(g_compiled, g_eager)


@pytest.mark.parametrize("method", ["lagrangian", "proxy_lagrangian"])
def test_the_whole_step_breaks_only_at_backward_and_torch_optim(method: str) -> None:
    # The step calls backward() itself (dynamo cannot trace it; compiled autograd can), and torch.optim's step ends
    # its graph on purpose (the cooper dual optimizer's step); no other graph break comes from fairopt code:
    # statistics, running window, device evaluation, primal objective and the λ update all trace.
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 1)
    x, y, a = batches(1, n=64)[0]
    opt = ConstrainedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), [fairopt.EqualizedOdds(0.05)], 2, method=method,
        evaluator="device", validate_args=False,
    )  # fmt: skip
    a = a.clamp(max=1)

    def step() -> None:
        scores = model(x).squeeze(-1)
        opt.step(loss=F.binary_cross_entropy_with_logits(scores, y), scores=scores, labels=y, groups=a)

    step()  # the first step's one-time work (the scores' probability check) stays out of the trace
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(step)()
    allowed = ("Unsupported Tensor.backward() call", "Call to `torch._dynamo.graph_break()`")
    reasons = {r.reason.splitlines()[0] for r in explanation.break_reasons}
    assert all(reason.startswith(allowed) for reason in reasons), reasons
    for r in explanation.break_reasons:  # the graph_break() is torch.optim's, not ours
        if r.reason.startswith(allowed[1]):
            assert "torch/optim" in r.user_stack[-1].filename, r.user_stack[-1]


# one evaluator for one table, a stack of tables, and vmap ---------------------------------------------------------
def stacked_tables(batch: tuple[int, ...], proxy: str = "sigmoid") -> torch.Tensor:
    """``(*batch, G, 9)`` tables of different batches; in the second one group 2 has no positive label."""
    count = int(np.prod(batch))
    tables = [stats_for(10 + i, proxy, empty_group=i == 1).table.detach() for i in range(count)]
    return torch.stack(tables).reshape(*batch, G, 9)


@pytest.mark.parametrize("batch", [(4,), (2, 2)], ids=str)
@pytest.mark.parametrize("expr", EXPRESSIONS, ids=str)
def test_a_stack_of_tables_equals_each_table_alone(expr: fairopt.Expr, batch: tuple[int, ...]) -> None:
    tables = stacked_tables(batch, "hinge").requires_grad_()
    got = evaluate_device(expr, tables)
    k = expr.size(G)
    assert got.hard.shape == got.proxy_upper.shape == got.defined.shape == (*batch, k)
    c_upper = torch.linspace(0.5, 1.5, k, dtype=torch.float64)
    c_lower = torch.linspace(-1.0, 2.0, k, dtype=torch.float64)
    (grad,) = torch.autograd.grad(((got.proxy_upper * c_upper).sum() + (got.proxy_lower * c_lower).sum()), tables)
    flat, flat_grad = tables.detach().reshape(-1, G, 9), grad.reshape(-1, G, 9)
    for j in range(flat.shape[0]):
        table = flat[j].clone().requires_grad_()
        alone = evaluate_device(expr, table)
        index = np.unravel_index(j, batch)
        for name in ("hard", "proxy_upper", "proxy_lower"):
            torch.testing.assert_close(getattr(got, name)[index], getattr(alone, name), rtol=1e-14, atol=1e-15)
        assert torch.equal(got.defined[index], alone.defined)
        objective = (alone.proxy_upper * c_upper).sum() + (alone.proxy_lower * c_lower).sum()
        (g,) = torch.autograd.grad(objective, table, allow_unused=True)
        torch.testing.assert_close(flat_grad[j], torch.zeros_like(table) if g is None else g, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("expr", [tpr.per_group().max() - tpr.per_group().min(), fpr(1) / (selection_rate() + 0.1)])
def test_under_vmap_the_hard_columns_get_no_gradient(expr: fairopt.Expr) -> None:
    # Under torch.func a table being differentiated has requires_grad False; the hard columns (tn fp fn tp) must be
    # cut all the same, else the gradient w.r.t. them is the derivative of a count (the defect this guards against).
    tables = stacked_tables((4,))

    def objective(table: torch.Tensor) -> torch.Tensor:
        value = evaluate_device(expr, table)
        return value.proxy_upper.sum() + 0.5 * value.proxy_lower.sum()

    grads = torch.func.vmap(torch.func.grad(objective))(tables)
    assert torch.equal(grads[..., :4], torch.zeros_like(grads[..., :4]))
    assert grads[..., 4:].abs().sum() > 0  # the proxy columns do carry the gradient
    batched = tables.clone().requires_grad_()
    value = evaluate_device(expr, batched)
    (expected,) = torch.autograd.grad(value.proxy_upper.sum() + 0.5 * value.proxy_lower.sum(), batched)
    torch.testing.assert_close(grads, expected, rtol=1e-13, atol=1e-15)
    vmapped = torch.func.vmap(lambda t: tuple(evaluate_device(expr, t)))(tables)
    for name, v in zip(("hard", "proxy_upper", "proxy_lower", "defined"), vmapped):
        torch.testing.assert_close(v, getattr(value, name).detach(), rtol=1e-14, atol=1e-15)


def test_a_per_table_offset_is_subtracted_at_defined_entries_only() -> None:
    tables = stacked_tables((2,))  # the second table has an undefined TPR in group 2
    tolerances = torch.tensor([[0.1], [0.25]], dtype=torch.float64)
    expr = tpr.per_group() - 0.5
    plain = evaluate_device(expr, tables)
    for got in (evaluate_device(expr, tables, offset=tolerances), plain.shifted(tolerances)):
        assert got.defined.tolist() == [[True, True, True], [True, True, False]]
        expected = torch.where(plain.defined, plain.hard - tolerances, 0.0)
        torch.testing.assert_close(got.hard, expected, rtol=0, atol=0)
        torch.testing.assert_close(got.proxy_upper, torch.where(plain.defined, plain.proxy_upper - tolerances, 0.0))
    assert evaluate_device(expr, tables, offset=0.0).hard.tolist() == plain.hard.tolist()


def test_a_hand_computed_gap_on_a_stack() -> None:
    # table 0: TPR 3/4 vs 1/4 (gap 0.5); table 1: 2/4 vs 2/4 (gap 0); FPR 0 everywhere (5 negatives, none predicted)
    t = torch.zeros(2, 2, 9, dtype=torch.float64)
    t[0, 0, 2:4], t[0, 1, 2:4] = torch.tensor([1.0, 3.0]), torch.tensor([3.0, 1.0])
    t[1, :, 2:4] = 2.0
    t[:, :, 0] = 5.0
    got = evaluate_device(fairopt.EqualizedOdds(0.0).expr, t)
    assert got.hard.tolist() == [[0.5, 0.0], [0.0, 0.0]]
    assert got.defined.all()
    with pytest.raises(ValueError, match=r"\(\.\.\., G, 9\)"):
        evaluate_device(tpr(0), torch.zeros(3, 2, 4))
