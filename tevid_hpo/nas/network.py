"""The network a candidate trains: NAS-Bench-201's macro skeleton around one cell (:class:`CellNet`).

Only the edges on a live input→output path are built, so the network computes exactly what the
path encoding describes.

Example:
    >>> import torch
    >>> from tevid_hpo.nas.cell import Cell
    >>> CellNet(Cell(("skip_connect",) * 6))(torch.randn(1, 1, 16, 16)).shape
    torch.Size([1, 10])
"""

from __future__ import annotations

import torch
from torch import nn

from tevid_hpo.nas.cell import _NODES, EDGES, Cell

__all__ = ["CellNet"]


class _ReLUConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1) -> None:
        super().__init__(nn.ReLU(), nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2,
                                              bias=False), nn.BatchNorm2d(c_out))


def _op(name: str, channels: int) -> nn.Module:
    if name == "skip_connect":
        return nn.Identity()
    if name == "nor_conv_1x1":
        return _ReLUConvBN(channels, channels, 1)
    if name == "nor_conv_3x3":
        return _ReLUConvBN(channels, channels, 3)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    raise ValueError(f"unknown operation {name!r}")


class _CellModule(nn.Module):
    """A cell instance: node ``j`` is the sum of ``op(i→j)(node i)`` over its live edges."""

    def __init__(self, cell: Cell, channels: int) -> None:
        super().__init__()
        # Only edges on a live input→output path are built. "none" edges would multiply by
        # zero; an edge out of a node the input never reaches adds at most a constant; an edge
        # into a node that never reaches the output is dead weight (and a capture hook on it
        # would see no gradient). What remains is exactly what the path encoding describes.
        live = cell.live_edges()
        self.edges = nn.ModuleDict({f"{EDGES[e][0]}_{EDGES[e][1]}": _op(cell.ops[e], channels)
                                    for e in live})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        for j in range(1, _NODES):
            terms = [self.edges[f"{i}_{j}"](nodes[i]) for i in range(j)
                     if f"{i}_{j}" in self.edges]
            nodes.append(torch.stack(terms).sum(0) if terms else torch.zeros_like(x))
        return nodes[-1]


class _Reduction(nn.Module):
    """NAS-Bench-201's residual reduction block: stride-2 ReLU-Conv-BN pair + pooled shortcut."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv_a = _ReLUConvBN(c_in, c_out, 3, stride=2)
        self.conv_b = _ReLUConvBN(c_out, c_out, 3)
        self.shortcut = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(c_in, c_out, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_b(self.conv_a(x)) + self.shortcut(x)


class CellNet(nn.Module):
    """NAS-Bench-201's macro skeleton around one cell, sized for a CPU.

    Stem (3×3 conv + BN) → ``cells_per_stage`` cells at ``C`` → reduction → cells at ``2C`` →
    reduction → cells at ``4C`` → BN-ReLU → global average pool → linear. NAS-Bench-201 uses
    ``C=16`` and 5 cells per stage on 32×32 images; ``C=8`` and one cell per stage train on
    16×16 digits in about a second per few epochs.

    Example:
        >>> import torch
        >>> net = CellNet(Cell(("nor_conv_3x3",) * 6), in_channels=1, num_classes=10)
        >>> net(torch.randn(2, 1, 16, 16)).shape
        torch.Size([2, 10])
    """

    def __init__(self, cell: Cell, in_channels: int = 1, num_classes: int = 10,
                 channels: int = 8, cells_per_stage: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(channels)]
        c = channels
        for stage in range(3):
            if stage:
                layers.append(_Reduction(c, 2 * c))
                c *= 2
            layers += [_CellModule(cell, c) for _ in range(cells_per_stage)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten(), nn.Linear(c, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
