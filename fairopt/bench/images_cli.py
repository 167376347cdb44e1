"""The image side of ``fairopt bench``: its options, its configuration from the command line, and its run.

``fairopt bench --dataset digits`` (or ``--preset images``) runs the default image study; ``--dataset celeba:DIR``
and ``--dataset images:CSV --image-root DIR`` run on the user's images; ``--preset mindiff-celeba`` and
``--preset oxonfair-celeba`` reproduce published settings on a local CelebA. Bad values exit with status 2 and one
line (argparse's convention), before anything trains.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from .images import (
    CPU_CORE_FLOPS,
    GPU_FLOPS,
    IMAGE_PRESETS,
    ImagePreset,
    ImageStudyConfig,
    estimate_seconds,
    is_image_dataset,
    load_image_study_data,
)

__all__ = ["add_image_arguments", "check_tabular_args", "image_config_from_args", "run_image_bench", "wants_images"]

# Options of image studies only (argparse dest -> option), refused with a tabular dataset; and the reverse.
IMAGE_ONLY = {
    "image_root": "--image-root",
    "path_column": "--path-column",
    "image_size": "--image-size",
    "amp": "--amp",
    "workers": "--workers",
    "augment": "--augment",
}
TABULAR_ONLY = {"full": "--full", "epochs_large": "--epochs-large", "peers": "--peers"}
# Defaults of a study on the user's image folder started from the default image study (sized for the 8x8 digits).
FOLDER_DEFAULTS: dict[str, Any] = {
    "image_size": 128,
    "models": ("preact-resnet18-w8",),
    "epochs": 10,
    "batch_size": None,  # sized to the training split (ImageStudyConfig.batch_size_for)
}


def _image_size(text: str) -> int | tuple[int, int]:
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values, default=0) < 1:
        raise argparse.ArgumentTypeError(f"expected N or HxW in pixels (e.g. 128 or 218x178), got {text!r}")
    return values[0] if len(values) == 1 else (values[0], values[1])


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def add_image_arguments(bench: argparse.ArgumentParser) -> None:
    """Add the image options to the ``bench`` parser (their defaults come from the preset)."""
    group = bench.add_argument_group(
        "image studies",
        "--dataset digits (embedded semi-synthetic coloured digits), celeba:DIR (CelebA's official layout) or "
        "images:CSV (a metadata CSV); --models then takes image models: preact-resnet18-w{k}, any timm name, "
        "torchvision:<name>. Presets: images (the default image study), mindiff-celeba, oxonfair-celeba (GPU). "
        "Defaults (the tabular ones above do not apply): digits: 5 widths, 60 epochs, batch 64; celeba:DIR and "
        "images:CSV: preact-resnet18-w8, 128 px, 10 epochs, batch sized to the training split (2 to 128).",
    )
    group.add_argument("--image-root", help="images:CSV only: the folder the CSV's image paths are relative to")
    group.add_argument("--path-column", help="images:CSV only: the column of image paths (default: path)")
    group.add_argument(
        "--image-size", type=_image_size, help="model input in pixels, N or HxW (default: 8x8 digits as they are; 128)"
    )
    group.add_argument(
        "--amp", choices=("none", "bf16", "fp16"), help="mixed precision of the forward pass (fp16: CUDA only)"
    )
    group.add_argument("--workers", type=_count, help="image decoding processes (default 0; GPU presets 8)")
    group.add_argument(
        "--augment", action="store_true", default=None, help="random resized crops (and flips) in training"
    )


def wants_images(args: argparse.Namespace) -> bool:
    """Whether the command line asks for an image study (an image ``--dataset`` or an image ``--preset``)."""
    return is_image_dataset(args.dataset) or args.preset in IMAGE_PRESETS


def check_tabular_args(args: argparse.Namespace) -> None:
    """Raise ``ValueError`` naming any image-only option given to a tabular study (never silently ignored)."""
    given = [opt for dest, opt in IMAGE_ONLY.items() if getattr(args, dest, None) is not None]
    if given:
        raise ValueError(f"{', '.join(given)}: for image studies only (--dataset digits, celeba:DIR or images:CSV)")


def image_config_from_args(args: argparse.Namespace) -> tuple[ImagePreset, ImageStudyConfig]:
    """The image preset (``--preset``, default ``images``) with the command line's options applied.

    Raises:
        ValueError: a tabular-only option, or what :meth:`ImagePreset.config` raises (an unknown model name, a
            missing folder, a bad image size, ...).
    """
    from fairopt.bench.config import default_tolerance

    from .options import study_options

    given = [opt for dest, opt in TABULAR_ONLY.items() if getattr(args, dest, None) not in (None, False)]
    if given:
        raise ValueError(f"{', '.join(given)}: for tabular studies only, not with image data")
    if args.preset not in IMAGE_PRESETS and args.preset != "default":
        raise ValueError(f"--preset {args.preset} is a tabular study; image presets: {', '.join(IMAGE_PRESETS)}")
    preset = IMAGE_PRESETS.get(args.preset, IMAGE_PRESETS["images"])
    changes: dict[str, Any] = {}
    if preset.name == "images" and args.dataset and args.dataset != "digits":
        changes.update(FOLDER_DEFAULTS)
    constraint = args.constraint
    if (
        constraint is not None
        and args.tolerance is None
        and constraint != preset.options.get("constraint", ImageStudyConfig.constraint)
    ):
        changes["tolerance"] = default_tolerance(constraint)
    own = {
        "dataset": args.dataset,
        "target": args.target,
        "tolerance": args.tolerance,
        "methods": args.methods,
        "models": args.models,
        **{dest: getattr(args, dest) for dest in IMAGE_ONLY},
    }
    changes.update(study_options(args))
    changes.update({k: v for k, v in own.items() if v is not None})
    if args.positive_label:
        changes["positive_label"] = tuple(args.positive_label)
    return preset, preset.config(**changes)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h" if seconds < 172_800 else f"{seconds / 86_400:.1f} days"


def _estimates(config: ImageStudyConfig) -> str:
    """One line: the study's rough training time on one GPU and on this machine's CPU cores."""
    data, _ = load_image_study_data(config.updated(device="cpu"))
    sizes = {
        "train": len(data.train),
        "validation": len(data.validation) + len(data.split("audit")),
        "test": len(data.test),
    }
    cores = torch.get_num_threads()
    gpu = estimate_seconds(config, sizes, channels=data.channels, flops_per_second=GPU_FLOPS)
    cpu = estimate_seconds(config, sizes, channels=data.channels, flops_per_second=CPU_CORE_FLOPS * cores)
    return (
        f"estimated training time for {sizes['train']:,} training images x {config.epochs} epochs x "
        f"{len(config.models)} model(s) x {len(config.methods)} method(s): ~{_duration(gpu)} on one GPU (at "
        f"{GPU_FLOPS / 1e12:.0f} TFLOP/s sustained), ~{_duration(cpu)} on this machine's {cores} CPU thread(s); a "
        "rough FLOP count, decoding assumed to keep up"
    )


def _published_lines(config: ImageStudyConfig) -> list[str]:
    lines = []
    for pub in config.published:
        lines.append(
            f"published {pub.method} ({pub.model}): test accuracy {1 - pub.test_error:.4f}, test "
            f"{config.constraint} gap {pub.test_violation + config.tolerance:.4f}"
        )
    if config.published:
        lines.append(f"  source: {config.published[0].source}")
    if config.published_note:
        lines.append(f"  note: {config.published_note}")
    return lines


def run_image_bench(
    args: argparse.Namespace,
    bench: argparse.ArgumentParser,
    out_folder: Callable[[Path], AbstractContextManager[Path]],
    log: Callable[[str], None],
) -> int:
    """Run the image study the command line asks for; ``bench.error`` (exit 2) on a bad option.

    ``out_folder(path)``, a context manager, checks that the output folder can be written (exit 2 if not) and
    removes it again if the study leaves it empty; ``log`` prints progress lines (both from the CLI). A GPU preset
    on a machine without CUDA stops with its time estimate unless ``--device`` was given.
    """
    preset = IMAGE_PRESETS.get(args.preset, IMAGE_PRESETS["images"])
    needs_gpu = preset.gpu and args.device is None and not torch.cuda.is_available()
    if needs_gpu:  # check everything else and estimate on the CPU, then say why it stops
        args = argparse.Namespace(**{**vars(args), "device": "cpu"})
    try:
        preset, config = image_config_from_args(args)
        if preset.gpu:
            estimate = _estimates(config)
    except (ValueError, FileNotFoundError) as err:
        bench.error(str(err))
    if preset.gpu:
        if needs_gpu:
            bench.error(
                f"preset {preset.name!r} is sized for a GPU and CUDA is not available here ({estimate}); pass "
                "--device cpu to run it on the CPU anyway"
            )
        print(estimate)
    for line in _published_lines(config):
        print(line)
    from .images_study import format_image_table, run_image_study, write_image_outputs
    from .output import print_and_write

    with out_folder(args.out or Path("fairopt-runs") / f"{preset.name}-{datetime.now():%Y%m%d-%H%M%S}") as out:
        try:
            result = run_image_study(config, progress=not args.quiet, log=log)
        except (ValueError, FileNotFoundError) as err:
            print(f"fairopt bench: error: {err}", file=sys.stderr)
            return 2
        print_and_write(result, out, plots=not args.no_plots, table=format_image_table, write=write_image_outputs)
    return 0
