"""What a search draws from: a :class:`Candidate` (cell + learning rate) and the :class:`SearchSpace`.

A search space fixes the operation vocabulary, the learning rates on offer and the encoding's
cutoff; it draws random valid candidates, mutates them (BANANAS' local moves), encodes them for
the predictor (:mod:`tevid_hpo.nas.encoding`) and names them as Optuna parameters. Offering a
learning rate that is far too high is how a space comes to contain candidates that diverge —
the ones a TEViD hook should stop.

Example:
    >>> import numpy as np
    >>> s = SearchSpace()
    >>> c = s.random(np.random.default_rng(0))
    >>> c.cell.is_valid, s.encode(c).shape
    (True, (155,))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna

from tevid_hpo.nas import encoding
from tevid_hpo.nas.cell import EDGES, OPS, Cell

__all__ = ["Candidate", "SearchSpace"]


@dataclass(frozen=True)
class Candidate:
    """What one evaluation trains: a cell and its learning rate.

    Example:
        >>> Candidate(Cell(("skip_connect",) * 6), 0.1).key
        '|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|@0.1'
    """

    cell: Cell
    lr: float

    @property
    def key(self) -> str:
        """A unique, readable identifier."""
        return f"{self.cell}@{self.lr:g}"


@dataclass(frozen=True)
class SearchSpace:
    """The cells and learning rates a search draws from, and their encoding.

    Args:
        ops: operation vocabulary (NAS-Bench-201's by default). ``"none"`` must stay in it if
            cells with absent edges are wanted; every other name must be known to
            :class:`CellNet`.
        learning_rates: the learning rates a candidate can train with.
        path_cutoff: keep only the first ``k`` path-encoding bits (the truncated encoding).

    Example:
        >>> s = SearchSpace(learning_rates=(0.1, 10.0))
        >>> s.encoding_size, s.size
        (157, 31250)
    """

    ops: tuple[str, ...] = OPS
    learning_rates: tuple[float, ...] = (0.1,)
    path_cutoff: int | None = None

    def __post_init__(self) -> None:
        unknown = set(self.ops) - set(OPS)
        if unknown or len(set(self.ops)) != len(self.ops) or not self.ops:
            raise ValueError(f"ops must be distinct names from {OPS}, got {self.ops}")
        if not self.learning_rates or any(not lr > 0 for lr in self.learning_rates):
            raise ValueError(f"learning_rates must be positive, got {self.learning_rates}")
        if self.path_cutoff is not None and self.path_cutoff < 1:
            raise ValueError(f"path_cutoff must be >= 1, got {self.path_cutoff}")

    @property
    def num_paths(self) -> int:
        """Length of the full path encoding: ``n + n^2 + n^3`` for ``n`` operations."""
        return encoding.num_paths(len(self.ops))

    @property
    def encoding_size(self) -> int:
        """Length of :meth:`encode`'s vectors."""
        paths = min(self.num_paths, self.path_cutoff or self.num_paths)
        return paths + (len(self.learning_rates) if len(self.learning_rates) > 1 else 0)

    @property
    def size(self) -> int:
        """Number of candidates (valid or not)."""
        return len(self.ops) ** len(EDGES) * len(self.learning_rates)

    def path_indices(self, cell: Cell) -> list[int]:
        """Index of each live path (:func:`~tevid_hpo.nas.encoding.path_indices`)."""
        return encoding.path_indices(self.ops, cell)

    def encode(self, candidate: Candidate) -> np.ndarray:
        """Path encoding of the cell (+ a one-hot of the learning rate if there are several)."""
        bits = encoding.path_encoding(self.ops, candidate.cell, self.path_cutoff)
        if len(self.learning_rates) == 1:
            return bits
        lr = np.zeros(len(self.learning_rates), dtype=np.float32)
        lr[self.learning_rates.index(candidate.lr)] = 1.0
        return np.concatenate([bits, lr])

    def random(self, rng: np.random.Generator) -> Candidate:
        """A uniformly random candidate with a valid cell."""
        while True:
            cell = Cell(tuple(self.ops[i] for i in rng.integers(len(self.ops), size=len(EDGES))))
            if cell.is_valid:
                return Candidate(cell, float(self.learning_rates[rng.integers(len(
                    self.learning_rates))]))

    def mutate(self, candidate: Candidate, rng: np.random.Generator,
               rate: float = 1.0) -> Candidate:
        """A valid candidate that differs from ``candidate``.

        Each edge changes to another operation with probability ``rate / 6`` (the reference
        code's per-position rate; ``rate=1`` changes one edge on average), and the learning rate
        changes to another one with probability ``rate / 7`` (it counts as a seventh position).
        Draws repeat until the child is valid and differs from its parent.
        """
        if self.size <= 1:
            raise ValueError("a search space of one candidate has no mutations")
        positions = len(EDGES) + (len(self.learning_rates) > 1)
        p = min(1.0, rate / positions)
        while True:
            ops = list(candidate.cell.ops)
            for e, op in enumerate(ops):
                if rng.random() < p:
                    others = [o for o in self.ops if o != op]
                    ops[e] = others[rng.integers(len(others))]
            lr = candidate.lr
            if len(self.learning_rates) > 1 and rng.random() < p:
                others_lr = [x for x in self.learning_rates if x != lr]
                lr = float(others_lr[rng.integers(len(others_lr))])
            child = Candidate(Cell(tuple(ops)), lr)
            if child != candidate and child.cell.is_valid:
                return child

    def suggest(self, trial: optuna.Trial) -> Candidate:
        """Draw a candidate with Optuna: one categorical per edge (``"edge_0_1"``, …) and
        ``"lr"`` when there are several learning rates. The cell may be invalid."""
        ops = tuple(trial.suggest_categorical(f"edge_{i}_{j}", self.ops) for i, j in EDGES)
        lr = (trial.suggest_categorical("lr", self.learning_rates)
              if len(self.learning_rates) > 1 else self.learning_rates[0])
        return Candidate(Cell(ops), float(lr))

    def params(self, candidate: Candidate) -> dict[str, Any]:
        """The Optuna parameters :meth:`suggest` would draw for ``candidate``."""
        out: dict[str, Any] = {f"edge_{i}_{j}": op for (i, j), op in zip(EDGES, candidate.cell.ops)}
        if len(self.learning_rates) > 1:
            out["lr"] = candidate.lr
        return out
