"""Run a whole study: load the data once, train every (model, method, seed), summarize, write outputs."""

from __future__ import annotations

import json
import math
import platform
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from fairopt.constraints import Constraint, protected_classes
from fairopt.datasets import SmallSplitWarning, TabularDataset, load_csv, load_dataset
from fairopt.datasets._tabular import MIN_ROWS
from fairopt.optim import ConstraintSet

from .config import PRESETS, StudyConfig, constraint_key
from .provenance import provenance
from .runner import DATA_SPLIT, SPLITS, RunResult, run_one

__all__ = [
    "STUDY_SCHEMA_VERSION",
    "StudyResult",
    "data_notes",
    "load_study_data",
    "run_study",
    "run_warnings",
    "summarize",
]

# 1.1: a "validation" report per run; "held-out" is the audit split. Additive since: "notes" (the data's notes and
# warnings), each run's "warnings" and "provenance" (versions, the data file's SHA-256): a reader of 1.1 that ignores
# unknown keys reads them unchanged. A constant prediction is among its reports' warnings, no longer the run's.
STUDY_SCHEMA_VERSION = "1.1"

# load(config, seed) -> (the seed's data, the training split's size before the train_size cap).
Load = Callable[[Any, int], tuple[Any, int]]
# run(config, data, constraint, model_name, method, seed) -> one RunResult per final model.
Run = Callable[[Any, Any, Constraint, str, str, int], list[RunResult]]

# The splits whose reports' warnings are shown with each run (train's illusion flags are in the table already).
WARNED_SPLITS = ("held-out", "test")


def load_study_data(config: StudyConfig, seed: int = 0) -> TabularDataset:
    """Load the configured dataset (embedded, or ``csv:PATH``) with the study's splits, capped at ``train_size``,
    and an audit split of ``audit_fraction`` times the validation split's size: from the training rows the cap
    leaves out when there are enough (the validation split then stays whole), else moved out of the validation split
    (:meth:`TabularDataset.with_audit`). ``load_csv``'s :class:`~fairopt.datasets.SmallSplitWarning` is left out:
    it describes the splits before the audit split is carved; :func:`data_notes` describes the study's.

    Raises:
        ValueError: from the loader (:func:`~fairopt.datasets.load_csv`, :func:`~fairopt.datasets.load_dataset`),
            e.g. a missing column, a target that is not 0/1 without ``csv_positive_label``, a single label.
        FileNotFoundError: a ``csv:`` path that does not exist.
    """
    return _load_study_data(config, seed)[0]


def _load_study_data(config: StudyConfig, seed: int) -> tuple[TabularDataset, int]:
    """:func:`load_study_data` and the number of training rows before the ``train_size`` cap."""
    common = {"validation_fraction": config.validation_fraction, "seed": seed}
    if config.dataset.startswith("csv:"):
        with warnings.catch_warnings():  # about load_csv's splits: data_notes names the study's (audit split carved)
            warnings.simplefilter("ignore", SmallSplitWarning)
            data = load_csv(
                config.dataset[4:],
                target=str(config.csv_target),
                sensitive=list(config.sensitive_attributes()),
                positive_label=config.positive_label(),
                **common,
            )
    else:
        data = load_dataset(config.dataset, sensitive=config.sensitive_attributes(), **common)
    train_rows = len(data.train)
    audit_size = round(config.audit_fraction * len(data.validation))
    if config.train_size is not None and config.train_size < train_rows:
        unused = train_rows - config.train_size
        if unused >= audit_size:  # the audit split from training rows the cap leaves out: validation stays whole
            return data.subsample_train(config.train_size, seed=seed, audit_size=audit_size), train_rows
        data = data.subsample_train(config.train_size, seed=seed)
    return data.with_audit(config.audit_fraction, seed=seed), train_rows


