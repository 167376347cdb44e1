"""What a constraint-satisfaction study runs: methods, models, constraint, data, and the named presets.

A study trains every (model, method, seed) combination on one dataset under one fairness constraint and
reports the constraint on train, held-out (validation) and test data side by side.

Methods (``--methods``; their names are :data:`BENCH_METHODS`):

==============================  ===================================================================================
``unconstrained``               the task loss only (reference point)
``penalty``                     fixed-weight hinge penalty on the proxy constraint, the "regularizer" baseline
``lagrangian``                  gradient descent-ascent, proxy constraints (primal: the study's proxy; dual: true
                                rates), last iterate (Cotter et al., JMLR 2019, Algorithm 2 without randomization)
``lagrangian-heldout``          the same with the multipliers reading validation batches and a margin; final model:
                                the best single iterate on validation data with that margin (not in the default
                                study: with a delayed dual table plain GDA oscillates, see the README)
``proxy-lagrangian``            swap-regret proxy-Lagrangian game on the training set; final model: a distribution
                                over recorded iterates by the shrinking LP on training data with a margin (one
                                dataset; the recommended method), reported with its best single iterate as
                                ``proxy-lagrangian (best iterate)`` (deterministic)
``proxy-lagrangian-heldout``    the same game with the λ-player reading validation batches, and the shrinking LP on
                                validation data with a margin (two datasets: Cotter et al., ICML 2019), also with
                                its best single iterate
``thresholds``                  post-processing: the unconstrained model with randomized group-specific thresholds
                                fitted on validation data with a margin (Hardt, Price, Srebro 2016;
                                :class:`fairopt.postprocessing.GroupThresholds`); needs the sensitive attribute at
                                prediction time
``proxy-lagrangian+thresholds`` the two combined: ``proxy-lagrangian``'s best iterate, then group thresholds fitted
                                on validation data (also needs the attribute at prediction time)
==============================  ===================================================================================

Data roles. The *validation* split drives the held-out duals and chooses the final model; an *audit* split
(reported as ``held-out``) is used for nothing else, so its value is an honest estimate for new data (a model chosen
because it looks feasible on some data is optimistic there). The audit split has ``audit_fraction`` times the
validation split's size: drawn at random from the training rows a ``train_size`` cap leaves out when there are
enough (the validation split then stays whole), else cut from the validation split, stratified by group and label.
Every dual player reads a table of at least ``dual_min_count`` examples per group and label
(:class:`~fairopt.RunningGroupStats`, mode ``"count"``). Every method with a dual player leaves a margin of
``margin_z`` standard errors of each entry on its selection split (validation for the held-out methods, else train;
:meth:`~fairopt.optim.ConstraintSet.standard_errors`; Cotter et al., JMLR 2019, Section 7.2: "plan to overfit").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch

from fairopt._deprecation import deprecated_alias
from fairopt.constraints import (
    Constraint,
    DemographicParity,
    DisparateImpact,
    EqualizedOdds,
    EqualOpportunity,
    ErrorRateParity,
    FalsePositiveRateParity,
    ProtectedClassDisparateImpact,
    ProtectedClassParity,
    protected_classes,
)
from fairopt.datasets._builtin import TARGETS
from fairopt.models import MODELS

__all__ = [
    "BENCH_METHODS",
    "CONSTRAINTS",
    "DATASETS",
    "DEFAULT_METHODS",
    "PRESETS",
    "PublishedResult",
    "StudyConfig",
    "check_options",
    "class_constraint",
    "make_constraint",
]

# The bench methods: a method of fairopt.optim (its own METHODS) plus a training recipe, or post-processing. One
# public name per idea, so not METHODS (the old name, kept as a deprecated alias by __getattr__ below).
BENCH_METHODS = (
    "unconstrained",
    "penalty",
    "lagrangian",
    "lagrangian-heldout",
    "proxy-lagrangian",
    "proxy-lagrangian-heldout",
    "thresholds",
    "proxy-lagrangian+thresholds",
)
# The default study's methods (the others are available by name).
DEFAULT_METHODS = tuple(m for m in BENCH_METHODS if m not in ("lagrangian-heldout", "proxy-lagrangian+thresholds"))
DATASETS = ("adult", "compas", "german")

# name -> (factory(tolerance), what the tolerance means)
CONSTRAINTS: dict[str, tuple[Callable[[float], Constraint], str]] = {
    "equalized_odds": (lambda t: EqualizedOdds(t), "max TPR gap and max FPR gap <= tolerance"),
    "equal_opportunity": (lambda t: EqualOpportunity(t), "max TPR gap <= tolerance"),
    "demographic_parity": (lambda t: DemographicParity(t), "max selection-rate gap <= tolerance"),
    "fpr_parity": (lambda t: FalsePositiveRateParity(t), "max FPR gap <= tolerance"),
    "error_rate_parity": (lambda t: ErrorRateParity(t), "max error-rate gap <= tolerance"),
    "p_rule": (lambda p: DisparateImpact(p), "min/max selection-rate ratio >= tolerance (p)"),
}

DEFAULT_SENSITIVE = {"adult": ("sex",), "compas": ("race",), "german": ("sex",)}


def constraint_key(name: str) -> str:
    """A constraint name as :data:`CONSTRAINTS` spells it (``"P-Rule "`` -> ``"p_rule"``)."""
    return name.strip().lower().replace("-", "_")


def value_description(constraint: str, *, classes: bool = False) -> str:
    """What the train / held-out / test columns of a study of ``constraint`` hold, for the table's caption
    (``classes``: the study constrains protected classes against the overall rate, :func:`class_constraint`)."""
    if constraint_key(constraint) != "p_rule":
        return "the constraint's largest entry (e.g. a rate gap)"
    if classes:
        return ("the p%-rule's linear form p * overall rate - a class's selection rate, the largest over the classes "
                "(<= 0 exactly when every class's rate is >= p times the overall)")  # fmt: skip
    return ("the p%-rule's linear form p * max - min of the group selection rates (<= 0 exactly when min/max >= p; "
            "-0.10 means the lowest rate is 0.10 above p times the highest)")  # fmt: skip


def default_tolerance(constraint: str) -> float:
    """0.8 for the p%-rule (the 80% rule), else 0.05 (5 percentage points)."""
    return 0.8 if constraint_key(constraint) == "p_rule" else 0.05


def make_constraint(name: str, tolerance: float) -> Constraint:
    """Build the study's constraint; raises ValueError listing the choices for an unknown name."""
    key = constraint_key(name)
    if key not in CONSTRAINTS:
        raise ValueError(f"unknown constraint {name!r}; choose one of {sorted(CONSTRAINTS)}")
    return CONSTRAINTS[key][0](tolerance)


