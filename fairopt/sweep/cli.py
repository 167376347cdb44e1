"""``fairopt sweep``: the subcommand's options and its run (registered by :mod:`fairopt.cli`).

The data, model and constraint options are those of ``fairopt bench`` (same names, same defaults, same checks:
:class:`~fairopt.bench.config.StudyConfig`); a bad value prints a message and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fairopt.bench.options import add_study_options, float_list, missing_csv, output_folder, study_options

if TYPE_CHECKING:
    from .frontier import SweepResult

__all__ = ["add_parser", "run"]


def _tolerances(text: str) -> tuple[float, ...]:
    from .run import check_tolerances

    try:
        return check_tolerances(float_list(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _one_model(text: str) -> str:
    raise argparse.ArgumentTypeError(
        f"a sweep trains one model: use --model {text.split(',')[0].strip() or 'NAME'} (fairopt bench takes --models)"
    )


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``sweep`` subcommand to ``sub`` (the ``add_subparsers`` object of the ``fairopt`` parser)."""
    from fairopt.bench.config import CONSTRAINTS
    from fairopt.models import MODELS

    from .run import DEFAULT_PENALTY_COEFFICIENTS

    p = sub.add_parser(
        "sweep",
        help="the accuracy-fairness frontier: K tolerances x S seeds in one vectorized run, chosen on held-out data",
        description=(
            "Train one model at K tolerances x S seeds (proxy-Lagrangian, the recommended method) and the fixed-weight "
            "penalty at several penalty coefficients (the baseline) in one vectorized run (torch.func.vmap). Each "
            "member's final iterate is chosen on the validation split; the frontier is reported on the held-out "
            "(audit) split with 95% intervals and re-evaluated on test beside it, with the member to pick for --bound. "
            "Writes sweep.json, sweep.md and sweep.png to the output folder it names at the end. With --replay "
            "FILE it runs the sweep recorded in a sweep.json again (refusing a csv file that changed since) and "
            "exits with status 1 if any estimate differs from the record."
        ),
    )
    p.add_argument("--tolerances", type=_tolerances,
                   help="comma-separated bounds > 0, each once (e.g. 0.01,0.02,0.05,0.1); required without "
                        "--replay")  # fmt: skip
    p.add_argument("--replay", type=Path, metavar="FILE",
                   help="run the sweep recorded in FILE (a sweep.json, or its folder) again with its settings and "
                        "compare every estimate with the record (only --out, --device, --no-plots and --quiet go "
                        "with it)")  # fmt: skip
    p.add_argument("--bound", type=float, help="the bound to pick a member for (default 0.05)")
    p.add_argument("--penalty-coefficients", type=float_list,
                   help="the penalty baseline's coefficients c, comma-separated (default "
                        f"{','.join(f'{w:g}' for w in DEFAULT_PENALTY_COEFFICIENTS)}; none: --no-penalty)")  # fmt: skip
    p.add_argument("--no-penalty", action="store_true", help="no penalty baseline")
    p.add_argument("--heldout-duals", action="store_true",
                   help="the λ-players read validation batches (bench method proxy-lagrangian-heldout)")  # fmt: skip
    add_study_options(p, constraints=[k for k in CONSTRAINTS if k != "p_rule"], default_seeds="0")
    # default None, applied in _options: an option given is then told from one left out (--replay refuses it)
    p.add_argument("--model", choices=sorted(MODELS), help="the model (default: mlp)")
    # fairopt bench's plural, said as such rather than "unrecognized arguments" from the top-level parser
    p.add_argument("--models", type=_one_model, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help="output folder (default: fairopt-runs/sweep-<timestamp>)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def _options(args: argparse.Namespace) -> dict[str, Any]:
    from fairopt.bench.config import default_tolerance

    options = study_options(args)
    options.pop("constraint", None)  # with its default, below
    options.pop("seeds", None)  # the sweep's default is one seed, below
    if args.target is not None:
        options["csv_target"] = args.target
    if args.epochs is not None:
        options["epochs_large"] = args.epochs
    if args.dataset and args.dataset.startswith("csv:") and args.sensitive:
        options["csv_sensitive"] = args.sensitive
    if args.positive_label:
        options["csv_positive_label"] = tuple(args.positive_label)
    constraint = args.constraint or "equalized_odds"
    return {
        "dataset": args.dataset or "adult",
        "constraint": constraint,
        "model": args.model or "mlp",
        "seeds": tuple(range(args.num_seeds)) if args.num_seeds is not None else (args.seeds or (0,)),
        "bound": default_tolerance(constraint) if args.bound is None else args.bound,
        **options,
    }


# the options that go with --replay (everything else is the recorded settings')
_REPLAY_OPTIONS = {"replay", "out", "no_plots", "quiet", "device", "command"}


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run ``fairopt sweep`` with parsed ``args``; ``parser.error`` (exit 2) on a bad option."""
    from fairopt.bench.images import is_image_dataset

    from .run import DEFAULT_PENALTY_COEFFICIENTS, sweep

    if args.replay is not None:
        return _replay(args, parser)
    if args.tolerances is None:
        parser.error("--tolerances is required (e.g. --tolerances 0.02,0.05,0.1), or --replay FILE to rerun a sweep")
    if args.no_penalty and args.penalty_coefficients:
        parser.error("--no-penalty drops the penalty members and --penalty-coefficients sets them: pass one of the two")
    if is_image_dataset(args.dataset):
        parser.error(f"--dataset {args.dataset}: a sweep trains tabular models (adult, compas, german or csv:PATH); "
                     "image studies are fairopt bench's (fairopt bench --dataset ...)")  # fmt: skip
    if (missing := missing_csv(args.dataset)) is not None:
        parser.error(missing)
    if args.bound is not None and not 0.0 <= args.bound <= 1.0:  # NaN fails too
        parser.error(f"--bound must be in [0, 1] (the constraint's bound, e.g. a rate gap of 0.05), got {args.bound}")
    coefficients = () if args.no_penalty else (args.penalty_coefficients or DEFAULT_PENALTY_COEFFICIENTS)
    options = _options(args)
    with output_folder(parser, _out(args, "sweep")) as out:
        try:
            result = sweep(
                args.tolerances,
                penalty_coefficients=coefficients,
                heldout_duals=args.heldout_duals,
                log=_log(args),
                **options,
            )
        except (ValueError, FileNotFoundError) as err:
            parser.error(str(err))  # exits with status 2
        print(result.to_markdown())
        _write(result, out, args)
    return 0


def _replay(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``fairopt sweep --replay FILE``: 0 when every estimate is the recorded one, 1 otherwise."""
    from .replay import prepare, run_prepared

    given = [
        a.option_strings[0]
        for a in parser._actions
        if a.dest not in _REPLAY_OPTIONS and a.option_strings and getattr(args, a.dest, a.default) != a.default
    ]
    if given:
        parser.error(f"--replay reruns the settings recorded in {args.replay}; drop {', '.join(given)} (only --out, "
                     "--device, --no-plots and --quiet go with it; to change a setting, run a new sweep)")  # fmt: skip
    try:  # the file and its data are checked before the output folder is made
        prepared = prepare(args.replay, device=args.device)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    if args.out is not None and (args.out / "sweep.json").resolve() == prepared.source.resolve():
        parser.error(f"--out {args.out} holds the sweep.json being replayed, which the replay would overwrite; "
                     "write it to another folder")  # fmt: skip
    with output_folder(parser, _out(args, "replay")) as out:
        try:
            replayed = run_prepared(prepared, log=_log(args))
        except (ValueError, FileNotFoundError) as err:
            parser.error(str(err))
        print(replayed.result.to_markdown())
        for note in replayed.notes:
            print(f"note: {note}")
        _write(replayed.result, out, args)
    members = len(replayed.result.points)
    if replayed.identical:
        print(f"replay of {prepared.source}: identical, every estimate of the {members} member"
              f"{'' if members == 1 else 's'} and the pick to the last digit")  # fmt: skip
        return 0
    print(f"replay of {prepared.source}: {len(replayed.differences)} difference(s) from the record:")
    for line in replayed.differences:
        print(f"  {line}")
    return 1


def _out(args: argparse.Namespace, kind: str) -> Path:
    """``--out``, or a new timestamped folder under ``fairopt-runs/``."""
    return args.out or Path("fairopt-runs") / f"{kind}-{datetime.now():%Y%m%d-%H%M%S}"


def _log(args: argparse.Namespace) -> Callable[[str], None]:
    def log(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr)

    return log


def _write(result: SweepResult, out: Path, args: argparse.Namespace) -> None:
    written = result.write(out, plots=not args.no_plots)
    if not args.no_plots and not any(p.suffix == ".png" for p in written):
        print("(no PNG: matplotlib is not installed; pip install 'fairopt[plots]')")
    print(f"wrote {', '.join(p.name for p in written)} to {out}/; trained in {result.seconds:.1f} s")