def _load_noting(
    load: Load, config: StudyConfig, seed: int, note: Callable[[str], None], *, reissue: bool
) -> tuple[Any, int]:
    """``load(config, seed)``, passing each ``UserWarning`` of the loader to ``note`` as a ``"warning: ..."`` line,
    and re-issuing it as a Python warning only when ``reissue`` (other categories are always re-issued)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load(config, seed)
    for w in caught:
        is_user = issubclass(w.category, UserWarning)
        if is_user:
            note(f"warning: {w.message}")
        if reissue or not is_user:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return loaded


_SMALL_SHOWN = 5  # groups with few rows named one per line; the rest in one line


def data_notes(config: StudyConfig, data: TabularDataset, train_rows: int | None = None) -> list[str]:
    """What a user should know about a study's data before reading its numbers, as ``"note: ..."`` and
    ``"warning: ..."`` lines: the training split capped by ``train_size`` (``train_rows``: its size before the cap,
    None: unknown), and each group (each protected class, when ``config.classes`` is set) with fewer than
    ``MIN_ROWS`` (30) rows in some split, naming the splits and their row counts; and the study's splits with
    fewer than ``MIN_ROWS`` rows (the held-out split included: :func:`load_study_data` leaves out
    :func:`~fairopt.datasets.load_csv`'s own warning about its splits, before the audit split is carved).

    Raises:
        ValueError: a protected class of ``config.classes`` that matches no group.
    """
    notes: list[str] = []
    preset_config = PRESETS.get(config.preset or "")
    # a paper's preset (it has published numbers) applied to other data
    if preset_config is not None and preset_config.published and config.dataset != preset_config.dataset:
        notes.append(
            f"note: the {config.preset!r} preset was made for {preset_config.dataset}; on {config.dataset} it still "
            f"sets the constraint ({config.constraint}, tolerance {config.tolerance:g}), the methods, the model and "
            f"the split fractions (validation {config.validation_fraction:g}): its published numbers do not apply"
        )
    if constraint_key(config.constraint) == "p_rule" and config.tolerance < 0.5:
        notes.append(
            f"note: p_rule's tolerance is the ratio p: {config.tolerance:g} asks every group's selection rate to be "
            f"at least {config.tolerance:.0%} of the largest one, which nearly any model meets (the four-fifths rule "
            "is --tolerance 0.8; a gap such as 0.05 is the other constraints' unit)"
        )
    if train_rows is not None and len(data.train) < train_rows:
        from_preset = (
            f" (the {config.preset!r} preset's cap)"
            if preset_config is not None and preset_config.train_size == config.train_size
            else ""
        )
        notes.append(
            f"note: training on {len(data.train):,} of the {train_rows:,} training rows: train_size caps it at "
            f"{config.train_size:,}{from_preset}; --train-size 0 (train_size=None) trains on all of them"
        )
    by_split = data.group_counts()
    counts = {name: by_split[DATA_SPLIT[name]] for name in SPLITS}
    # a training split at its cap grows with --train-size, not with the file (train_rows None: the cap is binding
    # when the split is as large as it)
    capped = (
        len(data.train) < train_rows
        if train_rows is not None
        else config.train_size is not None and len(data.train) >= config.train_size
    )
    sizes = {split: int(c.sum()) for split, c in counts.items() if not (capped and split == "train")}
    if small_splits := {split: n for split, n in sizes.items() if n < MIN_ROWS}:
        shown = ", ".join(f"{split} {n}" for split, n in small_splits.items())
        factor = math.ceil(MIN_ROWS / max(1, min(small_splits.values())))  # these splits grow with the file
        notes.append(
            f"warning: some splits have fewer than {MIN_ROWS} rows ({shown}): rates measured on them have very wide "
            f"intervals; about {factor} times as many data rows give every split {MIN_ROWS}"
        )
    if config.classes:
        kind, units = "protected class", protected_classes(data.group_names, config.classes)
    else:
        kind, units = "group", {name: (g,) for g, name in enumerate(data.group_names)}
    small_groups: list[str] = []
    small_notes: list[str] = []
    for name, ids in units.items():
        rows = {split: int(c[list(ids)].sum()) for split, c in counts.items()}
        if not any(rows.values()):
            notes.append(f"warning: {kind} {name!r} has no rows in any of the study's splits: its rates are undefined")
            continue
        small = ", ".join(f"{split} {n}" for split, n in rows.items() if n < MIN_ROWS)
        if small:
            small_groups.append(name)
            small_notes.append(
                f"warning: {kind} {name!r} has fewer than {MIN_ROWS} rows in some splits ({small}): its rates' "
                "intervals there are very wide; merge rare categories or choose other --sensitive attributes"
            )
    if len(small_notes) > 2 * _SMALL_SHOWN:  # e.g. a numeric column made every value a group: one line, not sixty
        rest = small_groups[_SMALL_SHOWN:]
        kinds = "protected classes" if kind == "protected class" else "groups"
        named = ", ".join(rest[:5]) + (", ..." if len(rest) > 5 else "")
        small_notes = [
            *small_notes[:_SMALL_SHOWN],
            f"warning: and {len(rest)} more of the {len(units)} {kinds} have fewer than {MIN_ROWS} rows in some "
            f"splits ({named}); if a --sensitive column is numeric (an age, a score), every value of it is a group: "
            "bin it into a few bands in the data file (e.g. pandas.cut; an image csv also takes load_image_csv's "
            "bins=), or merge rare categories",
        ]
    return notes + small_notes


def run_warnings(run: RunResult) -> list[str]:
    """The run's own warnings, then its held-out and test reports' warnings, each once, prefixed with the split(s)
    it came from (``"held-out, test: group 'x' has no examples ..."``)."""
    splits_of: dict[str, list[str]] = {}
    for split in WARNED_SPLITS:
        report = run.reports.get(split)
        for problem in () if report is None else report.warnings:
            splits_of.setdefault(problem, [])
            if split not in splits_of[problem]:
                splits_of[problem].append(split)
    return [*dict.fromkeys(run.warnings), *(f"{', '.join(s)}: {problem}" for problem, s in splits_of.items())]


@dataclass
class StudyResult:
    """All runs of a study, with its configuration and the data's description (``notes``: :func:`data_notes` of the
    first seed's data and the loader's warnings, each once; see :func:`run_study`) and ``provenance``: the versions,
    the machine and the data file's SHA-256 (:func:`fairopt.bench.provenance.provenance`)."""

    config: StudyConfig
    runs: list[RunResult]
    group_names: tuple[str, ...]
    split_sizes: dict[str, int]
    constraint: str
    wall_time: float
    started: str
    machine: str
    notes: tuple[str, ...] = ()
    provenance: dict[str, Any] = field(default_factory=dict)

    def table(self) -> pd.DataFrame:
        """One row per run (see :func:`summarize` for the per-(model, method) aggregate)."""
        return pd.DataFrame([_run_row(r, self.group_names) for r in self.runs])

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": "fairopt.bench.study",
            "schema_version": STUDY_SCHEMA_VERSION,
            "config": self.config.to_dict(),
            "constraint": self.constraint,
            "group_names": list(self.group_names),
            "split_sizes": self.split_sizes,
            "started": self.started,
            "machine": self.machine,
            "provenance": self.provenance,
            "wall_time_s": self.wall_time,
            "notes": list(self.notes),
            "runs": [
                {
                    "model": r.model,
                    "method": r.method,
                    "seed": r.seed,
                    "selection": r.selection,
                    "support": r.support,
                    "multipliers": r.multipliers,
                    "wall_time_s": r.wall_time,
                    "warnings": list(r.warnings),
                    "history": r.history,
                    "reports": {name: rep.to_dict() for name, rep in r.reports.items()},
                }
                for r in self.runs
            ],
            "summary": _records(summarize(self)),
        }


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return json.loads(frame.to_json(orient="records"))


