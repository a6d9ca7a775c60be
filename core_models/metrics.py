"""Streaming evaluation metrics of the paper (Appendix E.2, Appendix I), computed run by run.

Every metric takes a sequence of :class:`RunPrediction` records — one per training run, holding the
per-capture-step diagnoses of a model on that run together with the run's ground truth — so that
:func:`bootstrap_ci` can resample *runs* (the independent unit) rather than time steps, which are
strongly autocorrelated inside a run.

What is here, and the paper's name for it:

* :func:`event_time_auprc` / :func:`per_class_auprc` — "Event-Time AUPRC", micro over all steps.
* :func:`first_alert`, :func:`class_alert` — the "three consecutive predictions" alert rule (E.1).
* :func:`threshold_at_far`, :func:`evaluate_alerts`, :func:`lead_times`, :func:`median_lead` —
  "median lead at 5 % FAR" against the rule firing time and against onset (Tables 3, 4, 18).
* :func:`macro_f1` — "Macro F1 (Known)", Healthy excluded from the average (Table 3).
* :func:`risk_coverage_curve`, :func:`augrc`, :func:`selective_predictions` — risk–coverage and
  AUGRC (Traub et al., 2024).
* :func:`unknown_auroc` — novel anomalies vs known ones, scored by EDL vacuity.
* :func:`diagnostic_cost` — Appendix I, ``C_FA·N_FA + C_MD·N_MD + C_Lead·ΣLead``.
* :func:`truncate_before_fire` — the causal-integrity protocol of Table 15.
* :func:`bootstrap_ci` — 95 % BCa intervals with run-level resampling (:func:`scipy.stats.bootstrap`).

Example:
    >>> import numpy as np
    >>> from core_models.metrics import RunPrediction, event_time_auprc
    >>> probs = np.array([[0.9, 0.1, 0, 0, 0], [0.2, 0.0, 0.8, 0, 0]])
    >>> run = RunPrediction("r0", "Instability", steps=[10, 20], epochs=[1.0, 2.0],
    ...                     probs=probs, vacuity=[0.1, 0.1], onset_step=20)
    >>> event_time_auprc([run])
    1.0
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import stats
from sklearn.metrics import auc, average_precision_score, f1_score, roc_auc_score

from data_factory.labels import HEALTHY, KNOWN_LABELS, LABELS, UNKNOWN

__all__ = [
    "ANOMALOUS_KNOWN",
    "AlertSummary",
    "ConfidenceInterval",
    "RiskCoverage",
    "RunPrediction",
    "ScoreKind",
    "alert_profile",
    "anomaly_scores",
    "augrc",
    "bootstrap_ci",
    "class_alert",
    "diagnostic_cost",
    "evaluate_alerts",
    "event_time_auprc",
    "event_time_auprc_by_label",
    "false_alarm_rate",
    "first_alert",
    "lead_times",
    "macro_f1",
    "median_lead",
    "per_class_auprc",
    "risk_coverage_curve",
    "selective_predictions",
    "threshold_at_far",
    "truncate_before_fire",
    "unknown_auroc",
]

#: How a step's class probabilities become one anomaly score.
#: ``"not_healthy"``: ``1 - p_Healthy``; ``"max_anomalous"``: the largest non-Healthy probability.
ScoreKind = Literal["not_healthy", "max_anomalous"]

#: Anomalous known classes, in head order (Table 3's "Macro F1 (Known)" averages over these).
ANOMALOUS_KNOWN: tuple[str, ...] = tuple(c for c in KNOWN_LABELS if c != HEALTHY)

_HEALTHY_COL = KNOWN_LABELS.index(HEALTHY)
_ANOMALOUS_COLS = [KNOWN_LABELS.index(c) for c in ANOMALOUS_KNOWN]


# --------------------------------------------------------------------------------------------
# The per-run record
# --------------------------------------------------------------------------------------------


def _optional_float(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite or None, got {value!r}")
    return v


def _optional_int(name: str, value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"{name} must be an integer step, got {value!r}")
    return int(value)


@dataclass(frozen=True, eq=False)
class RunPrediction:
    """One run's streamed diagnoses plus its ground truth.

    Row ``t`` of every per-step array describes the diagnosis emitted at capture step ``steps[t]``
    (training epoch ``epochs[t]``, possibly fractional) from the frames up to that step only.

    Args:
        run_id: Identifier, for reports.
        label: The run's true label, one of :data:`data_factory.labels.LABELS`.
        steps: ``[n]`` training steps of the diagnoses, non-decreasing.
        epochs: ``[n]`` epochs of the diagnoses, non-decreasing (lead times are in epochs).
        probs: ``[n, K]`` class probabilities over :data:`~data_factory.labels.KNOWN_LABELS`,
            in that order.
        vacuity: ``[n]`` EDL vacuity ``u = K / S`` in ``[0, 1]``.
        onset_step, onset_epoch: When the anomaly began (injected or labelled onset); ``None`` for
            Healthy runs. Needed to derive ``event_labels`` for anomalous runs.
        fire_step, fire_epoch: The earliest time the labelling rule, applied causally, fires
            (Appendix A); lead times are measured against ``fire_epoch``.
        event_labels: ``[n]`` per-step truth. Derived when omitted: the run's ``label`` from the
            onset on, Healthy before it.
        alert_step, alert_epoch: The first confirmed alert of the deployed streaming rule, if one
            was recorded (used by :func:`evaluate_alerts` with ``threshold=None``).
        meta: Free-form facts for slicing (architecture, data set, optimizer, ...).

    Example:
        >>> import numpy as np
        >>> run = RunPrediction("r1", "Overfitting", steps=[0, 10, 20], epochs=[0, 1, 2],
        ...                     probs=np.tile([0.5, 0.5, 0, 0, 0], (3, 1)),
        ...                     vacuity=[0.2, 0.2, 0.2], onset_epoch=1.0, fire_epoch=2.0)
        >>> list(run.event_labels)
        ['Healthy', 'Overfitting', 'Overfitting']
    """

    run_id: str
    label: str
    steps: np.ndarray
    epochs: np.ndarray
    probs: np.ndarray
    vacuity: np.ndarray
    onset_step: int | None = None
    onset_epoch: float | None = None
    fire_step: int | None = None
    fire_epoch: float | None = None
    event_labels: np.ndarray | None = None
    alert_step: int | None = None
    alert_epoch: float | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Frozen dataclass: normalise fields through object.__setattr__ once, here, so every
        # metric can trust shapes and dtypes without re-checking.
        set_ = object.__setattr__
        if self.label not in LABELS:
            raise ValueError(f"run {self.run_id!r}: label {self.label!r} is not one of {LABELS}")
        steps = np.asarray(self.steps, dtype=np.int64).reshape(-1)
        epochs = np.asarray(self.epochs, dtype=np.float64).reshape(-1)
        probs = np.asarray(self.probs, dtype=np.float64)
        vacuity = np.asarray(self.vacuity, dtype=np.float64).reshape(-1)
        n = steps.shape[0]
        if probs.ndim != 2 or probs.shape != (n, len(KNOWN_LABELS)):
            raise ValueError(
                f"run {self.run_id!r}: probs must have shape (n_steps={n}, K={len(KNOWN_LABELS)}) "
                f"over KNOWN_LABELS, got {probs.shape}"
            )
        if epochs.shape[0] != n or vacuity.shape[0] != n:
            raise ValueError(
                f"run {self.run_id!r}: steps, epochs and vacuity must have the same length, got "
                f"{n}, {epochs.shape[0]}, {vacuity.shape[0]}"
            )
        if not (np.all(np.isfinite(probs)) and np.all(np.isfinite(vacuity))):
            raise ValueError(f"run {self.run_id!r}: probs and vacuity must be finite")
        if np.any(probs < 0) or np.any(probs > 1) or np.any(vacuity < 0) or np.any(vacuity > 1):
            raise ValueError(f"run {self.run_id!r}: probs and vacuity must lie in [0, 1]")
        if np.any(np.diff(steps) < 0) or np.any(np.diff(epochs) < 0):
            raise ValueError(f"run {self.run_id!r}: steps and epochs must be non-decreasing")
        set_(self, "steps", steps)
        set_(self, "epochs", epochs)
        set_(self, "probs", probs)
        set_(self, "vacuity", vacuity)
        set_(self, "onset_step", _optional_int("onset_step", self.onset_step))
        set_(self, "fire_step", _optional_int("fire_step", self.fire_step))
        set_(self, "alert_step", _optional_int("alert_step", self.alert_step))
        set_(self, "onset_epoch", _optional_float("onset_epoch", self.onset_epoch))
        set_(self, "fire_epoch", _optional_float("fire_epoch", self.fire_epoch))
        set_(self, "alert_epoch", _optional_float("alert_epoch", self.alert_epoch))
        set_(self, "meta", dict(self.meta))

        if self.event_labels is not None:
            ev = np.asarray(self.event_labels, dtype=object).reshape(-1)
            if ev.shape[0] != n:
                raise ValueError(
                    f"run {self.run_id!r}: event_labels has length {ev.shape[0]}, expected {n}"
                )
            bad = set(ev.tolist()) - set(LABELS)
            if bad:
                raise ValueError(f"run {self.run_id!r}: unknown event labels {sorted(bad)}")
        elif self.label == HEALTHY:
            ev = np.full(n, HEALTHY, dtype=object)
        elif self.onset_step is not None:
            ev = np.where(steps >= self.onset_step, self.label, HEALTHY).astype(object)
        elif self.onset_epoch is not None:
            ev = np.where(epochs >= self.onset_epoch, self.label, HEALTHY).astype(object)
        else:
            raise ValueError(
                f"run {self.run_id!r} is labelled {self.label!r}: give onset_step or onset_epoch "
                "(or explicit event_labels) so per-step truth can be derived"
            )
        set_(self, "event_labels", ev)

    @property
    def n_steps(self) -> int:
        """Number of diagnoses in the run.

        Example:
            >>> RunPrediction("h", "Healthy", [1, 2], [0.1, 0.2], [[1, 0, 0, 0, 0]] * 2,
            ...               [0.0, 0.0]).n_steps
            2
        """
        return int(self.steps.shape[0])

    @property
    def is_anomalous(self) -> bool:
        """True for every label but Healthy (novel ``Unknown`` runs are anomalies too).

        Example:
            >>> RunPrediction("h", "Healthy", [1], [0.1], [[1, 0, 0, 0, 0]], [0.0]).is_anomalous
            False
        """
        return self.label != HEALTHY

    @classmethod
    def from_diagnoses(
        cls, run_id: str, label: str, diagnoses: Sequence[Any], **truth: Any
    ) -> RunPrediction:
        """Build a record from a stream of ``Diagnosis``-like objects.

        Each item needs ``.step``, ``.epoch``, ``.probs`` (a ``{label: p}`` mapping over known
        labels; missing labels count as 0) and ``.vacuity``. ``truth`` holds the remaining
        keyword fields (``onset_step``, ``fire_epoch``, ``meta``, ...).

        Example:
            >>> from types import SimpleNamespace as D
            >>> ds = [D(step=10, epoch=1.0, probs={"Healthy": 1.0}, vacuity=0.1)]
            >>> RunPrediction.from_diagnoses("r", "Healthy", ds).probs[0, 0]
            np.float64(1.0)
        """
        probs = np.array(
            [[float(d.probs.get(c, 0.0)) for c in KNOWN_LABELS] for d in diagnoses],
            dtype=np.float64,
        ).reshape(-1, len(KNOWN_LABELS))
        return cls(
            run_id=run_id,
            label=label,
            steps=np.array([d.step for d in diagnoses], dtype=np.int64),
            epochs=np.array([d.epoch for d in diagnoses], dtype=np.float64),
            probs=probs,
            vacuity=np.array([d.vacuity for d in diagnoses], dtype=np.float64),
            **truth,
        )


def _as_runs(runs: Sequence[RunPrediction] | RunPrediction) -> list[RunPrediction]:
    if isinstance(runs, RunPrediction):
        return [runs]
    out = list(runs)
    for r in out:
        if not isinstance(r, RunPrediction):
            raise TypeError(f"expected RunPrediction records, got {type(r).__name__}")
    return out


def _nonempty(runs: list[RunPrediction], what: str) -> None:
    if not runs or sum(r.n_steps for r in runs) == 0:
        raise ValueError(f"{what}: no diagnoses to evaluate")


# --------------------------------------------------------------------------------------------
# Scores and event-time AUPRC
# --------------------------------------------------------------------------------------------


def anomaly_scores(run: RunPrediction, kind: ScoreKind = "not_healthy") -> np.ndarray:
    """Per-step anomaly score of a run, from its class probabilities.

    Args:
        run: The run.
        kind: ``"not_healthy"`` is ``1 - p_Healthy`` (the total anomalous mass, the paper's
            "anomaly probability"); ``"max_anomalous"`` is the largest single anomalous class
            probability (what a class-specific alert rule thresholds).

    Example:
        >>> run = RunPrediction("r", "Healthy", [1], [0.1], [[0.4, 0.3, 0.3, 0, 0]], [0.0])
        >>> anomaly_scores(run).round(2).tolist(), anomaly_scores(run, "max_anomalous").tolist()
        ([0.6], [0.3])
    """
    if kind == "not_healthy":
        return 1.0 - run.probs[:, _HEALTHY_COL]
    if kind == "max_anomalous":
        return run.probs[:, _ANOMALOUS_COLS].max(axis=1)
    raise ValueError(f"kind must be 'not_healthy' or 'max_anomalous', got {kind!r}")


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


def truncate_before_fire(
    runs: Sequence[RunPrediction] | RunPrediction, delta_epochs: float
) -> list[RunPrediction]:
    """Causal-integrity view of Table 15: drop diagnoses after ``fire_epoch - delta_epochs``.

    Diagnoses are causal (the one at step ``t`` sees frames up to ``t`` only), so keeping those
    at epochs ``<= fire_epoch - Δ`` is the same as feeding input windows that end ``Δ`` epochs
    before the rule's first evidence. Runs without a ``fire_epoch`` (Healthy runs) are kept whole.
    A recorded alert after the cut is dropped with the steps.

    Example:
        >>> import numpy as np
        >>> run = RunPrediction("r", "Instability", [0, 1, 2], [0.0, 1.0, 2.0],
        ...     np.tile([0.5, 0, 0.5, 0, 0], (3, 1)), [0, 0, 0], onset_epoch=1, fire_epoch=2)
        >>> truncate_before_fire([run], 1.0)[0].n_steps
        2
    """
    if not math.isfinite(delta_epochs) or delta_epochs < 0:
        raise ValueError(f"delta_epochs must be finite and >= 0, got {delta_epochs!r}")
    out = []
    for r in _as_runs(runs):
        if r.fire_epoch is None:
            out.append(r)
            continue
        keep = r.epochs <= r.fire_epoch - delta_epochs
        alert_kept = r.alert_epoch is not None and r.alert_epoch <= r.fire_epoch - delta_epochs
        out.append(
            RunPrediction(
                run_id=r.run_id,
                label=r.label,
                steps=r.steps[keep],
                epochs=r.epochs[keep],
                probs=r.probs[keep],
                vacuity=r.vacuity[keep],
                onset_step=r.onset_step,
                onset_epoch=r.onset_epoch,
                fire_step=r.fire_step,
                fire_epoch=r.fire_epoch,
                event_labels=r.event_labels[keep],
                alert_step=r.alert_step if alert_kept else None,
                alert_epoch=r.alert_epoch if alert_kept else None,
                meta=r.meta,
            )
        )
    return out


# --------------------------------------------------------------------------------------------
# Alerts: the "three consecutive predictions" rule, FAR and lead
# --------------------------------------------------------------------------------------------


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


def _abstained(run: RunPrediction, vacuity_threshold: float | None) -> np.ndarray | None:
    if vacuity_threshold is None:
        return None
    return run.vacuity > float(vacuity_threshold)


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
    score: ScoreKind = "not_healthy",
    consecutive: int = 3,
    vacuity_threshold: float | None = None,
) -> float:
    """Fraction of Healthy runs with at least one confirmed alert (``nan`` without Healthy runs).

    ``threshold=None`` uses the alerts recorded on the runs (``alert_epoch``).

    Example:
        >>> import numpy as np
        >>> p = np.tile([0.2, 0.8, 0, 0, 0], (3, 1))
        >>> false_alarm_rate([RunPrediction("h", "Healthy", range(3), range(3), p, [0] * 3)], 0.5)
        1.0
    """
    return evaluate_alerts(runs, threshold, score, consecutive, vacuity_threshold).far


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
    score: ScoreKind = "not_healthy",
    consecutive: int = 3,
    vacuity_threshold: float | None = None,
) -> np.ndarray:
    """Leads (epochs, positive = earlier) of the detected anomalous runs.

    ``reference="fire"`` measures against the rule firing time (the paper's lead, E.2);
    ``"onset"`` against the anomaly onset (how long after it began the alert came, negated).

    Example:
        >>> import numpy as np
        >>> p = np.tile([0.1, 0, 0.9, 0, 0], (5, 1))
        >>> run = RunPrediction("a", "Instability", range(5), range(5), p, [0] * 5,
        ...                     onset_epoch=1, fire_epoch=4)
        >>> lead_times([run], 0.5).tolist(), lead_times([run], 0.5, "onset").tolist()
        ([2.0], [-1.0])
    """
    s = evaluate_alerts(runs, threshold, score, consecutive, vacuity_threshold)
    if reference == "fire":
        return s.leads
    if reference == "onset":
        return s.onset_leads
    raise ValueError(f"reference must be 'fire' or 'onset', got {reference!r}")


def median_lead(
    runs: Sequence[RunPrediction],
    threshold: float | None,
    reference: Literal["fire", "onset"] = "fire",
    score: ScoreKind = "not_healthy",
    consecutive: int = 3,
    vacuity_threshold: float | None = None,
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
    leads = lead_times(runs, threshold, reference, score, consecutive, vacuity_threshold)
    return float(np.median(leads)) if leads.size else float("nan")


# --------------------------------------------------------------------------------------------
# Classification quality, selective prediction, open set
# --------------------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class RiskCoverage:
    """A risk–coverage curve, one point per distinct confidence threshold (plus the origin).

    Attributes:
        coverage: Fraction of samples accepted, increasing from 0 to 1.
        selective_risk: Error rate among accepted samples (``nan`` at coverage 0).
        generalized_risk: Fraction of *all* samples that are accepted and wrong (Traub et al.).
        thresholds: Confidence cut of each point (accept ``confidence >= threshold``; ``+inf`` at
            the origin).

    Example:
        >>> rc = risk_coverage_curve([True, False], [0.9, 0.1])
        >>> rc.coverage.tolist(), rc.generalized_risk.tolist()
        ([0.0, 0.5, 1.0], [0.0, 0.0, 0.5])
    """

    coverage: np.ndarray
    selective_risk: np.ndarray
    generalized_risk: np.ndarray
    thresholds: np.ndarray

    def risk_at_coverage(self, coverage: float) -> float:
        """Selective risk at the smallest curve point covering at least ``coverage``.

        Example:
            >>> risk_coverage_curve([True, False], [0.9, 0.1]).risk_at_coverage(0.5)
            0.0
        """
        if not 0.0 < coverage <= 1.0:
            raise ValueError(f"coverage must lie in (0, 1], got {coverage!r}")
        i = int(np.searchsorted(self.coverage, coverage - 1e-12, side="left"))
        return float(self.selective_risk[min(i, self.coverage.size - 1)])


def risk_coverage_curve(
    correct: Sequence[bool] | np.ndarray, confidence: Sequence[float] | np.ndarray
) -> RiskCoverage:
    """Risk–coverage curve from per-sample correctness and a confidence score (higher = accept).

    Samples with equal confidence are accepted together (a threshold cannot split them), so the
    curve has one point per distinct confidence value.

    Example:
        >>> rc = risk_coverage_curve([True, True, False, False], [0.9, 0.8, 0.7, 0.6])
        >>> rc.selective_risk.round(2).tolist()[1:]
        [0.0, 0.0, 0.33, 0.5]
    """
    ok = np.asarray(correct, dtype=bool).reshape(-1)
    conf = np.asarray(confidence, dtype=np.float64).reshape(-1)
    if ok.shape != conf.shape:
        raise ValueError(f"correct and confidence differ in length: {ok.size} vs {conf.size}")
    if ok.size == 0:
        raise ValueError("risk_coverage_curve: no samples")
    if np.any(np.isnan(conf)):
        raise ValueError("risk_coverage_curve: confidence contains NaN")
    order = np.argsort(-conf, kind="stable")
    conf_sorted = conf[order]
    errors = np.cumsum(~ok[order])
    # The last index of each run of equal confidences is where a threshold can cut.
    cut = np.r_[np.nonzero(np.diff(conf_sorted))[0], conf_sorted.size - 1]
    n = ok.size
    accepted = cut + 1
    err = errors[cut]
    coverage = np.r_[0.0, accepted / n]
    generalized = np.r_[0.0, err / n]
    selective = np.r_[np.nan, err / accepted]
    return RiskCoverage(coverage, selective, generalized, np.r_[np.inf, conf_sorted[cut]])


def augrc(correct: Sequence[bool] | np.ndarray, confidence: Sequence[float] | np.ndarray) -> float:
    """Area under the generalized risk–coverage curve (AUGRC, Traub et al., 2024). Lower is better.

    Generalized risk at a threshold is the fraction of *all* samples that are accepted and
    wrong (unlike selective risk it does not divide by coverage, so the low-coverage end is not
    over-weighted). The area is taken with trapezoids over coverage from 0 to 1: 0 for a
    classifier without errors, ``err²/2`` for a perfect ranking of an error rate ``err`` (every
    error less confident than every correct sample), ``err/2`` in expectation for a random one.

    Example:
        >>> augrc([True, True, False, False], [0.9, 0.8, 0.7, 0.6])   # perfect ranking, err=0.5
        0.125
    """
    rc = risk_coverage_curve(correct, confidence)
    return float(auc(rc.coverage, rc.generalized_risk))


def selective_predictions(
    runs: Sequence[RunPrediction],
    confidence: Literal["vacuity", "max_prob"] = "vacuity",
    labels: Collection[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-step ``(correct, confidence)`` arrays for :func:`risk_coverage_curve` / :func:`augrc`.

    A step is correct when the argmax class equals its event label (a step of a novel anomaly,
    event label ``Unknown``, is never correct when accepted: only abstaining helps there).
    Confidence is ``1 - vacuity`` (the paper's "varying τ_uncertainty") or the max probability.

    Args:
        labels: Keep only steps whose event label is in this set (e.g. the anomalous known classes
            for "selective error on known anomalies"); ``None`` keeps all.

    Example:
        >>> import numpy as np
        >>> p = np.array([[1, 0, 0, 0, 0], [1, 0, 0, 0, 0]], float)
        >>> run = RunPrediction("r", "Instability", [0, 1], [0, 1], p, [0.1, 0.9], onset_step=1)
        >>> ok, conf = selective_predictions([run])
        >>> ok.tolist(), conf.round(1).tolist()
        ([True, False], [0.9, 0.1])
    """
    rs = _as_runs(runs)
    _nonempty(rs, "selective_predictions")
    y = np.concatenate([r.event_labels for r in rs])
    pred = np.concatenate([_step_predictions(r, None) for r in rs])
    if confidence == "vacuity":
        conf = 1.0 - np.concatenate([r.vacuity for r in rs])
    elif confidence == "max_prob":
        conf = np.concatenate([r.probs.max(axis=1) for r in rs])
    else:
        raise ValueError(f"confidence must be 'vacuity' or 'max_prob', got {confidence!r}")
    ok = y == pred
    if labels is not None:
        keep = np.isin(y.astype(str), np.asarray(list(labels), dtype=str))
        ok, conf = ok[keep], conf[keep]
        if not ok.size:
            raise ValueError("selective_predictions: no step carries the requested labels")
    return ok, conf


def unknown_auroc(runs: Sequence[RunPrediction], level: Literal["step", "run"] = "step",
                  negatives: Literal["known", "known_anomalies"] = "known") -> float:
    """AUROC of novel (``Unknown``) vs known, scored by vacuity (sklearn ``roc_auc_score``).

    ``level="step"``: positives are steps whose event label is Unknown (a novel anomaly under way).
    ``level="run"``: positives are Unknown runs, each run scored by its largest vacuity.

    ``negatives="known"`` counts every other step (run) as a negative, healthy ones included.
    ``negatives="known_anomalies"`` is Appendix H's "known vs. unknown anomalies": only steps
    whose event label is a known anomalous class (runs labelled with one) are negatives, so the
    score must tell a novel failure from a known failure, not from healthy training.

    Raises:
        ValueError: when only one of the two groups is present, or for an unknown option.

    Example:
        >>> import numpy as np
        >>> p = np.tile([1.0, 0, 0, 0, 0], (2, 1))
        >>> a = RunPrediction("k", "Healthy", [0, 1], [0, 1], p, [0.1, 0.2])
        >>> b = RunPrediction("u", "Unknown", [0, 1], [0, 1], p, [0.7, 0.8], onset_step=0)
        >>> c = RunPrediction("o", "Overfitting", [0, 1], [0, 1], p, [0.75, 0.9], onset_step=0)
        >>> unknown_auroc([a, b, c]), unknown_auroc([a, b, c], negatives="known_anomalies")
        (0.625, 0.25)
    """
    rs = _as_runs(runs)
    _nonempty(rs, "unknown_auroc")
    if negatives not in ("known", "known_anomalies"):
        raise ValueError(f"negatives must be 'known' or 'known_anomalies', got {negatives!r}")
    if level == "step":
        ev = np.concatenate([r.event_labels for r in rs])
        s = np.concatenate([r.vacuity for r in rs])
    elif level == "run":
        rs = [r for r in rs if r.n_steps]
        ev = np.array([r.label for r in rs])
        s = np.array([r.vacuity.max() for r in rs])
    else:
        raise ValueError(f"level must be 'step' or 'run', got {level!r}")
    y = ev == UNKNOWN
    if negatives == "known_anomalies":
        keep = y | np.isin(ev, ANOMALOUS_KNOWN)
        y, s = y[keep], s[keep]
    if y.all() or not y.any():
        raise ValueError("unknown_auroc: needs both Unknown and known samples")
    return float(roc_auc_score(y, s))


# --------------------------------------------------------------------------------------------
# Appendix I cost
# --------------------------------------------------------------------------------------------


def diagnostic_cost(
    n_fa: float,
    n_md: float,
    leads: Sequence[float] | np.ndarray | float = (),
    c_fa: float = 1.0,
    c_md: float = 10.0,
    c_lead: float = -0.5,
) -> float:
    """Appendix I: ``C_FA·N_FA + C_MD·N_MD + C_Lead·Σ Lead_i`` over detected anomalies.

    ``leads`` is either the per-detection leads (epochs, positive = early) or their sum. With
    ``C_Lead < 0`` early detections lower the cost and late ones (negative lead) raise it.
    See :class:`tevid_hpo.cost.CostModel` for validated coefficients and policy search.

    Example:
        >>> diagnostic_cost(5, 3, [6.0, 2.0])   # 5·1 + 3·10 - 0.5·8
        31.0
    """
    total_lead = float(np.sum(np.asarray(leads, dtype=np.float64)))
    return float(c_fa * n_fa + c_md * n_md + c_lead * total_lead)


# --------------------------------------------------------------------------------------------
# Run-level bootstrap
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfidenceInterval:
    """A bootstrap confidence interval around a metric.

    Attributes:
        estimate: The metric on all runs (not the bootstrap mean).
        low, high: Interval bounds (``nan`` when undefined).
        method: ``"BCa"``, ``"percentile"``, ``"basic"``, or ``"none"`` when no interval exists.
        confidence: Confidence level.
        n_resamples: Resamples drawn.
        n_failed: Resamples on which the metric was undefined (e.g. one class only); they are
            left out of a percentile fallback.
        note: Why the method differs from the one asked for, if it does.

    Example:
        >>> ci = ConfidenceInterval(0.9, 0.85, 0.95, "BCa", 0.95, 2000, 0, "")
        >>> f"{ci.estimate:.2f} ± {ci.half_width:.2f}"
        '0.90 ± 0.05'
    """

    estimate: float
    low: float
    high: float
    method: str
    confidence: float = 0.95
    n_resamples: int = 0
    n_failed: int = 0
    note: str = ""

    @property
    def half_width(self) -> float:
        """Half the interval width (the "±" of the paper's tables)."""
        return (self.high - self.low) / 2.0


def _safe_metric(
    metric_fn: Callable[[list[RunPrediction]], float], rs: list[RunPrediction]
) -> float:
    # A resample can make a metric undefined (no positive step, a single class for AUROC, no
    # detection for a median lead). That is a property of the resample, not a bug: record NaN and
    # let the interval logic decide, instead of aborting 2000 resamples.
    try:
        v = float(metric_fn(rs))
    except (ValueError, ZeroDivisionError, FloatingPointError):
        return float("nan")
    return v


def bootstrap_ci(
    metric_fn: Callable[[list[RunPrediction]], float],
    runs: Sequence[RunPrediction],
    n_resamples: int = 2000,
    confidence: float = 0.95,
    method: Literal["BCa", "percentile", "basic"] = "BCa",
    seed: int | np.random.Generator | None = 0,
) -> ConfidenceInterval:
    """Bootstrap interval of a run-level metric, resampling runs (:func:`scipy.stats.bootstrap`).

    The data handed to scipy are run *indices*, so each resample is a multiset of whole runs and
    the time-step correlation inside a run is respected. Metric thresholds that were tuned on
    validation (e.g. the 5 %-FAR threshold) must be fixed inside ``metric_fn``, not re-tuned per
    resample.

    When BCa is undefined — the bootstrap distribution is degenerate or some resamples leave the
    metric undefined (``metric_fn`` raised ``ValueError`` or returned NaN) — the interval falls
    back to percentiles of the defined resamples, and ``method``/``note`` say so.

    Cost: ``n_resamples`` metric calls, plus one per run for BCa's jackknife. Event-time AUPRC
    on 500 runs of 100 steps takes about 10 ms a call, so 2000 resamples take ~30 s.

    Args:
        metric_fn: ``list[RunPrediction] -> float``.
        runs: The evaluated runs (at least 2).
        n_resamples: Bootstrap resamples (the paper's tables use 2000).
        confidence: Confidence level in (0, 1).
        method: scipy's method name.
        seed: Seed or generator, for reproducible intervals.

    Example:
        >>> import numpy as np
        >>> p = np.tile([1.0, 0, 0, 0, 0], (2, 1))
        >>> runs = [RunPrediction(str(i), "Healthy", [0, 1], [0, 1], p, [v, v])
        ...         for i, v in enumerate(np.linspace(0, 1, 20))]
        >>> ci = bootstrap_ci(lambda rs: float(np.mean([r.vacuity[0] for r in rs])), runs,
        ...                   n_resamples=200)
        >>> ci.method, ci.low < ci.estimate < ci.high
        ('BCa', True)
    """
    rs = _as_runs(runs)
    if len(rs) < 2:
        raise ValueError(f"bootstrap_ci needs at least 2 runs, got {len(rs)}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if method not in ("BCa", "percentile", "basic"):
        raise ValueError(f"method must be 'BCa', 'percentile' or 'basic', got {method!r}")

    estimate = _safe_metric(metric_fn, rs)
    if not math.isfinite(estimate):
        return ConfidenceInterval(
            estimate,
            float("nan"),
            float("nan"),
            "none",
            confidence,
            0,
            0,
            "metric undefined on the full set of runs",
        )

    def statistic(idx: np.ndarray) -> float:
        return _safe_metric(metric_fn, [rs[int(i)] for i in idx])

    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    with warnings.catch_warnings():
        # scipy warns when BCa is degenerate; we detect that from the NaN bounds and report it
        # in the result instead of a warning nobody reads in a batch job.
        warnings.simplefilter("ignore", category=RuntimeWarning)
        warnings.simplefilter(
            "ignore", category=getattr(stats, "DegenerateDataWarning", RuntimeWarning)
        )
        res = stats.bootstrap(
            (np.arange(len(rs)),),
            statistic,
            n_resamples=n_resamples,
            confidence_level=confidence,
            method=method,
            vectorized=False,
            rng=rng,
        )
    dist = np.asarray(res.bootstrap_distribution, dtype=np.float64)
    finite = dist[np.isfinite(dist)]
    n_failed = int(dist.size - finite.size)
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if math.isfinite(low) and math.isfinite(high):
        return ConfidenceInterval(estimate, low, high, method, confidence, n_resamples, n_failed)

    if finite.size == 0:
        return ConfidenceInterval(
            estimate,
            float("nan"),
            float("nan"),
            "none",
            confidence,
            n_resamples,
            n_failed,
            "metric undefined on every resample",
        )
    alpha = (1.0 - confidence) / 2.0
    low, high = (float(v) for v in np.quantile(finite, [alpha, 1.0 - alpha]))
    if np.all(finite == finite[0]):
        why = "the bootstrap distribution is constant"
    elif n_failed:
        why = f"the metric was undefined on {n_failed} of {dist.size} resamples"
    else:
        why = "the jackknife acceleration is undefined"
    note = f"{method} undefined ({why}); percentile interval over the defined resamples"
    return ConfidenceInterval(
        estimate, low, high, "percentile", confidence, n_resamples, n_failed, note
    )
