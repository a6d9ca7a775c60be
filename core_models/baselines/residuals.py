"""The shared half of the loss-residual detectors (BOCPD, CUSUM): their standardization settings.

Both read the per-step training loss on a log scale, standardized against its causal Holt forecast
(:func:`~core_models.baselines.features.loss_residuals`), and tune a small grid on validation
runs. :class:`LossResidualDetector` holds those settings and the grid, so each detector keeps
only its own statistic.

Example:
    >>> from core_models.baselines import CUSUM
    >>> from core_models.baselines.toy import toy_run
    >>> series, grid, z = CUSUM(warmup=20).residuals(toy_run(n_steps=80, explode_at=60))
    >>> len(z) == len(series.steps), bool(z[:60].max() < z[60:].max())
    (True, True)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from core_models.baselines.base import BaselineRun, TunableBaseline
from core_models.baselines.features import CaptureGrid, StepSeries, loss_residuals

__all__ = ["LossResidualDetector"]


class LossResidualDetector(TunableBaseline):
    """A :class:`~core_models.baselines.base.TunableBaseline` on standardized loss residuals.

    Subclasses call :meth:`_init_residuals` from ``__init__`` and read :meth:`residuals` in
    ``score_run``. The settings are those of
    :func:`~core_models.baselines.features.standardized_residuals`: ``span`` and ``trend_span``
    (Holt level and trend), ``warmup`` (steps before the detector starts) and ``clip`` (residuals
    clipped to ``±clip`` so one NaN cannot saturate a statistic forever).
    """

    #: Default validation grid; ``grid=None`` in the constructor takes it.
    DEFAULT_GRID: Mapping[str, Sequence[Any]] = {}

    def _init_residuals(self, span: float, trend_span: float | None, warmup: int, clip: float,
                        grid: Mapping[str, Sequence[Any]] | None) -> None:
        if warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {warmup!r}")
        if not clip > 0:
            raise ValueError(f"clip must be > 0, got {clip!r}")
        self.span, self.trend_span = float(span), trend_span
        self.warmup, self.clip = int(warmup), float(clip)
        self.grid = dict(self.DEFAULT_GRID if grid is None else grid)
        #: ``[(params, validation AUPRC), ...]`` after a tuned :meth:`fit`.
        self.validation_: list[tuple[dict[str, Any], float]] = []

    def residuals(self, run: BaselineRun) -> tuple[StepSeries, CaptureGrid, np.ndarray]:
        """``(series, capture grid, z)``: the run's standardized loss residuals, per step."""
        return loss_residuals(run, self.span, self.trend_span, self.warmup, clip=self.clip)
