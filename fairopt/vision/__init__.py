"""Image models and training helpers: the deep-network setting of Cherepanova et al. 2021 (faces, medical images).

* :func:`create_image_model` / :func:`list_image_models`: one entry point for our width-parameterized
  pre-activation ResNet-18 (``preact-resnet18-w{k}``, for capacity sweeps), any timm model, and torchvision models
  (``torchvision:<name>``); every model returns ``(N,)`` float32 logits; nothing downloads.
* :func:`prepare_model`, :func:`autocast`, :func:`move_images`: channels-last layout (on CUDA), ``torch.compile``,
  bfloat16 autocast on CUDA and CPU, with :class:`fairopt.ConstrainedOptimizer` unchanged.

Rare groups in small batches: see :class:`fairopt.samplers.GroupBalancedBatchSampler` (changes what the batches
hold; ``ImageDataset.loader(split, batch_size, balance="group")``) and the optimizer's ``dual_min_count`` (changes
what the dual player reads); :mod:`fairopt.samplers` says when to use which.
"""

from fairopt.vision.factory import PAPER_WIDTHS, SOURCES, BinaryLogits, create_image_model, list_image_models
from fairopt.vision.preact_resnet import PreActBlock, PreActResNet, preact_resnet18
from fairopt.vision.training import AMP_MODES, autocast, move_images, prepare_model
from fairopt.vision.weights import read_state_dict

__all__ = [
    "AMP_MODES",
    "PAPER_WIDTHS",
    "SOURCES",
    "BinaryLogits",
    "PreActBlock",
    "PreActResNet",
    "autocast",
    "create_image_model",
    "list_image_models",
    "move_images",
    "preact_resnet18",
    "prepare_model",
    "read_state_dict",
]