def class_constraint(
    name: str, tolerance: float, group_names: Sequence[str], classes: Sequence[tuple[str, str]]
) -> Constraint:
    """The study's constraint ``name`` over possibly overlapping protected classes (e.g. race=Black, sex=Female),
    each compared with the overall rate (Cotter et al., ICML 2019, Section 6): a class's rate pools the
    intersectional groups that belong to it. Parity constraints: ``|r_c - r| <= tolerance`` per class and rate of
    the built-in constraint of that name (:class:`~fairopt.constraints.ProtectedClassParity`); ``p_rule``:
    ``r_c >= p * r`` (:class:`~fairopt.constraints.ProtectedClassDisparateImpact`).

    Raises:
        ValueError: an unknown constraint name or out-of-range tolerance; a class that matches no group (the message
            lists the group names).
    """
    key = constraint_key(name)
    built = make_constraint(key, tolerance)
    ids = protected_classes(group_names, classes)
    classes_text = ", ".join(f"{a}={v}" for a, v in classes)
    bound = f"p={tolerance:g}" if key == "p_rule" else f"tolerance={tolerance:g}"
    title = f"{key}({bound}) per class vs overall [{classes_text}]"
    if isinstance(built, DisparateImpact):
        return ProtectedClassDisparateImpact(ids, tolerance, name=title)
    return ProtectedClassParity(built.rates, ids, tolerance, name=title)  # type: ignore[attr-defined]


