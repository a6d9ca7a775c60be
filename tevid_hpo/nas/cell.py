"""The NAS-Bench-201 cell: a DAG on 4 nodes with one operation on each of its 6 edges.

:data:`OPS` are the operations, :data:`EDGES` the edges ``i → j`` (``i < j``) in NAS-Bench-201's
string order, :data:`PATHS` the input→output paths; a :class:`Cell` names one operation per edge
and knows which of its paths are live (no ``none`` edge on them).

Example:
    >>> cell = Cell.from_string("|nor_conv_3x3~0|+|none~0|skip_connect~1|+|none~0|none~1|avg_pool_3x3~2|")
    >>> [list(p) for p in cell.paths()], cell.live_edges()
    ([['nor_conv_3x3', 'skip_connect', 'avg_pool_3x3']], (0, 2, 5))
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EDGES", "OPS", "PATHS", "Cell"]

#: NAS-Bench-201's operations, in the order of its API.
OPS: tuple[str, ...] = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
#: The cell's edges ``(from, to)`` in NAS-Bench-201's string order.
EDGES: tuple[tuple[int, int], ...] = ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))
#: Every input→output path as the indices (into :data:`EDGES`) of its edges, in the reference
#: code's order: ``0→3``, ``0→1→3``, ``0→2→3``, ``0→1→2→3``.
PATHS: tuple[tuple[int, ...], ...] = ((3,), (0, 4), (1, 5), (0, 2, 5))
_NONE = "none"
_NODES = 4


@dataclass(frozen=True)
class Cell:
    """One cell: an operation name for each edge of :data:`EDGES`.

    Args:
        ops: six operation names (any strings from the search space's operations).

    Example:
        >>> c = Cell(("nor_conv_3x3", "none", "none", "skip_connect", "none", "none"))
        >>> str(c)
        '|nor_conv_3x3~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|'
        >>> Cell.from_string(str(c)) == c, c.is_valid
        (True, True)
    """

    ops: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "ops", tuple(self.ops))
        if len(self.ops) != len(EDGES):
            raise ValueError(f"a cell has {len(EDGES)} edges, got {len(self.ops)} operations")

    def __str__(self) -> str:
        nodes = []
        for j in range(1, _NODES):
            nodes.append("|" + "|".join(f"{self.ops[e]}~{i}" for e, (i, jj) in enumerate(EDGES)
                                        if jj == j) + "|")
        return "+".join(nodes)

    @classmethod
    def from_string(cls, text: str) -> Cell:
        """Parse NAS-Bench-201's ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`` notation."""
        ops: dict[tuple[int, int], str] = {}
        for j, node in enumerate(text.strip().split("+"), start=1):
            for token in filter(None, node.strip("|").split("|")):
                op, _, src = token.partition("~")
                ops[(int(src), j)] = op
        if set(ops) != set(EDGES):
            raise ValueError(f"not a 4-node cell string: {text!r}")
        return cls(tuple(ops[e] for e in EDGES))

    def paths(self) -> list[tuple[str, ...]]:
        """The operation sequences of the *live* input→output paths (no ``none`` edge on them),
        in :data:`PATHS` order."""
        out = []
        for path in PATHS:
            ops = tuple(self.ops[e] for e in path)
            if _NONE not in ops:
                out.append(ops)
        return out

    def live_edges(self) -> tuple[int, ...]:
        """Indices (into :data:`EDGES`) of the edges on some live input→output path."""
        return tuple(sorted({e for path in PATHS for e in path
                             if all(self.ops[k] != _NONE for k in path)}))

    @property
    def is_valid(self) -> bool:
        """At least one live input→output path: otherwise the cell outputs zeros."""
        return bool(self.paths())
