"""Decoding, transforms and loading of images: the torchvision side of the image data path.

Images are decoded when a batch is drawn (``torchvision.io.read_file`` + ``decode_image``), then resized and
normalized with ``torchvision.transforms.v2``; :class:`ImageGroupDataset` serves ``(image, label, group)`` and
:func:`image_loader` sets up the DataLoader (workers, pinned memory, persistent workers). torchvision (>= 0.16, for
``transforms.v2.ToDtype(scale=True)``) is imported when first needed, so ``import fairopt.datasets`` works without it.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

if TYPE_CHECKING:
    from torchvision.transforms import v2

    from .images import ImageSplit

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageGroupDataset",
    "RowOrigin",
    "collate_images",
    "decode_image_file",
    "image_loader",
    "image_transform",
    "stack_images",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
"""Per-channel mean (RGB, pixel values scaled to [0, 1]) of ImageNet: what timm and torchvision pretrained weights
expect, the default normalization of image files."""
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
"""Per-channel standard deviation of ImageNet (RGB, values in [0, 1]), paired with :data:`IMAGENET_MEAN`."""

ImageSize = int | tuple[int, int]


def torchvision_module() -> Any:
    """torchvision, imported on first use; a clear ``ImportError`` naming the install command when it is absent."""
    try:
        import torchvision
        from torchvision.transforms import v2  # noqa: F401  (>= 0.16)
    except ImportError as error:
        raise ImportError(
            "fairopt's image datasets decode and transform images with torchvision >= 0.16, which is not "
            f"installed ({error}); install it with: pip install torchvision"
        ) from None
    return torchvision


# --------------------------------------------------------------------------- where a row came from


@dataclass(frozen=True)
class RowOrigin:
    """Where the rows of :attr:`ImageDataset.frame` came from, to name file, line and column in error messages.

    Attributes:
        source: the metadata file (or ``"<DataFrame>"``, ``"digits"``).
        first_line: the file's line number of frame row 0 (``None``: not a text file).
        column: the column naming each row's image file.
    """

    source: str
    first_line: int | None
    column: str

    def describe(self, row: int, column: str | None = None) -> str:
        """``"list_attr_celeba.txt line 7, column 'image_id'"`` for frame row ``row`` (``column``: another one)."""
        where = f"row {row}" if self.first_line is None else f"line {row + self.first_line}"
        return f"{self.source} {where}, column {(column or self.column)!r}"


# ---------------------------------------------------------------------------------- transforms


def image_transform(
    image_size: ImageSize | None,
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    augment: bool = False,
    hflip: bool = True,
    center_crop: ImageSize | None = None,
) -> v2.Compose:
    """The ``transforms.v2`` pipeline from a decoded uint8 image to the model's input.

    ``(C, H, W)`` (or a batch ``(B, C, H, W)``) uint8 -> [center crop] -> resize to ``image_size`` (antialiased) ->
    float32 in [0, 1] -> ``(x - mean) / std`` per channel. With ``augment=True`` (training only) the resize becomes a
    random resized crop (scale 0.8-1 of the area) and, when ``hflip``, a random horizontal flip follows; both draw
    from torch's RNG (seeded per worker by the DataLoader's generator).

    Args:
        image_size: output ``(H, W)`` in pixels (an int: square); ``None`` keeps the decoded size (no resize).
        mean, std: ``C`` per-channel values on the [0, 1] scale.
        augment: add the random crop and flip.
        hflip: whether a mirror image keeps the label (faces, skin: yes; digits, chest X-rays: no).
        center_crop: crop to this size before resizing (e.g. 178 for CelebA's 178x218 faces), or ``None``.

    Raises:
        ValueError: ``std`` has a non-positive entry, or ``mean`` and ``std`` differ in length.
    """
    torchvision_module()
    from torchvision.transforms import v2

    if len(mean) != len(std):
        raise ValueError(f"mean has {len(mean)} channels but std has {len(std)}")
    if any(s <= 0 for s in std):
        raise ValueError(f"std must be positive in every channel, got {tuple(std)}")
    steps: list[Any] = []
    if center_crop is not None:
        steps.append(v2.CenterCrop(center_crop))
    if augment and image_size is not None:
        steps.append(v2.RandomResizedCrop(image_size, scale=(0.8, 1.0), antialias=True))
    elif image_size is not None:
        steps.append(v2.Resize(image_size, antialias=True))
    if augment and hflip:
        steps.append(v2.RandomHorizontalFlip())
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(steps)


def decode_image_file(path: str, *, channels: int = 3, where: str = "") -> torch.Tensor:
    """Read and decode one image file (JPEG, PNG, WebP, GIF) with ``torchvision.io``.

    Args:
        path: the file.
        channels: 3 (RGB) or 1 (grayscale): the decoded image is converted to it, whatever the file holds.
        where: the metadata row that names the file (e.g. ``"list_attr_celeba.txt line 7, column 'image_id'"``),
            added to every error message.

    Returns:
        ``(channels, H, W)`` uint8 tensor.

    Raises:
        FileNotFoundError: no file at ``path`` (the message names it and ``where``).
        PermissionError: the file cannot be read (permissions).
        ValueError: the file is empty, or cannot be decoded (corrupt, truncated, or not an image); the message names
            the path, ``where`` and torchvision's reason.
    """
    torchvision_module()
    from torchvision.io import ImageReadMode, decode_image

    suffix = f" ({where})" if where else ""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise FileNotFoundError(f"image file {path} not found{suffix}") from None
    except PermissionError as error:
        raise PermissionError(
            f"cannot read image file {path}{suffix}: {error.strerror}; check its permissions"
        ) from None
    if not data:
        raise ValueError(f"image file {path}{suffix} is empty (0 bytes); is it a valid image?")
    mode = ImageReadMode.RGB if channels == 3 else ImageReadMode.GRAY
    try:
        with warnings.catch_warnings():
            # torchvision 0.29 deprecates its image codecs for TorchCodec's and warns on every call: once per image.
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.")
            return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=mode)
    except RuntimeError as error:
        # torchvision's messages read "decode_jpeg, <C++ source file>:<line>, <reason>": keep the reason.
        match = re.match(r"^\w+, \S+:\d+, (.*)$", str(error), flags=re.DOTALL)
        reason = (match.group(1) if match else str(error)).rstrip(". ")
        raise ValueError(f"cannot decode image file {path}{suffix}: {reason}; is it a valid image?") from None


# --------------------------------------------------------------------------------- torch dataset


class ImageGroupDataset(Dataset):
    """A ``torch.utils.data.Dataset`` over an :class:`ImageSplit`: item ``i`` is ``(image, label, group)``.

    * ``image``: ``(C, H, W)`` float32, decoded (files) or taken from memory, then ``transform`` ed;
    * ``label``: ``()`` float32, 0.0 or 1.0;
    * ``group``: ``()`` int64 group id.

    The default collate stacks a batch into ``(B, C, H, W)``, ``(B,)``, ``(B,)``: the tabular batch order.

    Args:
        split: the split to serve.
        transform: maps the ``(C, H, W)`` uint8 image to the model's input (see :func:`image_transform`).
        channels: 3 (RGB) or 1 (grayscale), for decoding files.
        origin: names the metadata file, line and column in decoding errors.

    Raises:
        ValueError: ``channels`` is not 1 or 3. Reading an item raises what :func:`decode_image_file` raises
            (``FileNotFoundError``, ``ValueError``), naming the path and the metadata line.
    """

    def __init__(
        self,
        split: ImageSplit,
        transform: Callable[[torch.Tensor], torch.Tensor],
        *,
        channels: int = 3,
        origin: RowOrigin | None = None,
    ) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 3 (RGB) or 1 (grayscale), got {channels!r}")
        self.split, self.transform, self.channels, self.origin = split, transform, channels, origin

    def __len__(self) -> int:
        return len(self.split)

    def image(self, i: int) -> torch.Tensor:
        """Item ``i``'s image as decoded: ``(C, H, W)`` uint8, before the transform."""
        split = self.split
        if split.images is not None:
            return split.images[i]
        assert split.paths is not None
        where = "" if self.origin is None else self.origin.describe(int(split.index[i]))
        return decode_image_file(split.paths[i], channels=self.channels, where=where)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.transform(self.image(i)), self.split.y[i], self.split.groups[i]


def stack_images(images: Sequence[torch.Tensor]) -> torch.Tensor:
    """``torch.stack`` of ``(C, H, W)`` images, refusing images of different sizes with what to do about it (images
    used as decoded, ``image_size=None``, keep their own sizes, which no batch can hold).

    Raises:
        ValueError: two images of different shapes.
    """
    _check_one_size(images, "in one split")
    return torch.stack(list(images))


def collate_images(batch: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> Any:
    """The default collate of :class:`ImageGroupDataset` items (``(B, C, H, W)``, ``(B,)``, ``(B,)``), after
    :func:`stack_images`' check: images of different sizes get an error that says what to pass.

    Raises:
        ValueError: two images of different shapes in the batch.
    """
    images = [item[0] for item in batch]
    if all(isinstance(image, torch.Tensor) for image in images):  # a transform may return views or a dict
        _check_one_size(images, "in one batch")
    return default_collate(batch)


def _check_one_size(images: Sequence[torch.Tensor], where: str) -> None:
    shapes = {tuple(image.shape) for image in images}
    if len(shapes) > 1:
        shown = ", ".join(str(s) for s in sorted(shapes)[:3]) + (" ..." if len(shapes) > 3 else "")
        raise ValueError(
            f"images of different sizes {where}, (C, H, W) = {shown}: with image_size=None every image is "
            "used as decoded; pass image_size=N or (H, W) to resize them all (fairopt bench: --image-size N)"
        )


def image_loader(
    dataset: Dataset,
    batch_size: int = 128,
    *,
    shuffle: bool = False,
    seed: int | None = None,
    num_workers: int = 0,
    pin_memory: bool | None = None,
    persistent_workers: bool | None = None,
    drop_last: bool = False,
    prefetch_factor: int | None = None,
    batch_sampler: Sampler[list[int]] | None = None,
    **kwargs: Any,
) -> DataLoader:
    """A ``DataLoader`` set up for decoding images: worker processes, pinned memory, persistent workers.

    Args:
        dataset: e.g. an :class:`ImageGroupDataset`.
        batch_size: images per batch.
        shuffle: reshuffle every epoch.
        seed: seeds the shuffling generator and, through it, each worker's RNG, hence the augmentation of
            ``num_workers > 0`` loaders; ``None``: torch's global RNG. With 0 workers the augmentation draws from
            torch's global RNG (seed it with ``torch.manual_seed``).
        num_workers: decoding processes (default 0: decode in the main process, which works everywhere, including
            notebooks and Windows' spawn start), typically the CPU cores the training step leaves free. See
            ``benchmarks/bench_image_step.py`` for measured decoding rates per worker.
        pin_memory: page-locked batches for faster, asynchronous host-to-GPU copies (pair with
            ``move_images(..., non_blocking=True)``); default: when CUDA is available.
        persistent_workers: keep workers alive between epochs (their start-up, ~0.1-1 s each, is paid once);
            default: when ``num_workers > 0`` (the DataLoader refuses it with 0 workers).
        drop_last: drop the last incomplete batch (training a BatchNorm network: a batch of one image cannot be
            normalized; see :meth:`ImageDataset.loader`, which drops it by default for training).
        prefetch_factor: batches each worker loads ahead (default torch's, 2); only with workers.
        batch_sampler: yields the index lists of the batches instead (e.g.
            :class:`~fairopt.samplers.GroupBalancedBatchSampler`); ``batch_size``, ``shuffle`` and ``drop_last`` must
            then keep their defaults.
        **kwargs: passed to ``DataLoader``.

    Raises:
        ValueError: ``batch_size < 1`` or ``num_workers < 0``; ``persistent_workers`` or ``prefetch_factor`` with
            ``num_workers=0``; ``shuffle`` or ``drop_last`` with a ``batch_sampler``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (an int), got {batch_size!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be >= 0 (an int; 0: decode in the main process), got {num_workers!r}")
    if num_workers == 0 and (persistent_workers or prefetch_factor is not None):
        raise ValueError("persistent_workers and prefetch_factor need num_workers > 0")
    generator = None
    if seed is not None:
        generator = torch.Generator()
        generator.manual_seed(seed)
    if num_workers > 0 and prefetch_factor is not None:
        kwargs["prefetch_factor"] = prefetch_factor
    if batch_sampler is not None:
        if shuffle or drop_last:
            raise ValueError("shuffle and drop_last do not apply with a batch_sampler: it decides the batches")
        kwargs["batch_sampler"] = batch_sampler
    else:
        kwargs.update(batch_size=batch_size, shuffle=shuffle, drop_last=drop_last)
    if isinstance(dataset, ImageGroupDataset):  # its items: the error for mixed sizes says what to pass
        kwargs.setdefault("collate_fn", collate_images)
    return DataLoader(
        dataset,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        persistent_workers=num_workers > 0 if persistent_workers is None else persistent_workers,
        generator=generator,
        **kwargs,
    )
