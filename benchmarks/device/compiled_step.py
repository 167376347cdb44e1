"""The whole constrained step under ``torch.compile`` on a GPU, with and without CUDA graphs: one Markdown table.

Issue 13, section 2: the step with no host round trip (``validate_args=False``, ``evaluator="device"``) compiled as
one function (``model(x)``, ``opt.zero_grad()``, ``opt.step(...)``), eager vs ``torch.compile`` (inductor) vs
``torch.compile(mode="reduce-overhead")`` (inductor with CUDA graphs), plain and constrained (equalized odds over
4 groups, Lagrangian and proxy-Lagrangian, a dual step every step). For each it prints the median ms per step, the
ratio to the plain step of the same mode, the graphs compiled during the timed steps (0: the step stopped compiling
after its warm-up) and inductor's reasons for not using CUDA graphs (``cudagraph_skips`` and the logged reasons),
which is what is left to remove for a captured step, and the CUDA graphs recorded (after warm-up: 0 once every
graph is captured; a graph taking an integer input, e.g. a step counter, is recorded again for every value it
takes, i.e. at every step). Rows print as they end (CUDA graphs first): a failure or the time limit loses only the
rows after it.

Run through ``bash benchmarks/device/run.sh``, or ``python benchmarks/device/compiled_step.py`` (about 1-2 minutes
on one GPU, most of it compilation); ``--device cpu --quick`` is a smoke test of the script (``aot_eager``: no C++
compiler needed, no CUDA graphs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import statistics
import time
import unittest.mock
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from device_timing import sync  # this folder is on sys.path: the script's own
from torch import nn

import fairopt

VARIANTS: dict[str, dict[str, Any] | None] = {
    "plain": None,
    "lagrangian": {"method": "lagrangian"},
    "proxy_lagrangian": {"method": "proxy_lagrangian"},
}


class CountingBackend:
    """Wraps a ``torch.compile`` backend and counts the graphs it is given."""

    def __init__(self, backend: Any, options: dict[str, Any]) -> None:
        self.backend, self.options, self.graphs = backend, options, 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        self.graphs += 1
        if self.backend == "inductor":
            from torch._inductor.compile_fx import compile_fx

            return compile_fx(gm, example_inputs, config_patches=self.options)
        from torch._dynamo.backends.registry import lookup_backend

        return lookup_backend(self.backend)(gm, example_inputs)


class SkipReasons(logging.Handler):
    """Collects inductor's "skipping cudagraphs due to ..." log lines."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.reasons: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if "skipping cudagraphs" in text:
            self.reasons.append(text.split("due to", 1)[-1].strip()[:160])


def make_step(variant: str, device: torch.device, n: int) -> Callable[[], Any]:
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(n, 64, device=device, generator=gen)
    a = torch.randint(0, 4, (n,), device=device, generator=gen)
    y = (torch.rand(n, device=device, generator=gen) < torch.sigmoid(x[:, 0] + 0.5 * a)).float()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 1)).to(device)
    base = torch.optim.Adam(model.parameters(), lr=1e-3)
    options = VARIANTS[variant]
    if options is None:

        def plain() -> Any:
            base.zero_grad()
            loss = F.binary_cross_entropy_with_logits(model(x).squeeze(-1), y)
            loss.backward()
            base.step()
            return loss.detach()

        return plain
    opt = fairopt.ConstrainedOptimizer(
        base,
        [fairopt.EqualizedOdds(0.02)],
        4,
        dual_lr=0.05,
        dual_min_count=None,
        validate_args=False,
        evaluator="device",
        **options,
    )

    def constrained() -> Any:
        scores = model(x).squeeze(-1)
        opt.zero_grad()
        return opt.step(loss=F.binary_cross_entropy_with_logits(scores, y), scores=scores, labels=y, groups=a).objective

    return constrained