def __getattr__(name: str) -> Any:
    if name == "class_groups":  # renamed: the library's builder of protected classes
        return deprecated_alias("fairopt.bench.config.class_groups", "fairopt.constraints.protected_classes",
                                protected_classes)  # fmt: skip
    if name == "METHODS":  # renamed: fairopt.optim.METHODS names the optimization methods
        return deprecated_alias("fairopt.bench.config.METHODS", "fairopt.bench.config.BENCH_METHODS", BENCH_METHODS)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def check_options(config: Any, checks: Sequence[tuple[str, bool, str]]) -> torch.device:
    """Check the numeric options every study has (tabular :class:`StudyConfig` and image
    :class:`~fairopt.bench.images.ImageStudyConfig`), then the study's own ``checks`` (``(field name, ok, what a
    valid value is)`` triples), then ``config.device``; returns the device.

    Raises:
        ValueError: ``invalid NAME: VALUE; it must be ...`` for the first failing check (NAME is the field, the
            command-line option with ``-`` for ``_``); a device name torch does not know; a CUDA device where CUDA
            is not available.
    """
    shared = [
        ("audit_fraction", 0 < config.audit_fraction < 1, "a fraction strictly between 0 and 1"),
        ("margin_z", config.margin_z >= 0, ">= 0 (standard errors; 0 = no margin)"),
        ("dual_min_count", config.dual_min_count is None or config.dual_min_count > 0, "> 0, or None (no window)"),
        ("lr", config.lr > 0, "> 0"),
        ("dual_lr", config.dual_lr > 0, "> 0"),
        ("records_per_run", config.records_per_run >= 1, ">= 1"),
        (
            "seeds",
            len(config.seeds) >= 1
            and all(isinstance(x, int) and x >= 0 for x in config.seeds)
            and len(set(config.seeds)) == len(config.seeds),  # a seed twice is one run twice: a spread of 0
            "one or more distinct integers >= 0",
        ),
        ("methods", len(config.methods) >= 1, "one or more method names"),
        ("models", len(config.models) >= 1, "one or more model names"),
    ]
    for name, ok, valid in [*shared, *checks]:
        if not ok:
            raise ValueError(f"invalid {name}: {getattr(config, name)!r}; it must be {valid}")
    try:
        device = torch.device(config.device)
    except RuntimeError:
        raise ValueError(f"invalid device {config.device!r}; e.g. cpu, cuda, cuda:1, mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {config.device!r} asked for, but CUDA is not available here; use --device cpu")
    return device


@dataclass(frozen=True)
class PublishedResult:
    """A published (test error, test violation) pair to compare with, for one method and model."""

    method: str
    test_error: float
    test_violation: float
    source: str
    model: str = "mlp"


