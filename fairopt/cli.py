"""The ``fairopt`` command line: ``fairopt bench`` runs a constraint-satisfaction study on real data; ``fairopt sweep``
the accuracy-fairness frontier over tolerances in one vectorized run (:mod:`fairopt.sweep.cli`).

Invalid options print a message and exit with status 2 (argparse's convention), without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from fairopt import __version__

if TYPE_CHECKING:
    from fairopt.bench.config import StudyConfig

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    from fairopt.bench.config import BENCH_METHODS, DEFAULT_METHODS, PRESETS
    from fairopt.bench.images import IMAGE_PRESETS
    from fairopt.bench.images_cli import add_image_arguments
    from fairopt.bench.options import add_study_options, csv_list
    from fairopt.models import MODELS

    d = PRESETS["default"]

    parser = argparse.ArgumentParser(
        prog="fairopt",
        description="Train PyTorch models under group-fairness constraints and check them on held-out data.",
    )
    parser.add_argument("--version", action="version", version=f"fairopt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    bench = sub.add_parser(
        "bench",
        help="benchmark constraint satisfaction: train / held-out / test violations side by side",
        description=(
            "Train every (model, method, seed) under one fairness constraint and report accuracy and the "
            "constraint on train, held-out and test data, with a 95% interval (one seed) or the spread over seeds, "
            "and a verdict. With no options: the default study on UCI Adult (equalized odds within 0.05, 6 methods "
            "x 3 model sizes, 3 seeds; 5 to 15 minutes on 2 CPU cores, by their load). Options override the chosen "
            "preset. Writes study.json, study.md, runs.csv and PNG plots to the output folder it names at the end."
        ),
    )
    which = bench.add_mutually_exclusive_group()
    which.add_argument(
        "--preset",
        choices=sorted(PRESETS) + sorted(IMAGE_PRESETS),
        default="default",
        help="a named study to start from (image studies: " + ", ".join(sorted(IMAGE_PRESETS)) + ")",
    )
    which.add_argument("--full", action="store_true", help="the complete study: all training rows (preset 'full')")
    add_study_options(bench, image_datasets=True)
    bench.add_argument(
        "--tolerance", type=float, help="bound on the rate gap (default 0.05); for p_rule the ratio p (default 0.8)"
    )
    bench.add_argument(
        "--methods",
        type=csv_list,
        help=f"comma-separated subset of {', '.join(BENCH_METHODS)} (default: {','.join(DEFAULT_METHODS)})",
    )
    bench.add_argument("--models", type=csv_list, help=f"comma-separated subset of {', '.join(MODELS)} (default: all)")
    bench.add_argument(
        "--epochs-large",
        type=int,
        help=f"training epochs of mlp-large only, overriding --epochs for it (default: {d.epochs_large}, or --epochs "
        "when given)",
    )
    bench.add_argument("--out", type=Path, help="output folder (default: fairopt-runs/<preset>-<timestamp>)")
    bench.add_argument(
        "--peers",
        action="store_true",
        help="add the peers: fairlearn ExponentiatedGradient and ThresholdOptimizer, and plain cooper",
    )
    bench.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    bench.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bar, per-run lines or data notes (errors still print; notes and warnings are in study.md)",
    )
    add_image_arguments(bench)
    parser.bench_parser = bench  # type: ignore[attr-defined]
    from fairopt.sweep.cli import add_parser as add_sweep_parser

    parser.sweep_parser = add_sweep_parser(sub)  # type: ignore[attr-defined]
    return parser


def _config_from_args(args: argparse.Namespace) -> StudyConfig:
    """The preset with the options given on the command line applied.

    ``--epochs`` sets every model's epochs (``epochs_large`` too unless ``--epochs-large`` is given); ``--num-seeds N``
    gives seeds 0..N-1.

    Raises:
        ValueError: an invalid combination (from :class:`~fairopt.bench.config.StudyConfig`), e.g. ``--target`` or
            ``--positive-label`` with a bundled dataset, or a csv dataset without ``--target`` / ``--sensitive``.
    """
    from fairopt.bench.config import PRESETS, default_tolerance
    from fairopt.bench.options import study_options

    config = PRESETS["full" if args.full else args.preset]
    if args.constraint is not None and args.tolerance is None and args.constraint != config.constraint:
        args.tolerance = default_tolerance(args.constraint)
    own = {
        "dataset": args.dataset,
        "csv_target": args.target,
        "tolerance": args.tolerance,
        "methods": args.methods,
        "models": args.models,
        "epochs_large": args.epochs if args.epochs_large is None else args.epochs_large,
    }
    changes = {**study_options(args), **{k: v for k, v in own.items() if v is not None}}
    if args.dataset and args.dataset != config.dataset and args.sensitive is None:
        changes["sensitive"] = None  # the new dataset's default sensitive attribute
    if args.dataset and args.dataset.startswith("csv:") and args.sensitive:
        changes["csv_sensitive"] = args.sensitive
    if args.positive_label:
        changes["csv_positive_label"] = tuple(args.positive_label)
    setup = (
        "dataset",
        "sensitive",
        "constraint",
        "tolerance",
        "models",
        "epochs",
        "lr",
        "dual_lr",
        "train_size",
        "batch_size",
    )
    if config.published and any(k in changes and changes[k] != getattr(config, k) for k in setup):
        changes["published"] = ()  # the published numbers were measured under the preset's setup only
    if config.classes and any(k in changes for k in ("dataset", "sensitive")):
        changes["classes"] = ()
    return config.updated(**changes)


def _logger(quiet: bool) -> Callable[[str], None]:
    """Progress lines to stderr through tqdm (so they do not break the bar), or nothing with ``--quiet``."""

    def log(line: str) -> None:
        if not quiet:
            from tqdm.auto import tqdm

            tqdm.write(line, file=sys.stderr)

    return log


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "sweep":  # fairopt sweep: options and run in fairopt.sweep.cli
        from fairopt.sweep.cli import run as run_sweep

        return run_sweep(args, parser.sweep_parser)  # type: ignore[attr-defined]
    bench = parser.bench_parser  # type: ignore[attr-defined]
    from fairopt.bench.images_cli import check_tabular_args, run_image_bench, wants_images
    from fairopt.bench.options import missing_csv, output_folder

    log = _logger(args.quiet)
    if wants_images(args):  # image studies: options, run and report in fairopt.bench.images_cli
        return run_image_bench(args, bench, partial(output_folder, bench), log)
    try:
        check_tabular_args(args)
        config = _config_from_args(args)
    except ValueError as err:
        bench.error(str(err))  # exits with status 2
    if (missing := missing_csv(args.dataset)) is not None:
        bench.error(missing)
    default = Path("fairopt-runs") / f"{config.preset or args.preset}-{datetime.now():%Y%m%d-%H%M%S}"
    with output_folder(bench, args.out or default) as out:
        return _run_tabular(args, bench, config, out, log)


def _run_tabular(
    args: argparse.Namespace, bench: argparse.ArgumentParser, config: StudyConfig, out: Path, log: Callable[[str], None]
) -> int:
    from fairopt.bench.output import print_and_write
    from fairopt.bench.study import run_study

    if args.peers:
        try:
            import fairlearn  # noqa: F401
            import sklearn  # noqa: F401
        except ImportError:
            bench.error("--peers needs fairlearn and scikit-learn: pip install 'fairopt[peers]'")
    try:
        result = run_study(config, progress=not args.quiet, log=log)
    except (ValueError, FileNotFoundError) as err:
        print(f"fairopt bench: error: {err}", file=sys.stderr)
        return 2
    failures: list[str] = []
    if args.peers:  # a peer's failure must not lose the study: say so (even with --quiet), write what we have
        from fairopt.bench.peers import run_peers

        def failed(line: str) -> None:
            failures.append(line)
            print(f"fairopt bench: error: {line}", file=sys.stderr)

        result.runs.extend(run_peers(config, log=log, on_error=failed))
    print_and_write(result, out, plots=not args.no_plots)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
