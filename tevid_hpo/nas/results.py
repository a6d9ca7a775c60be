"""Records of a search: one :class:`CandidateResult` per training, a :class:`SearchResult` per search.

A pruned candidate keeps the (fractional) budget it used, so a search result can say what
pruning saved.

Example:
    >>> from tevid_hpo.nas import Candidate, Cell
    >>> c = Candidate(Cell(("skip_connect",) * 6), 0.1)
    >>> SearchResult([CandidateResult(c, 0.5, 2.0, pruned=True)], budget=5.0).best is None
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tevid_hpo.nas.space import Candidate

__all__ = ["CandidateResult", "SearchResult"]


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
        >>> from tevid_hpo.nas import Candidate, Cell
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
        >>> from tevid_hpo.nas import Candidate, Cell
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
