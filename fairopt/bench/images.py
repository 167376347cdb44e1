"""``fairopt bench`` on images: the study configuration, its data, and the image training of one run.

An image study is a tabular study (:mod:`fairopt.bench.study`) whose data are images and whose models are image
models (:func:`fairopt.vision.create_image_model`): the same methods, the same four report splits (train, validation,
held-out = the audit split, test; :data:`~fairopt.bench.runner.SPLITS`), the same training, selection and evaluation
(:func:`~fairopt.bench.runner.run_one`) and outputs (:mod:`fairopt.bench.output`). Only three things differ, and they
live here:

* the data: ``digits`` (the embedded semi-synthetic coloured digits, :func:`~fairopt.datasets.load_colored_digits`),
  ``celeba:DIR`` (:func:`~fairopt.datasets.load_celeba`) or ``images:CSV`` (:func:`~fairopt.datasets.load_image_csv`),
  each with an audit split carved from the validation split (:meth:`~fairopt.datasets.ImageDataset.with_audit`);
  :class:`ImageStudyData` serves them to the shared runner (in-memory images as transformed tensors, files through a
  DataLoader with workers);
* the model and its forward pass, the two hooks of :func:`~fairopt.bench.runner.train_model`
  (:func:`image_model_builder`, :func:`image_forward`): channels-last models, optional bfloat16 autocast
  (:func:`fairopt.vision.autocast`); training batches drop a last incomplete batch (batch norm), and the runner
  measures held-out dual batches and threshold scores in eval mode (a validation image must never move the
  batch-norm statistics of the model it judges);
* the configuration (:class:`ImageStudyConfig`) and its presets (:data:`IMAGE_PRESETS`), with a run-time estimate
  (:func:`estimate_seconds`) for the GPU-sized ones.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from fairopt.constraints import Constraint
from fairopt.datasets import ImageDataset, load_celeba, load_colored_digits, load_image_csv
from fairopt.datasets.digits import DIGIT_TARGETS
from fairopt.datasets.images import as_size
from fairopt.vision import AMP_MODES, autocast, create_image_model, move_images, prepare_model

from .config import BENCH_METHODS, PublishedResult, check_options, make_constraint
from .runner import HELDOUT_METHODS, BuildModel, Forward, RunResult, TrainedModel, run_one, train_model

__all__ = [
    "CELEBA_SIZES",
    "DEFAULT_IMAGE_METHODS",
    "IMAGE_PRESETS",
    "ImagePreset",
    "ImageStudyConfig",
    "ImageStudyData",
    "StudySplit",
    "estimate_seconds",
    "image_forward",
    "image_model_builder",
    "is_image_dataset",
    "load_image_study_data",
    "model_width",
    "run_image_one",
    "train_image_model",
]

# The default image study's methods: no constraint, duals on the training batches, duals on validation batches.
DEFAULT_IMAGE_METHODS = ("unconstrained", "lagrangian", "lagrangian-heldout")
# Official CelebA partition sizes (train / validation / test images), for run-time estimates made before loading.
CELEBA_SIZES = {"train": 162_770, "validation": 19_867, "test": 19_962}
# Sustained training throughput assumed by estimate_seconds, in FLOP/s: one current data-centre GPU in bfloat16 at a
# realistic share of its peak, and one CPU core in float32 (oneDNN convolutions); order-of-magnitude figures.
GPU_FLOPS = 1e14
CPU_CORE_FLOPS = 2e10
_PREACT = re.compile(r"^preact-resnet18-w(\d+)$")
_KINDS = "digits, celeba:DIR or images:CSV"


def is_image_dataset(dataset: str | None) -> bool:
    """Whether a ``--dataset`` value names image data: ``digits``, ``celeba:DIR`` or ``images:CSV``."""
    return dataset is not None and (dataset == "digits" or dataset.startswith(("celeba:", "images:")))


def model_width(name: str) -> int | None:
    """The width k of ``preact-resnet18-w{k}``, else None."""
    match = _PREACT.match(name)
    return None if match is None else int(match.group(1))


def _check_model_name(name: str) -> None:
    """Refuse an unknown image model name before anything trains (the message suggests close names)."""
    if re.match(r"^preact-resnet18(-w[1-9]\d*)?$", name):
        return
    if name.startswith("torchvision:"):
        from fairopt.vision import list_image_models

        if name in list_image_models(sources=("torchvision",)):
            return
    elif ":" not in name:
        import timm

        if timm.is_model(name):
            return
    create_image_model(name)  # unknown: raises the factory's ValueError (close names, how to list them)


@dataclass(frozen=True)
class ImageStudyConfig:
    """Everything that defines an image study (most fields are ``fairopt bench`` options).

    Data: ``dataset`` is ``"digits"``, ``"celeba:DIR"`` or ``"images:CSV"``. ``target``: the label (digits:
    ``"digit>=5"`` or ``"even"``; CelebA: an attribute, default ``Blond_Hair``; a CSV: its label column, required);
    ``sensitive``: the group attributes (digits: ``("color",)``; CelebA default ``("Male",)``; a CSV: required);
    ``image_root`` and ``path_column`` for a CSV (the folder its paths are relative to, the column naming them);
    ``positive_label``: the CSV target values meaning y = 1 when the column is not 0/1. ``image_size``: model input
    ``(H, W)`` in pixels (None: as decoded); ``audit_fraction``: share of the validation split moved to the audit
    split, the "held-out" report column (never used to train or to choose).

    Training: ``models`` are image model names (``preact-resnet18-w{k}``, any timm name, ``torchvision:<name>``);
    ``epochs`` passes over the training split; ``batch_size`` images per step (at most the training split; None:
    :meth:`batch_size_for` sizes it to the split, as for a user's image folder);
    ``lr``/``dual_lr`` Adam and dual step sizes; ``amp``: ``"bf16"`` autocast of the forward pass (CUDA and CPU),
    ``"fp16"`` (CUDA), ``"none"``; ``workers``: decoding processes for images on disk; ``augment``: random resized
    crops (and flips where the data allows them) on training batches; ``channels_last``: the model's memory layout
    (None: channels-last on CUDA only; on 2 CPU cores the default layout trained the 8x8 digits 3x faster here).
    Units of ``tolerance``, ``margin_z``, ``dual_min_count`` and ``records_per_run`` as in
    :class:`~fairopt.bench.StudyConfig`.

    Raises:
        ValueError: at construction, for an unknown dataset kind, method, model name or constraint; a missing CelebA
            folder, CSV or image root; a CSV without ``target``/``sensitive``; a digits target other than
            :data:`~fairopt.datasets.digits.DIGIT_TARGETS`; a bad image size, ``amp`` or number
            (:func:`~fairopt.bench.config.check_options`); a CUDA device where CUDA is not available.
    """

    dataset: str = "digits"
    target: str | None = None
    sensitive: tuple[str, ...] | None = None
    image_root: str | None = None
    path_column: str = "path"
    positive_label: tuple[str, ...] = ()
    image_size: int | tuple[int, int] | None = None
    constraint: str = "equalized_odds"
    tolerance: float = 0.05
    methods: tuple[str, ...] = DEFAULT_IMAGE_METHODS
    models: tuple[str, ...] = tuple(f"preact-resnet18-w{k}" for k in (1, 2, 4, 8, 16))
    epochs: int = 60
    seeds: tuple[int, ...] = (0,)
    batch_size: int | None = 64
    lr: float = 3e-3
    dual_lr: float = 0.02  # the 0.2 of the tabular study collapsed the digits nets to constant predictions
    penalty: float = 1.0
    proxy: str = "sigmoid"
    train_size: int | None = None
    audit_fraction: float = 0.5
    margin_z: float = 1.645
    dual_min_count: float | None = 100.0
    records_per_run: int = 20
    device: str = "cpu"
    amp: str = "none"
    workers: int = 0
    augment: bool = False
    channels_last: bool | None = None
    preset: str | None = None
    published: tuple[PublishedResult, ...] = field(default=())
    published_note: str = ""
    classes: tuple[tuple[str, str], ...] = ()  # protected classes are not offered for images (data_notes reads it)

    def __post_init__(self) -> None:
        for m in self.methods:
            if m not in BENCH_METHODS:
                raise ValueError(f"unknown method {m!r}; choose from {', '.join(BENCH_METHODS)}")
        self._check_data()
        for m in self.models:
            _check_model_name(m)
        make_constraint(self.constraint, self.tolerance)
        as_size(self.image_size, "--image-size")
        if self.amp not in AMP_MODES:
            raise ValueError(f"invalid --amp {self.amp!r}; choose from {', '.join(AMP_MODES)}")
        device = check_options(
            self,
            [
                ("epochs", self.epochs >= 1, ">= 1"),
                (
                    "batch_size",
                    self.batch_size is None or self.batch_size >= 2,
                    ">= 2 (batch norm needs two images per training batch), or None to size it to the data",
                ),
                ("workers", self.workers >= 0, ">= 0"),
                (
                    "train_size",
                    self.train_size is None or self.train_size >= 2,
                    ">= 2 images, or None for all (--train-size 0)",
                ),
            ],
        )
        autocast(device, self.amp)  # raises for fp16 on a CPU, bf16 on a GPU without it

    def _check_data(self) -> None:
        kind, _, where = self.dataset.partition(":")
        if self.dataset == "digits":
            if self.target is not None and self.target not in DIGIT_TARGETS:
                raise ValueError(f"--target {self.target!r}: the digits' targets are {', '.join(DIGIT_TARGETS)}")
            if self.sensitive not in (None, ("color",)):
                raise ValueError(f"--sensitive {','.join(self.sensitive or ())}: the digits' only group is color")
        elif kind == "celeba":
            if not Path(where).is_dir():
                raise ValueError(f"--dataset {self.dataset}: no such folder (the CelebA root, official layout)")
        elif kind == "images":
            if not Path(where).is_file():
                raise ValueError(f"--dataset {self.dataset}: no such file (the metadata CSV)")
            if self.image_root is None or not Path(self.image_root).is_dir():
                shown = "missing" if self.image_root is None else f"{self.image_root}: no such folder"
                raise ValueError(f"--image-root {shown} (an images: dataset needs the folder its paths are under)")
            if not self.target or not self.sensitive:
                raise ValueError("an images: dataset needs --target COLUMN and --sensitive COLUMN[,COLUMN]")
        else:
            raise ValueError(f"unknown image dataset {self.dataset!r}; choose {_KINDS}")
        if kind != "images" and (self.image_root is not None or self.positive_label):
            raise ValueError("--image-root and --positive-label are for images:CSV datasets")

    # --- the StudyConfig interface the shared runner reads --------------------------------------------------------

    def batch_size_for(self, num_train: int) -> int:
        """``batch_size``, at most the training split's size (so a small split still gets a step); when None the
        largest power of two up to ``num_train / 8``, within [2, 128]: at least 8 steps per epoch from 16 images
        on, and the incomplete last batch that training drops (batch norm) is under an eighth of the split (a
        batch of 128 on 360 images would train 2 steps an epoch and drop 104 images)."""
        if self.batch_size is None:
            return int(min(128, max(2, 2 ** int(np.log2(max(num_train / 8, 2))))))
        return max(2, min(self.batch_size, num_train))

    @property
    def uses_channels_last(self) -> bool:
        """``channels_last``, or when None whether the device is a GPU."""
        return torch.device(self.device).type == "cuda" if self.channels_last is None else self.channels_last

    def epochs_for(self, model: str) -> int:
        """Training epochs of ``model`` (the same for every model)."""
        return self.epochs

    def build_constraint(self, group_names: Any) -> Constraint:
        """The study's constraint over the groups."""
        return make_constraint(self.constraint, self.tolerance)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def updated(self, **changes: Any) -> ImageStudyConfig:
        return replace(self, **changes)


# ------------------------------------------------------------------------------------------------------ presets

_MINDIFF = (
    "Veldanda, Brugere, Chen, Dutta, Mishler, Garg, 'Fairness via In-Processing in the Over-parameterized Regime: A "
    "Cautionary Tale with MinDiff Loss', TMLR 2023 (arXiv 2206.14853)"
)
_OXONFAIR = (
    "OxonFair (Delaney, Fu, Russell et al., NeurIPS 2024), examples/quickstart_DeepFairPredictor_computer_vision.ipynb"
    " at commit 33dfcd9: test accuracy 0.910380 -> 0.901062, equal opportunity gap 0.509111 -> 0.014818"
)


@dataclass(frozen=True)
class ImagePreset:
    """A named image study: its options, and what it needs that the default study does not.

    Attributes:
        name: the ``--preset`` name.
        options: :class:`ImageStudyConfig` fields; options given on the command line replace them.
        dataset_kind: ``"celeba"`` when the user must give ``--dataset celeba:DIR`` (the preset's data is not
            embedded), else None.
        gpu: sized for a GPU: on a machine without CUDA it runs only when ``--device cpu`` is given explicitly.
    """

    name: str
    options: Mapping[str, Any]
    dataset_kind: str | None = None
    gpu: bool = False

    def config(self, **changes: Any) -> ImageStudyConfig:
        """The preset's configuration with ``changes`` applied (validated once, on the result).

        Raises:
            ValueError: as :class:`ImageStudyConfig`; no ``dataset`` of the kind the preset needs.
        """
        options = {**self.options, **changes, "preset": self.name}
        if self.dataset_kind is not None and not str(options.get("dataset", "")).startswith(f"{self.dataset_kind}:"):
            raise ValueError(
                f"preset {self.name!r} needs your local copy of its data: --dataset {self.dataset_kind}:DIR "
                "(nothing is downloaded)"
            )
        return ImageStudyConfig(**options)


# Up to 8 decoding workers: a GPU step of a few thousand 128x128 images/s needs several (image_io.image_loader).
_CELEBA_GPU = {
    "image_size": 128,
    "batch_size": 128,
    "lr": 1e-4,
    "device": "cuda",
    "amp": "bf16",
    "workers": min(8, os.cpu_count() or 1),
}

IMAGE_PRESETS: dict[str, ImagePreset] = {
    # The default image study: ~5 minutes on 2 CPU cores, the width sweep of Cherepanova et al.'s finding.
    "images": ImagePreset("images", {}),
    "mindiff-celeba": ImagePreset(
        "mindiff-celeba",
        {
            **_CELEBA_GPU,
            "target": "Blond_Hair",
            "sensitive": ("Male",),
            "constraint": "equal_opportunity",  # a TPR gap is an FNR gap: FNR = 1 - TPR in every group
            "tolerance": 0.05,
            "models": tuple(f"preact-resnet18-w{k}" for k in (5, 7, 9, 13, 19, 55, 64)),
            "epochs": 20,
            "published_note": (
                f"{_MINDIFF}: MinDiff lowers the test FNR gap of under-parameterized widths and stops helping once "
                "the net fits its training split (reported as figures, no table of numbers to transcribe): compare "
                "the train and test columns by width."
            ),
        },
        dataset_kind="celeba",
        gpu=True,
    ),
    "oxonfair-celeba": ImagePreset(
        "oxonfair-celeba",
        {
            **_CELEBA_GPU,
            "target": "Wearing_Earrings",
            "sensitive": ("Male",),
            "constraint": "equal_opportunity",
            "tolerance": 0.01,
            # OxonFair's constrained model is group thresholds fitted on validation: ours is "thresholds"
            "methods": ("unconstrained", "thresholds", "lagrangian-heldout"),
            "models": ("resnet18",),
            "epochs": 10,
            # test error = 1 - accuracy; violation = gap - 0.01 (the gap exceeds the bound): what the comparison reads
            "published": (
                PublishedResult("unconstrained", 1 - 0.910380, 0.509111 - 0.01, _OXONFAIR, model="resnet18"),
                PublishedResult("thresholds", 1 - 0.901062, 0.014818 - 0.01, _OXONFAIR, model="resnet18"),
            ),
            "published_note": (
                "OxonFair's constrained model is its DeepFairPredictor: per-group thresholds fitted on the "
                "validation split over a two-head network (the second head infers the group), compared here with "
                "our thresholds (fitted on validation, the true group at prediction time); the notebook loads that "
                "network's saved outputs, so compare the gaps, not the training."
            ),
        },
        dataset_kind="celeba",
        gpu=True,
    ),
}


# --------------------------------------------------------------------------------------------------------- data


class StudySplit:
    """One split of an :class:`ImageStudyData`, in the shape the shared runner reads from a tabular split.

    ``y``: ``(N,)`` float32 labels, ``groups``: ``(N,)`` int64 ids; :meth:`tensors` gives what
    :func:`fairopt.validation.collect_stats` streams (in-memory images: ``(X, y, groups)`` tensors, transformed once
    and cached; files: an evaluation DataLoader); :meth:`loader` gives shuffled ``(x, y, group)`` batches;
    :attr:`X` the whole split as one ``(N, C, H, W)`` float32 tensor (in-memory images only).
    """

    def __init__(self, data: ImageDataset, name: str, config: ImageStudyConfig) -> None:
        self.data, self.name, self.config = data, name, config
        self.part = data.split(name)

    def __len__(self) -> int:
        return len(self.part)

    @property
    def y(self) -> Tensor:
        return self.part.y

    @property
    def groups(self) -> Tensor:
        return self.part.groups

    @property
    def in_memory(self) -> bool:
        return self.part.images is not None

    @cached_property
    def X(self) -> Tensor:  # the tabular split's name
        if not self.in_memory:
            raise ValueError(f"the {self.name} split's images are on disk: stream them with tensors() or loader()")
        return self.data.tensors(self.name)[0]

    def tensors(self) -> tuple[Tensor, Tensor, Tensor] | DataLoader:
        """The whole split for evaluation, in order, without augmentation."""
        if self.in_memory:
            return self.X, self.y, self.groups
        size = max(256, self.config.batch_size or 0)
        return self.data.loader(self.name, size, shuffle=False, num_workers=self.config.workers, drop_last=False)

    def loader(self, batch_size: int, shuffle: bool = True, seed: int | None = None) -> DataLoader:
        """Batches ``(x, y, group)``; the training split drops a last incomplete batch (batch norm cannot train on a
        single image) and is augmented when the study asks for it."""
        train = self.name == "train"
        if self.in_memory and not (train and self.config.augment):
            generator = None if seed is None else torch.Generator().manual_seed(seed)
            dataset = TensorDataset(self.X, self.y, self.groups)
            return DataLoader(dataset, batch_size, shuffle=shuffle, generator=generator, drop_last=train)
        return self.data.loader(
            self.name,
            batch_size,
            shuffle=shuffle,
            augment=train and self.config.augment,
            seed=seed,
            num_workers=self.config.workers,
            drop_last=train,
        )


@dataclass(frozen=True, eq=False)
class ImageStudyData:
    """An :class:`~fairopt.datasets.ImageDataset` with its audit split, served as :class:`StudySplit` s."""

    dataset: ImageDataset
    config: ImageStudyConfig

    @cached_property
    def _splits(self) -> dict[str, StudySplit]:
        return {n: StudySplit(self.dataset, n, self.config) for n in ("train", "validation", "audit", "test")}

    @property
    def train(self) -> StudySplit:
        return self._splits["train"]

    @property
    def validation(self) -> StudySplit:
        return self._splits["validation"]

    @property
    def test(self) -> StudySplit:
        return self._splits["test"]

    def split(self, name: str) -> StudySplit:
        """``"train"``, ``"validation"``, ``"audit"`` or ``"test"``."""
        return self._splits[name]

    @property
    def num_groups(self) -> int:
        return self.dataset.num_groups

    @property
    def group_names(self) -> tuple[str, ...]:
        return self.dataset.group_names

    @property
    def channels(self) -> int:
        return self.dataset.channels

    def group_counts(self) -> dict[str, np.ndarray]:
        return self.dataset.group_counts()


def load_image_study_data(config: ImageStudyConfig, seed: int = 0) -> tuple[ImageStudyData, int]:
    """Load the configured images with an audit split of ``audit_fraction`` of the validation split, the training
    split capped at ``train_size``; returns the data and the training split's size before the cap.

    Raises:
        ValueError, FileNotFoundError: from the loaders (:func:`~fairopt.datasets.load_celeba`,
            :func:`~fairopt.datasets.load_image_csv`), e.g. an unknown attribute or column, a missing image.
    """
    kind, _, where = config.dataset.partition(":")
    common: dict[str, Any] = {"image_size": config.image_size, "audit_fraction": config.audit_fraction, "seed": seed}
    if config.dataset == "digits":
        data = load_colored_digits(target=config.target or "digit>=5", **common)
    elif kind == "celeba":
        data = load_celeba(where, config.target or "Blond_Hair", config.sensitive or ("Male",), **common)
    else:
        positive = config.positive_label
        data = load_image_csv(
            where,
            str(config.image_root),
            config.path_column,
            str(config.target),
            list(config.sensitive or ()),
            positive_label=(positive[0] if len(positive) == 1 else list(positive)) if positive else None,
            **common,
        )
    rows = len(data.train)
    if config.train_size is not None and config.train_size < rows:
        data = data.subsample_train(config.train_size, seed=seed)
    return ImageStudyData(data, config), rows


# ----------------------------------------------------------------------------------------------------- training


def image_forward(config: ImageStudyConfig) -> Forward:
    """The image :data:`~fairopt.bench.runner.Forward`: the batch moved to the study's device in its layout
    (:func:`~fairopt.vision.move_images`, channels-last per :attr:`ImageStudyConfig.uses_channels_last`), the model
    run under ``config.amp`` autocast (:func:`~fairopt.vision.autocast`), the logits cast back to float32 so the loss
    and the group statistics are computed outside autocast."""
    device, channels_last = torch.device(config.device), config.uses_channels_last

    def forward(model: nn.Module, x: Tensor) -> Tensor:
        with autocast(device, config.amp):
            scores = model(move_images(x, device, channels_last=channels_last))
        return scores.float()

    return forward


def image_model_builder(config: ImageStudyConfig, data: ImageStudyData) -> BuildModel:
    """The image :data:`~fairopt.bench.runner.BuildModel`: :func:`~fairopt.vision.create_image_model` over the data's
    channels, moved to the study's device in its layout (:func:`~fairopt.vision.prepare_model`)."""

    def build(model_name: str, seed: int) -> nn.Module:
        model = create_image_model(model_name, in_chans=data.channels, seed=seed)
        return prepare_model(model, device=torch.device(config.device), channels_last=config.uses_channels_last)

    return build


def train_image_model(
    config: ImageStudyConfig, data: ImageStudyData, constraint: Constraint, model_name: str, method: str, seed: int
) -> TrainedModel:
    """:func:`fairopt.bench.runner.train_model` with the image hooks (:func:`image_model_builder`,
    :func:`image_forward`): the same constrained optimizer, margins, iterate records and history, with channels-last
    autocast steps, and held-out dual batches in eval mode (a validation image never moves the batch-norm statistics
    of the model it judges)."""
    hooks = {"build_model": image_model_builder(config, data), "forward": image_forward(config)}
    return train_model(config, data, constraint, model_name, method, seed, **hooks)  # type: ignore[arg-type]


def run_image_one(
    config: ImageStudyConfig, data: ImageStudyData, constraint: Constraint, model_name: str, method: str, seed: int
) -> list[RunResult]:
    """:func:`fairopt.bench.runner.run_one` (train, select, evaluate) with the image hooks (:func:`image_model_builder`,
    :func:`image_forward`). One :class:`~fairopt.bench.runner.RunResult` per final model."""
    hooks = {"build_model": image_model_builder(config, data), "forward": image_forward(config)}
    return run_one(config, data, constraint, model_name, method, seed, **hooks)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------- estimates


def forward_flops(model_name: str, channels: int, size: tuple[int, int]) -> float:
    """FLOPs of one image's forward pass through ``model_name`` at ``size`` (``torch.utils.flop_counter``, one
    multiply-add = 2 FLOPs; convolutions and matrix products, not normalizations or activations), counted on the
    ``meta`` device: shapes only, no memory and no arithmetic, so a large model at 128x128 costs well under a second.
    E.g. 20,368 for ``preact-resnet18-w1`` at 8x8 (hand count in ``tests/test_bench_images.py``)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.device("meta"):
        model = create_image_model(model_name, in_chans=channels).eval()
        with torch.no_grad(), counter:
            model(torch.zeros(1, channels, *size))
    return float(counter.get_total_flops())


def estimate_seconds(
    config: ImageStudyConfig, sizes: Mapping[str, int], *, channels: int = 3, flops_per_second: float = GPU_FLOPS
) -> float:
    """A rough training time of the whole study in seconds: for every (model, method, seed), 3 forward passes'
    FLOPs (forward + backward) per training image and epoch, one more forward per image for the held-out duals'
    validation batches, and ``records_per_run`` forward passes over every split, at ``flops_per_second``
    (:data:`GPU_FLOPS` for one GPU; ``CPU_CORE_FLOPS`` times the cores for a CPU). ``sizes``: images per split
    (``train``, ``validation``, ``test``). Decoding is assumed to keep up (enough ``workers``)."""
    size = as_size(config.image_size) or (218, 178)
    total_images = sum(sizes.values())
    flops = 0.0
    for model in config.models:
        per_image = forward_flops(model, channels, size)
        for method in config.methods:
            steps = 3 + (1 if method in HELDOUT_METHODS else 0)
            flops += per_image * (steps * sizes["train"] * config.epochs + config.records_per_run * total_images)
    return flops * len(config.seeds) / flops_per_second
