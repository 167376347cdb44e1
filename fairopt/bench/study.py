"""Run a whole study: load the data once, train every (model, method, seed), summarize, write outputs."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from fairopt.constraints import Constraint
from fairopt.datasets import TabularDataset, load_csv, load_dataset

from .config import StudyConfig
from .runner import DATA_SPLIT, SPLITS, RunResult, run_one

__all__ = ["STUDY_SCHEMA_VERSION", "StudyResult", "load_study_data", "run_study", "summarize"]

STUDY_SCHEMA_VERSION = "1.1"  # 1.1: a "validation" report per run; "held-out" is the audit split


def load_study_data(config: StudyConfig, seed: int = 0) -> TabularDataset:
    """Load the configured dataset (embedded, or ``csv:PATH``) with the study's splits, capped at ``train_size``,
    and an audit split of ``audit_fraction`` times the validation split's size: from the training rows the cap
    leaves out when there are enough (the validation split then stays whole), else moved out of the validation split
    (:meth:`TabularDataset.with_audit`)."""
    common = {"validation_fraction": config.validation_fraction, "seed": seed}
    if config.dataset.startswith("csv:"):
        if not config.csv_target or not config.sensitive_attributes():
            raise ValueError("a csv: dataset needs --target COLUMN and --sensitive COLUMN[,COLUMN]")
        data = load_csv(
            config.dataset[4:], target=config.csv_target, sensitive=list(config.sensitive_attributes()), **common
        )
    else:
        data = load_dataset(config.dataset, sensitive=config.sensitive_attributes(), **common)
    audit_size = round(config.audit_fraction * len(data.validation))
    if config.train_size is not None and config.train_size < len(data.train.y):
        unused = len(data.train.y) - config.train_size
        if unused >= audit_size:  # the audit split from training rows the cap leaves out: validation stays whole
            return data.subsample_train(config.train_size, seed=seed, audit_size=audit_size)
        data = data.subsample_train(config.train_size, seed=seed)
    return data.with_audit(config.audit_fraction, seed=seed)


@dataclass
class StudyResult:
    """All runs of a study, with its configuration and the data's description."""

    config: StudyConfig
    runs: list[RunResult]
    group_names: tuple[str, ...]
    split_sizes: dict[str, int]
    constraint: str
    wall_time: float
    started: str
    machine: str

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
            "wall_time_s": self.wall_time,
            "runs": [
                {
                    "model": r.model,
                    "method": r.method,
                    "seed": r.seed,
                    "selection": r.selection,
                    "support": r.support,
                    "multipliers": r.multipliers,
                    "wall_time_s": r.wall_time,
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


def run_study(config: StudyConfig, *, progress: bool = True, log: Callable[[str], None] | None = None) -> StudyResult:
    """Run every (model, method, seed) of ``config``; seeds share nothing but the dataset files.

    Each seed gets its own data split and subsample (``seed``), model initialization and batch order.
    """
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    runs: list[RunResult] = []
    combos = [(s, m, meth) for s in config.seeds for m in config.models for meth in config.methods]
    bar = tqdm(total=len(combos), desc="fairopt bench", unit="run", disable=not progress)
    data_by_seed: dict[int, TabularDataset] = {}
    for seed, model, method in combos:
        if seed not in data_by_seed:
            data_by_seed[seed] = load_study_data(config, seed)
        constraint: Constraint = config.build_constraint(data_by_seed[seed].group_names)
        bar.set_postfix_str(f"{model} / {method} / seed {seed}")
        for run in run_one(config, data_by_seed[seed], constraint, model, method, seed):
            runs.append(run)
            if log is not None:
                test = _largest_entry(run.reports["test"])
                shown = "undefined" if test is None else f"{test.value:.3f}"
                window = "" if run.dual_window is None else f", dual window {run.dual_window} batches"
                log(
                    f"  {model:<10} {run.method:<38} seed {seed}: test constraint value {shown} "
                    f"({run.wall_time:.1f} s{window})"
                )
                for problem in run.warnings:
                    log(f"    warning: {problem}")
        bar.update(1)
    bar.close()
    data = data_by_seed[config.seeds[0]]
    return StudyResult(
        config=config,
        runs=runs,
        group_names=tuple(data.group_names),
        split_sizes={s: len(data.split(DATA_SPLIT[s]).y) for s in SPLITS},
        constraint=constraint.name,
        wall_time=time.perf_counter() - t0,
        started=started,
        machine=f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
    )


def write_json(result: StudyResult, path: Path) -> None:
    path.write_text(json.dumps(result.to_dict(), indent=2, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
