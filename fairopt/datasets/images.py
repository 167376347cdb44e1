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

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from fairopt.groups import Groups
from fairopt.samplers import GroupBalancedBatchSampler

from ._splits import Split, SplitDataset, check_nonempty, grouped_split
from .image_io import ImageGroupDataset, ImageSize, RowOrigin, image_loader, image_transform, stack_images

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
class ImageDataset(SplitDataset):
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

    _unit: ClassVar[str] = "images"

    def _units(self, part: Split) -> np.ndarray | None:
        return None if self.patients is None else self.patients[part.index]

    @property
    def channels(self) -> int:
        """Image channels ``C`` of the model input (3: RGB, 1: grayscale)."""
        return len(self.mean)

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
        pin_memory: bool | None = None,
        persistent_workers: bool | None = None,
        drop_last: bool | None = None,
        balance: str | None = None,
        **kwargs: Any,
    ) -> DataLoader:
        """A DataLoader over a split yielding ``(x, y, group)``: ``(B, C, H, W)`` float32, ``(B,)`` float32,
        ``(B,)`` int64.

        Defaults differ between training and evaluation, as in timm's loaders: for ``"train"`` the batches are
        shuffled and the last incomplete batch is dropped (``drop_last``), so every training batch holds
        ``batch_size`` images: a BatchNorm network cannot normalize a batch of one image in training mode (PyTorch
        raises once a feature map is 1x1), and a small last batch gives noisy rates. The other splits keep every
        image, in order (evaluation runs the network in eval mode, where a batch of one is fine).

        Args:
            split: ``"train"``, ``"validation"``, ``"test"`` or ``"audit"``.
            batch_size: images per batch.
            shuffle: reshuffle every epoch (default: for ``"train"`` only).
            augment: random resized crop and (where :attr:`hflip`) mirror (:meth:`transform`); training only.
            seed: seeds the order (and the workers' augmentation, see :func:`image_loader`).
            num_workers: as :func:`image_loader`: 0 workers (decode in the main
                process), pinned memory when CUDA is available, persistent workers when there are workers.
            pin_memory: see ``num_workers``.
            persistent_workers: see ``num_workers``.
            drop_last: drop the last incomplete batch (default: for ``"train"`` only).
            balance: ``None`` (default), ``"group"`` or ``"group_label"``: draw the batches with a
                :class:`~fairopt.samplers.GroupBalancedBatchSampler` (every batch holds each group, or group and
                label, to within one image; seeded by ``seed``, default 0; call ``loader.batch_sampler.set_epoch(e)``
                each epoch for new batches). Use it when a group is so rare that most batches hold none of it;
                see :mod:`fairopt.samplers` for when the optimizer's running dual table suffices instead.
            **kwargs: passed to ``DataLoader`` through :func:`image_loader` (e.g. ``prefetch_factor``).

        Raises:
            ValueError: with ``drop_last``, a split smaller than ``batch_size`` (no batch would be drawn); an
                unknown ``balance``, or ``shuffle``/``drop_last`` with it; what :func:`image_loader` and the
                sampler raise (e.g. a group without images).

        Warns:
            UserWarning: a training loader without ``drop_last`` whose last batch would hold one image.
        """
        part = self.split(split)
        training = split == "train"
        data = self.dataset(split, augment=augment)
        options = dict(num_workers=num_workers, pin_memory=pin_memory, persistent_workers=persistent_workers)
        if balance is not None:
            if balance not in ("group", "group_label"):
                raise ValueError(f"balance must be None, 'group' or 'group_label', got {balance!r}")
            if shuffle or drop_last:
                raise ValueError("shuffle and drop_last do not apply with balance=: the balanced sampler decides")
            sampler = GroupBalancedBatchSampler(
                part.groups,
                batch_size,
                labels=part.y if balance == "group_label" else None,
                num_groups=self.num_groups,
                seed=0 if seed is None else seed,
            )
            return image_loader(data, batch_sampler=sampler, seed=seed, **options, **kwargs)
        shuffle = training if shuffle is None else shuffle
        drop_last = training if drop_last is None else drop_last
        n = len(part)
        if drop_last and n < batch_size:
            raise ValueError(
                f"the {split} split has {n} images, fewer than batch_size={batch_size}: with drop_last (the default "
                f"for training) no batch would be drawn; use batch_size <= {n}, or drop_last=False for one smaller "
                "batch per epoch"
            )
        if training and not drop_last and isinstance(batch_size, int) and batch_size > 1 and n % batch_size == 1:
            warnings.warn(
                f"the last training batch holds 1 of the {n} images (batch_size={batch_size}); a BatchNorm network "
                "cannot normalize it in training mode: use drop_last=True (the default for training) or another "
                "batch_size",
                UserWarning,
                stacklevel=2,
            )
        return image_loader(data, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last, **options, **kwargs)

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
            X = stack_images([data[i][0] for i in range(len(data))]) if len(data) else torch.zeros(0)
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
    groups: Groups,
    group_ids: np.ndarray,
    target: str,
    split_index: dict[str, np.ndarray],
    origin: RowOrigin,
    image_size: ImageSize | None,
    mean: Sequence[float],
    std: Sequence[float],
    hflip: bool,
    paths: np.ndarray | None = None,
    images: torch.Tensor | None = None,
    center_crop: ImageSize | None = None,
    patients: np.ndarray | None = None,
    audit_fraction: float = 0.0,
    seed: int | None = 0,
) -> ImageDataset:
    """The tail every image loader shares, after it has parsed its rows: build the splits, then carve the audit
    split.

    ``split_index`` maps split names (``train``, ``validation``, ``test``, optionally ``audit``) to frame rows;
    ``labels`` are ``(N,)`` 0/1, ``group_ids`` ``(N,)`` ids of ``groups`` (whose names and attributes the dataset
    takes), and the images are either ``(N,)`` ``paths`` or ``(N, C, H, W)`` uint8 ``images``. With
    ``audit_fraction > 0``, that share of the validation split becomes the audit split
    (:meth:`ImageDataset.with_audit`, seeded by ``seed``).

    Raises:
        ValueError: a bad ``image_size``; what :meth:`ImageDataset.with_audit` raises.
    """
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
    data = ImageDataset(
        name=name,
        train=parts["train"],
        validation=parts["validation"],
        test=parts["test"],
        group_names=tuple(groups.names),
        sensitive=tuple(groups.attributes),
        target=target,
        frame=frame,
        image_size=as_size(image_size),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        hflip=hflip,
        origin=origin,
        center_crop=center_crop,
        audit=parts.get("audit"),
        patients=patients,
    )
    return data.with_audit(audit_fraction, seed=seed) if audit_fraction else data
