"""Data sets available offline (registry grows with the factory issue).

Example:
    >>> data = digits(image_size=16, seed=0)
    >>> tuple(data.x_train.shape[1:]), data.num_classes
    ((1, 16, 16), 10)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class TensorData:
    """A small in-memory supervised data set split into train / validation / test.

    Attributes:
        name: registry name.
        x_train, y_train, x_val, y_val, x_test, y_test: tensors (inputs float or long, targets long).
        num_classes: number of target classes (vocabulary size for language models).
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int


def _split(name: str, x: torch.Tensor, y: torch.Tensor, num_classes: int, seed: int,
           fractions: tuple[float, float] = (0.6, 0.2)) -> TensorData:
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    a = int(fractions[0] * len(x))
    b = a + int(fractions[1] * len(x))
    return TensorData(name, x[:a], y[:a], x[a:b], y[a:b], x[b:], y[b:], num_classes)


def digits(image_size: int = 16, seed: int = 0) -> TensorData:
    """scikit-learn's 8×8 handwritten digits (ships with the package), upsampled and
    standardised; 60/20/20 train/val/test split drawn with ``seed``."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = (x - x.mean()) / x.std()
    return _split("digits", x, torch.tensor(bunch.target, dtype=torch.long), 10, seed)
