"""The streaming alert rule of Appendix E.1: "three consecutive predictions" over a threshold.

:func:`first_alert` applies it to any score sequence, :func:`class_alert` per known class (the
rule that names the anomaly), and :func:`alert_profile` answers it for every threshold at once,
which is what makes exact threshold sweeps cheap (:mod:`core_models.metrics.lead`,
:class:`tevid_hpo.cost.CostModel`). Abstained steps (vacuity over a threshold) break a streak.

Example:
    >>> first_alert([0.1, 0.95, 0.95, 0.96], 0.9)
    3
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from core_models.metrics.record import ANOMALOUS_KNOWN, RunPrediction
from core_models.metrics.scores import ScoreKind, anomaly_scores
from data_factory.labels import KNOWN_LABELS

__all__ = ["alert_profile", "class_alert", "first_alert"]


def _running_window_max(
    scores: np.ndarray, consecutive: int, abstained: np.ndarray | None
) -> np.ndarray:
    """``M[j]`` = max over windows ``i <= j`` of the window minimum of ``consecutive`` scores.

    The rule "score >= τ on ``consecutive`` consecutive non-abstained steps" first holds at the
    window ``j = searchsorted(M, τ)`` (``M`` is non-decreasing), so one array answers the rule for
    every threshold at once: this is what makes threshold sweeps cheap and exact.
    """
    if consecutive < 1:
        raise ValueError(f"consecutive must be >= 1, got {consecutive}")
    s = np.asarray(scores, dtype=np.float64).reshape(-1).copy()
    # NaN scores cannot confirm an alert; abstained steps break the streak (E.1: "non-abstain").
    s[np.isnan(s)] = -np.inf
    if abstained is not None:
        s[np.asarray(abstained, dtype=bool).reshape(-1)] = -np.inf
    if s.shape[0] < consecutive:
        return np.empty(0, dtype=np.float64)
    window_min = sliding_window_view(s, consecutive).min(axis=1)
    return np.maximum.accumulate(window_min)


def _abstained(run: RunPrediction, vacuity_threshold: float | None) -> np.ndarray:
    # A withheld diagnosis (zero evidence, vacuity exactly 1: the burn-in) never confirms
    # anything, whatever the threshold; methods that never abstain have vacuity 0.
    withheld = run.vacuity >= 1.0
    if vacuity_threshold is None:
        return withheld
    return withheld | (run.vacuity > float(vacuity_threshold))


def alert_profile(
    run: RunPrediction,
    score: ScoreKind = "not_healthy",
    consecutive: int = 3,
    vacuity_threshold: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The run's alert rule for every threshold at once: ``(M, confirm_epochs)``.

    ``M[j]`` is the largest threshold at which the 3-consecutive rule has fired by the window
    ending at step ``j + consecutive - 1`` (non-decreasing); ``confirm_epochs[j]`` is that step's
    epoch. At threshold ``τ`` the first alert is window ``np.searchsorted(M, τ)`` (none if that
    equals ``len(M)``). Threshold sweeps (:class:`tevid_hpo.cost.CostModel`) use it to evaluate
    thousands of thresholds exactly without re-running the rule.

    Example:
        >>> import numpy as np
        >>> p = np.array([[1 - s, s, 0, 0, 0] for s in [0.2, 0.6, 0.7, 0.5, 0.9]])
        >>> run = RunPrediction("h", "Healthy", range(5), range(5), p, [0] * 5)
        >>> m, e = alert_profile(run)
        >>> m.round(2).tolist(), e.tolist()
        ([0.2, 0.5, 0.5], [2.0, 3.0, 4.0])
    """
    m = _running_window_max(
        anomaly_scores(run, score), consecutive, _abstained(run, vacuity_threshold)
    )
    return m, run.epochs[consecutive - 1 : consecutive - 1 + m.shape[0]]


def _check_threshold(threshold: float) -> float:
    t = float(threshold)
    if math.isnan(t) or t == -math.inf:
        raise ValueError(f"threshold must be a number or +inf (never alert), got {threshold!r}")
    return t


def first_alert(
    scores: Sequence[float] | np.ndarray,
    threshold: float,
    consecutive: int = 3,
    abstained: Sequence[bool] | np.ndarray | None = None,
) -> int | None:
    """Index of the first confirmed alert: ``consecutive`` steps in a row with ``score >= threshold``.

    The alert is confirmed at the *last* step of the streak (a causal rule cannot know earlier).
    Abstained steps (``abstained[t]`` true) never count and break a streak.

    Returns:
        The step index of the confirmation, or ``None`` if the rule never fires.

    Example:
        >>> first_alert([0.1, 0.95, 0.95, 0.2, 0.91, 0.92, 0.93], 0.9)
        6
        >>> first_alert([0.95] * 3, 0.9, abstained=[False, True, False]) is None
        True
    """
    t = _check_threshold(threshold)
    abst = None if abstained is None else np.asarray(abstained, dtype=bool)
    m = _running_window_max(np.asarray(scores), consecutive, abst)
    j = int(np.searchsorted(m, t, side="left"))
    return None if j >= m.shape[0] else j + consecutive - 1


def class_alert(
    run: RunPrediction,
    threshold: float | Mapping[str, float] = 0.9,
    consecutive: int = 3,
    vacuity_threshold: float | None = None,
    classes: Sequence[str] = ANOMALOUS_KNOWN,
) -> tuple[str, int] | None:
    """The E.1 streaming rule: first class whose probability is ``>= τ_c`` on 3 consecutive steps.

    Args:
        run: The run.
        threshold: ``τ`` for every class, or a ``{class: τ_c}`` mapping (calibrated per class).
        consecutive: Streak length (3 in the paper).
        vacuity_threshold: Steps with ``vacuity > vacuity_threshold`` abstain and break streaks.
        classes: Classes that can alert (anomalous known classes by default).

    Returns:
        ``(class, step_index)`` of the earliest confirmed alert (ties go to head order), or ``None``.

    Example:
        >>> import numpy as np
        >>> p = np.tile([0.05, 0.0, 0.95, 0.0, 0.0], (4, 1))
        >>> run = RunPrediction("r", "Instability", range(4), range(4), p, [0.1] * 4, onset_step=0)
        >>> class_alert(run)
        ('Instability', 2)
    """
    best: tuple[str, int] | None = None
    abst = _abstained(run, vacuity_threshold)
    for c in classes:
        if c not in KNOWN_LABELS:
            raise ValueError(f"class_alert: {c!r} has no probability column")
        tau = threshold[c] if isinstance(threshold, Mapping) else threshold
        i = first_alert(run.probs[:, KNOWN_LABELS.index(c)], tau, consecutive, abst)
        if i is not None and (best is None or i < best[1]):
            best = (c, i)
    return best


def _alert_index(
    run: RunPrediction,
    threshold: float,
    score: ScoreKind,
    consecutive: int,
    vacuity_threshold: float | None,
) -> int | None:
    return first_alert(
        anomaly_scores(run, score), threshold, consecutive, _abstained(run, vacuity_threshold)
    )
