"""Image models by name: :func:`create_image_model` and :func:`list_image_models` (the registry the CLI reads).

Three families, one entry point, every model mapping ``(N, C, H, W)`` float images to ``(N,)`` float32 logits:

=============================  ======================================================================================
name                           model
=============================  ======================================================================================
``preact-resnet18-w{k}``       :class:`~fairopt.vision.PreActResNet` of width k (``k, 2k, 4k, 8k`` channels; k = 64 is
                               ResNet-18), for capacity sweeps; ``preact-resnet18`` with ``width=k`` is the same
any timm name                  ``timm.create_model(name, num_classes=1, in_chans=...)``, e.g. ``resnet18``,
                               ``convnext_tiny``, ``vit_small_patch16_224``; a pretrained tag (``resnet18.a1_in1k``) too
``torchvision:<name>``         ``torchvision.models.get_model(name, weights=None, num_classes=1)``, e.g.
                               ``torchvision:resnet18``
=============================  ======================================================================================

Nothing downloads: pretrained weights come only from a local file (``pretrained_file=``), and ``pretrained=True``
without one is an error. timm and torchvision are imported when a model of theirs is asked for (``import fairopt``
stays light).
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fairopt._validation import close_names, spelling
from fairopt.vision.preact_resnet import check_image_channels, preact_resnet18
from fairopt.vision.weights import existing_file, load_weights, read_state_dict

__all__ = ["PAPER_WIDTHS", "SOURCES", "BinaryLogits", "create_image_model", "list_image_models"]

SOURCES = ("fairopt", "timm", "torchvision")
# The widths of the MinDiff study (Veldanda et al., TMLR 2023, CelebA): listed by list_image_models(); any k >= 1 works.
PAPER_WIDTHS = (5, 7, 9, 13, 19, 55, 64)
_PREACT = re.compile(r"^preact-resnet18(?:-w(\d+))?$")
_TORCHVISION = "torchvision:"
# torchvision models whose training-mode output is a tuple with auxiliary logits; one output is asked for here.
_AUX_LOGITS = ("googlenet", "inception_v3")


class BinaryLogits(nn.Module):
    """Wrap a network with one output unit so it returns ``(N,)`` float32 logits (timm and torchvision give
    ``(N, 1)``, in the autocast dtype).

    Args:
        net: the network. in_chans: the image channels it was built for (:func:`create_image_model` passes them),
            checked at every call, so that images of another channel count (grayscale X-rays into an RGB model) are
            refused with what to change instead of the first convolution's weight-shape error; None: unchecked.

    Attributes:
        net: the wrapped network (e.g. for ``timm.data.resolve_model_data_config(model.net)``, or to freeze a
            backbone). Its state dict keys carry the prefix ``net.``.
    """

    def __init__(self, net: nn.Module, in_chans: int | None = None) -> None:
        super().__init__()
        self.net = net
        self.in_chans = in_chans

    def forward(self, x: Tensor) -> Tensor:
        if self.in_chans is not None:
            check_image_channels(x, self.in_chans)
        out = self.net(x)
        if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[1] != 1:
            what = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"{type(self.net).__name__} returned {what}, expected (N, 1) logits (one output unit)")
        return out.squeeze(-1).float()


def _timm_names() -> list[str]:
    import timm

    return list(timm.list_models())


def _torchvision_names() -> list[str]:
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))  # classification models only


def list_image_models(pattern: str = "*", *, sources: Sequence[str] = SOURCES) -> list[str]:
    """Image model names :func:`create_image_model` accepts, filtered by a shell pattern (``fnmatch``), sorted
    within each source.

    Our own family is listed at the widths of the MinDiff study (``preact-resnet18-w{k}``, k in
    :data:`PAPER_WIDTHS`); any width k >= 1 is accepted. timm names are those of ``timm.list_models()`` (without
    pretrained tags), torchvision ones carry the prefix ``torchvision:``.

    Raises:
        ValueError: an unknown source.
    """
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise ValueError(f"unknown model sources {unknown}; choose from {SOURCES}")
    names: list[str] = []
    if "fairopt" in sources:
        names += ["preact-resnet18"] + [f"preact-resnet18-w{k}" for k in PAPER_WIDTHS]
    if "timm" in sources:
        names += _timm_names()
    if "torchvision" in sources:
        names += [_TORCHVISION + n for n in _torchvision_names()]
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def _unknown(name: str, candidates: list[str], where: str) -> ValueError:
    close = close_names(name, candidates)
    # every width of our family is accepted but only the paper's are listed: the one asked for, spelled right
    if (preact := re.fullmatch(r"preactresnet18(?:w(\d+))?", spelling(name))) is not None:
        close = ["preact-resnet18" + ("" if preact.group(1) is None else f"-w{preact.group(1)}")]
    hint = f"close names: {', '.join(close)}; " if close else ""
    return ValueError(
        f"unknown image model {name!r} ({where}); {hint}fairopt.vision.list_image_models(pattern) lists the names "
        "(preact-resnet18-w{k} for any width k, any timm name, torchvision:<name>)"
    )


def _is_head(_key: str, saved: Tensor, current: Tensor) -> bool:
    """A classifier parameter: one output unit here, several in the file, the same shape otherwise (Linear weight
    and bias, or a 1x1 convolution head)."""
    return current.dim() >= 1 and current.shape[0] == 1 and saved.shape[0] != 1 and saved.shape[1:] == current.shape[1:]


def _build_fairopt(name: str, width: int | None, in_chans: int, kwargs: dict[str, Any]) -> nn.Module:
    match = _PREACT.match(name)
    assert match is not None
    named = None if match.group(1) is None else int(match.group(1))
    if named is not None and width is not None and named != width:
        raise ValueError(f"{name!r} names width {named} but width={width} was given; give one of them")
    k = width if width is not None else (named if named is not None else 64)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"the width of {name!r} must be an int >= 1, got {k!r}")
    return preact_resnet18(k, in_chans=in_chans, **kwargs)


def _build_timm(name: str, in_chans: int, pretrained_file: Path | None, kwargs: dict[str, Any]) -> nn.Module:
    import timm

    if not timm.is_model(name):
        raise _unknown(
            name, _timm_names() + list_image_models(sources=("fairopt",)), "neither a fairopt nor a timm model"
        )
    if pretrained_file is None:
        return timm.create_model(name, pretrained=False, num_classes=1, in_chans=in_chans, **kwargs)
    # 'file' is the highest-priority source timm reads once 'source' (which may say 'hf-hub') and 'state_dict' are
    # cleared; timm then drops the classifier for num_classes=1 and adapts the stem to in_chans.
    overlay = {"file": str(pretrained_file), "source": None, "state_dict": None}
    try:
        return timm.create_model(
            name, pretrained=True, pretrained_cfg_overlay=overlay, num_classes=1, in_chans=in_chans, **kwargs
        )
    except (RuntimeError, KeyError) as err:
        raise ValueError(
            f"cannot load the pretrained weights {str(pretrained_file)!r} into timm model {name!r}: {err}. The file "
            f"must hold the timm weights of {name!r} (e.g. saved once with torch.save(timm.create_model({name!r}, "
            "pretrained=True).state_dict(), path) on a machine with network access)"
        ) from err


def _build_torchvision(name: str, in_chans: int, pretrained_file: Path | None, kwargs: dict[str, Any]) -> nn.Module:
    short = name[len(_TORCHVISION) :]
    names = _torchvision_names()
    if short not in names:
        raise _unknown(name, [_TORCHVISION + n for n in names], "not a torchvision classification model")
    if in_chans != 3:
        raise ValueError(
            f"torchvision models take 3-channel images (in_chans={in_chans} was asked for); use a timm model, which "
            "adapts its stem (e.g. 'resnet18' with in_chans=1), or preact-resnet18-w{k}"
        )
    import torchvision

    if short in _AUX_LOGITS:
        kwargs.setdefault("aux_logits", False)
    net = torchvision.models.get_model(short, weights=None, num_classes=1, **kwargs)
    if pretrained_file is not None:
        state = read_state_dict(pretrained_file, what="pretrained_file")
        load_weights(net, state, source=f"pretrained_file {str(pretrained_file)!r}", drop=_is_head)
    return net


def create_image_model(
    name: str,
    *,
    in_chans: int = 3,
    width: int | None = None,
    pretrained: bool = False,
    pretrained_file: str | os.PathLike[str] | None = None,
    checkpoint_path: str | os.PathLike[str] | None = None,
    seed: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build image model ``name`` (see the module table): ``(N, in_chans, H, W)`` float images to ``(N,)`` float32
    logits, one output unit (a binary classifier; a positive prediction is ``logit > threshold``).

    As ``timm.create_model`` (the entry point image users know), with two rules of fairopt: nothing downloads, and
    every model gives ``(N,)`` logits.

    Args:
        name: ``preact-resnet18-w{k}``, a timm name or ``torchvision:<name>``.
        in_chans: image channels (3 RGB, 1 grayscale X-rays). torchvision models take only 3.
        width: preact-resnet18 only: the width k (instead of the ``-w{k}`` suffix).
        pretrained: True asks for pretrained weights, which must then come from ``pretrained_file``.
        pretrained_file: a local weights file of the architecture (e.g. timm's or torchvision's ImageNet weights,
            saved once where there is network access). Its classifier head is dropped (one fresh output unit
            replaces it); timm adapts the first convolution to ``in_chans``. Giving it implies ``pretrained``.
        checkpoint_path: a state dict of exactly this model (e.g. ``torch.save(model.state_dict(), path)`` after
            fine-tuning), loaded last, head included. Nested ``{"state_dict": ...}`` files and the ``module.``
            (DDP) and ``_orig_mod.`` (``torch.compile``) prefixes are accepted; so is the bare network's state dict
            of a timm or torchvision model.
        seed: if given, parameters are initialized from ``torch.manual_seed(seed)`` (the global RNG state is
            restored afterwards).
        **kwargs: passed to the family's constructor: ``stem``, ``norm`` (:class:`~fairopt.vision.PreActResNet`),
            e.g. ``drop_rate`` (timm), model options (torchvision).

    Returns:
        The model on the CPU in training mode: a :class:`~fairopt.vision.PreActResNet`, or a
        :class:`BinaryLogits` around the timm or torchvision network.

    Raises:
        ValueError: an unknown name (the message suggests close names), ``pretrained=True`` without
            ``pretrained_file``, a ``hf-hub:`` name (it would download), ``width`` for a model other than
            preact-resnet18, ``in_chans`` not an int >= 1, ``num_classes`` or ``in_channels`` among the ``kwargs``
            (fairopt sets them), weights that do not fit the model (the message lists the keys).
        FileNotFoundError: ``pretrained_file`` or ``checkpoint_path`` is not a file.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a model name (str), got {name!r}; see fairopt.vision.list_image_models()")
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"in_chans must be an int >= 1 (image channels), got {in_chans!r}")
    if name.startswith(("hf-hub:", "hf_hub:")):
        raise ValueError(
            f"{name!r} would download from the Hugging Face hub, and fairopt never downloads: give the architecture "
            "name (e.g. 'resnet18') and pretrained_file= a local copy of the weights"
        )
    if pretrained and pretrained_file is None:
        raise ValueError(
            f"pretrained=True for {name!r} needs pretrained_file= (a local weights file): fairopt never downloads. "
            "Save the weights once where there is network access, or pass pretrained=False for a random init"
        )
    # Checked before anything is built, so a wrong path fails at once (not after a large model's construction).
    file = None if pretrained_file is None else existing_file(pretrained_file, "pretrained_file")
    if checkpoint_path is not None:
        existing_file(checkpoint_path, "checkpoint_path")
    preact = _PREACT.match(name) is not None
    fixed = sorted({"num_classes", "in_channels"} & kwargs.keys())
    if fixed:  # set by fairopt: timm would raise a bare TypeError ("got multiple values for keyword argument")
        raise ValueError(
            f"create_image_model sets {' and '.join(fixed)} itself: every model is a binary classifier with one "
            "output unit, (N,) logits, and the images' channels are in_chans=; drop "
            f"{' and '.join(f + '=' for f in fixed)}"
        )
    if width is not None and not preact:
        raise ValueError(
            f"width= applies to preact-resnet18 only, not {name!r}; timm and torchvision models set their width "
            "by name (e.g. 'wide_resnet50_2')"
        )
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        if preact:
            model = _build_fairopt(name, width, in_chans, kwargs)
        elif name.startswith(_TORCHVISION):
            model = BinaryLogits(_build_torchvision(name, in_chans, file, kwargs), in_chans)
        elif ":" in name:
            raise ValueError(
                f"unknown model source in {name!r}; use a timm name, torchvision:<name> or preact-resnet18-w{{k}}"
            )
        else:
            model = BinaryLogits(_build_timm(name, in_chans, file, kwargs), in_chans)
    if preact and file is not None:
        load_weights(model, read_state_dict(file, what="pretrained_file"), source=f"pretrained_file {str(file)!r}")
    if checkpoint_path is not None:
        state = read_state_dict(checkpoint_path, what="checkpoint_path")
        target = model
        if isinstance(model, BinaryLogits) and not any(k.startswith("net.") for k in state):
            target = model.net  # the bare network's state dict (timm / torchvision scripts save that)
        load_weights(target, state, source=f"checkpoint_path {str(checkpoint_path)!r}")
    return model
