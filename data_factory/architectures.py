"""Small CPU-trainable instances of real architecture families (registry grows with the factory).

Example:
    >>> import torch
    >>> small_cnn(in_channels=1, num_classes=10)(torch.randn(2, 1, 16, 16)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from torch import nn


def small_cnn(in_channels: int = 3, num_classes: int = 10, width: int = 16) -> nn.Module:
    """AlexNet-like plain CNN: four conv–ReLU stages, two poolings, a linear head."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes),
    )
