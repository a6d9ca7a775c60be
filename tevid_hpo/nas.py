"""BANANAS-style neural architecture search whose candidates TEViD can end early.

BANANAS (White et al., AAAI 2021) searches a cell-based space with a neural predictor: an
ensemble of small MLPs trained on the *path encoding* of the architectures evaluated so far, an
acquisition function over their predictions (independent Thompson sampling), and new candidates
made by mutating the best architectures found. This module implements it in PyTorch (the
reference code, ``naszilla/naszilla``, is TensorFlow 1.14 and not installable here) on a
NAS-Bench-201-like space small enough to train on a CPU, and adds what the paper's Appendix M
suggests: each candidate trains under a :class:`~tevid_hpo.monitor.TrialMonitor`, and a
:class:`TEViDHook` ends it on a confirmed Instability or Overfitting alert (or a
:class:`~tevid_hpo.cost.CostModel` stop) before it exhausts its budget.

**Space.** A :class:`Cell` is a DAG on 4 nodes (node 0 the cell input, node 3 its output) with
one operation on each of its 6 edges ``i → j`` (``i < j``), from ``none``, ``skip_connect``,
``nor_conv_1x1``, ``nor_conv_3x3``, ``avg_pool_3x3`` (ReLU-Conv-BN convolutions, as in
NAS-Bench-201): ``5^6 = 15,625`` cells. A node sums its incoming edges. :class:`CellNet` stacks the
cell NAS-Bench-201's way (stem, three stages of ``cells_per_stage`` cells at ``C``, ``2C``, ``4C``
channels joined by residual reduction blocks, global pooling, linear classifier) at ``C=8`` and
one cell per stage, which trains five epochs on scikit-learn's digits in a second or two. A
:class:`Candidate` is a cell plus the learning rate it trains with, drawn from
:attr:`SearchSpace.learning_rates` (a single value by default: plain NAS). Offering a learning
rate that is far too high is how a search space comes to contain candidates that diverge — the
ones a TEViD hook should stop.

**Path encoding.** One bit per input→output path, indexed by the sequence of operations along it
(paths of 1, 2 and 3 edges: ``5 + 25 + 125 = 155`` bits for five operations, with the reference
code's index layout). Paths through a ``none`` edge carry nothing and set no bit, so two cells
computing the same function encode alike (the reference code also sets bits for dead paths).
``path_cutoff`` keeps the first ``k`` bits only — the truncated encoding of the paper; the
layout puts the short paths first. With several learning rates, a one-hot of the rate is
appended.

**Failures.** A pruned candidate enters the predictor's data as a failure: its target error is
``pruned_error`` — by default the chance-level error ``1 - 1/num_classes``, so the predictor
learns that its neighbourhood is bad — or, with ``pruned_error="last"``, its validation error
when it was stopped; a number sets it directly. Its record keeps the budget it used
(:attr:`CandidateResult.epochs`, fractional: a candidate stopped mid-epoch used part of it), so
:class:`SearchResult` can say what the hook saved. Pruned candidates are never returned as the
best architecture (their training did not finish) but they are still mutated from if they rank
among the best (with the default failure value they do not).

**Two drivers, one hook.** :meth:`Bananas.run` searches on its own; with ``study=`` every
candidate also becomes an Optuna trial (ask-and-tell), so the hook writes its diagnosis to the
trial, a :class:`~tevid_hpo.pruners.TEViDPruner` (or any pruner) can prune it, and storages and
dashboards see the search. :class:`NASObjective` is the same training as an Optuna objective, for
searching this space with Optuna's own samplers.

Example:
    >>> import numpy as np
    >>> cell = Cell.from_string("|nor_conv_3x3~0|+|none~0|skip_connect~1|+|none~0|none~1|avg_pool_3x3~2|")
    >>> [list(p) for p in cell.paths()]
    [['nor_conv_3x3', 'skip_connect', 'avg_pool_3x3']]
    >>> enc = SearchSpace().encode(Candidate(cell, 0.1))
    >>> enc.shape, int(enc.sum())
    ((155,), 1)
    >>> child = SearchSpace().mutate(Candidate(cell, 0.1), np.random.default_rng(0))
    >>> child != Candidate(cell, 0.1) and child.cell.is_valid
    True
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import zlib
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import optuna
import torch
from torch import nn

from core_models.train import cosine_lr
from data_factory.datasets import TensorData, digits
from data_factory.labels import INSTABILITY, OVERFITTING
from tevid_hpo.cost import CostModel
from tevid_hpo.decision import TEVID, alert_reason, check_options, check_prune_on, cost_reason
from tevid_hpo.diagnostician import Diagnostician
from tevid_hpo.monitor import TrialMonitor
from tevid_hpo.pruners import REASON_ATTR

__all__ = [
    "EDGES",
    "OPS",
    "PATHS",
    "Bananas",
    "Candidate",
    "CandidateResult",
    "CandidateTrainer",
    "Cell",
    "CellNet",
    "NASObjective",
    "PathPredictor",
    "SearchResult",
    "SearchSpace",
    "TEViDHook",
    "TrainSettings",
]

logger = logging.getLogger(__name__)

#: NAS-Bench-201's operations, in the order of its API.
OPS: tuple[str, ...] = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
#: The cell's edges ``(from, to)`` in NAS-Bench-201's string order.
EDGES: tuple[tuple[int, int], ...] = ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))
#: Every input→output path as the indices (into :data:`EDGES`) of its edges, in the reference
#: code's order: ``0→3``, ``0→1→3``, ``0→2→3``, ``0→1→2→3``.
PATHS: tuple[tuple[int, ...], ...] = ((3,), (0, 4), (1, 5), (0, 2, 5))
_NONE = "none"
_NODES = 4


# ====================================================================================== cells
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


# ====================================================================================== space
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
        n = len(self.ops)
        return n + n ** 2 + n ** 3

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
        """Index of each live path: paths of ``L`` edges occupy the block after the shorter
        ones, and within it the operations read as base-``n`` digits (first edge least
        significant), as in the reference code."""
        n = len(self.ops)
        out = []
        for ops in cell.paths():
            offset = sum(n ** k for k in range(1, len(ops)))
            out.append(offset + sum(self.ops.index(op) * n ** j for j, op in enumerate(ops)))
        return out

    def encode(self, candidate: Candidate) -> np.ndarray:
        """Path encoding of the cell (+ a one-hot of the learning rate if there are several)."""
        bits = np.zeros(self.num_paths, dtype=np.float32)
        bits[self.path_indices(candidate.cell)] = 1.0
        bits = bits[:self.path_cutoff] if self.path_cutoff else bits
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


# ==================================================================================== network
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


# ==================================================================================== results
@dataclass
class CandidateResult:
    """The outcome of training one candidate.

    Attributes:
        candidate: what was trained.
        val_accuracy: validation accuracy at the end of training, or when it was stopped.
        epochs: budget used, in (fractional) epochs.
        pruned: ``True`` when the hook or the study's pruner ended it early.
        reason: why it was pruned (TEViDPruner's reason layout), else ``None``.
        val_curve: validation accuracy after each completed epoch.
        test_accuracy: test accuracy of a candidate that completed its training.
        alert: the first confirmed TEViD alert of the run (even if it did not prune).
        diagnoses: how many diagnoses the monitor made.
        seconds: wall time of the training.
        trial_number: the Optuna trial it ran as, if any.

    Example:
        >>> r = CandidateResult(Candidate(Cell(("skip_connect",) * 6), 0.1), 0.9, 5.0)
        >>> round(r.error, 3), r.to_dict()["cell"][:14]
        (0.1, '|skip_connect~')
    """

    candidate: Candidate
    val_accuracy: float
    epochs: float
    pruned: bool = False
    reason: dict[str, Any] | None = None
    val_curve: list[float] = field(default_factory=list)
    test_accuracy: float | None = None
    alert: str | None = None
    diagnoses: int = 0
    seconds: float = 0.0
    trial_number: int | None = None

    @property
    def error(self) -> float:
        """``1 - val_accuracy``."""
        return 1.0 - self.val_accuracy

    def to_dict(self) -> dict[str, Any]:
        """A flat JSON-able summary (also written to an Optuna trial as ``"nas"``)."""
        return {"cell": str(self.candidate.cell), "lr": self.candidate.lr,
                "val_accuracy": round(self.val_accuracy, 4), "epochs": round(self.epochs, 3),
                "pruned": self.pruned, "reason": self.reason,
                "val_curve": [round(v, 4) for v in self.val_curve],
                "test_accuracy": None if self.test_accuracy is None else round(
                    self.test_accuracy, 4),
                "alert": self.alert, "diagnoses": self.diagnoses,
                "seconds": round(self.seconds, 3), "trial_number": self.trial_number}


@dataclass
class SearchResult:
    """A finished search: every evaluation in order, and what pruning saved.

    Attributes:
        history: the evaluations, in the order they ran.
        budget: the full training budget of one candidate, in epochs.

    Example:
        >>> c = Candidate(Cell(("skip_connect",) * 6), 0.1)
        >>> res = SearchResult([CandidateResult(c, 0.9, 5.0),
        ...                     CandidateResult(c, 0.1, 1.5, pruned=True)], budget=5.0)
        >>> res.best.val_accuracy, res.n_pruned, res.epochs_saved
        (0.9, 1, 3.5)
    """

    history: list[CandidateResult]
    budget: float

    @property
    def best(self) -> CandidateResult | None:
        """The completed candidate with the highest validation accuracy (earliest on ties);
        ``None`` if every candidate was pruned."""
        done = [r for r in self.history if not r.pruned]
        return max(done, key=lambda r: r.val_accuracy) if done else None

    @property
    def n_pruned(self) -> int:
        """Candidates ended early."""
        return sum(r.pruned for r in self.history)

    @property
    def epochs_used(self) -> float:
        """Total training epochs spent."""
        return float(sum(r.epochs for r in self.history))

    @property
    def epochs_saved(self) -> float:
        """Epochs the pruned candidates did not train."""
        return float(sum(self.budget - r.epochs for r in self.history if r.pruned))

    def table(self) -> str:
        """A markdown table of the evaluations."""
        rows = ["| # | cell | lr | val acc | epochs | outcome |", "|---|---|---|---|---|---|"]
        for i, r in enumerate(self.history):
            outcome = "completed"
            if r.pruned and r.reason:
                outcome = f"pruned: {r.reason.get('label') or r.reason.get('pruner')}"
            cell = str(r.candidate.cell).replace("|", "\\|")   # GFM: pipes inside a cell
            rows.append(f"| {i} | `{cell}` | {r.candidate.lr:g} | "
                        f"{r.val_accuracy:.3f} | {r.epochs:.2f} | {outcome} |")
        return "\n".join(rows)


# ======================================================================================= hook
class TEViDHook:
    """Watches one candidate's training and says when to end it.

    :meth:`monitor` wraps the model in a :class:`~tevid_hpo.monitor.TrialMonitor` (which also
    writes the diagnosis to an Optuna trial when one is given); :meth:`check` returns a reason
    to stop — the monitor's earliest confirmed alert among ``prune_on`` (TEViD's calibrated
    3-consecutive rule, or the monitor's non-finite-loss rule) with confidence at least
    ``min_confidence``, else, with ``cost``, a :meth:`CostModel.decide
    <tevid_hpo.cost.CostModel.decide>` stop on the latest diagnosis — or ``None``. The rules are
    :mod:`tevid_hpo.decision`'s, shared with every integration, so a candidate stops here when
    a :class:`~tevid_hpo.pruners.TEViDPruner` would stop it as an Optuna trial (only sooner: at
    the step, not at the epoch's ``should_prune()``).

    Args:
        diagnostician: a :class:`~tevid_hpo.diagnostician.Diagnostician`, a checkpoint path or
            profile name for :meth:`Diagnostician.from_pretrained`, or ``None`` for the shipped
            default (``FileNotFoundError`` if it is not installed).
        prune_on: alert labels that end a candidate.
        cost: also stop when the cost model says stopping is cheaper (off by default, as in
            :class:`~tevid_hpo.pruners.TEViDPruner`).
        min_confidence: ignore alerts less confident than this.
        every: capture cadence in steps (``None``: the diagnostician's).

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")                       # untrained model
        ...     hook = TEViDHook("tiny", prune_on=("Instability",))
        >>> hook.prune_on
        ('Instability',)
    """

    def __init__(self, diagnostician: Diagnostician | str | os.PathLike[str] | None = None,
                 prune_on: Collection[str] = (INSTABILITY, OVERFITTING),
                 cost: CostModel | None = None, *, min_confidence: float = 0.0,
                 every: int | None = None) -> None:
        if diagnostician is None or isinstance(diagnostician, (str, os.PathLike)):
            diagnostician = Diagnostician.from_pretrained(diagnostician, device="cpu")
        self.diagnostician = diagnostician
        self.prune_on = check_prune_on(prune_on)
        self.min_confidence = check_options(cost, min_confidence)
        self.cost = cost
        self.every = every

    def monitor(self, model: nn.Module, trial: optuna.Trial | None = None) -> TrialMonitor:
        """A :class:`TrialMonitor` of ``model`` (use it as a context manager)."""
        return TrialMonitor(model, trial, every=self.every, diagnostician=self.diagnostician)

    def check(self, monitor: TrialMonitor, epochs_done: float, epochs_max: float,
              *, use_cost: bool = True) -> dict[str, Any] | None:
        """A reason to stop now, or ``None``.

        Args:
            monitor: the candidate's monitor.
            epochs_done: budget used so far (fractional epochs).
            epochs_max: the candidate's full budget.
            use_cost: also consult the cost rule (pass ``False`` between diagnoses: it only
                changes when a new diagnosis arrives).
        """
        reason = (alert_reason(monitor.alerts, self.prune_on, self.min_confidence)
                  if monitor.alert is not None else None)
        # A monitor that failed has no trustworthy latest diagnosis: alerts only.
        if (reason is None and self.cost is not None and use_cost and monitor.error is None
                and monitor.last is not None):
            reason = cost_reason(self.cost, monitor.last.to_dict(), epochs_done, epochs_max,
                                 self.prune_on)
        return reason


# ==================================================================================== trainer
@dataclass(frozen=True)
class TrainSettings:
    """How every candidate is trained (NAS-Bench-201's recipe, shrunk).

    SGD with Nesterov momentum, weight decay, a per-step cosine schedule from the candidate's
    learning rate to 0 over ``epochs``; cross-entropy; batches drawn in a per-candidate seeded
    order.

    Example:
        >>> TrainSettings(epochs=3).epochs
        3
    """

    epochs: int = 5
    batch_size: int = 64
    channels: int = 8
    cells_per_stage: int = 1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "channels", "cells_per_stage"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


class Evaluator(Protocol):
    """What a search needs from a trainer: ``num_classes`` and a call per candidate."""

    num_classes: int

    def __call__(self, candidate: Candidate, trial: optuna.Trial | None = None
                 ) -> CandidateResult: ...


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    model.train()
    return float(acc)


def _seed_of(settings: TrainSettings, candidate: Candidate) -> int:
    # zlib's CRC is stable across processes (Python's str hash is salted): the same candidate
    # trains identically in a standalone search and as an Optuna trial.
    return settings.seed * 1_000_003 + zlib.crc32(candidate.key.encode())


class CandidateTrainer:
    """Train a :class:`Candidate`'s :class:`CellNet` on an in-memory data set, under a hook.

    Every step is passed to the hook's monitor, and the run ends as soon as
    :meth:`TEViDHook.check` gives a reason (alerts are checked after every step, the cost rule
    after every diagnosis). With an Optuna ``trial`` the monitor writes its diagnosis to it, the
    validation accuracy is reported after every epoch and ``trial.should_prune()`` is asked
    (so the study's pruner — e.g. Hyperband — can also end it); a stop by the hook is recorded as
    the trial's ``"tevid_prune_reason"`` (read it with :func:`tevid_hpo.pruners.prune_reason`).
    The trainer never raises :class:`optuna.TrialPruned` itself: it returns a
    :class:`CandidateResult` with ``pruned=True``, and its caller decides.

    Args:
        data: train/val/test tensors (default: scikit-learn digits at 16×16, split seed 0).
        settings: the training recipe.
        hook: a :class:`TEViDHook`, or ``None`` to train every candidate to the end (plain
            BANANAS).

    Example:
        >>> trainer = CandidateTrainer(settings=TrainSettings(epochs=1))   # no hook
        >>> r = trainer(Candidate(Cell(("nor_conv_3x3",) * 6), 0.1))
        >>> r.epochs, r.pruned, len(r.val_curve), r.test_accuracy is not None
        (1.0, False, 1, True)
    """

    def __init__(self, data: TensorData | None = None, settings: TrainSettings = TrainSettings(),
                 hook: TEViDHook | None = None) -> None:
        self.data = data if data is not None else digits(image_size=16, seed=0)
        self.settings = settings
        self.hook = hook
        self.num_classes = self.data.num_classes

    def build(self, candidate: Candidate) -> CellNet:
        """The candidate's network, freshly initialised from its seed."""
        torch.manual_seed(_seed_of(self.settings, candidate))
        return CellNet(candidate.cell, in_channels=int(self.data.x_train.shape[1]),
                       num_classes=self.num_classes, channels=self.settings.channels,
                       cells_per_stage=self.settings.cells_per_stage)

    def __call__(self, candidate: Candidate, trial: optuna.Trial | None = None
                 ) -> CandidateResult:
        s, d = self.settings, self.data
        start = time.perf_counter()
        model = self.build(candidate)
        opt = torch.optim.SGD(model.parameters(), lr=candidate.lr, momentum=s.momentum,
                              weight_decay=s.weight_decay, nesterov=s.momentum > 0)
        n = len(d.x_train)
        steps_per_epoch = math.ceil(n / s.batch_size)
        total = s.epochs * steps_per_epoch
        g = torch.Generator().manual_seed(_seed_of(s, candidate))
        hook = self.hook
        curve: list[float] = []
        reason: dict[str, Any] | None = None
        step = 0
        with (hook.monitor(model, trial) if hook is not None
              else contextlib.nullcontext()) as mon:
            for epoch in range(s.epochs):
                order = torch.randperm(n, generator=g)
                for b in range(steps_per_epoch):
                    for group in opt.param_groups:
                        group["lr"] = cosine_lr(step, total, 0, candidate.lr)
                    idx = order[b * s.batch_size:(b + 1) * s.batch_size]
                    loss = nn.functional.cross_entropy(model(d.x_train[idx]), d.y_train[idx])
                    opt.zero_grad()
                    loss.backward()
                    step += 1
                    if hook is not None and mon is not None:
                        diagnosis = mon.step(loss=loss.item(), epoch=epoch)
                        reason = hook.check(mon, step / steps_per_epoch, s.epochs,
                                            use_cost=diagnosis is not None)
                        if reason is not None:
                            break
                    opt.step()
                if reason is not None:
                    break
                curve.append(_accuracy(model, d.x_val, d.y_val))
                if mon is not None:
                    mon.epoch_end(epoch)
                if trial is not None:
                    trial.report(curve[-1], epoch)
                    if trial.should_prune():
                        reason = dict(trial.user_attrs.get(REASON_ATTR) or {
                            "pruner": type(trial.study.pruner).__name__, "rule": "wrapped",
                            "report_step": epoch})
                        break
        pruned = reason is not None
        if reason is not None and trial is not None and reason.get("pruner") == TEVID:
            trial.set_user_attr(REASON_ATTR, reason)
        val = curve[-1] if curve and len(curve) * steps_per_epoch == step else _accuracy(
            model, d.x_val, d.y_val)
        result = CandidateResult(
            candidate, val, step / steps_per_epoch, pruned, reason, curve,
            test_accuracy=None if pruned else _accuracy(model, d.x_test, d.y_test),
            alert=mon.alert if mon is not None else None,
            diagnoses=len(mon.history) if mon is not None else 0,
            seconds=time.perf_counter() - start,
            trial_number=getattr(trial, "number", None))
        logger.info("%s lr=%g: val %.3f after %.2f epochs%s", candidate.cell, candidate.lr,
                    result.val_accuracy, result.epochs,
                    f" (pruned: {reason})" if pruned else "")
        return result


# ================================================================================== predictor
class PathPredictor:
    """BANANAS' predictor: an ensemble of small MLPs on path encodings, trained with MAE.

    Every member sees all the data (diversity comes from its own initialisation and batch
    order, as in the reference code); the ensemble's mean and standard deviation are the
    prediction and its uncertainty. Targets are standardised for training and predictions
    returned in the original units.

    Args:
        num_models: ensemble size (5 in the paper).
        hidden: width of the hidden layers.
        layers: hidden layers (the reference code uses 10 of width 20; 3 suffice for the small
            data sets a CPU search produces and train in a fraction of the time).
        epochs: passes over the data per fit.
        lr: Adam learning rate.
        batch_size: minibatch size.
        seed: seeds the members' initialisation and batch orders.

    Example:
        >>> import numpy as np
        >>> x = np.eye(6, dtype=np.float32)
        >>> y = np.arange(6, dtype=np.float32) / 10
        >>> mean, std = PathPredictor(epochs=100).fit(x, y).predict(x)
        >>> mean.shape, bool(np.abs(mean - y).mean() < 0.1)
        ((6,), True)
    """

    def __init__(self, num_models: int = 5, hidden: int = 20, layers: int = 3,
                 epochs: int = 200, lr: float = 0.01, batch_size: int = 32,
                 seed: int = 0) -> None:
        if num_models < 1 or hidden < 1 or layers < 1 or epochs < 1 or batch_size < 1:
            raise ValueError("num_models, hidden, layers, epochs and batch_size must be >= 1")
        self.num_models, self.hidden, self.layers = num_models, hidden, layers
        self.epochs, self.lr, self.batch_size, self.seed = epochs, lr, batch_size, seed
        self.models: list[nn.Module] = []
        self._center, self._scale = 0.0, 1.0
        self._fits = 0

    def _mlp(self, n_in: int) -> nn.Module:
        parts: list[nn.Module] = []
        width = n_in
        for _ in range(self.layers):
            parts += [nn.Linear(width, self.hidden), nn.ReLU()]
            width = self.hidden
        return nn.Sequential(*parts, nn.Linear(width, 1))

    def fit(self, x: np.ndarray, y: np.ndarray) -> PathPredictor:
        """Train a fresh ensemble on encodings ``x`` (``N×D``) and target errors ``y``."""
        xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
        yt = torch.as_tensor(np.asarray(y, dtype=np.float32)).reshape(-1)
        if len(xt) != len(yt) or len(xt) == 0:
            raise ValueError(f"need matching, non-empty x and y, got {len(xt)} and {len(yt)}")
        self._center = float(yt.mean())
        self._scale = float(yt.std()) if len(yt) > 1 and float(yt.std()) > 1e-8 else 1.0
        z = (yt - self._center) / self._scale
        self._fits += 1
        self.models = []
        for m in range(self.num_models):
            seed = self.seed * 7919 + self._fits * 101 + m
            torch.manual_seed(seed)
            g = torch.Generator().manual_seed(seed)
            model = self._mlp(xt.shape[1])
            opt = torch.optim.Adam(model.parameters(), lr=self.lr)
            for _ in range(self.epochs):
                order = torch.randperm(len(xt), generator=g)
                for b in range(0, len(xt), self.batch_size):
                    idx = order[b:b + self.batch_size]
                    loss = (model(xt[idx]).squeeze(1) - z[idx]).abs().mean()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            self.models.append(model.eval())
        return self

    @torch.no_grad()
    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(mean, std)`` of the members' predicted errors for each row of ``x``."""
        if not self.models:
            raise RuntimeError("PathPredictor.predict() before fit()")
        xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
        preds = torch.stack([m(xt).squeeze(1) for m in self.models]).numpy()
        preds = preds * self._scale + self._center
        return preds.mean(0), preds.std(0)


# ==================================================================================== search
class Bananas:
    """BANANAS over a :class:`SearchSpace`, each candidate trained by an evaluator.

    The first ``num_init`` candidates (after any ``initial`` ones) are drawn at random. After
    that, every proposal fits a fresh :class:`PathPredictor` ensemble on the encodings and
    target errors of all evaluations so far, mutates the ``num_to_mutate`` best of them into a
    pool of ``pool_size`` unseen candidates, and picks the pool member with the lowest error
    under independent Thompson sampling (one draw from ``N(mean, std)`` of the ensemble per
    member).

    Args:
        evaluator: trains a candidate (``evaluator(candidate, trial)``), e.g. a
            :class:`CandidateTrainer` with a :class:`TEViDHook`.
        space: the search space.
        num_init: random candidates before the predictor is used.
        pool_size: mutations scored per proposal.
        num_to_mutate: how many of the best evaluations are mutated.
        mutation_rate: expected number of changed positions per mutation.
        pruned_error: the target error of a pruned candidate: ``"chance"`` (``1 - 1/K``),
            ``"last"`` (its validation error when stopped), or a number.
        predictor: the ensemble (default: 5 MLPs, see :class:`PathPredictor`).
        seed: seeds random draws, mutations and the Thompson samples.

    Attributes:
        history: every evaluation so far, in order (:meth:`run` continues from it).
        budget: one candidate's full budget in epochs (the evaluator's ``settings.epochs``;
            NaN for evaluators without one).

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     hook = TEViDHook("tiny")                   # use a trained checkpoint in practice
        >>> trainer = CandidateTrainer(settings=TrainSettings(epochs=2), hook=hook)
        >>> result = Bananas(trainer, num_init=2, seed=0).run(4)    # doctest: +SKIP
        >>> result.best.val_accuracy > 0.5                           # doctest: +SKIP
        True
    """

    def __init__(self, evaluator: Evaluator, space: SearchSpace = SearchSpace(), *,
                 num_init: int = 4, pool_size: int = 100, num_to_mutate: int = 2,
                 mutation_rate: float = 1.0,
                 pruned_error: float | Literal["chance", "last"] = "chance",
                 predictor: PathPredictor | None = None, seed: int = 0) -> None:
        if num_init < 1 or pool_size < 1 or num_to_mutate < 1:
            raise ValueError("num_init, pool_size and num_to_mutate must be >= 1")
        if isinstance(pruned_error, str) and pruned_error not in ("chance", "last"):
            raise ValueError(f"pruned_error must be 'chance', 'last' or a number, "
                             f"got {pruned_error!r}")
        self.evaluator = evaluator
        self.space = space
        self.num_init = num_init
        self.pool_size = pool_size
        self.num_to_mutate = num_to_mutate
        self.mutation_rate = mutation_rate
        self.pruned_error = pruned_error
        self.predictor = predictor or PathPredictor(seed=seed)
        self.rng = np.random.default_rng(seed)
        self.history: list[CandidateResult] = []
        self._seen: set[str] = set()
        budget = getattr(getattr(evaluator, "settings", None), "epochs", None)
        self.budget = float(budget) if budget is not None else float("nan")

    # ------------------------------------------------------------------ ask / tell
    def target(self, result: CandidateResult) -> float:
        """The error the predictor learns for ``result`` (see ``pruned_error``)."""
        if not result.pruned:
            return result.error
        if self.pruned_error == "last":
            return result.error
        if self.pruned_error == "chance":
            return 1.0 - 1.0 / self.evaluator.num_classes
        return float(self.pruned_error)

    def propose(self) -> Candidate:
        """The next candidate to evaluate (random during the first ``num_init``)."""
        if len(self.history) < self.num_init:
            return self._random_unseen()
        x = np.stack([self.space.encode(r.candidate) for r in self.history])
        y = np.array([self.target(r) for r in self.history], dtype=np.float32)
        self.predictor.fit(x, y)
        pool = self._pool(y)
        if not pool:
            return self._random_unseen()
        mean, std = self.predictor.predict(np.stack([self.space.encode(c) for c in pool]))
        samples = self.rng.normal(mean, std)   # independent Thompson sampling
        return pool[int(np.argmin(samples))]

    def tell(self, result: CandidateResult) -> None:
        """Record an evaluation (done by :meth:`run`; call it yourself in a custom loop)."""
        self.history.append(result)
        self._seen.add(result.candidate.key)

    # ------------------------------------------------------------------ driver
    def run(self, n_candidates: int, *, initial: Iterable[Candidate] = (),
            study: optuna.Study | None = None,
            callback: Callable[[CandidateResult], None] | None = None) -> SearchResult:
        """Evaluate ``n_candidates`` candidates (``initial`` ones first) and return them all.

        Args:
            n_candidates: evaluations in this call (the search continues on a second call).
            initial: candidates to evaluate first, e.g. known baselines.
            study: an Optuna study (``direction="maximize"``) that receives every candidate as
                a trial through ask-and-tell: parameters as :meth:`SearchSpace.suggest` names
                them, the validation accuracy per epoch, the diagnosis, and the final value or
                a PRUNED state. Its pruner can end candidates too.
            callback: called with each :class:`CandidateResult`.
        """
        if study is not None and study.direction != optuna.study.StudyDirection.MAXIMIZE:
            raise ValueError("the study must maximise (values are validation accuracies)")
        queue = list(initial)
        for _ in range(n_candidates):
            candidate = queue.pop(0) if queue else self.propose()
            result = (self._evaluate_in(study, candidate) if study is not None
                      else self.evaluator(candidate))
            self.tell(result)
            if callback is not None:
                callback(result)
        return SearchResult(list(self.history), self.budget)

    # ------------------------------------------------------------------ internals
    def _evaluate_in(self, study: optuna.Study, candidate: Candidate) -> CandidateResult:
        study.enqueue_trial(self.space.params(candidate), skip_if_exists=False)
        trial = study.ask()
        drawn = self.space.suggest(trial)   # returns the enqueued values
        if drawn != candidate:  # pragma: no cover - enqueue_trial guarantees it
            raise RuntimeError(f"Optuna suggested {drawn}, expected {candidate}")
        try:
            result = self.evaluator(candidate, trial)
        except Exception:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        trial.set_user_attr("nas", result.to_dict())
        if result.pruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, result.val_accuracy)
        return result

    def _random_unseen(self) -> Candidate:
        for _ in range(10_000):
            c = self.space.random(self.rng)
            if c.key not in self._seen:
                return c
        raise RuntimeError("could not find an unseen candidate: the space is exhausted")

    def _pool(self, targets: np.ndarray) -> list[Candidate]:
        order = np.argsort(targets, kind="stable")[:self.num_to_mutate]
        parents = [self.history[i].candidate for i in order]
        pool: dict[str, Candidate] = {}
        for k in range(self.pool_size * 5):   # duplicates and seen children are skipped
            if len(pool) >= self.pool_size:
                break
            child = self.space.mutate(parents[k % len(parents)], self.rng, self.mutation_rate)
            if child.key not in self._seen:
                pool.setdefault(child.key, child)
        return list(pool.values())


# ============================================================================ optuna adapter
class NASObjective:
    """The same candidate training as an Optuna objective (``direction="maximize"``).

    Each trial draws a candidate with :meth:`SearchSpace.suggest`, trains it with the
    evaluator (whose hook monitors it and writes the diagnosis to the trial), stores the
    :meth:`CandidateResult.to_dict` summary as the user attribute ``"nas"`` and returns the
    validation accuracy, or raises :class:`optuna.TrialPruned` when the hook or the study's
    pruner ended it. A cell without a live input→output path outputs zeros whatever its
    training: it is not trained and scores chance accuracy.

    Example:
        >>> import optuna, warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     hook = TEViDHook("tiny")
        >>> objective = NASObjective(CandidateTrainer(settings=TrainSettings(epochs=1),
        ...                                           hook=hook))
        >>> study = optuna.create_study(direction="maximize")
        >>> study.optimize(objective, n_trials=2)                    # doctest: +SKIP
    """

    def __init__(self, evaluator: Evaluator, space: SearchSpace = SearchSpace()) -> None:
        self.evaluator = evaluator
        self.space = space

    def __call__(self, trial: optuna.Trial) -> float:
        candidate = self.space.suggest(trial)
        if not candidate.cell.is_valid:
            trial.set_user_attr("nas", {"cell": str(candidate.cell), "lr": candidate.lr,
                                        "invalid": True})
            return 1.0 / self.evaluator.num_classes
        result = self.evaluator(candidate, trial)
        trial.set_user_attr("nas", result.to_dict())
        if result.pruned:
            reason = result.reason or {}
            raise optuna.TrialPruned(f"{reason.get('pruner')}: {reason.get('label', '')} "
                                     f"after {result.epochs:.2f} epochs")
        return result.val_accuracy
