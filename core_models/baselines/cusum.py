"""CUSUM: two-sided cumulative-sum control chart on standardized loss residuals (Table 3).

Page's CUSUM, written out here: the per-step training loss is put on a log scale and standardized
against its causal Holt (level + trend) forecast
(:func:`~core_models.baselines.features.loss_residuals`, residuals
clipped to ``±clip`` so one NaN cannot saturate the chart forever), then

    S⁺_t = max(0, S⁺_{t-1} + z_t - k),      S⁻_t = max(0, S⁻_{t-1} - z_t - k)

with drift (allowance) ``k``. The raw statistic is ``max(S⁺, S⁻)`` (``S⁺`` alone with
``sides="up"``: only loss increases count). There is no reset: while the Holt reference catches
up with a shifted loss the residuals return to 0 and the statistic drains at ``k`` per step.

Score: ``S / (S + h)`` — a monotone map of the statistic onto ``[0, 1)`` that equals 0.5 at the
classic decision interval ``h`` (so ``score >= 0.5`` is the textbook CUSUM alarm); on the capture
grid, the maximum over each capture interval.

``fit`` learns nothing from training runs; given validation runs and labels it picks ``drift`` and
``sides`` from :attr:`CUSUM.grid` by validation event-time AUPRC.

Example:
    >>> from core_models.baselines.toy import toy_run
    >>> run = toy_run(n_steps=200, explode_at=120)       # the loss explodes at step 120
    >>> scores = CUSUM().score_run(run)
    >>> int(scores.steps[np.argmax(scores.score >= 0.5)])  # first capture past the alarm
    120
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from core_models.baselines.base import BaselineRun, RunScores, run_id_of
from core_models.baselines.features import to_grid
from core_models.baselines.residuals import LossResidualDetector

__all__ = ["CUSUM", "cusum_statistic"]


def cusum_statistic(z: np.ndarray, drift: float = 0.5,
                    sides: Literal["both", "up", "down"] = "both") -> np.ndarray:
    """Per-step CUSUM statistic of standardized residuals ``z`` (causal, no reset).

    Example:
        >>> cusum_statistic(np.array([0.0, 2.0, 2.0, -1.0, 0.0]), drift=0.5).tolist()
        [0.0, 1.5, 3.0, 1.5, 1.0]
    """
    if sides not in ("both", "up", "down"):
        raise ValueError(f"sides must be 'both', 'up' or 'down', got {sides!r}")
    z = np.asarray(z, dtype=np.float64).reshape(-1)
    out = np.empty(z.shape[0])
    up = down = 0.0
    k = float(drift)
    for t, zt in enumerate(z.tolist()):
        up = max(0.0, up + zt - k)
        down = max(0.0, down - zt - k)
        out[t] = up if sides == "up" else down if sides == "down" else max(up, down)
    return out


class CUSUM(LossResidualDetector):
    """Two-sided CUSUM on standardized loss residuals.

    Args:
        drift: allowance ``k`` in residual standard deviations.
        h: decision interval; the score is ``S / (S + h)``.
        sides: ``"both"`` (two-sided, default), ``"up"`` or ``"down"``.
        span, trend_span, warmup, clip: residual standardization (see
            :func:`~core_models.baselines.features.standardized_residuals`).
        grid: candidates tried on validation runs in :meth:`fit` (empty: no tuning).

    Example:
        >>> from core_models.baselines.toy import toy_run
        >>> s = CUSUM(sides="up").score_run(toy_run())
        >>> s.method, s.score.shape, "statistic" in s.extras
        ('cusum', (10,), True)
    """

    name = "cusum"
    #: Default validation grid (4 candidates).
    DEFAULT_GRID: Mapping[str, Sequence[Any]] = {"drift": (0.5, 1.0), "sides": ("both", "up")}

    def __init__(self, drift: float = 0.5, h: float = 5.0,
                 sides: Literal["both", "up", "down"] = "both", span: float = 30.0,
                 trend_span: float | None = 30.0, warmup: int = 50, clip: float = 10.0,
                 grid: Mapping[str, Sequence[Any]] | None = None) -> None:
        if h <= 0:
            raise ValueError(f"h must be > 0, got {h!r}")
        if sides not in ("both", "up", "down"):
            raise ValueError(f"sides must be 'both', 'up' or 'down', got {sides!r}")
        self.drift, self.h, self.sides = float(drift), float(h), sides
        self._init_residuals(span, trend_span, warmup, clip, grid)

    def score_run(self, run: BaselineRun) -> RunScores:
        """``S / (S + h)`` of the CUSUM statistic, maximum over each capture interval."""
        series, grid, z = self.residuals(run)
        stat = cusum_statistic(z, self.drift, self.sides)
        raw = to_grid(stat, series, grid, "max") if len(grid) else np.zeros(0)
        return RunScores(self.name, run_id_of(run), grid.steps, grid.epochs,
                         raw / (raw + self.h), extras={"statistic": raw})
