"""CelebA-shaped ResNet-18 training step on a GPU: plain vs constrained, images/s and the ratio, as one table.

Run through ``bash benchmarks/device/run.sh`` (finds a python with torch and timm, puts the repository on the path);
or directly::

    python benchmarks/device/image_step.py                       # CUDA, the full table (about 1-2 minutes)
    python benchmarks/device/image_step.py --device cpu --quick  # a smoke test of the script on a CPU

Each row is one model at one input shape, batch 256 by default: timm's ``resnet18`` on CelebA's aligned 3x218x178
faces and our ``preact-resnet18-w64`` (CIFAR stem, as in the MinDiff study of Veldanda et al., TMLR 2023) on
3x128x128. The step is ``zero_grad``, forward under bf16 autocast on channels-last images and model, BCE on the
float32 logits, ``backward``, Adam ``step``; the constrained variants go through
:class:`fairopt.ConstrainedOptimizer` (equalized odds over 2 groups, a dual step every step: the worst case).

Timing: variants are interleaved round by round (``--rounds`` rounds of ``--steps`` steps each, after
``--warmup`` steps per variant), each round timed with a device synchronization at both ends; a variant's time is
its median round. ``ratio`` is the variant's median over the plain step's, the same model and shape, the same run.
"""

from __future__ import annotations

import argparse
import inspect
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import fairopt
from fairopt.vision import autocast, create_image_model, move_images, prepare_model

# (model name, (C, H, W)) rows of the full run
ROWS = [("resnet18", (3, 218, 178)), ("preact-resnet18-w64", (3, 128, 128))]
QUICK_ROWS = [("resnet18", (3, 64, 64)), ("preact-resnet18-w4", (3, 32, 32))]
VARIANTS: dict[str, dict[str, object] | None] = {
    "plain": None,
    "lagrangian": {"method": "lagrangian"},
    "proxy_lagrangian": {"method": "proxy_lagrangian"},
    "lagrangian, no checks": {"method": "lagrangian", "checks": False},
}


def _no_checks_option() -> dict[str, object]:
    """The optimizer's switch for its per-batch value checks, under whichever name this fairopt version uses."""
    params = inspect.signature(fairopt.ConstrainedOptimizer).parameters
    for name in ("validate_args", "validate"):
        if name in params:
            return {name: False}
    return {}


def make_step(name: str, shape: tuple[int, int, int], variant: str, args: argparse.Namespace) -> Callable[[], None]:
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    x = move_images(torch.randn(args.batch_size, *shape, generator=gen), device, channels_last=args.channels_last)
    y = (torch.rand(args.batch_size, generator=gen) < 0.3).float().to(device)
    a = torch.randint(0, 2, (args.batch_size,), generator=gen).to(device)
    model = prepare_model(create_image_model(name, seed=0), device=device, channels_last=args.channels_last)
    base = torch.optim.Adam(model.parameters(), lr=1e-4)
    options = VARIANTS[variant]
    if options is None:

        def plain() -> None:
            base.zero_grad(set_to_none=True)
            with autocast(device, args.amp):
                logits = model(x)
            F.binary_cross_entropy_with_logits(logits, y).backward()
            base.step()

        return plain
    options = dict(options)
    if not options.pop("checks", True):
        options.update(_no_checks_option())
    opt = fairopt.ConstrainedOptimizer(base, [fairopt.EqualizedOdds(0.05)], 2, dual_lr=0.01, **options)

    def constrained() -> None:
        with autocast(device, args.amp):
            logits = model(x)
        opt.zero_grad()
        opt.step(loss=F.binary_cross_entropy_with_logits(logits, y), scores=logits, labels=y, groups=a)

    return constrained


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(name: str, shape: tuple[int, int, int], args: argparse.Namespace) -> list[dict[str, object]]:
    device = torch.device(args.device)
    steps = {v: make_step(name, shape, v, args) for v in VARIANTS}
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    _sync(device)
    rounds: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(args.rounds):
        for variant, step in steps.items():
            _sync(device)
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            _sync(device)
            rounds[variant].append((time.perf_counter() - start) / args.steps)
    plain = statistics.median(rounds["plain"])
    rows = []
    for variant, times in rounds.items():
        t = statistics.median(times)
        rows.append(
            {
                "model": name,
                "shape": "x".join(map(str, shape)),
                "batch": args.batch_size,
                "variant": variant,
                "ms_per_step": t * 1e3,
                "images_per_s": args.batch_size / t,
                "ratio": t / plain,
                "spread": (max(times) - min(times)) / t,
            }
        )
    del steps
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--quick", action="store_true", help="small models, shapes and batch: checks the script runs")
    parser.add_argument("--batch-size", type=int, default=None, help="default 256 (8 with --quick)")
    parser.add_argument("--amp", default="bf16", choices=["bf16", "fp16", "none"], help="autocast dtype (bf16)")
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    parser.add_argument("--warmup", type=int, default=None, help="steps per variant before timing (10; 1 quick)")
    parser.add_argument("--steps", type=int, default=None, help="steps per timed round (10; 1 quick)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per variant (5; 2 quick)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    quick = args.quick
    for key, full, small in (("batch_size", 256, 8), ("warmup", 10, 1), ("steps", 10, 1), ("rounds", 5, 2)):
        if getattr(args, key) is None:
            setattr(args, key, small if quick else full)
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1")
    if args.amp == "fp16":
        parser.error("--amp fp16 needs a GradScaler, which this benchmark does not set up; use bf16 or none")
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch {torch.__version__} sees no CUDA device; pass --device cpu")
    return args


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    args = parse(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest convolution
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        where = torch.cuda.get_device_name(device)
    else:
        where = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(
        f"# {where}; torch {torch.__version__}; amp={args.amp}; channels_last={args.channels_last}; "
        f"{args.warmup} warm-up steps, {args.rounds} rounds x {args.steps} steps per variant",
        flush=True,
    )
    rows: list[dict[str, object]] = []
    header = (
        f"{'model':20s} {'shape':>10s} {'batch':>5s} {'variant':22s} {'ms/step':>9s} {'images/s':>9s} {'ratio':>6s} "
        f"{'spread':>6s}"
    )
    print(header, flush=True)
    for name, shape in QUICK_ROWS if args.quick else ROWS:
        for row in measure(name, shape, args):
            rows.append(row)
            print(
                f"{row['model']:20s} {row['shape']:>10s} {row['batch']:5d} {row['variant']:22s} "
                f"{row['ms_per_step']:9.2f} {row['images_per_s']:9.1f} {row['ratio']:6.3f} {row['spread']:6.2f}",
                flush=True,
            )
    print("# ratio: median step time over the plain step's (same model, shape, run); spread: (max - min) / median")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"device": where, "torch": torch.__version__, "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