def _largest_entry(report: Any) -> Any:
    entries = [e for e in report.constraints[0].entries if e.value is not None]
    return max(entries, key=lambda e: e.value) if entries else None


def _accuracy(row: Any) -> float | None:
    error = row.rates["error_rate"].value
    return None if error is None else 1.0 - error


def _run_row(run: RunResult, group_names: tuple[str, ...]) -> dict[str, Any]:
    row: dict[str, Any] = {"model": run.model, "method": run.method, "seed": run.seed}
    test = run.reports["test"]
    row["train_accuracy"] = _accuracy(run.reports["train"].overall)
    row["test_accuracy"] = _accuracy(test.overall)
    error = test.overall.rates.get("error_rate")  # the accuracy interval, for the trade-off plot's bars
    row["test_accuracy_lower"] = None if error is None or error.upper is None else 1.0 - error.upper
    row["test_accuracy_upper"] = None if error is None or error.lower is None else 1.0 - error.lower
    for group in test.groups:
        row[f"test_accuracy[{group.name}]"] = _accuracy(group)
    for split in SPLITS:
        entry = _largest_entry(run.reports[split])
        row[f"{split}_value"] = None if entry is None else entry.value
        row[f"{split}_violation"] = None if entry is None else entry.violation
        if split == "test":
            row["test_lower"] = None if entry is None else entry.lower
            row["test_upper"] = None if entry is None else entry.upper
    row["test_verdict"] = str(run.reports["test"].constraints[0].verdict)
    row["train_flags"] = ",".join(sorted({f for e in run.reports["train"].constraints[0].entries for f in e.flags}))
    row["selection"] = run.selection
    row["wall_time_s"] = run.wall_time
    return row


