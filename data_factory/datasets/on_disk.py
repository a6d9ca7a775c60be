"""Torchvision data sets already on disk, in this registry's format: :func:`torchvision_dataset`.

Nothing is downloaded: CIFAR-10/100, SVHN and the MNIST family are read from a folder prepared
elsewhere, resized, converted to the requested channels, subsampled and standardised.

Example:
    >>> sorted(_TORCHVISION)[:3]
    ['cifar10', 'cifar100', 'fashionmnist']
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from data_factory.datasets.base import TensorData, _standardised, _to_channels

__all__ = ["torchvision_dataset"]


_TORCHVISION = {"cifar10": "CIFAR10", "cifar100": "CIFAR100", "svhn": "SVHN", "mnist": "MNIST",
                "fashionmnist": "FashionMNIST", "kmnist": "KMNIST"}


def _torchvision_arrays(dataset: object) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N×C×H×W uint8-valued float, N labels)`` from a torchvision data set's raw storage,
    bypassing its per-item PIL transforms (reading 50k items through PIL takes minutes)."""
    data = torch.as_tensor(np.asarray(dataset.data))
    labels = getattr(dataset, "targets", None)
    if labels is None:
        labels = dataset.labels  # SVHN
    if data.dim() == 3:  # MNIST family: N×H×W
        data = data[:, None]
    elif data.shape[-1] in (1, 3) and data.shape[1] not in (1, 3):  # CIFAR: N×H×W×C
        data = data.permute(0, 3, 1, 2)
    return data.float(), torch.as_tensor(np.asarray(labels), dtype=torch.long)


def torchvision_dataset(name: str, root: str | os.PathLike, train: bool = True,
                        image_size: int = 16, channels: int = 3, n_train: int = 1200,
                        n_val: int = 400, n_test: int = 400, seed: int = 0) -> TensorData:
    """A torchvision data set already on disk, in this registry's format.

    Reads ``name`` (``cifar10``, ``cifar100``, ``svhn``, ``mnist``, ``fashionmnist``, ``kmnist``;
    case-insensitive) from ``root`` with ``download=False``, resizes to ``image_size`` (area
    interpolation), converts to ``channels`` (grey replicated / RGB averaged), standardises per
    channel with training statistics and draws disjoint random train / val / test subsets of the
    requested sizes (capped by what exists) from the official split selected by ``train``
    (``True``: the training split; ``False``: the test split).

    Raises:
        KeyError: unknown ``name``.
        FileNotFoundError: ``root`` or the data set's files are missing (nothing is downloaded).

    Example:
        >>> torchvision_dataset("mnist", "/nonexistent")   # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        FileNotFoundError: torchvision data set 'mnist' not found under /nonexistent ...
    """
    key = name.lower().replace("-", "").replace("_", "")
    if key not in _TORCHVISION:
        raise KeyError(f"unknown torchvision data set {name!r}; choose from {sorted(_TORCHVISION)}")
    import torchvision

    cls = getattr(torchvision.datasets, _TORCHVISION[key])
    hint = (f"torchvision data set {name!r} not found under {root} (download=False: nothing is "
            f"fetched). Put the files where torchvision.datasets.{cls.__name__}(root, "
            "download=True) would, on a machine with network access, then copy the folder here.")
    if not Path(root).is_dir():
        raise FileNotFoundError(hint)
    try:
        if key == "svhn":
            dataset = cls(str(root), split="train" if train else "test", download=False)
        else:
            dataset = cls(str(root), train=train, download=False)
    except RuntimeError as err:  # torchvision's "Dataset not found or corrupted"
        raise FileNotFoundError(f"{hint} ({err})") from err
    x, y = _torchvision_arrays(dataset)
    rng = np.random.default_rng(seed)
    sizes = [n_train, n_val, n_test]
    if sum(sizes) > len(x):  # keep the proportions when the split is smaller than asked
        sizes = [int(s * len(x) / sum(sizes)) for s in sizes]
    perm = torch.from_numpy(rng.permutation(len(x))[:sum(sizes)])
    x, y = x[perm] / 255.0, y[perm]
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="area")
    x = _to_channels(x, channels)
    cuts = np.cumsum([0, *sizes])
    parts = [(x[a:b].numpy(), y[a:b].numpy()) for a, b in itertools.pairwise(cuts)]
    num_classes = len(getattr(dataset, "classes", None) or range(int(y.max()) + 1))
    return _standardised(key, parts, num_classes, axes=(0, 2, 3))
