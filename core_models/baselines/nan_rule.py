"""The NaN rule: Optuna ``ThresholdPruner``-style, flag a run at its first non-finite loss.

Optuna's :class:`optuna.pruners.ThresholdPruner` prunes a trial when the latest reported value is
NaN, or below ``lower`` / above ``upper`` (after ``n_warmup_steps``). Here the reported value is
the per-step training loss, and the rule is applied at every logged step. One deliberate
difference: any non-finite loss (NaN *or* ±inf) prunes, while Optuna with its default
``upper=inf`` lets ``+inf`` through — a run whose loss is infinite has diverged just as surely.

Score: 1 from the capture interval that holds the first pruned step on (a pruned trial stays
pruned), 0 before. The only class it names is Instability: probabilities are
``[1 - a, 0, a, 0, 0]``. This is the cheapest monitor an HPO user already has; by construction
it cannot lead the Instability labelling rule, which also fires on a non-finite loss.

Example:
    >>> from core_models.baselines.toy import toy_run
    >>> s = NaNRule().score_run(toy_run(n_steps=60, explode_at=30, nan_at=45))
    >>> s.score.tolist()
    [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
"""

from __future__ import annotations

import math

import numpy as np

from core_models.baselines.base import BaselineBase, BaselineRun, RunScores, run_id_of
from core_models.baselines.features import capture_grid, interval_ends, step_series
from data_factory.labels import HEALTHY, INSTABILITY, KNOWN_LABELS

__all__ = ["NaNRule"]


class NaNRule(BaselineBase):
    """Prune-style rule on the per-step training loss (no training, no tuning).

    Args:
        lower: prune when the loss falls below this (``None``: never).
        upper: prune when the loss exceeds this (``None``: never; non-finite losses always
            prune).
        n_warmup_steps: steps before this are never pruned (Optuna's warm-up).

    Example:
        >>> from core_models.baselines.toy import toy_run
        >>> NaNRule(upper=1e3).first_pruned_step(toy_run(n_steps=120, explode_at=30))
        100
    """

    name = "nan_rule"

    def __init__(self, lower: float | None = None, upper: float | None = None,
                 n_warmup_steps: int = 0) -> None:
        self.lower = -math.inf if lower is None else float(lower)
        self.upper = math.inf if upper is None else float(upper)
        self.n_warmup_steps = int(n_warmup_steps)

    def _pruned(self, steps: np.ndarray, loss: np.ndarray) -> np.ndarray:
        bad = ~np.isfinite(loss) | (loss < self.lower) | (loss > self.upper)
        return bad & (steps >= self.n_warmup_steps)

    def first_pruned_step(self, run: BaselineRun) -> int | None:
        """The first logged step at which the rule prunes, or ``None``."""
        s = step_series(run)
        hit = np.flatnonzero(self._pruned(s.steps, s.loss))
        return int(s.steps[hit[0]]) if hit.size else None

    def score_run(self, run: BaselineRun) -> RunScores:
        """1 from the first capture at or after the first pruned step, else 0."""
        series = step_series(run)
        grid = capture_grid(run, series)
        hit = self._pruned(series.steps, series.loss)
        # Rows at or before capture i contain a pruned step <=> first hit index < ends[i].
        first = int(np.argmax(hit)) if hit.any() else len(hit)
        score = (interval_ends(series.steps, grid.steps) > first).astype(np.float64)
        probs = np.zeros((len(grid), len(KNOWN_LABELS)))
        probs[:, KNOWN_LABELS.index(HEALTHY)] = 1.0 - score
        probs[:, KNOWN_LABELS.index(INSTABILITY)] = score
        return RunScores(self.name, run_id_of(run), grid.steps, grid.epochs, score, probs)
