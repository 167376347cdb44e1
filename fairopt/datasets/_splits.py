"""Seeded splitting and the split-level operations that every dataset container shares.

One implementation for tables and images: :func:`stratified_split` (rows), :func:`grouped_split` (whole units, e.g.
patients), the checks of fractions and of empty splits, and :class:`SplitDataset`, the base of
:class:`~fairopt.datasets.TabularDataset` and :class:`~fairopt.datasets.ImageDataset` that gives both the same
``split`` / ``splits`` / ``group_counts`` / ``with_audit`` / ``subsample_train``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any, ClassVar, Protocol, TypeVar

import numpy as np
import torch

__all__ = [
    "SPLIT_ALIASES",
    "SPLIT_NAMES",
    "Split",
    "SplitDataset",
    "check_fractions",
    "check_nonempty",
    "grouped_split",
    "stratified_split",
]

SPLIT_NAMES: tuple[str, ...] = ("train", "validation", "test")

SPLIT_ALIASES: dict[str, str] = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "validate": "validation",  # MIMIC-CXR's mimic-cxr-2.0.0-split.csv
    "dev": "validation",
    "test": "test",
    "audit": "audit",
}
"""Values of a split column (compared after ``str(value).strip().lower()``) and the split each names."""


# ------------------------------------------------------------------------------------------- splitting


def stratified_split(
    strata: np.ndarray,
    fractions: Sequence[float],
    seed: int | None,
) -> list[np.ndarray]:
    """Split rows ``0..N-1`` into ``len(fractions)`` disjoint, seeded parts.

    Rows are shuffled within each stratum (with ``numpy.random.default_rng(seed)``),
    strata are concatenated in sorted order, and rows are dealt out so that every
    prefix holds the requested proportions to within one row (largest deficit
    first). Hence every part has ``round(N * fraction)`` rows to within one row,
    and every stratum is split proportionally to within one row per part.

    Returns the parts' row indices, each sorted ascending (int64).
    """
    fractions_arr = np.asarray(fractions, dtype=np.float64)
    rng = np.random.default_rng(seed)
    order_parts = []
    for stratum in np.unique(strata):
        members = np.flatnonzero(strata == stratum)
        order_parts.append(members[rng.permutation(len(members))])
    order = np.concatenate(order_parts) if order_parts else np.zeros(0, np.int64)
    assigned = np.zeros(len(fractions_arr), dtype=np.float64)
    part_of = np.empty(len(order), dtype=np.int64)
    for position in range(len(order)):
        deficit = (position + 1) * fractions_arr - assigned
        part = int(np.argmax(deficit))
        part_of[position] = part
        assigned[part] += 1
    return [np.sort(order[part_of == k]).astype(np.int64) for k in range(len(fractions_arr))]


def grouped_split(
    units: np.ndarray, strata: np.ndarray, fractions: Sequence[float], seed: int | None
) -> list[np.ndarray]:
    """Split rows ``0..N-1`` into ``len(fractions)`` disjoint, seeded parts that never divide a unit (a patient).

    ``units`` and ``strata`` are ``(N,)``: each row's unit (any hashable codes) and stratum (int). Units are
    stratified by their first row's stratum, shuffled within strata (``numpy.random.default_rng(seed)``), and dealt
    out whole, each to the part furthest below its share of the rows dealt so far (the rule of
    :func:`stratified_split`, counted in rows). Part sizes then match the fractions to within one unit's rows.

    Returns:
        The parts' row indices, each ascending (int64).
    """
    shares = np.asarray(fractions, dtype=np.float64)
    _, first, inverse = np.unique(units, return_index=True, return_inverse=True)
    sizes = np.bincount(inverse)
    unit_strata = np.asarray(strata)[first]
    rng = np.random.default_rng(seed)
    order = [
        members[rng.permutation(len(members))]
        for members in (np.flatnonzero(unit_strata == s) for s in np.unique(unit_strata))
    ]
    assigned = np.zeros(len(shares))
    part_of_unit = np.empty(len(sizes), dtype=np.int64)
    dealt = 0
    for unit in np.concatenate(order).tolist() if order else []:
        dealt += sizes[unit]
        part = int(np.argmax(dealt * shares - assigned))
        part_of_unit[unit] = part
        assigned[part] += sizes[unit]
    part_of_row = part_of_unit[inverse]
    return [np.flatnonzero(part_of_row == k).astype(np.int64) for k in range(len(shares))]


def check_fractions(validation_fraction: float, test_fraction: float | None) -> None:
    """Raise ``ValueError`` unless the fractions leave a non-empty training share."""
    values = {"validation_fraction": validation_fraction}
    if test_fraction is not None:
        values["test_fraction"] = test_fraction
    for name, value in values.items():
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    if sum(values.values()) >= 1.0:
        raise ValueError(f"validation_fraction + test_fraction must be < 1, got {values}")


def check_nonempty(sizes: dict[str, int], hint: str, unit: str = "images") -> None:
    """``ValueError`` naming the empty splits among ``sizes`` (split name -> examples): a held-out number needs
    held-out examples. ``hint`` says where the split came from (the file and column) and how to fix it."""
    empty = [name for name, n in sizes.items() if n == 0]
    if empty:
        shown = ", ".join(f"{k} {v}" for k, v in sizes.items())
        raise ValueError(f"split(s) {', '.join(map(repr, empty))} would be empty ({shown} {unit}): {hint}")


# ------------------------------------------------------------------------------- the shared container


class Split(Protocol):
    """What :class:`SplitDataset` needs of a split: ``(N,)`` float32 ``y``, ``(N,)`` int64 ``groups``, ``(N,)``
    int64 ``index`` into the dataset's frame, ``len``, and ``subset(rows, name)``."""

    name: str
    y: torch.Tensor
    groups: torch.Tensor
    index: np.ndarray

    def __len__(self) -> int: ...

    def subset(self, rows: np.ndarray, name: str | None = None) -> Any: ...


