"""False alarms and lead times of an alert policy (Tables 3, 4 and 18).

:func:`threshold_at_far` picks the threshold of a false-alarm budget on Healthy runs;
:func:`evaluate_alerts` applies a threshold (or the recorded alerts) to every run and counts false
alarms, misses and leads in an :class:`AlertSummary`; :func:`false_alarm_rate`,
:func:`lead_times` and :func:`median_lead` read single numbers from it — "median lead at 5 % FAR"
against the rule firing time or against onset.

Example:
    >>> import numpy as np
    >>> from core_models.metrics import RunPrediction
    >>> p = np.tile([0.1, 0, 0.9, 0, 0], (5, 1))
    >>> run = RunPrediction("a", "Instability", range(5), range(5), p, [0] * 5,
    ...                     onset_epoch=0, fire_epoch=4)
    >>> evaluate_alerts([run], 0.5).n_detected, median_lead([run], 0.5)
    (1, 2.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, TypedDict

import numpy as np

from core_models.metrics.alerts import _alert_index, _check_threshold, alert_profile
from core_models.metrics.record import RunPrediction, _as_runs
from core_models.metrics.scores import ScoreKind

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11 on

__all__ = [
    "AlertPolicy",
    "AlertSummary",
    "evaluate_alerts",
    "false_alarm_rate",
    "lead_times",
    "median_lead",
    "threshold_at_far",
]


class AlertPolicy(TypedDict, total=False):
    """The alert rule's settings that :func:`false_alarm_rate`, :func:`lead_times` and
    :func:`median_lead` pass on (by keyword) to :func:`evaluate_alerts`, whose defaults apply.

    Example:
        >>> policy: AlertPolicy = {"consecutive": 2}
        >>> sorted(AlertPolicy.__optional_keys__)
        ['consecutive', 'score', 'vacuity_threshold']
    """

    score: ScoreKind
    consecutive: int
    vacuity_threshold: float | None


def threshold_at_far(
    runs: Sequence[RunPrediction],
    far: float = 0.05,
    score: ScoreKind = "not_healthy",
    consecutive: int = 3,
    vacuity_threshold: float | None = None,
    denominator: Literal["healthy", "all"] = "healthy",
) -> float:
    """Lowest score threshold whose run-level false-alarm rate on the Healthy runs is ``<= far``.

    FAR is the fraction of Healthy runs with at least one confirmed alert (see
    :func:`false_alarm_rate`). Alerting is monotone in the threshold, so the lowest admissible
    threshold detects the most anomalies at that FAR; it lies just above the alert score of the
    ``⌊far·n⌋+1``-th most alarming Healthy run. Pick it on validation runs and freeze it.

    ``denominator="all"`` budgets false alarms per run of any label instead (``N_FA / n_runs <=
    far``), the reading under which Table 18 shows ``N_FA = 5.0`` per 100 runs at 5 % FAR.

    Example:
        >>> import numpy as np
        >>> def healthy(i, s):
        ...     p = np.tile([1 - s, s, 0, 0, 0], (3, 1))
        ...     return RunPrediction(f"h{i}", "Healthy", range(3), range(3), p, [0] * 3)
        >>> runs = [healthy(i, s) for i, s in enumerate([0.1, 0.2, 0.3, 0.4])]
        >>> t = threshold_at_far(runs, far=0.25)   # one of four healthy runs may alert
        >>> 0.3 < t <= 0.4, false_alarm_rate(runs, t)
        (True, 0.25)
    """
    if not 0.0 <= far <= 1.0:
        raise ValueError(f"far must lie in [0, 1], got {far!r}")
    healthy = [r for r in _as_runs(runs) if not r.is_anomalous]
    if not healthy:
        raise ValueError("threshold_at_far: no Healthy run to measure false alarms on")
    # Per run, the largest threshold at which it still alerts (-inf: it never can).
    profiles = [alert_profile(r, score, consecutive, vacuity_threshold)[0] for r in healthy]
    top = np.array([m[-1] if m.size else -np.inf for m in profiles])
    if denominator == "healthy":
        n_ref = len(healthy)
    elif denominator == "all":
        n_ref = len(_as_runs(runs))
    else:
        raise ValueError(f"denominator must be 'healthy' or 'all', got {denominator!r}")
    # The epsilon keeps e.g. 0.05 * 20 from flooring to 0 through rounding.
    n_allowed = math.floor(far * n_ref + 1e-9)
    order = np.sort(top)[::-1]
    finite = order[np.isfinite(order)]
    if n_allowed >= finite.size:
        # Every Healthy run that can alert may alert: the lowest useful threshold is the smallest
        # alert score (or 0 when no Healthy run can ever alert).
        return float(finite[-1]) if finite.size else 0.0
    # The (n_allowed+1)-th most alarming Healthy run must stay silent.
    return float(np.nextafter(order[n_allowed], np.inf))


def false_alarm_rate(
    runs: Sequence[RunPrediction],
    threshold: float | None,
    **policy: Unpack[AlertPolicy],
) -> float:
    """Fraction of Healthy runs with at least one confirmed alert (``nan`` without Healthy runs).

    ``threshold=None`` uses the alerts recorded on the runs (``alert_epoch``); ``policy``: see
    :func:`evaluate_alerts`.

    Example:
        >>> import numpy as np
        >>> p = np.tile([0.2, 0.8, 0, 0, 0], (3, 1))
        >>> false_alarm_rate([RunPrediction("h", "Healthy", range(3), range(3), p, [0] * 3)], 0.5)
        1.0
    """
    return evaluate_alerts(runs, threshold, **policy).far


@dataclass(frozen=True)
class AlertSummary:
    """Run-level outcome of an alert policy (Table 18's counts).

    Attributes:
        n_runs, n_healthy, n_anomalous: Run counts (Unknown runs are anomalous).
        n_false_alarms: Healthy runs with an alert (``N_FA``).
        n_missed: Anomalous runs without an alert (``N_MD``).
        n_detected: Anomalous runs with an alert.
        leads: Lead vs the rule firing time, ``fire_epoch - alert_epoch``, for each detected run
            that has a ``fire_epoch`` (epochs; positive = earlier than the rule).
        onset_leads: ``onset_epoch - alert_epoch`` for each detected run with an onset epoch.
        alert_epochs: ``{run_id: epoch of first alert or None}`` for every run.
        alert_steps: ``{run_id: capture step of first alert or None}`` for every run.

    Example:
        >>> s = AlertSummary(2, 1, 1, 0, 0, 1, np.array([2.0]), np.array([-1.0]), {})
        >>> s.far, s.median_lead
        (0.0, 2.0)
    """

    n_runs: int
    n_healthy: int
    n_anomalous: int
    n_false_alarms: int
    n_missed: int
    n_detected: int
    leads: np.ndarray
    onset_leads: np.ndarray
    alert_epochs: dict[str, float | None]
    alert_steps: dict[str, int | None] = field(default_factory=dict)

    @property
    def far(self) -> float:
        """``N_FA / n_healthy`` (``nan`` without Healthy runs)."""
        return self.n_false_alarms / self.n_healthy if self.n_healthy else float("nan")

    @property
    def false_alarms_per_run(self) -> float:
        """``N_FA / n_runs``: false alarms per evaluated run of any label (Table 18's scale)."""
        return self.n_false_alarms / self.n_runs if self.n_runs else float("nan")

    @property
    def detection_rate(self) -> float:
        """``n_detected / n_anomalous`` (``nan`` without anomalous runs)."""
        return self.n_detected / self.n_anomalous if self.n_anomalous else float("nan")

    @property
    def median_lead(self) -> float:
        """Median lead vs the rule firing time over detected runs (``nan`` if none)."""
        return float(np.median(self.leads)) if self.leads.size else float("nan")

    @property
    def median_onset_lead(self) -> float:
        """Median lead vs onset over detected runs (``nan`` if none)."""
        return float(np.median(self.onset_leads)) if self.onset_leads.size else float("nan")


def evaluate_alerts(
    runs: Sequence[RunPrediction],
    threshold: float | None,
    score: ScoreKind = "not_healthy",
    consecutive: int = 3,
    vacuity_threshold: float | None = None,
) -> AlertSummary:
    """Apply an alert policy to every run and count false alarms, misses and leads.

    Args:
        runs: Labelled runs.
        threshold: Score threshold of the 3-consecutive rule, or ``None`` to use each run's
            recorded ``alert_epoch`` (the deployed streaming rule), or ``+inf`` to never alert.
        score, consecutive, vacuity_threshold: See :func:`anomaly_scores` and :func:`first_alert`.

    A detection is the first confirmed alert anywhere in an anomalous run (the paper's
    "first confirmed alert at t_pred"); its class is not checked here (that is :func:`macro_f1`).

    Example:
        >>> import numpy as np
        >>> p = np.tile([0.1, 0, 0.9, 0, 0], (5, 1))
        >>> run = RunPrediction("a", "Instability", range(5), range(5), p, [0] * 5,
        ...                     onset_epoch=0, fire_epoch=4)
        >>> evaluate_alerts([run], 0.5).leads.tolist()   # alert confirmed at epoch 2
        [2.0]
    """
    rs = _as_runs(runs)
    if threshold is not None:
        threshold = _check_threshold(threshold)
    n_h = n_a = n_fa = n_md = n_det = 0
    leads: list[float] = []
    onset_leads: list[float] = []
    alert_epochs: dict[str, float | None] = {}
    alert_steps: dict[str, int | None] = {}
    for r in rs:
        if threshold is None:
            a_epoch, a_step = r.alert_epoch, r.alert_step
        else:
            i = _alert_index(r, threshold, score, consecutive, vacuity_threshold)
            a_epoch = None if i is None else float(r.epochs[i])
            a_step = None if i is None else int(r.steps[i])
        alert_epochs[r.run_id] = a_epoch
        alert_steps[r.run_id] = a_step
        if not r.is_anomalous:
            n_h += 1
            n_fa += a_epoch is not None
            continue
        n_a += 1
        if a_epoch is None:
            n_md += 1
            continue
        n_det += 1
        if r.fire_epoch is not None:
            leads.append(r.fire_epoch - a_epoch)
        if r.onset_epoch is not None:
            onset_leads.append(r.onset_epoch - a_epoch)
    return AlertSummary(
        n_runs=len(rs),
        n_healthy=n_h,
        n_anomalous=n_a,
        n_false_alarms=n_fa,
        n_missed=n_md,
        n_detected=n_det,
        leads=np.asarray(leads, dtype=np.float64),
        onset_leads=np.asarray(onset_leads, dtype=np.float64),
        alert_epochs=alert_epochs,
        alert_steps=alert_steps,
    )


def lead_times(
    runs: Sequence[RunPrediction],
    threshold: float | None,
    reference: Literal["fire", "onset"] = "fire",
    **policy: Unpack[AlertPolicy],
) -> np.ndarray:
    """Leads (epochs, positive = earlier) of the detected anomalous runs.

    ``reference="fire"`` measures against the rule firing time (the paper's lead, E.2);
    ``"onset"`` against the anomaly onset (how long after it began the alert came, negated).
    ``policy``: see :func:`evaluate_alerts`.

    Example:
        >>> import numpy as np
        >>> p = np.tile([0.1, 0, 0.9, 0, 0], (5, 1))
        >>> run = RunPrediction("a", "Instability", range(5), range(5), p, [0] * 5,
        ...                     onset_epoch=1, fire_epoch=4)
        >>> lead_times([run], 0.5).tolist(), lead_times([run], 0.5, "onset").tolist()
        ([2.0], [-1.0])
    """
    s = evaluate_alerts(runs, threshold, **policy)
    if reference == "fire":
        return s.leads
    if reference == "onset":
        return s.onset_leads
    raise ValueError(f"reference must be 'fire' or 'onset', got {reference!r}")


def median_lead(
    runs: Sequence[RunPrediction],
    threshold: float | None,
    reference: Literal["fire", "onset"] = "fire",
    **policy: Unpack[AlertPolicy],
) -> float:
    """Median of :func:`lead_times` (``nan`` when nothing is detected).

    For "median lead at 5 % FAR", pass ``threshold=threshold_at_far(validation_runs)``.

    Example:
        >>> import numpy as np
        >>> p = np.tile([0.1, 0, 0.9, 0, 0], (5, 1))
        >>> run = RunPrediction("a", "Instability", range(5), range(5), p, [0] * 5,
        ...                     onset_epoch=0, fire_epoch=5)
        >>> median_lead([run], 0.5)
        3.0
    """
    leads = lead_times(runs, threshold, reference, **policy)
    return float(np.median(leads)) if leads.size else float("nan")
