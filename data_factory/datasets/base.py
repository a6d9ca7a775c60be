"""What every loader returns and shares: :class:`TensorData`, :class:`DatasetSpec`, split helpers.

:class:`TensorData` is a small in-memory train / validation / test split; :class:`DatasetSpec` a
registry entry (:data:`data_factory.datasets.DATASETS`). The private helpers split tensors with a
seeded permutation, standardise every split with training statistics (so validation and test
never leak into them), draw balanced labels and convert channel counts.

Example:
    >>> import torch
    >>> x, y = torch.arange(10.0)[:, None], torch.arange(10) % 2
    >>> d = _split("toy", x, y, 2, seed=0)
    >>> len(d.x_train), len(d.x_val), len(d.x_test)
    (6, 2, 2)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["DatasetSpec", "TensorData"]


@dataclass(frozen=True)
class TensorData:
    """A small in-memory supervised data set split into train / validation / test.

    Attributes:
        name: registry name.
        x_train, y_train, x_val, y_val, x_test, y_test: tensors (inputs float or long, targets
            long).
        num_classes: number of target classes (vocabulary size for language models).

    Example:
        >>> import torch
        >>> z = torch.zeros(4, 2)
        >>> y = z[:, 0].long()
        >>> TensorData("toy", z, y, z, y, z, y, num_classes=2).num_classes
        2
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int


@dataclass(frozen=True)
class DatasetSpec:
    """A registered data set.

    Attributes:
        name: registry key.
        modality: ``"image"``, ``"tabular"`` or ``"text"``.
        load: ``load(seed, **options) -> TensorData``.
        description: one line on what the data are.

    Example:
        >>> from data_factory.datasets import DATASETS
        >>> DATASETS["text"].modality
        'text'
    """

    name: str
    modality: str
    load: Callable[..., TensorData]
    description: str = ""


def _split(name: str, x: torch.Tensor, y: torch.Tensor, num_classes: int, seed: int,
           fractions: tuple[float, float] = (0.6, 0.2)) -> TensorData:
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    a = int(fractions[0] * len(x))
    b = a + int(fractions[1] * len(x))
    return TensorData(name, x[:a], y[:a], x[a:b], y[a:b], x[b:], y[b:], num_classes)


def _standardised(name: str, parts: Sequence[tuple[np.ndarray, np.ndarray]], num_classes: int,
                  axes: tuple[int, ...]) -> TensorData:
    """Pack ``[(x, y)] * 3`` (train, val, test) into a :class:`TensorData`, standardising every
    split with the *training* statistics over ``axes`` (so val/test never leak into them)."""
    x_train = parts[0][0]
    mean = x_train.mean(axis=axes, keepdims=True)
    std = x_train.std(axis=axes, keepdims=True) + 1e-6
    tensors: list[torch.Tensor] = []
    for x, y in parts:
        tensors += [torch.from_numpy(((x - mean) / std).astype(np.float32)),
                     torch.from_numpy(np.asarray(y, dtype=np.int64))]
    return TensorData(name, *tensors, num_classes)


def _balanced_labels(n: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.arange(n) % num_classes)


def _to_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 1:
        return x.expand(-1, channels, -1, -1).contiguous()
    if channels == 1:
        return x.mean(dim=1, keepdim=True)
    raise ValueError(f"cannot turn {x.shape[1]} channels into {channels}")
