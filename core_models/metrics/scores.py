"""How one diagnosis becomes one anomaly score: :func:`anomaly_scores` and :data:`ScoreKind`.

Event-time AUPRC ranks steps by this score and the alert rule thresholds it.

Example:
    >>> from core_models.metrics import RunPrediction
    >>> run = RunPrediction("r", "Healthy", [1], [0.1], [[0.7, 0.2, 0.1, 0, 0]], [0.0])
    >>> anomaly_scores(run).round(2).tolist()
    [0.3]
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from core_models.metrics.record import ANOMALOUS_KNOWN, RunPrediction
from data_factory.labels import HEALTHY, KNOWN_LABELS

__all__ = ["ScoreKind", "anomaly_scores"]

#: ``"not_healthy"``: ``1 - p_Healthy``; ``"max_anomalous"``: the largest non-Healthy probability.
ScoreKind = Literal["not_healthy", "max_anomalous"]

_HEALTHY_COL = KNOWN_LABELS.index(HEALTHY)
_ANOMALOUS_COLS = [KNOWN_LABELS.index(c) for c in ANOMALOUS_KNOWN]


def anomaly_scores(run: RunPrediction, kind: ScoreKind = "not_healthy") -> np.ndarray:
    """Per-step anomaly score of a run, from its class probabilities.

    Args:
        run: The run.
        kind: ``"not_healthy"`` is ``1 - p_Healthy`` (the total anomalous mass, the paper's
            "anomaly probability"); ``"max_anomalous"`` is the largest single anomalous class
            probability (what a class-specific alert rule thresholds). A withheld diagnosis
            (vacuity exactly 1, :func:`core_models.calibration.withhold`) scores 0.

    Example:
        >>> run = RunPrediction("r", "Healthy", [1], [0.1], [[0.4, 0.3, 0.3, 0, 0]], [0.0])
        >>> anomaly_scores(run).round(2).tolist(), anomaly_scores(run, "max_anomalous").tolist()
        ([0.6], [0.3])
    """
    if kind == "not_healthy":
        scores = 1.0 - run.probs[:, _HEALTHY_COL]
    elif kind == "max_anomalous":
        scores = run.probs[:, _ANOMALOUS_COLS].max(axis=1)
    else:
        raise ValueError(f"kind must be 'not_healthy' or 'max_anomalous', got {kind!r}")
    # A withheld diagnosis (zero evidence, vacuity exactly 1: the burn-in) makes no claim.
    return np.where(run.vacuity >= 1.0, 0.0, scores)
