"""The fused (G, 9) table (fairopt.kernels): Triton kernels in Triton's CPU interpreter and the op's torch path,
against fairopt.group_stats (the reference) for tables and gradients; the custom op under opcheck and torch.compile.

The reference is evaluated in float64 on the same inputs (upcast), so the comparisons bound the kernels' own
rounding (float32 arithmetic: rtol 1e-5) rather than the reference's. TRITON_INTERPRET=1 is set at the top of this
module, before triton is imported, and restored after its tests; where something imported triton earlier in the
session (not the case in this suite's collection order) the module skips and says how to run it alone.
"""

from __future__ import annotations

import os

# Before triton is imported: triton decorates its own language helpers (tl.zeros, tl.sum, ...) at import, in the mode
# TRITON_INTERPRET says then. Restored when this module's tests are done (see triton_interpreter).
_PREVIOUS_INTERPRET = os.environ.get("TRITON_INTERPRET")
os.environ["TRITON_INTERPRET"] = "1"

import math  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from functools import partial  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import fairopt as fo  # noqa: E402
from fairopt import proxies  # noqa: E402
from fairopt.kernels import group_stats_table, proxy_spec, resolve_backend  # noqa: E402

pytest.importorskip("triton", reason="triton is not installed (pip install triton); the kernels are optional")

from fairopt.kernels import group_stats_triton  # noqa: E402 (needs triton)

if not group_stats_triton.interpreter_ready():
    pytest.skip(
        "triton was imported (e.g. by torch._dynamo) before this module could set TRITON_INTERPRET=1; run this file "
        "on its own: TRITON_INTERPRET=1 python -m pytest tests/test_kernels.py",
        allow_module_level=True,
    )


@pytest.fixture(autouse=True, scope="module")
def triton_interpreter() -> Iterator[None]:
    yield
    if _PREVIOUS_INTERPRET is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = _PREVIOUS_INTERPRET


def _tanh_proxy(m: torch.Tensor) -> torch.Tensor:
    return torch.tanh(m) + 1.0


PROXIES = {
    "sigmoid": "sigmoid",
    "hinge": "hinge",
    "softplus": "softplus",
    "hard": "hard",
    "sigmoid-T0.5": proxies.Proxy.sigmoid(0.5),
    "hinge-T2": proxies.Proxy.hinge(2.0),
    "softplus-T0.7": proxies.Proxy.softplus(0.7),
    "user-fn": _tanh_proxy,  # kind "values": evaluated in torch, summed by the kernel
    "user-normalized": proxies.Proxy("erf", positive=lambda m: 0.5 * (1 + torch.erf(m)), normalized=True),
}
# (backend, strategy): both Triton reductions and the op's torch implementation
PATHS = [("triton", "block"), ("triton", "atomic"), ("torch", "auto")]
PATH_IDS = ["triton-block", "triton-atomic", "torch"]


def _batch(n: int, g: int, *, seed: int = 0, present: list[int] | None = None) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    groups = torch.randint(0, g, (n,), generator=gen)
    if present is not None:  # only these groups occur: the others must be zero rows
        groups = torch.tensor(present)[torch.randint(0, len(present), (n,), generator=gen)]
    weights = torch.rand(n, generator=gen) * 2
    weights[: min(n, 3)] = torch.tensor([0.0, -1e-16, 1.0])[: min(n, 3)]  # a zero and a rounding negative
    return {
        "scores": torch.randn(n, generator=gen) * 2,
        "labels": torch.randint(0, 2, (n,), generator=gen),
        "groups": groups,
        "weights": weights,
        "example_losses": torch.rand(n, generator=gen),
    }


def _reference(batch: dict[str, torch.Tensor], num_groups: int, **kw) -> torch.Tensor:
    up = {k: v.double() if v.is_floating_point() else v for k, v in batch.items()}
    return fo.group_stats(up.pop("scores"), num_groups=num_groups, **up, **kw).table


def _kernel(batch, num_groups, backend, strategy, **kw) -> torch.Tensor:
    return group_stats_table(
        batch["scores"], **{k: v for k, v in batch.items() if k != "scores"}, num_groups=num_groups,
        backend=backend, strategy=strategy, **kw,
    )  # fmt: skip


def _close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-5) -> None:
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol)


