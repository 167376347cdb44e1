"""Device benchmark of the fused (G, 9) group-statistics kernel (issue 13, section 4): one Markdown table.

For N in {64K, 1M, 16M} x G in {2, 16, 256, 4096}, forward + backward (``table[:, 4:8].sum().backward()``), median
wall time per call of

* ``triton``: :func:`fairopt.kernels.group_stats_table` with ``backend="triton"`` (the fused kernels),
* ``fairopt torch``: :func:`fairopt.group_stats` with ``backend="torch"`` (segment sums, one autograd node; on CUDA
  ``"auto"`` is the kernel),
* ``index_add_``: eager torch, one ``index_add_`` per column group (hard cells, positive, negative),
* ``masking loop``: a Python loop over groups with boolean masks (skipped where N * G > 2**28: minutes),
* ``torchmetrics``: ``torchmetrics.classification.BinaryFairness`` update + compute (hard rates only: forward only,
  it has no gradient; it syncs with the host and loops over groups in Python),

and the kernel's achieved bandwidth: the bytes a fused forward + backward must move (forward reads scores float32,
labels bool, groups int64 = 13 B per example; backward reads them again and writes the float32 score gradient =
17 B), divided by its time, against the device's peak memory bandwidth looked up from its name. Tables are float32
(``dtype=torch.float32``) for every fairopt call. Before timing, the compiled kernels are checked against
:func:`fairopt.group_stats` in float64 (every proxy, both strategies, weights, a loss, a threshold, N not a multiple
of the block, G = 65,536, bf16 inputs); a failed check is printed and makes the exit status 1.

Then the no-sync check (issue 13, section 2): a few :meth:`fairopt.ConstrainedOptimizer.step` calls of every method
(Lagrangian, augmented Lagrangian, proxy-Lagrangian, penalty; training and held-out duals) with ``validate_args=False``
and the defaults ``backend="auto"`` (the Triton kernel) and ``evaluator="auto"`` (the device evaluator on CUDA), run
under ``torch.cuda.set_sync_debug_mode("error")``: any host synchronization raises, and is printed as a failure
(exit status 1). On a CPU the same steps run (a smoke test of the code path) but nothing can be checked.

Run: ``python benchmarks/device/kernel_bench.py`` (about 1 minute on one H200); ``--quick`` for a CPU smoke check
(small N, Triton's interpreter, a few seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch

if not torch.cuda.is_available():  # the interpreter must be chosen before triton is imported (torchmetrics does)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import fairopt as fo
from fairopt.kernels import group_stats_table

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/, for the baselines
from device_timing import sync  # this folder is on sys.path: the script's own
from group_stats_baselines import masking_loop

# Peak DRAM bandwidth in GB/s (vendor data sheets), matched against torch.cuda.get_device_name() in order.
PEAK_GBPS: tuple[tuple[str, float], ...] = (
    ("H200", 4800.0),
    ("H100 80GB HBM3", 3350.0),  # H100 SXM
    ("H100 SXM", 3350.0),
    ("A100-SXM4-80GB", 2039.0),
    ("A100 80GB", 2039.0),
    ("L4", 300.0),
)
BYTES_PER_EXAMPLE = 13 + 17  # forward: scores f32 + labels bool + groups i64; backward: the same + d_scores f32
MASKING_LIMIT = 2**28  # N * G above which the masking loop is not run
TIME_BUDGET_S = 0.25  # per implementation and cell: repetitions = budget / one call's time (1 to 50)


def peak_bandwidth(name: str) -> float | None:
    """Peak memory bandwidth in GB/s for a device name, or None when unknown."""
    for key, gbps in PEAK_GBPS:
        if key in name:
            return gbps
    return None


def measure(fn: Callable[[], object], device: torch.device) -> float:
    """Median seconds per call: one warm-up call (compilation, caches), then repetitions filling the budget."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    first = time.perf_counter() - start
    if first > 2 * TIME_BUDGET_S:  # slow baselines: one more call is the measurement
        start = time.perf_counter()
        fn()
        sync(device)
        return time.perf_counter() - start
    # the warm-up call may include compilation: time one more call to size the repetitions
    start = time.perf_counter()
    fn()
    sync(device)
    reps = int(min(50, max(1, TIME_BUDGET_S / max(time.perf_counter() - start, 1e-6))))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_data(n: int, g: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator(device=device).manual_seed(seed)
    scores = torch.randn(n, device=device, generator=gen)
    labels = torch.rand(n, device=device, generator=gen) < 0.4
    groups = torch.randint(0, g, (n,), device=device, generator=gen)
    return scores, labels, groups


def run_triton(scores, labels, groups, g):
    s = scores.detach().requires_grad_()
    table = group_stats_table(s, labels=labels, groups=groups, num_groups=g, backend="triton", dtype=torch.float32,
                              validate_args=False)  # fmt: skip
    table[:, 4:8].sum().backward()
    return table


def run_fairopt_torch(scores, labels, groups, g):
    s = scores.detach().requires_grad_()
    # backend="torch": on CUDA "auto" would be the kernel itself
    stats = fo.group_stats(s, labels=labels, groups=groups, num_groups=g, dtype=torch.float32, validate_args=False,
                           backend="torch")  # fmt: skip
    stats.table[:, 4:8].sum().backward()
    return stats.table


def run_index_add(scores, labels, groups, g):
    s = scores.detach().requires_grad_()
    prob = torch.sigmoid(s)
    y = labels.long()
    code2 = 2 * groups + y
    code4 = 2 * code2 + (s.detach() > 0).long()
    hard = s.new_zeros(4 * g).index_add_(0, code4, torch.ones_like(prob))
    pos = s.new_zeros(2 * g).index_add(0, code2, prob)
    neg = s.new_zeros(2 * g).index_add(0, code2, 1 - prob)
    table = torch.cat([hard.view(g, 4), torch.stack([neg.view(g, 2), pos.view(g, 2)], dim=2).view(g, 4)], dim=1)
    table[:, 4:8].sum().backward()
    return table


def make_torchmetrics(g: int):
    from torchmetrics.classification import BinaryFairness

    metric = None

    def run(scores, labels, groups, _g):
        nonlocal metric
        if metric is None:
            metric = BinaryFairness(num_groups=g, task="all", validate_args=False).to(scores.device)
        metric.reset()
        metric.update(torch.sigmoid(scores), labels.long(), groups)
        return metric.compute()

    return run


def check_kernels(device: torch.device, n: int) -> list[str]:
    """Compiled (or interpreted) kernels vs fairopt.group_stats in float64: failures as readable lines."""
    failures = []
    gen = torch.Generator(device=device).manual_seed(1)
    cases = [(7, "block"), (7, "atomic"), (65_536, "atomic")]
    proxies = ["sigmoid", "hinge", "softplus", "hard", fo.Proxy.sigmoid(0.5), lambda m: torch.tanh(m) + 1.0]
    for g, strategy in cases:
        for i, proxy in enumerate(proxies):
            for low in (torch.float32, torch.bfloat16):
                if callable(proxy) and low != torch.float32:
                    continue  # a user function runs in torch, in the scores' dtype: the reference would differ by that
                scores = (torch.randn(n, device=device, generator=gen) * 2).to(low)
                labels = torch.randint(0, 2, (n,), device=device, generator=gen)
                groups = torch.randint(0, g, (n,), device=device, generator=gen)
                weights = torch.rand(n, device=device, generator=gen).to(low)
                loss = torch.rand(n, device=device, generator=gen).to(low)
                leaves = [t.detach().requires_grad_() for t in (scores, weights, loss)]
                table = group_stats_table(leaves[0], labels=labels, groups=groups, num_groups=g, weights=leaves[1],
                                          example_losses=leaves[2], proxy=proxy, threshold=0.3, backend="triton",
                                          strategy=strategy, validate_args=False)  # fmt: skip
                ref_leaves = [t.detach().double().requires_grad_() for t in (scores, weights, loss)]
                # the reference is the torch path (on CUDA "auto" would be the kernel under test)
                ref = fo.group_stats(ref_leaves[0], labels=labels, groups=groups, num_groups=g, weights=ref_leaves[1],
                                     example_losses=ref_leaves[2], proxy=proxy, threshold=0.3,
                                     backend="torch").table  # fmt: skip
                probe = torch.randn(g, 9, device=device, generator=gen, dtype=torch.float64)
                (table * probe).sum().backward()
                (ref * probe).sum().backward()
                name = f"G={g} {strategy} proxy#{i} {str(low).removeprefix('torch.')}"
                scale = ref.abs().max().item()
                err = (table - ref).abs().max().item()
                if not err <= 1e-5 * max(1.0, scale):
                    failures.append(f"{name}: table max error {err:.3g} (scale {scale:.3g})")
                for label, a, b in zip(("scores", "weights", "loss"), leaves, ref_leaves):
                    if b.grad is None:
                        continue
                    tol = (1e-2 if low == torch.bfloat16 else 1e-5) * max(1.0, b.grad.abs().max().item())
                    err = (a.grad.double() - b.grad).abs().max().item() if a.grad is not None else float("inf")
                    if not err <= tol:
                        failures.append(f"{name}: d_{label} max error {err:.3g}")
    return failures


def check_no_sync(device: torch.device, steps: int = 5) -> tuple[list[str], list[str]]:
    """Constrained steps under ``torch.cuda.set_sync_debug_mode("error")``: ``(passed, failed)`` readable lines."""
    import torch.nn.functional as F

    from fairopt.optim import AugmentedLagrangian, Lagrangian, Penalty, ProxyLagrangian

    passed, failed = [], []
    gen = torch.Generator(device=device).manual_seed(2)
    n, g = 4096, 4
    x = torch.randn(n, 16, device=device, generator=gen)
    a = torch.randint(0, g, (n,), device=device, generator=gen)
    y = (torch.rand(n, device=device, generator=gen) < torch.sigmoid(x[:, 0])).float()
    constraints = [fo.EqualizedOdds(0.02), fo.DemographicParity(0.02), fo.BoundedGroupLoss(0.5)]
    methods = {"lagrangian": Lagrangian, "augmented_lagrangian": AugmentedLagrangian,
               "proxy_lagrangian": ProxyLagrangian, "penalty": Penalty}  # fmt: skip
    for name, method in methods.items():
        for source in ("train", "heldout") if name != "penalty" else ("train",):
            torch.manual_seed(0)
            model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1)).to(device)
            extra = {}
            if source == "heldout":

                def heldout(model=model):
                    scores = model(x[:1024]).squeeze(-1)
                    return {"scores": scores, "labels": y[:1024], "groups": a[:1024],
                            "example_losses": torch.zeros_like(scores)}  # fmt: skip

                extra = {"dual_source": "heldout", "heldout": heldout}
            opt = fo.ConstrainedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), constraints, g,
                                          method=method(), dual_lr=0.1, validate_args=False, **extra)  # fmt: skip

            def step(model=model, opt=opt):
                scores = model(x).squeeze(-1)
                losses = F.binary_cross_entropy_with_logits(scores, y, reduction="none")
                opt.zero_grad()
                opt.step(loss=losses.mean(), scores=scores, labels=y, groups=a, example_losses=losses)

            label = f"{name}, {source} duals"
            try:
                step()  # warm-up: Triton compilation and lazy state are allowed to synchronize once
                if device.type == "cuda":
                    sync(device)
                    torch.cuda.set_sync_debug_mode("error")
                try:
                    for _ in range(steps):
                        step()
                finally:
                    if device.type == "cuda":
                        torch.cuda.set_sync_debug_mode("default")
                sync(device)
                passed.append(label)
            except Exception as error:  # reported, and the exit status says so
                failed.append(f"{label}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
    return passed, failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke check that runs on a CPU")
    parser.add_argument("--json", metavar="PATH", help="also write the checks and the table to PATH as JSON")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    quick = args.quick or device.type == "cpu"
    sizes = [4_096, 65_536] if quick else [65_536, 1_048_576, 16_777_216]
    group_counts = [2, 16] if quick else [2, 16, 256, 4096]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (Triton interpreter)"
    peak = peak_bandwidth(name) if device.type == "cuda" else None

    failures = check_kernels(device, 3_001 if quick else 1_000_003)
    impls: dict[str, Callable | None] = {
        "triton": run_triton,
        "fairopt torch": run_fairopt_torch,
        "index_add_": run_index_add,
        "masking loop": masking_loop,
        "torchmetrics": None,  # built per G
    }
    try:
        import torchmetrics  # noqa: F401
    except ImportError:
        impls.pop("torchmetrics")
    peak_text = f"{peak:.0f} GB/s" if peak else "unknown for this device (the % column is empty)"
    print(f"device: {name}; peak memory bandwidth: {peak_text}; torch {torch.__version__}")
    print(f"kernel checks vs fairopt.group_stats (float64): {'all passed' if not failures else 'FAILED'}")
    for line in failures:
        print(f"  check failed: {line}")
    passed, no_sync_failures = check_no_sync(device)
    failures += no_sync_failures
    if device.type == "cuda":
        verdict = "no host sync in any step" if not no_sync_failures else "FAILED"
        print(f"no-sync check, {len(passed) + len(no_sync_failures)} configurations x 5 steps under "
              f"torch.cuda.set_sync_debug_mode('error'): {verdict}")  # fmt: skip
    else:
        print(f"no-sync check: not checkable without CUDA; the steps ran: {len(passed)} configurations passed, "
              f"{len(no_sync_failures)} failed")  # fmt: skip
    for line in no_sync_failures:
        print(f"  no-sync failure: {line}")
    print("times: median ms per forward + backward call (torchmetrics: forward only, it has no gradient)")
    print()
    header = ["N", "G", *[f"{k} ms" for k in impls], "kernel GB/s", "% of peak", "x torchmetrics", "x index_add_"]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---:" for _ in header) + "|")
    records: list[dict[str, object]] = []
    for n in sizes:
        for g in group_counts:
            data = make_data(n, g, device)
            times: dict[str, float | None] = {}
            for key, fn in impls.items():
                if key == "masking loop" and n * g > MASKING_LIMIT:
                    times[key] = None
                    continue
                run = make_torchmetrics(g) if key == "torchmetrics" else fn
                times[key] = measure(lambda run=run, data=data, g=g: run(*data, g), device)
            kernel = times["triton"]
            gbps = BYTES_PER_EXAMPLE * n / kernel / 1e9
            row = [f"{n:,}", str(g)]
            row += ["skipped" if t is None else f"{t * 1e3:.3f}" for t in times.values()]
            row += [f"{gbps:.0f}", f"{100 * gbps / peak:.0f}%" if peak else ""]
            for base in ("torchmetrics", "index_add_"):
                t = times.get(base)
                row.append(f"{t / kernel:.1f}x" if t else "")
            print("| " + " | ".join(row) + " |")
            records.append({"N": n, "G": g, "ms": {k: None if t is None else t * 1e3 for k, t in times.items()},
                            "kernel_gbps": gbps, "peak_gbps": peak})  # fmt: skip
            del data
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if args.json:
        summary = {"device": name, "torch": torch.__version__, "failures": failures, "no_sync_passed": passed,
                   "rows": records}  # fmt: skip
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
