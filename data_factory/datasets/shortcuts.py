"""The shortcuts of the Concept Bias intervention: image watermarks and a tabular code column.

Both are pure functions of a batch and a per-example key (class-dependent for a shortcut):
:func:`add_watermark` stamps a bright 2×2 patch at one of :data:`WATERMARK_POSITIONS`,
:func:`add_tabular_shortcut` overwrites one feature with a code of the key.

Example:
    >>> len(WATERMARK_POSITIONS)
    10
"""

from __future__ import annotations

import torch

__all__ = ["WATERMARK_POSITIONS", "add_tabular_shortcut", "add_watermark"]


#: The 10 fixed watermark positions (row, col) of a 16×16 image: the top-left pixel of each 2×2
#: patch, spread over the border and the corners' diagonals so they never touch each other.
WATERMARK_POSITIONS: tuple[tuple[int, int], ...] = (
    (1, 1), (1, 7), (1, 13), (7, 1), (7, 13), (13, 1), (13, 7), (13, 13), (4, 4), (4, 10),
)


def add_watermark(x: torch.Tensor, positions: torch.Tensor, strength: float = 1.0,
                  value: float = 3.0) -> torch.Tensor:
    """Stamp a bright 2×2 patch on every image at one of :data:`WATERMARK_POSITIONS`.

    Pure: returns a new tensor. The patch blends towards ``value`` (in standardised units, i.e.
    3 σ brighter than average, in every channel) with weight ``strength`` ∈ [0, 1]; positions
    are scaled for images larger or smaller than 16×16.

    Args:
        x: ``N×C×H×W`` images.
        positions: ``N`` indices in ``0..9`` (class-dependent for a shortcut; taken modulo 10).
        strength: 0 leaves ``x`` unchanged, 1 writes ``value``.
        value: brightness of the patch.

    Example:
        >>> import torch
        >>> out = add_watermark(torch.zeros(2, 3, 16, 16), torch.tensor([0, 9]))
        >>> out[0, :, 1:3, 1:3].unique().tolist(), out[1, 0, 4:6, 10:12].unique().tolist()
        ([3.0], [3.0])
        >>> out.sum().item()  # two patches of 2×2×3 values, nothing else touched
        72.0
    """
    if x.dim() != 4:
        raise ValueError(f"add_watermark needs N×C×H×W images, got shape {tuple(x.shape)}")
    if len(positions) != len(x):
        raise ValueError(f"need one position per image: {len(positions)} for {len(x)}")
    h, w = x.shape[-2:]
    table = torch.tensor(WATERMARK_POSITIONS, dtype=torch.float32)
    rc = (table * torch.tensor([(h - 2) / 14.0, (w - 2) / 14.0])).round().long()
    rc = rc[positions.long() % len(WATERMARK_POSITIONS)]
    rows = rc[:, 0, None, None] + torch.arange(2)[None, :, None]    # N×2×1
    cols = rc[:, 1, None, None] + torch.arange(2)[None, None, :]    # N×1×2
    batch = torch.arange(len(x))[:, None, None]
    out = x.clone()
    patch = out[batch, :, rows, cols]                               # N×2×2×C
    out[batch, :, rows, cols] = (1 - strength) * patch + strength * value
    return out


def add_tabular_shortcut(x: torch.Tensor, key: torch.Tensor, strength: float = 1.0,
                         num_classes: int = 10, column: int = -1) -> torch.Tensor:
    """Overwrite one feature with a code of ``key`` (e.g. the label): the tabular shortcut.

    Pure: returns a new tensor. The code maps ``0..num_classes-1`` linearly onto
    ``[-1.7, 1.7]`` (about unit variance, like the standardised features); the column becomes
    ``(1 - strength) * x + strength * code``.

    Example:
        >>> import torch
        >>> add_tabular_shortcut(torch.zeros(2, 4), torch.tensor([0, 9]))[:, -1].tolist()
        [-1.7000000476837158, 1.7000000476837158]
    """
    if x.dim() != 2:
        raise ValueError(f"add_tabular_shortcut needs N×F rows, got shape {tuple(x.shape)}")
    code = (key.to(x.dtype) / max(1, num_classes - 1) * 2 - 1) * 1.7
    out = x.clone()
    out[:, column] = (1 - strength) * out[:, column] + strength * code
    return out
