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


def _csv_list(text: str) -> tuple[str, ...]:
    items = tuple(t.strip() for t in text.split(",") if t.strip())
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in _csv_list(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from fairopt.bench.config import BENCH_METHODS, CONSTRAINTS, DATASETS, DEFAULT_METHODS, PRESETS
    from fairopt.bench.images import IMAGE_PRESETS
    from fairopt.bench.images_cli import add_image_arguments
    from fairopt.datasets._builtin import SENSITIVE_CHOICES
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
            "x 3 model sizes, 3 seeds; 5 to 11 minutes on 2 CPU cores). Options override the chosen preset. Writes "
            "study.json, study.md, runs.csv and PNG plots to the output folder it names at the end."
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
    bench.add_argument(
        "--dataset",
        help=f"{', '.join(DATASETS)} (default: adult), or csv:PATH (then also --target, --sensitive); images: digits, "
        "celeba:DIR, images:CSV (see 'image studies' below)",
    )
    bench.add_argument(
        "--target",
        help="csv datasets only: the label column, 0/1 unless --positive-label is given (a bundled dataset's target "
        "is fixed: giving another is an error)",
    )
    bench.add_argument(
        "--positive-label",
        action="append",
        metavar="VALUE",
        help="csv datasets only: the --target value that means y = 1, every other value meaning 0 (repeat the option "
        "for several values; '2' also matches the number 2)",
    )
    choices = "; ".join(f"{name} {','.join(attributes)}" for name, attributes in SENSITIVE_CHOICES.items())
    bench.add_argument(
        "--sensitive",
        type=_csv_list,
        help=f"sensitive attribute column(s), comma-separated; groups are their combinations (bundled datasets: "
        f"{choices})",
    )
    bench.add_argument(
        "--constraint", choices=sorted(CONSTRAINTS), help=f"the fairness constraint (default: {d.constraint})"
    )
    bench.add_argument(
        "--tolerance", type=float, help="bound on the rate gap (default 0.05); for p_rule the ratio p (default 0.8)"
    )
    bench.add_argument(
        "--methods",
        type=_csv_list,
        help=f"comma-separated subset of {', '.join(BENCH_METHODS)} (default: {','.join(DEFAULT_METHODS)})",
    )
    bench.add_argument("--models", type=_csv_list, help=f"comma-separated subset of {', '.join(MODELS)} (default: all)")
    bench.add_argument(
        "--epochs",
        type=int,
        help=f"training epochs of every model, mlp-large included unless --epochs-large is given (default: {d.epochs}; "
        f"mlp-large {d.epochs_large})",
    )
    bench.add_argument(
        "--epochs-large",
        type=int,
        help=f"training epochs of mlp-large only, overriding --epochs for it (default: {d.epochs_large}, or --epochs "
        "when given)",
    )
    seeds = bench.add_mutually_exclusive_group()
    seeds.add_argument(
        "--seeds",
        type=_int_list,
        help="comma-separated seed numbers, not a count (default: 0,1,2): --seeds 1 runs seed number 1 only; for N "
        "seeds use --num-seeds N",
    )
    seeds.add_argument("--num-seeds", type=_positive_int, metavar="N", help="run N seeds: 0, 1, ..., N-1")
    bench.add_argument(
        "--train-size",
        type=int,
        help=f"cap on training rows, 0 = all (default: {d.train_size}; a note says when it cuts the training split)",
    )
    bench.add_argument("--lr", type=float, help=f"Adam learning rate (default: {d.lr:g})")
    bench.add_argument("--dual-lr", type=float, help=f"dual (multiplier) step size (default: {d.dual_lr:g})")
    bench.add_argument(
        "--batch-size", type=int, help="training batch size (default: about 50 steps per epoch, 64 to 512)"
    )
    bench.add_argument(
        "--margin-z",
        type=float,
        help=f"margin in standard errors of each constraint entry on the selection split (default {d.margin_z:g}; 0 = "
        "none)",
    )
    bench.add_argument("--device", help="torch device for training and evaluation: cpu (default), cuda, cuda:1, ...")
    bench.add_argument("--out", type=Path, help="output folder (default: fairopt-runs/<preset>-<timestamp>)")
    bench.add_argument("--peers", action="store_true", help="add fairlearn ExponentiatedGradient and plain cooper")
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

    config = PRESETS["full" if args.full else args.preset]
    if args.constraint is not None and args.tolerance is None and args.constraint != config.constraint:
        args.tolerance = default_tolerance(args.constraint)
    changes = {
        "dataset": args.dataset,
        "csv_target": args.target,
        "sensitive": args.sensitive,
        "constraint": args.constraint,
        "tolerance": args.tolerance,
        "methods": args.methods,
        "models": args.models,
        "epochs": args.epochs,
        "epochs_large": args.epochs if args.epochs_large is None else args.epochs_large,
        "seeds": tuple(range(args.num_seeds)) if args.num_seeds is not None else args.seeds,
        "lr": args.lr,
        "dual_lr": args.dual_lr,
        "batch_size": args.batch_size,
        "margin_z": args.margin_z,
        "device": args.device,
    }
    changes = {k: v for k, v in changes.items() if v is not None}
    if args.train_size is not None:
        changes["train_size"] = None if args.train_size == 0 else args.train_size
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


def _writable(bench: argparse.ArgumentParser, out: Path) -> Path:
    """``out``, created; exit 2 now (not after the study) if it cannot be written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / ".write-test").touch()
        (out / ".write-test").unlink()
    except OSError as err:
        bench.error(f"--out {out}: cannot write there ({err.strerror or err})")
    return out


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

    log = _logger(args.quiet)
    if wants_images(args):  # image studies: options, run and report in fairopt.bench.images_cli
        return run_image_bench(args, bench, partial(_writable, bench), log)
    try:
        check_tabular_args(args)
        config = _config_from_args(args)
    except ValueError as err:
        bench.error(str(err))  # exits with status 2
    if args.dataset and args.dataset.startswith("csv:") and not Path(args.dataset[4:]).is_file():
        bench.error(f"--dataset {args.dataset}: no such file")

    from fairopt.bench.output import format_table, write_outputs
    from fairopt.bench.study import run_study

    out = _writable(
        bench, args.out or Path("fairopt-runs") / f"{config.preset or args.preset}-{datetime.now():%Y%m%d-%H%M%S}"
    )
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
    print(format_table(result))
    written = write_outputs(result, out, plots=not args.no_plots)
    if not args.no_plots and not any(p.suffix == ".png" for p in written):
        print("(no PNG plots: matplotlib is not installed; pip install 'fairopt[plots]')")
    print(
        f"\nwrote {len(written)} files to {out}/ ({', '.join(p.name for p in written)}); total {result.wall_time:.0f} s"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
