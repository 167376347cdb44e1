"""Coloured digits: a small, semi-synthetic image fairness set built from scikit-learn's bundled handwritten digits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from fairopt.groups import Groups

from ._splits import check_fractions, stratified_split
from .image_io import ImageSize, RowOrigin
from .images import ImageDataset, assemble_images

__all__ = ["DIGIT_TARGETS", "load_colored_digits"]

DIGIT_TARGETS: dict[str, str] = {"digit>=5": "the digit is 5, 6, 7, 8 or 9", "even": "the digit is 0, 2, 4, 6 or 8"}
"""The targets :func:`load_colored_digits` offers, and what ``y = 1`` means for each (before label noise)."""

_COLORS = ("green", "red")  # group ids 0 and 1; red strokes live in channel 0, green in channel 1


def load_colored_digits(
    *,
    target: str = "digit>=5",
    correlation: float = 0.8,
    label_noise: float = 0.1,
    validation_fraction: float = 0.25,
    test_fraction: float = 0.5,
    audit_fraction: float = 0.0,
    seed: int = 0,
    image_size: ImageSize | None = None,
) -> ImageDataset:
    r"""Handwritten digits with an injected colour attribute correlated with the label: a *semi-synthetic* set.

    The images are real: the 1,797 8x8 handwritten digits that ship with scikit-learn
    (``sklearn.datasets.load_digits``, the UCI "Optical Recognition of Handwritten Digits" test set, Alpaydin and
    Kaynak 1998; 16 grey levels). The group is not: as in coloured MNIST (Arjovsky, Bottou, Gulrajani, Lopez-Paz,
    "Invariant Risk Minimization", 2019), each digit is drawn in red or green, and the colour is *injected* at random,
    seeded, correlated with the label:

    .. math::

        y = \mathbb{1}[\text{target}(\text{digit})] \oplus \varepsilon,\quad
        \varepsilon \sim \mathrm{Bernoulli}(\text{label\_noise}),\qquad
        P(\text{red} \mid y = 1) = P(\text{green} \mid y = 0) = \text{correlation}.

    The colour is a shortcut: in every split it predicts ``y`` with accuracy ``correlation``, while the strokes
    predict it up to the label noise. A model that leans on the colour errs more often for red negatives and green
    positives, so its false positive rate is higher for red and its true positive rate is higher for red: an
    equalized-odds / equal-opportunity gap on new data, with no shift between splits. Flipped labels give a wide net
    something to memorize: it interpolates the small training split (every training rate gap is then 0) while the
    test gap stays, the "illusion of fairness" of Cherepanova et al. (arXiv 2102.06764). Demographic parity is not a
    meaningful target here: the base rates differ by group by construction (0.8 vs 0.2 at the defaults).

    Args:
        target: ``"digit>=5"`` or ``"even"`` (:data:`DIGIT_TARGETS`).
        correlation: ``P(red | y = 1) = P(green | y = 0)``, in [0.5, 1]; 0.5 makes colour independent of the label.
        label_noise: probability that a label is flipped, in [0, 0.5).
        validation_fraction: shares of the 1,797 images for the held-out splits (stratified by
            colour and label, seeded); the rest trains. The defaults give 449 / 449 / 899 images: a training split
            small enough for a small ResNet to interpolate in seconds, a test split large enough for tight gaps.
        test_fraction: see ``validation_fraction``.
        audit_fraction: share of the validation images moved to an ``audit`` split (:meth:`ImageDataset.with_audit`).
        seed: seeds the colours, the label noise, the splits and the audit carve-out; the same seed gives the
            same dataset.
        image_size: model input ``(H, W)`` in pixels (upsampled antialiased), ``None``: the native 8x8.

    Returns:
        An :class:`ImageDataset` named ``"colored_digits"``: in-memory ``(N, 3, 8, 8)`` uint8 images (strokes in the
        red or the green channel, blue empty), sensitive ``("color",)`` with groups ``color=green`` (id 0) and
        ``color=red`` (id 1), normalization fitted on the training split (a constant channel is divided by 1), no
        mirror augmentation (a mirrored digit is another glyph). ``frame`` has ``digit``, ``clean_label``,
        ``flipped``, ``label`` and ``color``.

    Raises:
        ImportError: scikit-learn is not installed (``pip install 'fairopt[peers]'``).
        ValueError: an unknown target; ``correlation``, ``label_noise`` or a fraction out of range.
    """
    if target not in DIGIT_TARGETS:
        raise ValueError(f"unknown target {target!r}; valid choices: {', '.join(DIGIT_TARGETS)}")
    if not 0.5 <= correlation <= 1.0:
        raise ValueError(f"correlation must be in [0.5, 1], got {correlation}")
    if not 0.0 <= label_noise < 0.5:
        raise ValueError(f"label_noise must be in [0, 0.5), got {label_noise}")
    check_fractions(validation_fraction, test_fraction)
    if not 0.0 <= audit_fraction < 1.0:
        raise ValueError(f"audit_fraction must be in [0, 1), got {audit_fraction}")
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError(
            "load_colored_digits reads the digits bundled with scikit-learn, which is not installed; install it "
            "with: pip install 'fairopt[peers]' (or pip install scikit-learn)"
        ) from None

    bunch = load_digits()
    digit = bunch.target.astype(np.int64)
    clean = (digit >= 5) if target == "digit>=5" else (digit % 2 == 0)
    rng = np.random.default_rng(seed)
    flipped = rng.random(len(digit)) < label_noise
    labels = (clean ^ flipped).astype(np.int64)
    red = rng.random(len(digit)) < np.where(labels == 1, correlation, 1.0 - correlation)
    group_ids = red.astype(np.int64)

    # 16 grey levels (0..16) -> 0..255, drawn into the colour's channel.
    intensity = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    images = np.zeros((len(digit), 3, 8, 8), dtype=np.uint8)
    images[np.arange(len(digit)), 1 - group_ids] = intensity  # red -> channel 0, green -> channel 1

    shares = [1.0 - validation_fraction - test_fraction, validation_fraction, test_fraction]
    train, validation, test = stratified_split(group_ids * 2 + labels, shares, seed)
    scaled = images[train].astype(np.float64) / 255.0
    mean = scaled.mean(axis=(0, 2, 3))
    std = scaled.std(axis=(0, 2, 3))
    std = np.where(std > 0, std, 1.0)  # the blue channel is empty

    frame = pd.DataFrame(
        {
            "digit": digit,
            "clean_label": clean.astype(np.int64),
            "flipped": flipped,
            "label": labels,
            "color": np.asarray(_COLORS, dtype=object)[group_ids],
        }
    )
    return assemble_images(
        name="colored_digits",
        frame=frame,
        labels=labels,
        groups=Groups({"color": list(_COLORS)}),
        group_ids=group_ids,
        target=target,
        split_index={"train": train, "validation": validation, "test": test},
        origin=RowOrigin("sklearn.datasets.load_digits", None, "image"),
        image_size=image_size,
        mean=mean.tolist(),
        std=std.tolist(),
        hflip=False,
        images=torch.from_numpy(images),
        audit_fraction=audit_fraction,
        seed=seed,
    )
