"""Tabular fairness benchmarks and user data as split, preprocessed tensors.

Bundled datasets (compressed copies ship with the package; their SHA-256 is
verified on every load and nothing is downloaded):

================  ==========================================  ================
loader            source                                      licence
================  ==========================================  ================
:func:`load_adult`   UCI Adult, Becker & Kohavi (1996)           CC BY 4.0
:func:`load_compas`  ProPublica COMPAS, Angwin et al. (2016),    ProPublica data
                     de-identified                               terms
:func:`load_german`  UCI Statlog German Credit, Hofmann (1994)   CC BY 4.0
================  ==========================================  ================

:func:`load_csv` loads a user's CSV file or DataFrame the same way.

Images (the deep-network setting of Cherepanova et al., arXiv 2102.06764) come in through three loaders that return
an :class:`ImageDataset` with the same splits, labels, group ids and ``(x, y, group)`` batch order, ``x`` being
``(B, C, H, W)`` float32 images decoded and transformed with torchvision when a batch is drawn:

==============================  ====================================================================================
loader                          images
==============================  ====================================================================================
:func:`load_celeba`             the user's CelebA in its official layout (or Kaggle's CSV variant), official partition
:func:`load_image_csv`          files named in a metadata CSV (CheXpert, MIMIC-CXR, ISIC, Fitzpatrick17k shapes):
                                binned attributes, a split column or seeded splits, patients kept in one split
:func:`load_colored_digits`     scikit-learn's bundled 8x8 digits with an injected colour group (semi-synthetic)
==============================  ====================================================================================

Nothing downloads. ``ImageDataset.loader(split, batch_size, num_workers=...)`` gives the DataLoader (0 workers by
default; pinned memory when CUDA is there; persistent workers when there are workers; full, shuffled batches for
training, every image in order otherwise; ``balance="group"`` for group-balanced batches).

Every loader returns a :class:`TabularDataset` with ``train``, ``validation``
(held out, for model selection and for measuring constraints on data the model
did not train on) and ``test`` splits. Each split holds

* ``X``: ``(N, D)`` float32 features,
* ``y``: ``(N,)`` float32 labels in {0, 1},
* ``groups``: ``(N,)`` int64 group ids in ``[0, G)``, where ``G`` counts every
  combination of the sensitive attributes' categories (absent ones included)
  and ``group_names[g]`` reads like ``"sex=Female|race=Black"``.

Preprocessing (median imputation and standardization of numeric columns,
one-hot encoding of categorical ones) is fitted on the training split only and
then applied to the other splits. Splits are seeded (``seed=0`` by default) and
stratified by (group, label). The sensitive attributes are excluded from the
features unless ``include_sensitive=True``.

Example
-------
>>> from fairopt.datasets import load_adult
>>> data = load_adult(sensitive=("sex", "race"))
>>> data.num_groups
10
>>> for x, y, group in data.loader("train", batch_size=512):
...     break
"""

from ._builtin import DATASETS, load_adult, load_compas, load_dataset, load_german
from ._csv import SmallSplitWarning, load_csv
from ._resources import ChecksumError
from ._tabular import DatasetSplit, TabularDataset, TabularPreprocessor
from .celeba import load_celeba
from .digits import load_colored_digits
from .image_csv import load_image_csv
from .image_io import ImageGroupDataset, image_loader, image_transform
from .images import ImageDataset, ImageSplit

__all__ = [
    "DATASETS",
    "ChecksumError",
    "DatasetSplit",
    "ImageDataset",
    "ImageGroupDataset",
    "ImageSplit",
    "SmallSplitWarning",
    "TabularDataset",
    "TabularPreprocessor",
    "image_loader",
    "image_transform",
    "load_adult",
    "load_celeba",
    "load_colored_digits",
    "load_compas",
    "load_csv",
    "load_dataset",
    "load_german",
    "load_image_csv",
]
