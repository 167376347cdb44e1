"""CelebA from the user's own copy, in the official on-disk layout or the Kaggle CSV variant; nothing downloads."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fairopt._validation import close_names
from fairopt.groups import Groups

from ._splits import check_nonempty
from ._tabular import normalize_names
from .image_io import IMAGENET_MEAN, IMAGENET_STD, ImageSize, RowOrigin
from .images import ImageDataset, as_size, assemble_images

__all__ = ["CELEBA_PARTITIONS", "index_files", "load_celeba"]

CELEBA_PARTITIONS: dict[int, str] = {0: "train", 1: "validation", 2: "test"}
"""The official ``list_eval_partition`` codes and the fairopt split each becomes (162,770 / 19,867 / 19,962
images in the full set)."""

_LAYOUT = (
    "expected the official CelebA layout (what torchvision.datasets.CelebA reads): img_align_celeba/*.jpg, "
    "list_attr_celeba.txt and list_eval_partition.txt, or Kaggle's list_attr_celeba.csv and "
    "list_eval_partition.csv"
)


def load_celeba(
    root: str | os.PathLike[str],
    target: str = "Blond_Hair",
    sensitive: str | Sequence[str] = ("Male",),
    *,
    image_size: ImageSize | None = 128,
    center_crop: ImageSize | None = None,
    audit_fraction: float = 0.0,
    seed: int = 0,
    check_files: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> ImageDataset:
    """Load CelebA (Liu, Luo, Wang, Tang, "Deep Learning Face Attributes in the Wild", ICCV 2015) from disk.

    ``root`` holds (directly, or in a ``celeba/`` folder as torchvision's ``CelebA(root)`` expects):

    * ``img_align_celeba/`` with the aligned 178x218 JPEGs (``000001.jpg`` ...; Kaggle's doubly nested
      ``img_align_celeba/img_align_celeba/`` is accepted too);
    * the 40 binary attributes: ``list_attr_celeba.txt`` (line 1 the image count, line 2 the 40 names, then
      ``000001.jpg -1  1 ...`` rows of -1/1) or ``list_attr_celeba.csv`` (header ``image_id,5_o_Clock_Shadow,...``);
    * the official partition: ``list_eval_partition.txt`` (``000001.jpg 0``) or ``list_eval_partition.csv``
      (header ``image_id,partition``), 0/1/2 = train/validation/test (:data:`CELEBA_PARTITIONS`).

    The text files win when both variants are present. No download and no md5 check: the files are the user's.

    Args:
        root: the folder described above.
        target: the attribute to predict; ``y = 1`` where it is 1.
        sensitive: one attribute or several; group ids enumerate every combination of their values (first
            attribute = most significant digit) and read like ``"Male=1|Young=0"`` (1: the attribute is present,
            0: it is -1 in the file).
        image_size: model input ``(H, W)`` in pixels (an int: square; 128 as in Veldanda et al., TMLR 2023),
            ``None``: the native 218x178.
        center_crop: crop before resizing (e.g. 178 keeps the central square face region), ``None``: none.
        audit_fraction: share of the official validation partition moved to an ``audit`` split
            (:meth:`ImageDataset.with_audit`, stratified by group and label, seeded by ``seed``); 0: no audit split.
            Use one whenever the validation split drives duals or chooses the model and a number is to estimate
            performance on new data.
        seed: seed of the audit carve-out.
        check_files: check that every listed image exists (one directory listing), rather than failing mid-epoch.
        mean: normalization per RGB channel on the [0, 1] scale (default ImageNet's, as pretrained models
            expect).
        std: see ``mean``.

    Returns:
        An :class:`ImageDataset` named ``"celeba"``: the official partition as ``train`` / ``validation`` /
        ``test``; ``frame`` has ``image_id``, the 40 attributes (-1/1) and ``partition``; horizontal flips allowed.

    Raises:
        FileNotFoundError: ``root``, the image folder, an attribute or partition file, or a listed image is missing
            (the message names the file, and for an image the attribute file's line and column).
        ValueError: an unknown ``target`` or ``sensitive`` attribute (the known ones are listed); the target is also
            sensitive; an attribute value other than -1/1, a partition other than 0/1/2, a malformed line, a
            duplicate image, an image without a partition (each naming file, line and column); an empty split;
            a target holding one value only.
    """
    as_size(image_size)  # a bad size fails before the attribute file is read
    if not 0.0 <= audit_fraction < 1.0:
        raise ValueError(f"audit_fraction must be in [0, 1), got {audit_fraction}")
    base = _base_folder(Path(root))
    images = _image_folder(base)
    attrs, attr_origin = _read_attributes(base)
    sensitive = normalize_names(sensitive, "sensitive")
    known = [c for c in attrs.columns if c != "image_id"]
    for role, names in (("target", [target]), ("sensitive", list(sensitive))):
        unknown = [name for name in names if name not in known]
        if unknown:
            close = {name: close_names(name, known, n=1) for name in unknown}
            hint = "".join(f"did you mean {c[0]!r} for {name!r}? " for name, c in close.items() if c)
            raise ValueError(
                f"unknown {role} attribute(s) {unknown} in {attr_origin.source}; {hint}the {len(known)} known "
                f"attributes are: {', '.join(known)}"
            )
    if target in sensitive:
        raise ValueError(f"the target {target!r} cannot also be a sensitive attribute")
    partition, partition_origin = _read_partition(base, attrs, attr_origin)
    attrs = attrs.assign(partition=partition)

    if check_files:
        present = set(os.listdir(images))
        missing = np.flatnonzero(~attrs["image_id"].isin(present).to_numpy())
        if len(missing):
            row = int(missing[0])
            raise FileNotFoundError(
                f"image file {images / attrs['image_id'].iat[row]} not found ({attr_origin.describe(row)}); "
                f"{len(missing)} of the {len(attrs)} listed images are missing from {images}"
            )

    labels = (attrs[target].to_numpy() == 1).astype(np.int64)
    if len(np.unique(labels)) < 2:
        raise ValueError(
            f"target attribute {target!r} is {2 * int(labels[0]) - 1} for all {len(labels)} images in "
            f"{attr_origin.source}; a classifier needs images of both values"
        )
    groups = Groups({a: [0, 1] for a in sensitive})
    group_ids = groups.encode({a: (attrs[a].to_numpy() == 1).astype(np.int64) for a in sensitive}).numpy()
    codes = partition.to_numpy()
    split_index = {name: np.flatnonzero(codes == code) for code, name in CELEBA_PARTITIONS.items()}
    check_nonempty(
        {name: len(rows) for name, rows in split_index.items()},
        f"{partition_origin.source}, column 'partition', lists no image with that code (0 = train, 1 = validation, "
        "2 = test); give every split some images",
    )
    prefix = os.path.join(images, "")  # string joins: pathlib costs ~10 µs a path, 2 s for the 202,599 images
    return assemble_images(
        name="celeba",
        frame=attrs,
        labels=labels,
        groups=groups,
        group_ids=group_ids,
        target=target,
        split_index=split_index,
        origin=attr_origin,
        image_size=image_size,
        mean=mean,
        std=std,
        hflip=True,
        paths=np.asarray([prefix + f for f in attrs["image_id"].tolist()], dtype=object),
        center_crop=center_crop,
        audit_fraction=audit_fraction,
        seed=seed,
    )


def index_files(root: str | Path) -> tuple[Path, Path]:
    """The attribute file and the partition file :func:`load_celeba` reads under ``root`` (the ``.txt`` of each where
    both forms are there), for a record of what was trained on (``study.json`` hashes them). Either may not exist
    (the loader then raises).

    Raises:
        FileNotFoundError: ``root`` is not a folder.
    """
    base = _base_folder(Path(root))
    return _index_file(base, "list_attr_celeba"), _index_file(base, "list_eval_partition")


def _index_file(base: Path, stem: str) -> Path:
    """``stem.txt`` if it is there, else ``stem.csv`` (which may not exist either)."""
    txt = base / f"{stem}.txt"
    return txt if txt.is_file() else base / f"{stem}.csv"


def _base_folder(root: Path) -> Path:
    if not root.is_dir():
        raise FileNotFoundError(f"CelebA root {root} is not a folder; {_LAYOUT}")
    names = ("list_attr_celeba.txt", "list_attr_celeba.csv")
    if not any((root / n).is_file() for n in names) and (root / "celeba").is_dir():
        return root / "celeba"  # torchvision's CelebA(root) reads root/celeba/
    return root


def _image_folder(base: Path) -> Path:
    folder = base / "img_align_celeba"
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} not found; {_LAYOUT}")
    nested = folder / "img_align_celeba"
    return nested if nested.is_dir() else folder  # Kaggle's zip unpacks one level deeper


def _read_attributes(base: Path) -> tuple[pd.DataFrame, RowOrigin]:
    """The attribute table (``image_id`` + one int64 -1/1 column per attribute) and where its rows came from."""
    path = _index_file(base, "list_attr_celeba")
    if path.suffix == ".txt":
        txt = path
        try:
            with open(txt) as handle:
                count_line, names_line = handle.readline(), handle.readline()
        except UnicodeDecodeError as error:
            raise _not_text(txt, error) from None
        try:
            count = int(count_line.strip())
        except ValueError:
            raise ValueError(f"{txt} line 1 must be the number of images, got {count_line.strip()!r}") from None
        names = names_line.split()
        if not names:
            raise ValueError(f"{txt} line 2 must list the attribute names, got an empty line")
        frame = _read_table(txt, sep=r"\s+", header=None, skiprows=2, names=["image_id", *names])
        if len(frame) != count:
            raise ValueError(f"{txt} line 1 announces {count} images but {len(frame)} rows follow")
        origin = RowOrigin(str(txt), 3, "image_id")
    elif path.is_file():
        frame = _read_table(path)
        if len(frame.columns) < 2 or frame.columns[0] != "image_id":
            raise ValueError(
                f"{path} must start with the header image_id,<attribute>,...; got {list(frame.columns)[:3]}"
            )
        origin = RowOrigin(str(path), 2, "image_id")
    else:
        raise FileNotFoundError(f"neither list_attr_celeba.txt nor {path.name} found in {base}; {_LAYOUT}")
    if len(frame) == 0:
        raise ValueError(f"{origin.source} lists no images")
    _check_unique(frame["image_id"], origin)
    attributes = [c for c in frame.columns if c != "image_id"]
    values = frame[attributes].apply(pd.to_numeric, errors="coerce")
    bad = ~values.isin([-1, 1]).to_numpy()
    if bad.any():
        row, col = (int(v) for v in np.argwhere(bad)[0])
        raw = frame[attributes[col]].iat[row]
        raw = raw.item() if isinstance(raw, np.generic) else raw
        shown = "a missing value (too few fields?)" if pd.isna(raw) else f"the value {raw!r}"
        where = origin.describe(row, attributes[col])
        raise ValueError(
            f"{where} holds {shown}; CelebA attributes are -1 (absent) or 1 (present) ({int(bad.sum())} such values)"
        )
    return pd.concat([frame[["image_id"]], values.astype(np.int64)], axis=1), origin


def _read_partition(base: Path, attrs: pd.DataFrame, attr_origin: RowOrigin) -> tuple[pd.Series, RowOrigin]:
    """The official partition code (0/1/2) of every row of ``attrs``, matched by ``image_id``, and where the codes
    came from."""
    path = _index_file(base, "list_eval_partition")
    if path.suffix == ".txt":
        frame = _read_table(path, sep=r"\s+", header=None, names=["image_id", "partition"])
        origin = RowOrigin(str(path), 1, "partition")
    elif path.is_file():
        frame = _read_table(path)
        missing = [c for c in ("image_id", "partition") if c not in frame.columns]
        if missing:
            raise ValueError(f"{path} lacks column(s) {missing}; its header must be image_id,partition")
        origin = RowOrigin(str(path), 2, "partition")
    else:
        raise FileNotFoundError(f"neither list_eval_partition.txt nor {path.name} found in {base}; {_LAYOUT}")
    _check_unique(frame["image_id"], origin, "image_id")
    codes = pd.to_numeric(frame["partition"], errors="coerce")
    bad = np.flatnonzero(~codes.isin(list(CELEBA_PARTITIONS)).to_numpy())
    if len(bad):
        row = int(bad[0])
        raise ValueError(
            f"{origin.describe(row)} holds {frame['partition'].tolist()[row]!r}; partitions are 0 (train), "
            "1 (validation) or 2 (test)"
        )
    position = pd.Index(frame["image_id"]).get_indexer(attrs["image_id"])
    unlisted = np.flatnonzero(position < 0)
    if len(unlisted):
        row = int(unlisted[0])
        raise ValueError(
            f"image {attrs['image_id'].iat[row]} ({attr_origin.describe(row)}) has no partition in {origin.source} "
            f"({len(unlisted)} images without one)"
        )
    return pd.Series(codes.to_numpy(dtype=np.int64)[position], index=attrs.index, name="partition"), origin


def _read_table(path: Path, **kwargs: object) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype={"image_id": str}, **kwargs)  # type: ignore[call-overload]
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path} is empty") from None
    except pd.errors.ParserError as error:
        raise ValueError(f"{path} is malformed: {str(error).strip()} (pandas counts lines from 1)") from None
    except UnicodeDecodeError as error:
        raise _not_text(path, error) from None


def _not_text(path: Path, error: UnicodeDecodeError) -> ValueError:
    return ValueError(
        f"{path} is not a text file ({error.reason} at byte {error.start}); the CelebA list files are plain text "
        f"(ASCII): is it the right file, complete and not compressed?"
    )


def _check_unique(ids: pd.Series, origin: RowOrigin, column: str | None = None) -> None:
    repeated = np.flatnonzero(ids.duplicated().to_numpy())
    if len(repeated):
        row = int(repeated[0])
        raise ValueError(f"{origin.describe(row, column)}: image {ids.iat[row]} is listed twice")