@dataclass(frozen=True)
class StudyConfig:
    """Everything that defines a study (most fields are CLI options; see ``fairopt bench --help``).

    Data: ``dataset`` is a bundled name (its target is fixed) or ``"csv:PATH"``, which needs ``csv_target`` (the label
    column) and sensitive columns (``sensitive`` or ``csv_sensitive``); ``csv_positive_label`` lists the target values
    that mean y = 1 when the column is not 0/1 (strings match the values that read the same, see
    :func:`~fairopt.datasets.load_csv`).

    Units: ``tolerance`` in rate units (0.05 = 5 percentage points; for ``p_rule`` it is the ratio p);
    ``lr``/``dual_lr`` are step sizes; ``epochs`` passes over the training split (per model: ``epochs_large`` for
    ``mlp-large``; the CLI's ``--epochs`` sets both); ``train_size`` caps the training split (None = all of it);
    ``batch_size`` None chooses about 50 steps per epoch (:meth:`batch_size_for`); the audit split has
    ``audit_fraction`` times the validation split's size (see the module docstring); ``margin_z`` standard errors is
    the margin of every method with a dual player (0 = none); ``dual_min_count`` examples per group and label in every
    dual table (None = each batch alone).

    Raises:
        ValueError: at construction, for an unknown method, model, dataset or constraint; an out-of-range number; a
            ``csv:`` dataset without a target or sensitive columns; ``csv_target`` (other than the fixed target) or
            ``csv_positive_label`` with a bundled dataset; a CUDA device where CUDA is not available.
    """

    dataset: str = "adult"
    csv_target: str | None = None
    csv_sensitive: tuple[str, ...] = ()
    csv_positive_label: tuple[str, ...] = ()
    sensitive: tuple[str, ...] | None = None
    constraint: str = "equalized_odds"
    tolerance: float = 0.05
    methods: tuple[str, ...] = DEFAULT_METHODS
    models: tuple[str, ...] = ("logistic", "mlp", "mlp-large")
    epochs: int = 20
    epochs_large: int = 100
    seeds: tuple[int, ...] = (0, 1, 2)
    batch_size: int | None = None
    lr: float = 3e-3
    dual_lr: float = 0.2
    penalty: float = 1.0
    proxy: str = "sigmoid"
    train_size: int | None = 2000
    validation_fraction: float = 0.2
    audit_fraction: float = 0.5
    margin_z: float = 1.645
    dual_min_count: float | None = 100.0
    records_per_run: int = 20
    device: str = "cpu"
    classes: tuple[tuple[str, str], ...] = ()
    preset: str | None = None
    published: tuple[PublishedResult, ...] = field(default=())

    def __post_init__(self) -> None:
        for m in self.methods:
            if m not in BENCH_METHODS:
                raise ValueError(f"unknown method {m!r}; choose from {', '.join(BENCH_METHODS)}")
        for m in self.models:
            if m not in MODELS:
                raise ValueError(f"unknown model {m!r}; choose from {', '.join(MODELS)}")
        if not (self.dataset in DATASETS or self.dataset.startswith("csv:")):
            # a file's path without its kind: named with the prefix it needs
            hint = f"did you mean csv:{self.dataset}? " if self.dataset.lower().endswith((".csv", ".csv.gz")) else ""
            raise ValueError(f"unknown dataset {self.dataset!r}; {hint}choose from {', '.join(DATASETS)} or csv:PATH")
        self._check_data_options()
        make_constraint(self.constraint, self.tolerance)
        check_options(
            self,
            [
                ("epochs", self.epochs >= 1, ">= 1"),
                ("epochs_large", self.epochs_large >= 1, ">= 1"),
                (
                    "batch_size",
                    self.batch_size is None or self.batch_size >= 1,
                    ">= 1, or None (automatic: no --batch-size)",
                ),
                ("validation_fraction", 0 < self.validation_fraction < 1, "a fraction strictly between 0 and 1"),
                (
                    "train_size",
                    self.train_size is None or self.train_size >= 10,
                    ">= 10 rows, or None for all (--train-size 0)",
                ),
            ],
        )

    def _check_data_options(self) -> None:
        """The csv-only options are refused for a bundled dataset (never silently ignored); a csv needs its columns."""
        if self.dataset.startswith("csv:"):
            if not self.csv_target or not self.sensitive_attributes():
                raise ValueError(
                    "a csv: dataset needs its label column and sensitive column(s): --target COLUMN --sensitive "
                    "COLUMN[,COLUMN] (csv_target=, sensitive=)"
                )
            return
        fixed = TARGETS[self.dataset]
        own_file = "for your own file use --dataset csv:PATH --target COLUMN --sensitive COLUMN"
        if self.csv_target is not None and self.csv_target != fixed:
            raise ValueError(
                f"--target (csv_target) {self.csv_target!r} is for csv: datasets; the bundled {self.dataset} dataset "
                f"has the fixed target {fixed!r} ({own_file})"
            )
        if self.csv_positive_label:
            raise ValueError(
                f"--positive-label (csv_positive_label) is for csv: datasets; the bundled {self.dataset} dataset's "
                f"target {fixed!r} is already 0/1 ({own_file})"
            )

    def positive_label(self) -> str | tuple[str, ...] | None:
        """``csv_positive_label`` as :func:`~fairopt.datasets.load_csv` takes it: None, one value, or several."""
        if not self.csv_positive_label:
            return None
        return self.csv_positive_label[0] if len(self.csv_positive_label) == 1 else self.csv_positive_label

    def build_constraint(self, group_names: Sequence[str]) -> Constraint:
        """The study's constraint: over the groups, or over ``classes`` when given (:func:`class_constraint`)."""
        if self.classes:
            return class_constraint(self.constraint, self.tolerance, group_names, self.classes)
        return make_constraint(self.constraint, self.tolerance)

    def batch_size_for(self, num_train: int) -> int:
        """``batch_size``, or when None the power of two nearest ``num_train / 48`` within [64, 512]: about 50 steps
        per epoch, so small training sets still get enough steps and large ones are not slowed by tiny batches
        (the dual player's table does not depend on it: see ``dual_min_count``)."""
        if self.batch_size is not None:
            return self.batch_size
        return int(min(512, max(64, 2 ** round(np.log2(max(num_train, 1) / 48)))))

    def epochs_for(self, model: str) -> int:
        """Training epochs of ``model``: ``epochs_large`` for ``mlp-large``, else ``epochs``."""
        return self.epochs_large if model == "mlp-large" else self.epochs

    def sensitive_attributes(self) -> tuple[str, ...]:
        if self.sensitive:
            return self.sensitive
        if self.dataset.startswith("csv:"):
            return self.csv_sensitive
        return DEFAULT_SENSITIVE[self.dataset]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def updated(self, **changes: Any) -> StudyConfig:
        return replace(self, **changes)


