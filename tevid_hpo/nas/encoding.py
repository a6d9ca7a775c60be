"""BANANAS' path encoding of a cell: one bit per live input→output path.

Bits are indexed by the sequence of operations along a path (paths of 1, 2 and 3 edges:
``n + n^2 + n^3`` bits for ``n`` operations, ``155`` for NAS-Bench-201's five, with the reference
code's index layout: short paths first, operations read as base-``n`` digits, first edge least
significant). Paths through a ``none`` edge carry nothing and set no bit, so two cells computing
the same function encode alike. A ``path_cutoff`` keeps the first ``k`` bits only (the truncated
encoding). :meth:`SearchSpace.encode <tevid_hpo.nas.SearchSpace.encode>` appends a one-hot of the
learning rate when a space offers several.

Example:
    >>> from tevid_hpo.nas.cell import OPS, Cell
    >>> cell = Cell(("nor_conv_3x3", "none", "none", "skip_connect", "none", "none"))
    >>> num_paths(len(OPS)), path_indices(OPS, cell), int(path_encoding(OPS, cell).sum())
    (155, [1], 1)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tevid_hpo.nas.cell import Cell

__all__ = ["num_paths", "path_encoding", "path_indices"]


def num_paths(n_ops: int) -> int:
    """Length of the full path encoding: ``n + n^2 + n^3`` for ``n`` operations.

    Example:
        >>> num_paths(5)
        155
    """
    return n_ops + n_ops ** 2 + n_ops ** 3


def path_indices(ops: Sequence[str], cell: Cell) -> list[int]:
    """Index of each live path of ``cell`` over the vocabulary ``ops``: paths of ``L`` edges
    occupy the block after the shorter ones, and within it the operations read as base-``n``
    digits (first edge least significant), as in the reference code.

    Example:
        >>> from tevid_hpo.nas.cell import OPS, Cell
        >>> path_indices(OPS, Cell(("none", "none", "none", "avg_pool_3x3", "none", "none")))
        [4]
    """
    n = len(ops)
    out = []
    for path_ops in cell.paths():
        offset = sum(n ** k for k in range(1, len(path_ops)))
        out.append(offset + sum(ops.index(op) * n ** j for j, op in enumerate(path_ops)))
    return out


def path_encoding(ops: Sequence[str], cell: Cell, path_cutoff: int | None = None) -> np.ndarray:
    """The ``float32`` path-encoding bits of ``cell``, cut to the first ``path_cutoff`` if given.

    Example:
        >>> from tevid_hpo.nas.cell import OPS, Cell
        >>> path_encoding(OPS, Cell(("skip_connect",) * 6), path_cutoff=10).shape
        (10,)
    """
    bits = np.zeros(num_paths(len(ops)), dtype=np.float32)
    bits[path_indices(ops, cell)] = 1.0
    return bits[:path_cutoff] if path_cutoff else bits
