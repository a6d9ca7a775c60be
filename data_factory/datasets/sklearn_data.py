"""Data sets made from scikit-learn: handwritten :func:`digits` and the synthetic :func:`tabular` task.

Both ship with scikit-learn (no download) and split with ``seed``: the task itself is fixed
(the digits; ``task_seed`` for the tabular centroids), ``seed`` draws which examples land in
which split.

Example:
    >>> digits(image_size=8).x_train.shape[-1], tabular(n_features=16).x_train.shape[-1]
    (8, 16)
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F

from data_factory.datasets.base import TensorData, _split, _standardised, _to_channels

__all__ = ["digits", "tabular"]


def digits(image_size: int = 16, seed: int = 0, channels: int = 1) -> TensorData:
    """scikit-learn's 8×8 handwritten digits (ships with the package), upsampled and
    standardised; 60/20/20 train/val/test split drawn with ``seed``.

    Args:
        image_size: side of the (bilinearly upsampled) images.
        seed: seeds the split.
        channels: 1 (grey, the historical default) or 3 (the grey image replicated, as the
            registry entry ``"digits"`` loads it for RGB models).

    Example:
        >>> tuple(digits(channels=3).x_train.shape)
        (1078, 3, 16, 16)
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = (x - x.mean()) / x.std()
    x = _to_channels(x, channels)
    return _split("digits", x, torch.tensor(bunch.target, dtype=torch.long), 10, seed)


def tabular(seed: int = 0, n_train: int = 1200, n_val: int = 400, n_test: int = 400,
            n_features: int = 32, num_classes: int = 10, class_sep: float = 1.5,
            task_seed: int = 0) -> TensorData:
    """A fixed synthetic classification task (scikit-learn ``make_classification``: 12
    informative, 8 redundant and 12 noise features, one Gaussian cluster per class, 2 % label
    noise), standardised per feature with training statistics.

    ``task_seed`` fixes the task (class centroids); ``seed`` draws which examples land in which
    split, as for :func:`digits`.

    Example:
        >>> data = tabular(seed=0)
        >>> tuple(data.x_train.shape), data.num_classes
        ((1200, 32), 10)
    """
    from sklearn.datasets import make_classification

    n = n_train + n_val + n_test
    informative = min(12, n_features)
    redundant = min(8, n_features - informative)
    x, y = make_classification(n_samples=n, n_features=n_features, n_informative=informative,
                               n_redundant=redundant, n_classes=num_classes, n_clusters_per_class=1,
                               class_sep=class_sep, flip_y=0.02, random_state=task_seed)
    perm = np.random.default_rng(seed).permutation(n)
    cuts = np.cumsum([0, n_train, n_val, n_test])
    parts = [(x[perm[a:b]].astype(np.float32), y[perm[a:b]]) for a, b in itertools.pairwise(cuts)]
    return _standardised("tabular", parts, num_classes, axes=(0,))