def run(mode: str, variant: str, device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    step = make_step(variant, device, args.batch)
    backend = None
    if mode != "eager":
        name = "aot_eager" if device.type == "cpu" else "inductor"
        patches = {"triton.cudagraphs": True} if mode == "reduce-overhead" else {}
        backend = CountingBackend(name, patches)
        step = torch.compile(step, backend=backend)
    handler = SkipReasons()
    logger = logging.getLogger("torch._inductor")
    logger.addHandler(handler)
    # a frame at dynamo's recompile limit (8) would run eagerly and look settled: raised, so recompiles show
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch._dynamo.config.patch(recompile_limit=64))
        stack.callback(logger.removeHandler, handler)
        recordings = [0]  # cudagraph trees call cudagraphify once per recording (per graph and integer inputs)
        if mode == "reduce-overhead":
            import torch._inductor.cudagraph_trees as trees

            record = trees.cudagraphify

            def counted(*args: Any, **kwargs: Any) -> Any:
                recordings[0] += 1
                return record(*args, **kwargs)

            stack.enter_context(unittest.mock.patch.object(trees, "cudagraphify", counted))
        # a training loop: with CUDA graphs, each call begins a new step of the graph tree
        begin = torch.compiler.cudagraph_mark_step_begin if mode == "reduce-overhead" else None

        def one_step() -> None:
            if begin is not None:
                begin()
            step()

        for _ in range(args.warmup):
            one_step()
        sync(device)
        before, recorded = (backend.graphs if backend else 0), recordings[0]
        rounds = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            for _ in range(args.steps):
                one_step()
            sync(device)
            rounds.append((time.perf_counter() - start) / args.steps)
    skips = torch._dynamo.utils.counters["inductor"].get("cudagraph_skips", 0)
    return {
        "mode": mode,
        "variant": variant,
        "ms": statistics.median(rounds) * 1e3,
        "graphs_compiled": (backend.graphs if backend else 0),
        "graphs_after_warmup": (backend.graphs - before) if backend else 0,
        "cudagraph_skips": skips,
        "cudagraphs_recorded": recordings[0],
        "cudagraphs_recorded_after_warmup": recordings[0] - recorded,
        "skip_reasons": sorted(set(handler.reasons)),
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="few steps, small batch: a smoke test (CPU)")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--json", metavar="PATH", help="also write the rows to PATH as JSON")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    args.batch = args.batch or (1024 if args.quick else 8192)
    args.warmup, args.rounds, args.steps = (6, 3, 5) if args.quick else (12, 5, 50)
    # CUDA graphs first (what the check is for), then inductor without them; each row prints as it ends, so a time
    # limit or an error loses only the rows after it
    modes = ["eager"] + (["reduce-overhead"] if device.type == "cuda" else []) + ["default"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}; torch {torch.__version__}; MLP 64-256-256-1 at batch {args.batch}, Adam; median ms per "
          f"step over {args.rounds} rounds of {args.steps} steps after {args.warmup} warm-up steps")  # fmt: skip
    print()
    print(
        "| mode | variant | ms / step | x plain (same mode) | graphs (after warm-up) | cudagraph skips "
        "| CUDA graphs recorded (after warm-up) | reasons |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---|", flush=True)  # each row as it ends
    rows: list[dict[str, Any]] = []
    plain: dict[str, float] = {}
    for mode in modes:
        for variant in VARIANTS:
            try:
                r = run(mode, variant, device, args)
            except Exception as error:  # reported in its row; the next rows still run
                r = {"mode": mode, "variant": variant, "error": f"{type(error).__name__}: {str(error)[:200]}"}
                print(f"| {mode} | {variant} | failed | | | | | {r['error']} |", flush=True)
                rows.append(r)
                continue
            rows.append(r)
            if variant == "plain":
                plain[mode] = r["ms"]
            ratio = f"{r['ms'] / plain[mode]:.2f}x" if mode in plain else ""
            cells = [mode, variant, f"{r['ms']:.3f}", ratio]
            cells += [f"{r['graphs_compiled']} ({r['graphs_after_warmup']})", str(r["cudagraph_skips"])]
            cells.append(f"{r['cudagraphs_recorded']} ({r['cudagraphs_recorded_after_warmup']})")
            print("| " + " | ".join([*cells, "; ".join(r["skip_reasons"])]) + " |", flush=True)
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