@pytest.mark.parametrize(("backend", "strategy"), PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("proxy", list(PROXIES.values()), ids=list(PROXIES))
def test_table_matches_group_stats_for_every_proxy(proxy, backend, strategy):
    # N = 1000: not a multiple of any block size; groups 1, 4 and 6 absent; threshold 0.3; weights and a loss
    batch = _batch(1000, 7, seed=1, present=[0, 2, 3, 5])
    ref = _reference(batch, 7, proxy=proxy, threshold=0.3)
    out = _kernel(batch, 7, backend, strategy, proxy=proxy, threshold=0.3)
    assert out.shape == (7, 9) and out.dtype == torch.float64
    _close(out, ref)
    assert torch.equal(out[[1, 4, 6]], torch.zeros(3, 9, dtype=torch.float64))  # absent groups: exact zero rows
    assert ref[:, 4:8].abs().sum() > 100  # the proxy columns are not trivially zero


@pytest.mark.parametrize(("backend", "strategy"), PATHS, ids=PATH_IDS)
def test_unweighted_counts_are_exact_and_the_loss_column_is_zero_without_loss(backend, strategy):
    b = _batch(2500, 3, seed=2)
    out = group_stats_table(b["scores"], labels=b["labels"], groups=b["groups"], num_groups=3, backend=backend,
                            strategy=strategy)  # fmt: skip
    ref = fo.group_stats(b["scores"], labels=b["labels"], groups=b["groups"], num_groups=3).table
    assert torch.equal(out[:, :4], ref[:, :4])  # integer counts: no rounding at all
    assert out[:, :4].sum() == 2500 and torch.equal(out[:, 8], torch.zeros(3, dtype=torch.float64))
    _close(out, ref)


def _hand_batch() -> dict[str, torch.Tensor]:
    # tests/test_stats.py's hand-computed batch: tn fp fn tp per group
    return {
        "scores": torch.tensor([2.0, -1.0, 0.5, -0.5, 3.0, 0.0, 1.5, -2.0]),
        "labels": torch.tensor([1, 1, 0, 0, 1, 0, 0, 0]),
        "groups": torch.tensor([0, 0, 0, 1, 1, 1, 2, 2]),
    }


@pytest.mark.parametrize(("backend", "strategy"), PATHS, ids=PATH_IDS)
def test_hand_computed_cells(backend, strategy):
    b = _hand_batch()
    out = group_stats_table(b.pop("scores"), **b, num_groups=4, proxy="hinge", backend=backend, strategy=strategy)
    hard = torch.tensor([[0, 1, 1, 1], [2, 0, 0, 1], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.float64)
    assert torch.equal(out[:, :4], hard)
    # g1 label 0: s = -0.5, 0.0 -> fp_proxy = relu(0.5) + relu(1) = 1.5, tn_proxy = 2.5; label 1: s = 3 -> tp 4, fn 0
    assert torch.equal(out[1, 4:8], torch.tensor([2.5, 1.5, 0.0, 4.0], dtype=torch.float64))


@pytest.mark.parametrize(("backend", "strategy"), PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("proxy", list(PROXIES.values()), ids=list(PROXIES))
def test_gradients_match_group_stats(proxy, backend, strategy):
    batch = _batch(700, 5, seed=3, present=[0, 1, 3, 4])
    batch["scores"] = batch["scores"].clamp(-3, 3)  # the softplus/sigmoid derivatives stay well away from 0
    grad_table = torch.randn(5, 9, generator=torch.Generator().manual_seed(4), dtype=torch.float64)

    def grads(fn, cast):
        leaves = {k: batch[k].to(cast).requires_grad_() for k in ("scores", "weights", "example_losses")}
        table = fn({**batch, **leaves})
        (table.double() * grad_table).sum().backward()
        return {k: v.grad for k, v in leaves.items()}

    ref = grads(lambda b: fo.group_stats(b.pop("scores"), num_groups=5, proxy=proxy, threshold=-0.2, **b).table,
                torch.float64)  # fmt: skip
    out = grads(lambda b: _kernel(b, 5, backend, strategy, proxy=proxy, threshold=-0.2), torch.float32)
    if proxy == "hard":  # the indicator has no gradient in the scores, in both
        assert ref.pop("scores") is None and out.pop("scores") is None
    else:
        assert ref["scores"].abs().sum() > 1  # a gradient exists to compare
    for name in ref:
        assert out[name].dtype == torch.float32, name
        _close(out[name], ref[name], rtol=1e-5, atol=1e-6)
    assert out["weights"][0] == 0 and out["weights"][1] == 0  # clamp(min=0): no gradient at w <= 0


@pytest.mark.parametrize(("backend", "strategy"), PATHS, ids=PATH_IDS)
@pytest.mark.parametrize(("n", "g"), [(1, 1), (1, 3), (600, 1), (0, 2)], ids=["N1-G1", "N1-G3", "G1", "N0"])
def test_one_example_one_group_and_empty_batches(n, g, backend, strategy):
    b = _batch(n, g, seed=5)
    ref = _reference(b, g, proxy="softplus")
    out = _kernel(b, g, backend, strategy, proxy="softplus")
    assert out.shape == (g, 9)
    _close(out, ref)
    if n == 0:
        assert torch.equal(out, torch.zeros(g, 9, dtype=torch.float64))


@pytest.mark.parametrize(("backend", "strategy"), PATHS, ids=PATH_IDS)
def test_many_groups(backend, strategy):
    # G = 4,096 over 3,000 examples: most groups absent, the rest hold a few examples each
    b = _batch(3000, 4096, seed=6)
    ref = _reference(b, 4096, proxy="hinge", threshold=0.1)
    out = _kernel(b, 4096, backend, strategy, proxy="hinge", threshold=0.1)
    _close(out, ref)
    absent = torch.ones(4096, dtype=torch.bool)
    absent[b["groups"]] = False
    assert absent.sum() > 1000 and torch.equal(out[absent], torch.zeros(int(absent.sum()), 9, dtype=torch.float64))


def test_65536_groups_take_the_atomic_path():
    assert group_stats_triton.choose_strategy(65_536) == "atomic"
    assert group_stats_triton.choose_strategy(group_stats_triton.BLOCK_MAX_GROUPS) == "block"
    b = _batch(2000, 65_536, seed=7)
    b["groups"][-1] = 65_535  # the last row is written
    _close(_kernel(b, 65_536, "triton", "auto", proxy="sigmoid"), _reference(b, 65_536, proxy="sigmoid"))


@pytest.mark.parametrize("strategy", ["block", "atomic"])
@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_inputs_accumulate_in_float32(low, strategy):
    b = _batch(1500, 4, seed=8)
    b = {k: v.to(low) if v.is_floating_point() else v for k, v in b.items()}
    # the kernel reads the bf16/fp16 values and works in float32: it matches the float64 reference on those values
    ref = _reference(b, 4, proxy="sigmoid", threshold=0.25)
    out = _kernel(b, 4, "triton", strategy, proxy="sigmoid", threshold=0.25)
    _close(out, ref)
    leaves = {k: b[k].clone().requires_grad_() for k in ("scores", "weights", "example_losses")}
    table = _kernel({**b, **leaves}, 4, "triton", strategy, proxy="sigmoid", threshold=0.25)
    table[:, 4:9].sum().backward()
    up = {k: b[k].double().requires_grad_() for k in leaves}
    ref_table = fo.group_stats(up["scores"], labels=b["labels"], groups=b["groups"], num_groups=4, threshold=0.25,
                               weights=up["weights"], example_losses=up["example_losses"]).table  # fmt: skip
    ref_table[:, 4:9].sum().backward()
    for k in leaves:
        assert leaves[k].grad.dtype == low
        _close(leaves[k].grad, up[k].grad.to(low), rtol=1e-2, atol=1e-3)  # one rounding to bf16/fp16


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_table_dtype(dtype):
    b = _batch(900, 3, seed=9)
    out = _kernel(b, 3, "triton", "block", proxy="hinge", dtype=dtype)
    assert out.dtype == dtype
    _close(out, _reference(b, 3, proxy="hinge").to(dtype), rtol=1e-2 if dtype == torch.bfloat16 else 1e-5)


@pytest.mark.parametrize("strategy", ["block", "atomic"])
def test_float64_threshold_is_exact(strategy):
    # scores one ulp either side of a threshold that float32 cannot hold: the hard cells see the float64 threshold
    t = 0.1
    scores = torch.tensor([t, math.nextafter(t, 1), math.nextafter(t, 0), 0.2, 0.0], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 0])
    groups = torch.zeros(5, dtype=torch.int64)
    out = group_stats_table(scores, labels=labels, groups=groups, num_groups=1, threshold=t, backend="triton",
                            strategy=strategy)  # fmt: skip
    assert out[0, :4].tolist() == [2.0, 1.0, 1.0, 1.0]  # tn: t, 0.0; fp: nextafter up; fn: nextafter down; tp: 0.2
    ref = fo.group_stats(scores, labels=labels, groups=groups, num_groups=1, threshold=t).table
    assert torch.equal(out[:, :4], ref[:, :4])


def test_input_dtypes_and_layouts_agree():
    b = _batch(1200, 6, seed=10)
    base = _kernel(b, 6, "triton", "block")
    for labels in (b["labels"].bool(), b["labels"].float(), b["labels"].to(torch.int32)):
        _close(_kernel({**b, "labels": labels}, 6, "triton", "block"), base, rtol=0, atol=0)
    _close(_kernel({**b, "groups": b["groups"].to(torch.int32)}, 6, "triton", "atomic"), base)
    # non-contiguous views (every other element of a twice-as-long batch)
    wide = {k: torch.stack([v, v], dim=1).reshape(-1)[::2] for k, v in b.items()}
    assert not wide["scores"].is_contiguous()
    _close(_kernel(wide, 6, "triton", "block"), base, rtol=0, atol=0)


@pytest.mark.parametrize("strategy", ["block", "atomic"])
def test_out_of_range_group_ids_are_dropped_with_checks_off(strategy):
    b = _batch(800, 4, seed=11)
    bad = b["groups"].clone()
    bad[:50], bad[50:100] = -1, 4  # ids outside [0, 4)
    out = _kernel({**b, "groups": bad}, 4, "triton", strategy, validate_args=False)
    kept = {k: v[100:] for k, v in b.items()}
    _close(out, _reference(kept, 4))
    with pytest.raises(ValueError, match=r"groups must be ids in \[0, 4\)"):
        _kernel({**b, "groups": bad}, 4, "triton", strategy, validate_args=True)


def test_bad_input_is_refused_with_the_fix():
    b = _batch(10, 2)
    s, y, g = b["scores"], b["labels"], b["groups"]
    with pytest.raises(TypeError, match="groups must hold integer group ids"):
        group_stats_table(s, labels=y, groups=g.float(), num_groups=2)
    with pytest.raises(ValueError, match="labels has 9 entries but scores has 10"):
        group_stats_table(s, labels=y[:9], groups=g, num_groups=2)
    with pytest.raises(TypeError, match="scores must be floating point"):
        group_stats_table(g, labels=y, groups=g, num_groups=2)
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        group_stats_table(s, labels=y + 1, groups=g, num_groups=2, validate_args=True)
    with pytest.raises(ValueError, match="num_groups must be a positive int"):
        group_stats_table(s, labels=y, groups=g, num_groups=0)
    with pytest.raises(ValueError, match="backend must be one of"):
        group_stats_table(s, labels=y, groups=g, num_groups=2, backend="cuda")
    with pytest.raises(ValueError, match="strategy must be one of"):
        group_stats_table(s, labels=y, groups=g, num_groups=2, strategy="sort")
    with pytest.raises(TypeError, match="dtype must be a floating"):
        group_stats_table(s, labels=y, groups=g, num_groups=2, dtype=torch.int64)


@pytest.mark.parametrize(
    "change",
    [
        {"groups": lambda b: b["groups"].float()},  # TypeError: not integer ids
        {"labels": lambda b: b["labels"][:9]},  # ValueError: shape
        {"labels": lambda b: b["labels"] + 1},  # ValueError: labels not 0/1
        {"groups": lambda b: b["groups"] + 2},  # ValueError: ids outside [0, 2)
        {"scores": lambda b: b["scores"].masked_fill(b["groups"] == 0, math.nan)},  # ValueError: NaN scores
        {"weights": lambda b: -torch.ones(10, dtype=torch.float64)},  # ValueError: negative weights
        {"example_losses": lambda b: torch.ones(10, dtype=torch.int64)},  # TypeError: integer losses
    ],
)
def test_bad_input_is_refused_like_group_stats(change):
    # one set of checks (fairopt._batch_checks) behind both entry points: the same error type and message
    b = _batch(10, 2)
    ((key, make),) = change.items()
    kwargs = {"labels": b["labels"], "groups": b["groups"], "num_groups": 2, "validate_args": True, key: make(b)}
    scores = kwargs.pop("scores", b["scores"])
    with pytest.raises((TypeError, ValueError)) as from_stats:
        fo.group_stats(scores, backend="torch", **kwargs)
    with pytest.raises(from_stats.type) as from_kernel:
        group_stats_table(scores, backend="triton", **kwargs)
    assert str(from_kernel.value) == str(from_stats.value)


def test_derived_negative_cells_are_label_count_minus_positive():
    from fairopt.kernels._common import derive_negative_cells

    # group 0: tn fp fn tp = 3 1 2 4, positive sums (fp_proxy, tp_proxy) = 1.5, 5.0 -> tn_proxy 4 - 1.5, fn_proxy 6 - 5
    table = torch.tensor([[3.0, 1.0, 2.0, 4.0, -1.0, 1.5, -1.0, 5.0, 7.0], [0.0] * 9], dtype=torch.float64)
    derive_negative_cells(table)
    assert table[0].tolist() == [3.0, 1.0, 2.0, 4.0, 2.5, 1.5, 1.0, 5.0, 7.0]
    assert table[1].tolist() == [0.0] * 9  # an absent group stays a zero row


def test_backend_resolution(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_backend("auto", cpu) == "torch" and resolve_backend("torch", cpu) == "torch"
    assert resolve_backend("triton", cpu) == "triton"  # under TRITON_INTERPRET=1
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        resolve_backend("triton", cpu)
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        group_stats_triton.forward(*_hand_batch().values(), None, None, None, None, 3, "sigmoid", 1.0, 0.0,
                                   torch.float64)  # fmt: skip


def test_proxy_spec_recognizes_the_built_ins_only():
    assert proxy_spec(proxies.as_proxy("sigmoid")) == ("sigmoid", 1.0)
    assert proxy_spec(proxies.Proxy.hinge(0.25)) == ("hinge", 0.25)
    assert proxy_spec(proxies.Proxy.softplus(3.0)) == ("softplus", 3.0)
    assert proxy_spec(proxies.Proxy.hard()) == ("hard", 1.0)
    # negative=None means positive(-m): the same function for the odd-symmetric built-ins, not for the hard one
    assert proxy_spec(proxies.Proxy("s", positive=partial(proxies._sigmoid, sign=1.0, temperature=2.0))) == (
        "sigmoid",
        2.0,
    )
    assert proxy_spec(proxies.Proxy("h", positive=proxies._hard_positive)) is None
    mixed = proxies.Proxy("m", positive=partial(proxies._hinge, sign=1.0, temperature=1.0),
                          negative=partial(proxies._hinge, sign=-1.0, temperature=2.0))  # fmt: skip
    assert proxy_spec(mixed) is None
    assert proxy_spec(proxies.as_proxy(_tanh_proxy)) is None


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("kind", ["softplus", "values"])
def test_opcheck(backend, kind):
    b = _batch(300, 3, seed=12)
    scores = b["scores"].requires_grad_()
    weights = b["weights"].clamp(min=0.1).requires_grad_()
    loss = b["example_losses"].requires_grad_()
    pos = neg = None
    if kind == "values":
        pos = torch.sigmoid(b["scores"]).requires_grad_()
        neg = torch.sigmoid(-b["scores"]).requires_grad_()
    args = (scores, b["labels"], b["groups"], weights, loss, pos, neg, 3, kind, 1.5, 0.2, torch.float64, backend,
            "auto")  # fmt: skip
    torch.library.opcheck(torch.ops.fairopt.group_stats.default, args)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_torch_compile_fullgraph_traces_the_op(backend):
    b = _batch(500, 4, seed=13)

    def step(scores, weights):
        table = group_stats_table(scores, labels=b["labels"], groups=b["groups"], num_groups=4, weights=weights,
                                  proxy="hinge", backend=backend, validate_args=False)  # fmt: skip
        tpr = table[:, 7] / (table[:, 6] + table[:, 7])  # proxy TPR per group
        return (tpr.max() - tpr.min()) + table[:, 8].sum()

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")  # fullgraph: a graph break is an error
    results = []
    for fn in (step, compiled):
        s, w = b["scores"].clone().requires_grad_(), b["weights"].clone().requires_grad_()
        value = fn(s, w)
        value.backward()
        results.append((value.detach(), s.grad, w.grad))
    for eager, comp in zip(*results):
        torch.testing.assert_close(comp, eager)
    assert results[0][1].abs().sum() > 0


@pytest.mark.slow
def test_inductor_compiles_a_step_around_the_op():
    # the real torch.compile path (inductor: C++ codegen on the CPU, ~6 s), the op opaque in it
    b = _batch(500, 4, seed=14)

    def gap(scores):
        table = group_stats_table(scores, labels=b["labels"], groups=b["groups"], num_groups=4, backend="triton",
                                  validate_args=False)  # fmt: skip
        tpr = table[:, 7] / (table[:, 6] + table[:, 7])
        return tpr.max() - tpr.min()

    torch._dynamo.reset()
    compiled = torch.compile(gap, fullgraph=True)
    s1, s2 = b["scores"].clone().requires_grad_(), b["scores"].clone().requires_grad_()
    v1, v2 = gap(s1), compiled(s2)
    v1.backward()
    v2.backward()
    torch.testing.assert_close(v2, v1)
    torch.testing.assert_close(s2.grad, s1.grad)
    assert v1 > 0 and s1.grad.abs().sum() > 0


@pytest.mark.parametrize("proxy", ["sigmoid", "hinge", "softplus", "user-fn"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_group_stats_backend_option_gives_the_same_table_and_gradients(proxy, weighted):
    # fairopt.group_stats(..., backend="triton") (the kernel, in the interpreter) against its torch path: same
    # entry point, same checks, so the only difference left is the kernel's float32 accumulation.
    batch = _batch(900, 6, seed=7, present=[0, 1, 2, 4, 5])
    batch["scores"] = batch["scores"].clamp(-3, 3)
    if not weighted:
        del batch["weights"]
    grad_table = torch.randn(6, 9, generator=torch.Generator().manual_seed(8), dtype=torch.float64)

    def run(backend):
        leaves = {k: batch[k].clone().requires_grad_() for k in ("scores", "weights", "example_losses") if k in batch}
        rest = {k: v for k, v in batch.items() if k not in leaves}
        stats = fo.group_stats(
            leaves["scores"], **rest, **{k: v for k, v in leaves.items() if k != "scores"}, num_groups=6,
            proxy=PROXIES[proxy], threshold=0.25, backend=backend,
        )  # fmt: skip
        (stats.table * grad_table).sum().backward()
        return stats.table.detach(), {k: v.grad for k, v in leaves.items()}

    torch_table, torch_grads = run("torch")
    triton_table, triton_grads = run("triton")
    assert triton_table.dtype == torch.float64 and triton_table.shape == (6, 9)
    if not weighted:  # integer counts: exact on both paths
        assert torch.equal(triton_table[:, :4], torch_table[:, :4])
    assert torch.equal(triton_table[3], torch.zeros(9, dtype=torch.float64))  # the absent group: a zero row
    _close(triton_table, torch_table)
    assert torch_grads["scores"].abs().sum() > 1
    for name, grad in torch_grads.items():
        _close(triton_grads[name], grad, rtol=1e-5, atol=1e-6)


def test_group_stats_backend_auto_and_errors():
    b = _hand_batch()
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    auto = fo.group_stats(b["scores"], labels=b["labels"], groups=b["groups"], num_groups=4)  # CPU: the torch path
    forced = fo.group_stats(b["scores"], labels=b["labels"], groups=b["groups"], num_groups=4, backend="torch")
    assert torch.equal(auto.table, forced.table)
    with pytest.raises(ValueError, match="backend must be one of"):
        fo.group_stats(b["scores"], labels=b["labels"], groups=b["groups"], num_groups=4, backend="cuda")
    with pytest.raises(ValueError, match="groups must be ids in"):  # the same checks run before the kernel
        fo.group_stats(b["scores"], labels=b["labels"], groups=b["groups"] + 3, num_groups=4, backend="triton")


def test_constraint_set_measures_with_the_backend_it_was_given():
    b = _batch(400, 3, seed=9)
    cs_torch = fo.optim.ConstraintSet([fo.EqualizedOdds(0.05)], 3, backend="torch")
    cs_triton = fo.optim.ConstraintSet([fo.EqualizedOdds(0.05)], 3, backend="triton")
    kw = {"labels": b["labels"], "groups": b["groups"]}
    _close(cs_triton.measure(b["scores"], **kw).table, cs_torch.measure(b["scores"], **kw).table)
