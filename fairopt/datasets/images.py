"""Image fairness datasets: the split container that the image loaders return.

The image loaders (:func:`~fairopt.datasets.load_celeba`, :func:`~fairopt.datasets.load_image_csv`,
:func:`~fairopt.datasets.load_colored_digits`) return an :class:`ImageDataset`, the image twin of
:class:`~fairopt.datasets.TabularDataset`: the same ``train`` / ``validation`` (held out) / ``test`` splits, an
optional ``audit`` split (:meth:`ImageDataset.with_audit`), the same ``(N,)`` float32 labels and ``(N,)`` int64 group
ids with names like ``"Male=1|Young=0"``, and batches in the same order, ``(x, y, group)``; only ``x`` is an image
batch ``(B, C, H, W)`` float32 instead of a feature matrix.

Images stay on disk and are decoded when a batch is drawn (:mod:`fairopt.datasets.image_io`); a small set (the
embedded digits) is held in memory as uint8. Nothing is ever downloaded.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from ._tabular import SPLIT_NAMES, stratified_split
from .image_io import ImageGroupDataset, ImageSize, RowOrigin, image_loader, image_transform

if TYPE_CHECKING:
    from torchvision.transforms import v2

__all__ = ["ImageDataset", "ImageSplit", "as_size", "assemble_images", "check_nonempty", "grouped_split"]

# ---------------------------------------------------------------------------------------- a split


@dataclass(frozen=True, eq=False, repr=False)
class ImageSplit:
    """One split (``train``, ``validation``, ``test`` or ``audit``) of an :class:`ImageDataset`.

    Exactly one of ``paths`` (images on disk, decoded per batch) and ``images`` (held in memory) is set.

    Attributes:
        name: the split's name.
        y: ``(N,)`` float32 labels, exactly 0.0 or 1.0.
        groups: ``(N,)`` int64 group ids in ``[0, G)``.
        index: ``(N,)`` int64 NumPy array, ascending: the rows of :attr:`ImageDataset.frame` in this split.
        paths: ``N`` image file paths, or ``None``.
        images: ``(N, C, H, W)`` uint8 tensor, or ``None``.
    """

    name: str
    y: torch.Tensor
    groups: torch.Tensor
    index: np.ndarray
    paths: tuple[str, ...] | None = None
    images: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = int(self.y.shape[0]) if self.y.dim() == 1 else -1
        if self.y.dtype != torch.float32 or n < 0:
            raise ValueError("y must be a float32 tensor of shape (N,)")
        if self.groups.dtype != torch.int64 or tuple(self.groups.shape) != (n,):
            raise ValueError("groups must be an int64 tensor of shape (N,)")
        if self.index.shape != (n,):
            raise ValueError("index must have shape (N,)")
        if (self.paths is None) == (self.images is None):
            raise ValueError("give exactly one of paths (images on disk) and images (an (N, C, H, W) uint8 tensor)")
        if self.paths is not None and len(self.paths) != n:
            raise ValueError(f"paths has {len(self.paths)} entries for {n} labels")
        if self.images is not None and (
            self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[0] != n
        ):
            raise ValueError("images must be an (N, C, H, W) uint8 tensor")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __repr__(self) -> str:
        where = "in memory" if self.images is not None else "on disk"
        return f"ImageSplit(name={self.name!r}, num_examples={len(self)}, images {where})"

    def subset(self, rows: np.ndarray, name: str | None = None) -> ImageSplit:
        """The split of the given positions (``(n,)`` ints into this split, kept ascending), named ``name``."""
        rows = np.sort(np.asarray(rows, dtype=np.int64))
        keep = torch.as_tensor(rows)
        return ImageSplit(
            name or self.name,
            self.y[keep],
            self.groups[keep],
            self.index[rows],
            paths=None if self.paths is None else tuple(self.paths[i] for i in rows.tolist()),
            images=None if self.images is None else self.images[keep],
        )


# ----------------------------------------------------------------------------------- dataset


@dataclass(frozen=True, eq=False, repr=False)
class ImageDataset:
    """An image fairness dataset, split: the image twin of :class:`~fairopt.datasets.TabularDataset`.

    Attributes:
        name: ``"celeba"``, ``"colored_digits"``, or the metadata file's stem.
        train, validation, test: the three :class:`ImageSplit` s; ``validation`` is held out (model selection and
            held-out constraint estimates, e.g. the duals of the two-dataset game).
        group_names: ``G`` names, ``group_names[g]`` for id ``g`` (``"Male=1|Young=0"``); every combination of the
            sensitive attributes' categories has an id, absent ones included.
        sensitive: the sensitive attributes, first = most significant digit of the group id.
        target: the label's name.
        frame: the metadata table (one row per image, all splits); ``ImageSplit.index`` points into it.
        image_size: model input ``(H, W)`` in pixels, ``None``: as decoded.
        mean, std: per-channel normalization on the [0, 1] scale (``C`` values each).
        hflip: whether training augmentation may mirror images (a mirror image keeps the label).
        center_crop: crop before resizing, or ``None``.
        origin: where :attr:`frame` rows came from (for error messages).
        audit: optional held-out split for estimates on new data only, never for training or model selection
            (see :meth:`with_audit`); ``None`` unless a loader's ``audit_fraction`` or a split column made one.
        patients: ``(len(frame),)`` int64 patient code per frame row when images of one patient must stay in one
            split (:meth:`with_audit` then moves whole patients), ``None`` when images are independent.
    """

    name: str
    train: ImageSplit
    validation: ImageSplit
    test: ImageSplit
    group_names: tuple[str, ...]
    sensitive: tuple[str, ...]
    target: str
    frame: pd.DataFrame
    image_size: tuple[int, int] | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hflip: bool
    origin: RowOrigin
    center_crop: ImageSize | None = None
    audit: ImageSplit | None = None
    patients: np.ndarray | None = None

    @property
    def num_groups(self) -> int:
        """Number of groups ``G`` (all combinations of the sensitive attributes' categories)."""
        return len(self.group_names)

    @property
    def channels(self) -> int:
        """Image channels ``C`` of the model input (3: RGB, 1: grayscale)."""
        return len(self.mean)

    def split(self, name: str) -> ImageSplit:
        """Split ``"train"``, ``"validation"``, ``"test"`` or (when present) ``"audit"``."""
        if name == "audit":
            if self.audit is None:
                raise ValueError("this dataset has no audit split; make one with dataset.with_audit(fraction)")
            return self.audit
        if name not in SPLIT_NAMES:
            raise ValueError(f"unknown split {name!r}; valid choices: {', '.join(SPLIT_NAMES)}, audit")
        return getattr(self, name)

    def splits(self) -> Iterator[ImageSplit]:
        """Iterate over train, validation and test."""
        return iter((self.train, self.validation, self.test))

    def with_audit(self, fraction: float = 0.5, *, seed: int | None = 0) -> ImageDataset:
        """Move ``fraction`` of the validation images into an *audit* split, stratified by group and label.

        As :meth:`TabularDataset.with_audit <fairopt.datasets.TabularDataset.with_audit>`: the training split trains
        θ, the remaining validation split drives held-out duals and chooses the final model, and the audit split
        only *estimates* what that model does on new data, so the estimate comes from images that neither trained
        nor selected it. With :attr:`patients` set, whole patients move (no patient in both splits).

        Raises:
            ValueError: ``fraction`` not in (0, 1); fewer than 2 validation images; an audit split exists already.
        """
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"fraction must be in (0, 1), got {fraction!r}")
        if self.audit is not None:
            raise ValueError("this dataset has an audit split already; carve it once")
        v = self.validation
        if len(v) < 2:
            raise ValueError(f"the validation split has {len(v)} images; an audit split needs at least 2")
        strata = v.groups.numpy() * 2 + v.y.numpy().astype(np.int64)
        if self.patients is None:
            keep, audit = stratified_split(strata, [1.0 - fraction, fraction], seed)
        else:
            keep, audit = grouped_split(self.patients[v.index], strata, [1.0 - fraction, fraction], seed)
        if len(keep) == 0 or len(audit) == 0:
            raise ValueError(
                f"carving {fraction} of {len(v)} validation images leaves an empty split; use a fraction nearer 0.5"
            )
        return replace(self, validation=v.subset(keep), audit=v.subset(audit, "audit"))

    def subsample_train(self, size: int, *, seed: int = 0) -> ImageDataset:
        """A copy whose training split keeps ``size`` images drawn without replacement (seeded); the other splits
        and the normalization (fitted on the full training split) stay. Small training sets make over-parameterized
        nets interpolate quickly (the setting of the capacity sweeps).

        Raises:
            ValueError: ``size`` not in ``[1, len(train)]``.
        """
        n = len(self.train)
        if not 1 <= size <= n:
            raise ValueError(f"size must be in [1, {n}] (the training split's size), got {size}")
        order = np.random.default_rng(seed).permutation(n)
        return replace(self, train=self.train.subset(order[:size]))

    def group_counts(self) -> dict[str, np.ndarray]:
        """Images per group of every split (``audit`` too when present): ``(G,)`` int64 counts in id order."""
        parts = [*self.splits(), *(() if self.audit is None else (self.audit,))]
        return {p.name: np.bincount(p.groups.numpy(), minlength=self.num_groups).astype(np.int64) for p in parts}

    def transform(self, *, augment: bool = False) -> v2.Compose:
        """The dataset's :func:`image_transform` (its size, crop, normalization; flips only when :attr:`hflip`)."""
        return image_transform(
            self.image_size,
            mean=self.mean,
            std=self.std,
            augment=augment,
            hflip=self.hflip,
            center_crop=self.center_crop,
        )

    def dataset(self, split: str, *, augment: bool = False) -> ImageGroupDataset:
        """An :class:`ImageGroupDataset` over a split, with :meth:`transform` (``augment`` only for training)."""
        return ImageGroupDataset(
            self.split(split), self.transform(augment=augment), channels=self.channels, origin=self.origin
        )

    def loader(
        self,
        split: str,
        batch_size: int = 128,
        *,
        shuffle: bool | None = None,
        augment: bool = False,
        seed: int | None = None,
        num_workers: int = 0,
        **kwargs: Any,
    ) -> DataLoader:
        """A DataLoader over a split yielding ``(x, y, group)``: ``(B, C, H, W)`` float32, ``(B,)`` float32,
        ``(B,)`` int64.

        ``shuffle`` defaults to ``True`` for ``"train"`` and ``False`` otherwise; see :func:`image_loader` for
        workers, pinned memory and the rest.
        """
        if shuffle is None:
            shuffle = split == "train"
        data = self.dataset(split, augment=augment)
        return image_loader(data, batch_size, shuffle=shuffle, seed=seed, num_workers=num_workers, **kwargs)

    def tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A whole split as tensors ``(X, y, groups)``: ``(N, C, H, W)`` float32 (transformed, no augmentation),
        ``(N,)`` float32, ``(N,)`` int64. In-memory images are transformed as one batch; files are decoded one by one,
        so keep this for small splits and use :meth:`loader` otherwise."""
        part = self.split(split)
        transform = self.transform()
        if part.images is not None:
            X = transform(part.images)
        else:
            data = ImageGroupDataset(part, transform, channels=self.channels, origin=self.origin)
            X = torch.stack([data[i][0] for i in range(len(data))]) if len(data) else torch.zeros(0)
        return X, part.y, part.groups

    def __repr__(self) -> str:
        audit = "" if self.audit is None else f", audit={len(self.audit)}"
        return (
            f"ImageDataset(name={self.name!r}, train={len(self.train)}, validation={len(self.validation)}, "
            f"test={len(self.test)}{audit}, num_groups={self.num_groups}, sensitive={self.sensitive!r}, "
            f"target={self.target!r}, image_size={self.image_size})"
        )


def as_size(image_size: ImageSize | None, what: str = "image_size") -> tuple[int, int] | None:
    """``(H, W)`` from an int or a pair; ``None`` stays ``None``. Raises ``ValueError`` for non-positive sizes."""
    if image_size is None:
        return None
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ValueError(f"{what} must be a positive int or an (H, W) pair of positive ints, got {image_size!r}")
    return (int(size[0]), int(size[1]))


def assemble_images(
    *,
    name: str,
    frame: pd.DataFrame,
    labels: np.ndarray,
    group_ids: np.ndarray,
    group_names: Sequence[str],
    sensitive: Sequence[str],
    target: str,
    split_index: dict[str, np.ndarray],
    origin: RowOrigin,
    image_size: tuple[int, int] | None,
    mean: Sequence[float],
    std: Sequence[float],
    hflip: bool,
    paths: np.ndarray | None = None,
    images: torch.Tensor | None = None,
    center_crop: ImageSize | None = None,
    patients: np.ndarray | None = None,
) -> ImageDataset:
    """Build the splits (``split_index``: split name -> frame rows, ``train``/``validation``/``test`` and optionally
    ``audit``) from ``(N,)`` labels 0/1, ``(N,)`` group ids and either ``(N,)`` paths or ``(N, C, H, W)`` uint8
    images."""
    y_all = torch.as_tensor(np.asarray(labels, dtype=np.float32))
    g_all = torch.as_tensor(np.asarray(group_ids, dtype=np.int64))
    parts: dict[str, ImageSplit] = {}
    for split_name, rows in split_index.items():
        index = np.sort(np.asarray(rows, dtype=np.int64))
        keep = torch.as_tensor(index)
        parts[split_name] = ImageSplit(
            split_name,
            y_all[keep],
            g_all[keep],
            index,
            paths=None if paths is None else tuple(str(p) for p in paths[index]),
            images=None if images is None else images[keep],
        )
    return ImageDataset(
        name=name,
        train=parts["train"],
        validation=parts["validation"],
        test=parts["test"],
        group_names=tuple(group_names),
        sensitive=tuple(sensitive),
        target=target,
        frame=frame,
        image_size=image_size,
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        hflip=hflip,
        origin=origin,
        center_crop=center_crop,
        audit=parts.get("audit"),
        patients=patients,
    )


def check_nonempty(sizes: dict[str, int], hint: str) -> None:
    """``ValueError`` naming the empty splits among ``train``, ``validation``, ``test`` (an ``audit`` split, when
    asked for, too): a held-out number needs held-out images. ``hint`` says where the split came from."""
    empty = [name for name, n in sizes.items() if n == 0]
    if empty:
        shown = ", ".join(f"{k} {v}" for k, v in sizes.items())
        raise ValueError(f"split(s) {', '.join(map(repr, empty))} would be empty ({shown} images): {hint}")


def grouped_split(
    units: np.ndarray, strata: np.ndarray, fractions: Sequence[float], seed: int | None
) -> list[np.ndarray]:
    """Split rows ``0..N-1`` into ``len(fractions)`` disjoint, seeded parts that never divide a unit (a patient).

    ``units`` and ``strata`` are ``(N,)``: each row's unit (any hashable codes) and stratum (int). Units are
    stratified by their first row's stratum, shuffled within strata (``numpy.random.default_rng(seed)``), and dealt
    out whole, each to the part furthest below its share of the rows dealt so far (the rule of the tabular
    ``stratified_split``, counted in rows). Part sizes then match the fractions to within one unit's rows.

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
