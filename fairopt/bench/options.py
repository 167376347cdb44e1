"""The command-line options ``fairopt bench`` and ``fairopt sweep`` share, written once: the data, constraint and
training options (same names, same help, same checks: :class:`~fairopt.bench.config.StudyConfig`), the small
argparse types they parse with, and their values as configuration fields.

Both :mod:`fairopt.cli` and :mod:`fairopt.sweep.cli` import this module; it imports neither, so there is no import
circle (the CLI registers the sweep subcommand, the sweep subcommand reads these options).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "add_study_options",
    "csv_list",
    "float_list",
    "int_list",
    "missing_csv",
    "output_folder",
    "positive_int",
    "study_options",
]


def missing_csv(dataset: str | None) -> str | None:
    """The error for a ``--dataset csv:PATH`` whose file does not exist (the bench's and the sweep's), else None."""
    if dataset is not None and dataset.startswith("csv:") and not Path(dataset[4:]).is_file():
        return f"--dataset {dataset}: no such file"
    return None


@contextmanager
def output_folder(parser: argparse.ArgumentParser, out: Path) -> Iterator[Path]:
    """``out``, created (``--out``, or the command's default); ``parser.error`` (exit 2) now, before any training, if
    it cannot be written. The folders made here (``out`` and any missing parent, e.g. ``fairopt-runs/``) are removed
    again if the run leaves them empty (an error, Ctrl-C), so a failed run leaves nothing behind; a folder that
    existed before is never removed. A folder that holds an earlier run's ``study.json`` or ``sweep.json`` is refused:
    this run's tables would replace its tables while plots this run does not write (``--no-plots``) stayed beside
    them, one folder describing two runs."""
    earlier = [name for name in EARLIER_RUN_FILES if (out / name).is_file()]
    if earlier:
        parser.error(
            f"--out {out} holds an earlier run ({', '.join(earlier)}): its files would mix with this run's; pass a "
            "new folder (without --out every run gets its own), or remove that one first"
        )
    made = [p for p in (out, *out.parents) if not p.exists()]  # deepest first
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / ".write-test").touch()
        (out / ".write-test").unlink()
    except OSError as err:
        _remove_empty(made)
        parser.error(f"--out {out}: cannot write there ({err.strerror or err})")
    try:
        yield out
    finally:
        _remove_empty(made)


EARLIER_RUN_FILES = ("study.json", "sweep.json")
"""The files that mark a folder as an earlier run's output (``fairopt bench`` and ``fairopt sweep`` write one each)."""


def _remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first) while they are empty."""
    for folder in folders:
        if not folder.is_dir() or any(folder.iterdir()):
            return
        folder.rmdir()


def csv_list(text: str) -> tuple[str, ...]:
    """``"a, b,c"`` -> ``("a", "b", "c")``; empty items are dropped.

    Raises:
        argparse.ArgumentTypeError: no item at all (argparse then exits 2 naming the option).
    """
    items = tuple(t.strip() for t in text.split(",") if t.strip())
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def int_list(text: str) -> tuple[int, ...]:
    """``"0,1,2"`` -> ``(0, 1, 2)``. Raises ``argparse.ArgumentTypeError`` for an item that is not an integer."""
    try:
        return tuple(int(t) for t in csv_list(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def float_list(text: str) -> tuple[float, ...]:
    """``"0.01,0.05"`` -> ``(0.01, 0.05)``. Raises ``argparse.ArgumentTypeError`` for an item that is not a number."""
    try:
        return tuple(float(t) for t in csv_list(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def positive_int(text: str) -> int:
    """An integer >= 1. Raises ``argparse.ArgumentTypeError`` otherwise."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_study_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    *,
    constraints: Sequence[str] | None = None,
    default_seeds: str = "0,1,2",
    image_datasets: bool = False,
) -> None:
    """Add the data, constraint and training options of a study to ``parser``: ``--dataset``, ``--target``,
    ``--positive-label``, ``--sensitive``, ``--constraint``, ``--epochs``, ``--seeds`` / ``--num-seeds`` (mutually
    exclusive), ``--train-size``, ``--lr``, ``--dual-lr``, ``--batch-size``, ``--margin-z`` and ``--device``. Every
    default is None (the preset's value applies; the help shows the default study's).

    Args:
        constraints: the ``--constraint`` choices (default: every name of
            :data:`~fairopt.bench.config.CONSTRAINTS`).
        default_seeds: the seeds used when neither ``--seeds`` nor ``--num-seeds`` is given, for the help.
        image_datasets: say in the help of ``--dataset``, ``--target`` and ``--positive-label`` that image datasets
            are accepted (``fairopt bench`` only; ``fairopt sweep``'s help names tabular data only).
    """
    from fairopt.bench.config import CONSTRAINTS, DATASETS, PRESETS
    from fairopt.datasets._builtin import SENSITIVE_CHOICES

    d = PRESETS["default"]
    images = "; images: digits, celeba:DIR, images:CSV (see 'image studies' below)" if image_datasets else ""
    parser.add_argument(
        "--dataset",
        help=f"{', '.join(DATASETS)} (default: adult), or csv:PATH (then also --target, --sensitive){images}",
    )
    # the image kinds are named only where they are accepted (fairopt sweep refuses them)
    csv_kinds = "csv:PATH and images:CSV" if image_datasets else "csv:PATH"
    image_targets = "; celeba:DIR: any of the 40 attributes (default Blond_Hair); digits: digit>=5 or even"
    image_targets = image_targets if image_datasets else ""
    parser.add_argument(
        "--target",
        help=f"{csv_kinds}: the label column, 0/1 unless --positive-label is given{image_targets}"
        "; a bundled tabular dataset's target is fixed (giving another is an error)",
    )
    parser.add_argument(
        "--positive-label",
        action="append",
        metavar="VALUE",
        help=f"{csv_kinds}: the --target value that means y = 1, every other value meaning 0 (repeat the option for "
        "several values; '2' also matches the number 2)",
    )
    choices = "; ".join(f"{name} {','.join(attributes)}" for name, attributes in SENSITIVE_CHOICES.items())
    parser.add_argument(
        "--sensitive",
        type=csv_list,
        help=f"sensitive attribute column(s), comma-separated; groups are their combinations (bundled datasets: "
        f"{choices})",
    )
    parser.add_argument(
        "--constraint",
        choices=sorted(CONSTRAINTS if constraints is None else constraints),
        help=f"the fairness constraint (default: {d.constraint})",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        help=f"training epochs of every model (default: {d.epochs}; mlp-large {d.epochs_large})",
    )
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument(
        "--seeds",
        type=int_list,
        help=f"comma-separated seed numbers, not a count (default: {default_seeds}): --seeds 1 runs seed number 1 "
        "only; for N seeds use --num-seeds N",
    )
    seeds.add_argument("--num-seeds", type=positive_int, metavar="N", help="run N seeds: 0, 1, ..., N-1")
    parser.add_argument(
        "--train-size",
        type=int,
        help=f"cap on training rows, 0 = all (default: {d.train_size})",
    )
    parser.add_argument("--lr", type=float, help=f"Adam learning rate (default: {d.lr:g})")
    parser.add_argument("--dual-lr", type=float, help=f"dual (multiplier) step size (default: {d.dual_lr:g})")
    parser.add_argument(
        "--batch-size", type=int, help="training batch size (default: about 50 steps per epoch, 64 to 512)"
    )
    parser.add_argument(
        "--margin-z",
        type=float,
        help=f"margin in standard errors of each constraint entry on the selection split (default {d.margin_z:g}; 0 = "
        "none)",
    )
    parser.add_argument("--device", help="torch device for training and evaluation: cpu (default), cuda, cuda:1, ...")


def study_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options of :func:`add_study_options` that were given, as configuration fields (``sensitive``,
    ``constraint``, ``epochs``, ``seeds``, ``lr``, ``dual_lr``, ``batch_size``, ``margin_z``, ``device``,
    ``train_size``); options not given are left out. ``--num-seeds N`` gives seeds ``(0, ..., N-1)``;
    ``--train-size 0`` gives ``train_size=None`` (all rows). The data options (``--dataset``, ``--target``,
    ``--positive-label``) name different fields in the tabular and the image configuration: each caller maps them.
    """
    given = {
        "sensitive": args.sensitive,
        "constraint": args.constraint,
        "epochs": args.epochs,
        "seeds": tuple(range(args.num_seeds)) if args.num_seeds is not None else args.seeds,
        "lr": args.lr,
        "dual_lr": args.dual_lr,
        "batch_size": args.batch_size,
        "margin_z": args.margin_z,
        "device": args.device,
    }
    options = {k: v for k, v in given.items() if v is not None}
    if args.train_size is not None:  # None is a value here (all rows): set after the filter
        options["train_size"] = None if args.train_size == 0 else args.train_size
    return options