def summarize(result: StudyResult) -> pd.DataFrame:
    """Mean (and standard deviation over seeds, when several) per (model, method), in run order."""
    table = result.table()
    numeric = [
        c for c in table.columns if c not in ("model", "method", "seed", "test_verdict", "train_flags", "selection")
    ]
    grouped = table.groupby(["model", "method"], sort=False)
    mean = grouped[numeric].mean()
    out = mean.copy()
    if len(result.config.seeds) > 1:
        std = grouped[numeric].std(ddof=1)
        for c in ("test_accuracy", "test_value", "test_violation"):
            out[f"{c}_std"] = std[c]
    out["test_verdict"] = grouped["test_verdict"].agg(lambda v: "/".join(sorted(set(v))))
    out["train_flags"] = grouped["train_flags"].agg(
        lambda v: ",".join(sorted({f for x in v for f in x.split(",") if f}))
    )
    out["seeds"] = grouped["seed"].count()
    return out.reset_index()


def run_study(
    config: StudyConfig,
    *,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    load: Load | None = None,
    run: Run | None = None,
) -> StudyResult:
    """Run every (model, method, seed) of ``config``; seeds share nothing but the dataset files.

    Each seed gets its own data split and subsample (``seed``), model initialization and batch order. ``load`` and
    ``run`` are the study's data and its run of one configuration (default: the tabular :func:`load_study_data`,
    with the training split's size before the cap, and :func:`~fairopt.bench.runner.run_one`); the image bench
    passes its own (:func:`fairopt.bench.images_study.run_image_study`). The first seed's data is loaded before
    anything trains, so a bad column or a missing file fails at once.

    ``progress``: a bar on stderr when it is a terminal (never into a pipe or file). ``log`` receives, once each:
    the data's notes and warnings (:func:`data_notes` of the first seed's data, whose splits differ from the other
    seeds' by about a row per group and label, and the loader's ``UserWarning`` s, which then do not also go to
    Python's warning output), one line per run, and under it the run's warnings (:func:`run_warnings`). Without
    ``log`` the loader's warnings are Python warnings. Either way the notes are in :attr:`StudyResult.notes` and
    each run's warnings in :attr:`RunResult.warnings`.

    Raises:
        ValueError, FileNotFoundError: from ``load`` (:func:`load_study_data`).
    """
    load = load or _load_study_data
    run = run or run_one
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    runs: list[RunResult] = []
    notes: list[str] = []

    def note(line: str) -> None:
        if line not in notes:
            notes.append(line)
            if log is not None:
                log(line)

    data_by_seed: dict[int, Any] = {}

    def data_of(seed: int) -> Any:
        if seed not in data_by_seed:
            data_by_seed[seed], train_rows = _load_noting(load, config, seed, note, reissue=log is None)
            if len(data_by_seed) == 1:
                for line in data_notes(config, data_by_seed[seed], train_rows):
                    note(line)
        return data_by_seed[seed]

    # a bad attribute or a missing file fails here, before the progress bar; the data file is hashed as loaded
    first = data_of(config.seeds[0])
    check_groups(config, first)  # groups a study cannot use fail before any run trains
    recorded = provenance(config.dataset, first)
    combos = [(s, m, meth) for s in config.seeds for m in config.models for meth in config.methods]
    width = max(10, *(len(m) for m in config.models))  # the per-run lines' model column
    # disable=None: tqdm draws the bar on a terminal only; into a pipe or a log file its carriage returns would
    # interleave with the per-run lines (which ``log`` prints either way)
    bar = tqdm(total=len(combos), desc="fairopt bench", unit="run", disable=None if progress else True)
    for seed, model, method in combos:
        data = data_of(seed)
        constraint: Constraint = config.build_constraint(data.group_names)
        bar.set_postfix_str(f"{model} / {method} / seed {seed}")
        logged: set[str] = set()  # this training's warnings logged so far (its final models share them)
        for result in run(config, data, constraint, model, method, seed):
            runs.append(result)
            if log is not None:
                test = _largest_entry(result.reports["test"])
                shown = "undefined" if test is None else f"{test.value:.3f}"
                window = "" if result.dual_window is None else f", dual window {result.dual_window} batches"
                log(
                    f"  {model:<{width}} {result.method:<38} seed {seed}: test expression value {shown} "
                    f"({result.wall_time:.1f} s{window})"
                )
                problems = run_warnings(result)
                for problem in problems:
                    if problem not in logged:
                        log(f"    warning: {problem}")
                if repeated := sum(problem in logged for problem in problems):  # study.md lists each run's all
                    log(f"    ({repeated} warning(s) as above)")
                logged.update(problems)
        bar.update(1)
    bar.close()
    first = data_by_seed[config.seeds[0]]
    return StudyResult(
        config=config,
        runs=runs,
        group_names=tuple(first.group_names),
        split_sizes={s: len(first.split(DATA_SPLIT[s]).y) for s in SPLITS},
        constraint=constraint.name,
        wall_time=time.perf_counter() - t0,
        started=started,
        machine=f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        notes=tuple(notes),
        provenance=recorded,
    )


