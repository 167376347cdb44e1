r"""A width-parameterized pre-activation ResNet-18 for capacity sweeps: ``(N, C, H, W)`` images to ``(N,)`` logits.

The block is the pre-activation residual unit of He, Zhang, Ren, Sun, "Identity Mappings in Deep Residual Networks",
ECCV 2016 (Fig. 4(e)): normalization and ReLU come *before* each convolution and the shortcut adds the raw input,

.. math::

    h = \mathrm{relu}(\mathrm{BN}_1(x)), \qquad
    y = \mathrm{conv}_2(\mathrm{relu}(\mathrm{BN}_2(\mathrm{conv}_1(h)))) + s(x),

with ``s(x) = x`` when shape is kept and a strided 1x1 convolution of ``h`` when it changes. Because nothing
normalizes the last block's sum, a final BN-ReLU precedes the pooling (He et al. 2016, Section 4.1); the CIFAR
implementation that Nakkiran et al. adapted (github.com/kuangliu/pytorch-cifar, ``preact_resnet.py``) pools the
raw sum instead: ``final_norm=False`` builds that variant exactly (``16 k`` fewer parameters).

Width ``k`` as in Nakkiran, Kaplun, Bansal, Yang, Barak, Sutskever, "Deep Double Descent", ICLR 2020 (arXiv
1912.02292, Section 3) and Veldanda, Brugere, Dutta, Mishra, Garg, "Fairness via In-Processing in the
Over-parameterized Regime: A Cautionary Tale with MinDiff Loss", TMLR 2023: the four stages have ``k, 2k, 4k, 8k``
channels (strides 1, 2, 2, 2; Nakkiran et al., Appendix A: "The layer widths for the 4 blocks are [k, 2k, 4k,
8k]"); ``k = 64`` is the standard ResNet-18. With the CIFAR stem and batch norm the parameter count is exactly
``2724 k² + 157 k + 1`` (11,167,553 at ``k = 64``; ``2724 k² + 141 k + 1`` with ``final_norm=False``; hand count in
``tests/test_vision.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["NORMS", "STEMS", "PreActBlock", "PreActResNet", "preact_resnet18"]

NORMS = ("batch", "group", "none")
STEMS = ("cifar", "imagenet")


def check_image_channels(x: Tensor, in_chans: int) -> None:
    """Raise ``ValueError`` unless ``x`` is ``(N, in_chans, H, W)``, naming the ``in_chans=`` that would fit: images of
    another channel count (grayscale X-rays into an RGB model) would otherwise fail in the first convolution with a
    weight-shape error that names neither."""
    if x.dim() != 4 or x.shape[1] != in_chans:
        raise ValueError(
            f"expected images of shape (N, {in_chans}, H, W), got {tuple(x.shape)}; build the model with "
            f"in_chans={x.shape[1] if x.dim() == 4 else '...'} (create_image_model(..., in_chans=)) for images of "
            "other channels, e.g. the dataset's .channels"
        )


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        # 32 groups (Wu & He, "Group Normalization", ECCV 2018) where the channels divide; a narrow net (k = 5) gets
        # the largest divisor of its width that is <= 32, down to 1 (layer norm over each example's channels).
        return nn.GroupNorm(math.gcd(channels, 32), channels)
    return nn.Identity()


class PreActBlock(nn.Module):
    """One pre-activation basic block (He et al. 2016, Fig. 4(e)): ``(N, in_planes, H, W) -> (N, planes, H/s, W/s)``.

    Args:
        in_planes: input channels.
        planes: output channels.
        stride: stride of the first 3x3 convolution (and of the projection shortcut).
        norm: ``"batch"``, ``"group"`` or ``"none"``.

    Attributes:
        shortcut: ``None`` (identity: the input is added as it is) or the 1x1 projection applied to
            ``relu(norm1(x))`` when the stride or the channel count changes.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1, norm: str = "batch") -> None:
        super().__init__()
        self.norm1 = _norm(norm, in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.norm2 = _norm(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Conv2d | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.norm1(x))
        # The projection reads the pre-activated input; the identity adds x untouched (the "clean" path of He et al.)
        skip = x if self.shortcut is None else self.shortcut(h)
        return self.conv2(F.relu(self.norm2(self.conv1(h)))) + skip


class PreActResNet(nn.Module):
    """A pre-activation ResNet of width ``k``: ``(N, in_chans, H, W)`` float images to ``(N,)`` float32 logits.

    Stages of ``blocks`` :class:`PreActBlock` each with ``k, 2k, 4k, 8k`` channels (strides 1, 2, 2, 2), a final
    norm-ReLU, global average pooling and one linear output unit. Any ``H, W >= 1`` work (the pooling is adaptive).
    The logits are returned as float32 even under autocast: a positive prediction is the decision ``score >
    threshold``, and bfloat16 keeps only 8 significant bits.

    Args:
        width: k >= 1 (64: the standard ResNet-18).
        blocks: blocks per stage; ``(2, 2, 2, 2)`` is ResNet-18.
        in_chans: image channels (3 for RGB, 1 for X-rays).
        stem: ``"cifar"`` (default: one 3x3 convolution, stride 1, as Nakkiran et al. and Veldanda et al. use for 32x32
            and 128x128 images) or ``"imagenet"`` (7x7 stride-2 convolution, norm, ReLU and 3x3 stride-2 max pooling,
            He et al. 2016: 16x fewer activations, for 218x178 CelebA or 224x224 inputs).
        norm: ``"batch"`` (default), ``"group"`` (GroupNorm, batch-size independent: small or group-balanced batches)
            or ``"none"``.
        final_norm: a norm-ReLU after the last stage, before the pooling (default True, He et al. 2016); False:
            pool the last residual sum directly, as the CIFAR code Nakkiran et al. adapted does.

    Raises:
        ValueError: width, blocks or in_chans not positive integers; unknown stem or norm.
    """

    def __init__(
        self,
        width: int = 64,
        blocks: Sequence[int] = (2, 2, 2, 2),
        *,
        in_chans: int = 3,
        stem: str = "cifar",
        norm: str = "batch",
        final_norm: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (("width", width), ("in_chans", in_chans)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        blocks = tuple(blocks)
        if len(blocks) != 4 or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in blocks):
            raise ValueError(f"blocks must be 4 ints >= 1 (blocks per stage; ResNet-18: (2, 2, 2, 2)), got {blocks}")
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        self.width, self.in_chans, self.stem_kind, self.norm_kind = width, in_chans, stem, norm
        if stem == "cifar":
            self.stem = nn.Conv2d(in_chans, width, 3, stride=1, padding=1, bias=False)
        else:
            # Pre-activation blocks normalize their own input, but the max pooling needs activated features.
            self.stem = nn.Sequential(
                nn.Conv2d(in_chans, width, 7, stride=2, padding=3, bias=False),
                _norm(norm, width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        stages: list[nn.Module] = []
        planes_in = width
        for i, count in enumerate(blocks):
            planes = width * 2**i
            stride = 1 if i == 0 else 2
            stage = [PreActBlock(planes_in, planes, stride, norm)]
            stage += [PreActBlock(planes, planes, 1, norm) for _ in range(count - 1)]
            stages.append(nn.Sequential(*stage))
            planes_in = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        # without the final norm an Identity keeps the attribute (no parameters), and forward skips its ReLU too
        self.norm = _norm(norm, planes_in) if final_norm else nn.Identity()
        self.final_norm = final_norm
        self.fc = nn.Linear(planes_in, 1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):  # as torchvision's ResNet: He init for ReLU nets
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        check_image_channels(x, self.in_chans)
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        if self.final_norm:
            out = F.relu(self.norm(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out).squeeze(-1).float()


def preact_resnet18(width: int = 64, **kwargs: object) -> PreActResNet:
    """Pre-activation ResNet-18 of width ``k`` (``k, 2k, 4k, 8k`` channels); keyword arguments of
    :class:`PreActResNet` (``in_chans``, ``stem``, ``norm``, ``final_norm``)."""
    return PreActResNet(width, (2, 2, 2, 2), **kwargs)  # type: ignore[arg-type]