_COTTER = "Cotter et al., ICML 2019, Table 2 (50-unit net, hinge proxies, shrinking)"

PRESETS: dict[str, StudyConfig] = {
    # The default: a 5 to 15 minute study on 2 CPU cores showing capacity vs generalization of the constraint.
    "default": StudyConfig(preset="default"),
    # The complete study: all 24,130 training rows (so 12x more steps per epoch; mlp-large gets 40 epochs).
    "full": StudyConfig(train_size=None, epochs=20, epochs_large=40, validation_fraction=0.2, preset="full"),
    "cotter2019-compas": StudyConfig(
        dataset="compas",
        sensitive=("sex", "race"),
        classes=(("race", "African-American"), ("race", "Caucasian"), ("sex", "Female"), ("sex", "Male")),
        constraint="equal_opportunity",
        tolerance=0.05,
        methods=("proxy-lagrangian", "proxy-lagrangian-heldout"),
        models=("mlp",),
        seeds=(0, 1, 2),
        train_size=None,
        epochs=40,
        validation_fraction=0.4,  # of all rows: train 40%, validation 40%, test 20%
        proxy="hinge",
        preset="cotter2019-compas",
        published=(
            PublishedResult("proxy-lagrangian", 0.353, 0.038, _COTTER),
            PublishedResult("proxy-lagrangian-heldout", 0.378, 0.004, _COTTER),
        ),
    ),
    "cotter2019-adult": StudyConfig(
        dataset="adult",
        sensitive=("sex", "race"),
        classes=(("race", "Black"), ("race", "White"), ("sex", "Female"), ("sex", "Male")),
        constraint="p_rule",
        tolerance=0.8,
        methods=("proxy-lagrangian", "proxy-lagrangian-heldout"),
        models=("mlp",),
        seeds=(0, 1, 2),
        train_size=None,
        epochs=10,
        validation_fraction=0.5,  # of the published training file (50/50), test = the published test file
        proxy="hinge",
        preset="cotter2019-adult",
        published=(
            PublishedResult("proxy-lagrangian", 0.156, 0.011, _COTTER),
            PublishedResult("proxy-lagrangian-heldout", 0.169, 0.005, _COTTER),
        ),
    ),
}