def check_groups(config: StudyConfig, data: Any) -> None:
    """Refuse, before training, groups that a study cannot use: one group only (a gap over a sensitive attribute
    with one value in the data: every run would train unconstrained and report nothing), more groups than half the
    training rows (nearly every row its own group, e.g. a numeric --sensitive column: no group's rate can be
    estimated, and the per-group reports and margins would cost minutes for nothing), or a constraint with no entry
    the groups define.

    Raises:
        ValueError: what is wrong and what to choose instead.
    """
    constraint = config.build_constraint(data.group_names)
    if data.num_groups > max(2, len(data.train) // 2):
        raise ValueError(
            f"{data.num_groups:,} groups for {len(data.train):,} training rows: nearly every row is its own group "
            f"(e.g. {', '.join(data.group_names[:3])}, ...), which no rate can be estimated on; a numeric --sensitive "
            "column makes every value a group: bin it into a few bands in the data file, or choose another column"
        )
    with warnings.catch_warnings():  # this is a check only: the runs build their own constraint sets
        warnings.simplefilter("ignore")
        try:
            ConstraintSet([constraint], data.num_groups)
        except ValueError as err:
            if data.num_groups != 1:
                raise
            raise ValueError(
                f"every row of this data is in one group ({data.group_names[0]}): {constraint.name} compares groups, "
                "so nothing would constrain the model; choose a --sensitive column with at least two values"
            ) from err


def write_json(result: StudyResult, path: Path) -> None:
    path.write_text(json.dumps(result.to_dict(), indent=2, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
