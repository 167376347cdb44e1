"""CelebA-shaped ResNet-18 training step on a GPU: plain vs constrained, images/s and the ratio, as one table.

Run through ``bash benchmarks/device/run.sh`` (finds a python with torch and timm, puts the repository on the path);
or directly::

    python benchmarks/device/image_step.py                       # CUDA, the full table (about 1-2 minutes)
    python benchmarks/device/image_step.py --device cpu --quick  # a smoke test of the script on a CPU

Each row is one model at one input shape, batch 256 by default: timm's ``resnet18`` on CelebA's aligned 3x218x178
faces and our ``preact-resnet18-w64`` (CIFAR stem, as in the MinDiff study of Veldanda et al., TMLR 2023) on
3x128x128. The step is ``zero_grad``, forward under bf16 autocast on channels-last images and model, BCE on the
float32 logits, ``backward``, Adam ``step``; the constrained variants go through
:class:`fairopt.ConstrainedOptimizer` (equalized odds over 2 groups, a dual step every step: the worst case), the
last one with ``validate_args=False, evaluator="device"`` (no host synchronization in the step). ``--compile``
compiles the model (``torch.compile``; the warm-up steps pay the compilation).

A last line gives the data path's rate: fairopt's loader (``load_image_csv(...).loader("train", batch,
num_workers=...)``) over CelebA-sized 178x218 JPEGs written to a temporary folder, decoded at the native size, in
images/s: above the step's images/s, the loader keeps up with the GPU with that many workers.

Timing: variants are interleaved round by round (``--rounds`` rounds of ``--steps`` steps each, after
``--warmup`` steps per variant), each round timed with a device synchronization at both ends; a variant's time is
its median round. ``ratio`` is the variant's median over the plain step's, the same model and shape, the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from fairopt.vision import autocast, create_image_model, move_images, prepare_model

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/, for the step
from device_timing import sync  # this folder is on sys.path: the script's own
from step_variants import training_step

# (model name, (C, H, W)) rows of the full run
ROWS = [("resnet18", (3, 218, 178)), ("preact-resnet18-w64", (3, 128, 128))]
QUICK_ROWS = [("resnet18", (3, 64, 64)), ("preact-resnet18-w4", (3, 32, 32))]
VARIANTS: dict[str, dict[str, object] | None] = {
    "plain": None,
    "lagrangian": {"method": "lagrangian"},
    "proxy_lagrangian": {"method": "proxy_lagrangian"},
    # no value checks and the constraints evaluated by torch ops on the device: a step never waits for the host
    "lagrangian, no host sync": {"method": "lagrangian", "validate_args": False, "evaluator": "device"},
}


def make_step(name: str, shape: tuple[int, int, int], variant: str, args: argparse.Namespace) -> Callable[[], None]:
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    x = move_images(torch.randn(args.batch_size, *shape, generator=gen), device, channels_last=args.channels_last)
    y = (torch.rand(args.batch_size, generator=gen) < 0.3).float().to(device)
    a = torch.randint(0, 2, (args.batch_size,), generator=gen).to(device)
    model = prepare_model(
        create_image_model(name, seed=0), device=device, channels_last=args.channels_last, compile=args.compile
    )
    base = torch.optim.Adam(model.parameters(), lr=1e-4)

    def forward(images: torch.Tensor) -> torch.Tensor:
        with autocast(device, args.amp):
            return model(images)

    return training_step(forward, base, x, y, a, VARIANTS[variant])


def measure(name: str, shape: tuple[int, int, int], args: argparse.Namespace) -> list[dict[str, object]]:
    device = torch.device(args.device)
    steps = {v: make_step(name, shape, v, args) for v in VARIANTS}
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    sync(device)
    rounds: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(args.rounds):
        for variant, step in steps.items():
            sync(device)
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            sync(device)
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


def data_rate(args: argparse.Namespace, folder: Path) -> dict[str, object]:
    """Images per second of fairopt's loader over CelebA-sized JPEGs (178x218, smooth random content, quality 90)
    decoded at the native size, ``args.data_workers`` workers, batches of ``args.batch_size``, pinned memory on
    CUDA: the rate the loader can feed the step with, to set beside the step's images/s."""
    from torchvision.io import write_jpeg

    from fairopt.datasets import load_image_csv

    count = 2 * args.batch_size if args.quick else 4 * args.batch_size
    gen = torch.Generator().manual_seed(0)
    for i in range(count):
        coarse = torch.rand(1, 3, 8, 8, generator=gen)
        image = (F.interpolate(coarse, size=(218, 178), mode="bilinear")[0] * 255).to(torch.uint8)
        write_jpeg(image, str(folder / f"{i:06d}.jpg"), quality=90)
    rows = [*range(count), 0, 1]
    frame = {
        "path": [f"{i:06d}.jpg" for i in rows],
        "label": [i % 2 for i in rows],
        "group": [(i // 2) % 2 for i in rows],
        "split": ["train"] * count + ["validation", "test"],
    }
    data = load_image_csv(pd.DataFrame(frame), folder, "path", "label", "group", split_column="split", image_size=None)
    loader = data.loader("train", args.batch_size, num_workers=args.data_workers)
    sum(len(y) for _, y, _ in loader)  # starts the (persistent) workers, warms the page cache
    start = time.perf_counter()
    seen = sum(len(y) for _, y, _ in loader) + sum(len(y) for _, y, _ in loader)
    rate = seen / (time.perf_counter() - start)
    return {"source": "178x218 jpeg", "workers": args.data_workers, "batch": args.batch_size, "images_per_s": rate}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--quick", action="store_true", help="small models, shapes and batch: checks the script runs")
    parser.add_argument("--batch-size", type=int, default=None, help="default 256 (8 with --quick)")
    parser.add_argument("--amp", default="bf16", choices=["bf16", "fp16", "none"], help="autocast dtype (bf16)")
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (the warm-up compiles)")
    parser.add_argument(
        "--data-workers",
        type=int,
        default=None,
        help="decoding processes of the data-path row (min(8, CPUs); 0 quick)",
    )
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
    if args.data_workers is None:
        args.data_workers = 0 if quick else min(8, os.cpu_count() or 1)
    if args.data_workers < 0:
        parser.error("--data-workers must be >= 0")
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
        f"{'model':20s} {'shape':>10s} {'batch':>5s} {'variant':24s} {'ms/step':>9s} {'images/s':>9s} {'ratio':>6s} "
        f"{'spread':>6s}"
    )
    print(header, flush=True)
    for name, shape in QUICK_ROWS if args.quick else ROWS:
        for row in measure(name, shape, args):
            rows.append(row)
            print(
                f"{row['model']:20s} {row['shape']:>10s} {row['batch']:5d} {row['variant']:24s} "
                f"{row['ms_per_step']:9.2f} {row['images_per_s']:9.1f} {row['ratio']:6.3f} {row['spread']:6.2f}",
                flush=True,
            )
    print("# ratio: median step time over the plain step's (same model, shape, run); spread: (max - min) / median")
    with tempfile.TemporaryDirectory() as folder:
        data = data_rate(args, Path(folder))
    print(
        f"# data path: fairopt loader, {data['source']} decoded at 218x178, {data['workers']} workers, batch "
        f"{data['batch']}: {data['images_per_s']:.0f} images/s",
        flush=True,
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"device": where, "torch": torch.__version__, "rows": rows, "data_path": data}
        args.json.write_text(json.dumps(payload, indent=1))
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
