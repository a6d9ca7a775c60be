"""Classification quality on known classes: :func:`macro_f1` ("Macro F1 (Known)", Table 3).

Per step (argmax, or Unknown when abstaining) or per run (the class of the first E.1 alert),
averaged over the anomalous known classes with Healthy excluded.

Example:
    >>> import numpy as np
    >>> from core_models.metrics import RunPrediction
    >>> p = np.array([[1, 0, 0, 0, 0], [0, 0, 1, 0, 0]], float)
    >>> run = RunPrediction("r", "Instability", [0, 1], [0, 1], p, [0, 0], onset_step=1)
    >>> macro_f1([run], level="run")   # no alert fires on two steps: the run reads Healthy
    0.0
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
from sklearn.metrics import f1_score

from core_models.metrics.alerts import class_alert
from core_models.metrics.record import ANOMALOUS_KNOWN, RunPrediction, _as_runs, _nonempty
from data_factory.labels import HEALTHY, KNOWN_LABELS, UNKNOWN

__all__ = ["macro_f1"]


def _step_predictions(run: RunPrediction, vacuity_threshold: float | None) -> np.ndarray:
    pred = np.asarray(KNOWN_LABELS, dtype=object)[run.probs.argmax(axis=1)]
    if vacuity_threshold is not None:
        pred = pred.copy()
        pred[run.vacuity > vacuity_threshold] = UNKNOWN
    return pred


def macro_f1(
    runs: Sequence[RunPrediction],
    level: Literal["step", "run"] = "step",
    labels: Sequence[str] = ANOMALOUS_KNOWN,
    vacuity_threshold: float | None = None,
    class_threshold: float | Mapping[str, float] = 0.9,
    consecutive: int = 3,
) -> float:
    """Macro-F1 over known anomaly classes (Table 3, "Macro F1 (Known)", Healthy excluded).

    Samples whose truth is ``Unknown`` are left out (they are the open-set task). Predictions of
    Healthy or Unknown still count as misses for the true class. The average runs over the
    ``labels`` that occur in the truth (a class with no sample has no recall to average).

    Args:
        level: ``"step"``: each diagnosis (argmax, or Unknown when ``vacuity >
            vacuity_threshold``) against its event label. ``"run"``: the class of the run's first
            E.1 alert (:func:`class_alert`; Healthy when none fires) against the run label.
        labels: Classes averaged (pass ``KNOWN_LABELS`` to include Healthy).

    Example:
        >>> import numpy as np
        >>> p = np.array([[1, 0, 0, 0, 0], [0, 0, 1, 0, 0]], float)
        >>> run = RunPrediction("r", "Instability", [0, 1], [0, 1], p, [0, 0], onset_step=1)
        >>> macro_f1([run])
        1.0
    """
    rs = _as_runs(runs)
    _nonempty(rs, "macro_f1")
    bad = set(labels) - set(KNOWN_LABELS)
    if bad:
        raise ValueError(f"macro_f1: labels must be known classes, got {sorted(bad)}")
    if level == "step":
        y = np.concatenate([r.event_labels for r in rs])
        pred = np.concatenate([_step_predictions(r, vacuity_threshold) for r in rs])
    elif level == "run":
        y = np.array([r.label for r in rs], dtype=object)
        alerts = [class_alert(r, class_threshold, consecutive, vacuity_threshold) for r in rs]
        pred = np.array([HEALTHY if a is None else a[0] for a in alerts], dtype=object)
    else:
        raise ValueError(f"level must be 'step' or 'run', got {level!r}")
    keep = y != UNKNOWN
    y, pred = y[keep], pred[keep]
    present = [c for c in labels if np.any(y == c)]
    if not present:
        raise ValueError("macro_f1: none of the requested classes occurs in the truth")
    return float(
        f1_score(y.astype(str), pred.astype(str), labels=present, average="macro", zero_division=0)
    )
