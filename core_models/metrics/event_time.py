"""Event-Time AUPRC (Appendix E.2): anomaly vs healthy, micro over every step of every run.

:func:`event_time_auprc` scores the total anomalous mass, :func:`event_time_auprc_by_label` asks
which kinds of anomaly a score separates from healthy training, and :func:`per_class_auprc` is the
one-vs-rest AUPRC of each known class's own probability.

Example:
    >>> import numpy as np
    >>> from core_models.metrics import RunPrediction
    >>> p = np.array([[1, 0, 0, 0, 0], [0, 0, 1, 0, 0]], float)
    >>> run = RunPrediction("r", "Instability", [0, 1], [0.0, 0.1], p, [0, 0], onset_step=1)
    >>> event_time_auprc(run), per_class_auprc(run)["Instability"]
    (1.0, 1.0)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import average_precision_score

from core_models.metrics.record import ANOMALOUS_KNOWN, RunPrediction, _as_runs, _nonempty
from core_models.metrics.scores import ScoreKind, anomaly_scores
from data_factory.labels import HEALTHY, KNOWN_LABELS, LABELS

__all__ = ["event_time_auprc", "event_time_auprc_by_label", "per_class_auprc"]


def event_time_auprc(
    runs: Sequence[RunPrediction] | RunPrediction, score: ScoreKind = "not_healthy"
) -> float:
    """Event-Time AUPRC (Appendix E.2): anomaly vs healthy, micro over every step of every run.

    A step is positive when its event label is not Healthy (the anomaly is under way, including
    novel ``Unknown`` anomalies). The area is sklearn's
    :func:`~sklearn.metrics.average_precision_score` (step-wise interpolation, no optimistic
    linear interpolation). A random scorer scores about the positive rate.

    Raises:
        ValueError: when there are no diagnoses or no positive step.

    Example:
        >>> import numpy as np
        >>> p = np.array([[1, 0, 0, 0, 0], [0, 0, 1, 0, 0]], float)
        >>> run = RunPrediction("r", "Instability", [0, 1], [0.0, 0.1], p, [0, 0], onset_step=1)
        >>> event_time_auprc(run)
        1.0
    """
    rs = _as_runs(runs)
    _nonempty(rs, "event_time_auprc")
    y = np.concatenate([r.event_labels != HEALTHY for r in rs])
    if not y.any():
        raise ValueError("event_time_auprc: no anomalous step, AUPRC is undefined")
    s = np.concatenate([anomaly_scores(r, score) for r in rs])
    return float(average_precision_score(y, s))


def event_time_auprc_by_label(
    runs: Sequence[RunPrediction] | RunPrediction, score: ScoreKind = "not_healthy"
) -> dict[str, tuple[float, float]]:
    """Which anomalies a detector finds: per anomalous event label (novel ``Unknown`` included),
    the event-time AUPRC of that label's steps against the Healthy steps only, and that label's
    share of those steps (the AUPRC of a random score).

    Unlike :func:`per_class_auprc` this needs no class probabilities: it asks how well the anomaly
    score separates one kind of anomaly from healthy training, for any detector.

    Example:
        >>> import numpy as np
        >>> p = np.array([[0.9, 0.1, 0, 0, 0], [0.2, 0.8, 0, 0, 0], [0.8, 0, 0, 0.2, 0]])
        >>> a = RunPrediction("a", "Overfitting", [0, 1, 2], [0, 1, 2], p[:2].repeat([1, 2], 0),
        ...                   [0] * 3, onset_step=1)
        >>> b = RunPrediction("b", "Forgetting", [0, 1, 2], [0, 1, 2], p[[0, 2, 2]], [0] * 3,
        ...                   onset_step=1)
        >>> {k: (round(v[0], 2), round(v[1], 2)) for k, v in event_time_auprc_by_label([a, b]).items()}
        {'Overfitting': (1.0, 0.5), 'Forgetting': (1.0, 0.5)}
    """
    rs = _as_runs(runs)
    _nonempty(rs, "event_time_auprc_by_label")
    ev = np.concatenate([r.event_labels for r in rs]).astype(str)
    s = np.concatenate([anomaly_scores(r, score) for r in rs])
    healthy = ev == HEALTHY
    out: dict[str, tuple[float, float]] = {}
    for label in LABELS:
        mine = ev == label
        if label == HEALTHY or not mine.any() or not healthy.any():
            continue
        keep = mine | healthy
        out[label] = (float(average_precision_score(mine[keep], s[keep])),
                      float(mine.sum() / keep.sum()))
    return out


def per_class_auprc(
    runs: Sequence[RunPrediction] | RunPrediction, classes: Sequence[str] = ANOMALOUS_KNOWN
) -> dict[str, float]:
    """One-vs-rest event-time AUPRC per known class, scored by that class's probability.

    Classes without any positive step are reported as ``nan`` (AUPRC is undefined there).

    Example:
        >>> import numpy as np
        >>> p = np.array([[1, 0, 0, 0, 0], [0, 0, 1, 0, 0]], float)
        >>> run = RunPrediction("r", "Instability", [0, 1], [0.0, 0.1], p, [0, 0], onset_step=1)
        >>> per_class_auprc(run)["Instability"]
        1.0
    """
    rs = _as_runs(runs)
    _nonempty(rs, "per_class_auprc")
    ev = np.concatenate([r.event_labels for r in rs])
    probs = np.concatenate([r.probs for r in rs])
    out: dict[str, float] = {}
    for c in classes:
        if c not in KNOWN_LABELS:
            raise ValueError(
                f"per_class_auprc: {c!r} has no probability column; use {KNOWN_LABELS}"
            )
        y = ev == c
        out[c] = (
            float(average_precision_score(y, probs[:, KNOWN_LABELS.index(c)]))
            if y.any()
            else float("nan")
        )
    return out