D = TypeVar("D", bound="SplitDataset")


class SplitDataset:
    """The split-level operations of a (frozen dataclass) dataset with ``train``, ``validation``, ``test`` and an
    optional ``audit`` :class:`Split`, and ``group_names``: the base of ``TabularDataset`` and ``ImageDataset``.

    Subclasses name their examples (``_unit``: ``"rows"``, ``"images"``) and, where examples come in units that must
    stay in one split (a patient's images), give each example's unit code (:meth:`_units`).
    """

    _unit: ClassVar[str] = "rows"
    train: Any
    validation: Any
    test: Any
    audit: Any
    group_names: tuple[str, ...]

    def _units(self, part: Split) -> np.ndarray | None:
        """``(len(part),)`` unit code (patient) of each example of ``part``; ``None``: examples are independent."""
        return None

    @property
    def num_groups(self) -> int:
        """Number of groups ``G`` (all combinations of the sensitive attributes' categories, absent ones too)."""
        return len(self.group_names)

    def split(self, name: str) -> Any:
        """Split ``"train"``, ``"validation"``, ``"test"`` or (after :meth:`with_audit`) ``"audit"``.

        Raises:
            ValueError: an unknown name, or ``"audit"`` when there is no audit split.
        """
        if name == "audit":
            if self.audit is None:
                raise ValueError("this dataset has no audit split; make one with dataset.with_audit(fraction)")
            return self.audit
        if name not in SPLIT_NAMES:
            # "valid", "val", "Test": what a split column may hold names a split here by its one name
            meant = SPLIT_ALIASES.get(name.strip().lower()) if isinstance(name, str) else None
            hint = f"did you mean {meant!r}? " if meant is not None else ""
            raise ValueError(f"unknown split {name!r}; {hint}valid choices: {', '.join(SPLIT_NAMES)}, audit")
        return getattr(self, name)

    def splits(self) -> Iterator[Any]:
        """Iterate over train, validation and test."""
        return iter((self.train, self.validation, self.test))

    def group_counts(self) -> dict[str, np.ndarray]:
        """Examples per group of every split: split name (``train``, ``validation``, ``test``, and ``audit`` when
        present) -> ``(G,)`` int64 counts in group-id order (an absent group counts 0)."""
        parts = [*self.splits(), *(() if self.audit is None else (self.audit,))]
        return {p.name: np.bincount(p.groups.numpy(), minlength=self.num_groups).astype(np.int64) for p in parts}

    def with_audit(self: D, fraction: float = 0.5, *, seed: int | None = 0) -> D:
        """Move ``fraction`` of the validation examples into a separate *audit* split, stratified by group and label.

        Three roles for data, never confused: the training split trains θ; the (remaining) validation split drives
        held-out duals and chooses the final model; the audit split *estimates* what the final model does on new
        data. A model chosen because it looks feasible on some data is optimistic there (a selection effect), so
        an estimate for new data must come from examples that neither trained nor selected it. The cost is
        ``fraction`` of the validation examples: larger intervals for the validation-driven game, an unbiased
        held-out estimate. Where examples come in units (an image dataset's patients), whole units move
        (:func:`grouped_split`), so no patient is in both splits.

        Returns:
            A copy whose ``validation`` keeps ``1 - fraction`` of the examples and whose ``audit`` holds the rest.

        Raises:
            ValueError: ``fraction`` not in (0, 1); fewer than 2 validation examples; an audit split exists already
                (its examples would be lost); the carve-out leaves the validation or the audit split empty.
        """
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"fraction must be in (0, 1), got {fraction!r}")
        if self.audit is not None:
            raise ValueError(f"this dataset has an audit split already ({len(self.audit)} {self._unit}); carve it once")
        v = self.validation
        if len(v) < 2:
            raise ValueError(f"the validation split has {len(v)} {self._unit}; an audit split needs at least 2")
        strata = v.groups.numpy() * 2 + v.y.numpy().astype(np.int64)
        units = self._units(v)
        if units is None:
            keep, audit = stratified_split(strata, [1.0 - fraction, fraction], seed)
        else:
            keep, audit = grouped_split(units, strata, [1.0 - fraction, fraction], seed)
        if len(keep) == 0 or len(audit) == 0:
            raise ValueError(
                f"carving {fraction} of the {len(v)} validation {self._unit} leaves the "
                f"{'audit' if len(audit) == 0 else 'validation'} split empty; use a fraction nearer 0.5"
            )
        return replace(self, validation=v.subset(keep), audit=v.subset(audit, "audit"))  # type: ignore[type-var]

    def subsample_train(self: D, size: int, *, seed: int = 0, audit_size: int = 0) -> D:
        """A copy whose training split keeps ``size`` examples drawn without replacement (seeded).

        Preprocessing and normalization stay as fitted on the full training split (no validation or test data
        involved); the validation and test splits are unchanged. Small training sets make over-parameterized models
        interpolate quickly (the setting of the capacity sweeps). ``audit_size > 0`` makes an ``audit`` split of
        that many of the examples left out (examples that then neither train nor select anything; see
        :meth:`with_audit`).

        Raises:
            ValueError: ``size`` not in ``[1, len(train)]``; ``audit_size`` not in ``[0, len(train) - size]``;
                ``audit_size`` where examples come in units (patients), since a patient could then be in both splits
                (use :meth:`with_audit`).
        """
        n = len(self.train)
        if not 1 <= size <= n:
            raise ValueError(f"size must be in [1, {n}] (the training split's size), got {size}")
        if not 0 <= audit_size <= n - size:
            raise ValueError(f"audit_size must be in [0, {n - size}] (the {self._unit} left out), got {audit_size}")
        if audit_size and self._units(self.train) is not None:
            raise ValueError(
                "audit_size would split patients between the training and the audit split; carve the audit split "
                "from the validation split with with_audit(fraction), which moves whole patients"
            )
        order = np.random.default_rng(seed).permutation(n)
        audit = self.train.subset(order[size : size + audit_size], "audit") if audit_size else self.audit
        return replace(self, train=self.train.subset(order[:size]), audit=audit)  # type: ignore[type-var]
