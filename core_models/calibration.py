"""Post-hoc calibration on the validation split (Section 4.3, Appendix E.1).

Three things are chosen once on validation predictions and frozen in the checkpoint config:

* the temperature ``T`` of the evidence logits (:func:`fit_temperature`, minimum NLL of
  ``p = α/S``);
* the abstention threshold ``tau_u``: a diagnosis with vacuity ``u > tau_u`` is *Unknown*
  (:func:`fit_abstention_threshold`; 0.35 as in the paper unless a risk/coverage target is given);
* the run memory window (:mod:`core_models.memory`), when validation streams with per-step
  event labels are given: the window with the largest event-time AUPRC;
* the burn-in: how many real frames a run must have produced before any verdict. Until then a
  window is padded with repeats of the first frame, a still picture that carries no dynamics, so
  the diagnosis is *withheld*: zero evidence (logits ``-inf``: uniform probabilities, vacuity
  exactly 1), which abstains, never alerts, scores 0 as an anomaly and is never remembered
  (:func:`withhold`; the non-finite-loss rule of the monitor is the only verdict before it);
* per-class alert thresholds ``tau_c`` for the rule "``k = 3`` consecutive non-abstained
  predictions with ``p_c ≥ tau_c``" (:class:`ConsecutiveAlert`), set — on the remembered
  diagnoses — so that at most 5 % of healthy validation runs ever raise an alert
  (:func:`fit_class_thresholds`).

Everything here is a pure function of numpy arrays, so it is tested on constructed cases and can
be reused for any model that outputs Dirichlet probabilities and a vacuity.

Example:
    >>> import numpy as np
    >>> rule = ConsecutiveAlert({"Instability": 0.6}, tau_u=0.35)
    >>> p = np.array([0.1, 0.05, 0.7, 0.1, 0.05])
    >>> [rule.update(p, vacuity=0.2) for _ in range(3)]
    [None, None, 'Instability']
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar

from core_models.memory import DEFAULT_MEMORY_GRID, apply_memory, select_memory, stream_auprc
from data_factory.labels import HEALTHY, KNOWN_LABELS

__all__ = [
    "ALERT_LABELS",
    "DEFAULT_TAU_C",
    "DEFAULT_TAU_U",
    "Calibration",
    "ConsecutiveAlert",
    "RunPredictions",
    "calibrate",
    "evidential_probs",
    "false_alarm_rate",
    "first_alert",
    "fit_abstention_threshold",
    "fit_class_thresholds",
    "fit_temperature",
    "has_evidence",
    "run_alert_scores",
    "withhold",
]

#: Classes that can raise an alert: every known class except Healthy (a healthy confirmation
#: is not an alarm).
ALERT_LABELS: tuple[str, ...] = tuple(c for c in KNOWN_LABELS if c != HEALTHY)
#: Paper Section 4.3: ``u > 0.35`` abstains.
DEFAULT_TAU_U = 0.35
#: Appendix E.1: an alert needs calibrated probability above 0.9 (used until calibrated).
DEFAULT_TAU_C = 0.9


@dataclass
class Calibration:
    """The frozen post-hoc parameters of a diagnostician (stored in the checkpoint JSON).

    ``memory`` is the :class:`~core_models.memory.RunMemory` window (0: none; checkpoints
    written before it existed load with 0). ``burn_in`` is the number of real frames before the
    first verdict (0: the model's whole window ``W``, also for checkpoints written before it
    existed); see :meth:`evidence_frames`. ``loss_confirm`` is the ratio of
    :class:`~core_models.loss_confirmation.LossConfirmation` (0: off, also for checkpoints written
    before it existed).

    Example:
        >>> c = Calibration()
        >>> Calibration.from_dict(c.to_dict()) == c, c.tau_u, c.consecutive, c.memory
        (True, 0.35, 3, 0)
        >>> c.evidence_frames(window=10), Calibration(burn_in=4).evidence_frames(window=10)
        (10, 4)
    """

    temperature: float = 1.0
    tau_u: float = DEFAULT_TAU_U
    tau_c: dict[str, float] = field(default_factory=lambda: {c: DEFAULT_TAU_C
                                                             for c in ALERT_LABELS})
    consecutive: int = 3
    memory: int = 0
    burn_in: int = 0
    loss_confirm: float = 0.0

    def check(self) -> None:
        """Raise ``ValueError`` naming the first field outside its allowed range.

        Example:
            >>> Calibration(tau_u=0.0).check()
            Traceback (most recent call last):
            ...
            ValueError: calibration.tau_u must be in (0, 1] (the vacuity above which a diagnosis abstains), got 0.0
        """
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"calibration.temperature must be a finite number > 0, "
                             f"got {self.temperature!r}")
        if not 0.0 < self.tau_u <= 1.0:
            raise ValueError(f"calibration.tau_u must be in (0, 1] (the vacuity above which a "
                             f"diagnosis abstains), got {self.tau_u!r}")
        for label, tau in self.tau_c.items():
            if not 0.0 <= tau <= 1.0:
                raise ValueError(f"calibration.tau_c[{label!r}] must be a probability in "
                                 f"[0, 1], got {tau!r}")
        if self.consecutive < 1:
            raise ValueError(f"calibration.consecutive must be >= 1, got {self.consecutive!r}")
        if self.memory < 0:
            raise ValueError(f"calibration.memory must be >= 0 (0: no run memory), "
                             f"got {self.memory!r}")
        if self.burn_in < 0:
            raise ValueError(f"calibration.burn_in must be >= 0 (0: the model's window), "
                             f"got {self.burn_in!r}")
        if not self.loss_confirm >= 0:
            raise ValueError(f"calibration.loss_confirm must be >= 0 (0: off), "
                             f"got {self.loss_confirm!r}")

    def evidence_frames(self, window: int) -> int:
        """Real frames a run needs before its first verdict: ``burn_in``, or ``window`` if 0."""
        return int(self.burn_in) if self.burn_in else int(window)

    def to_dict(self) -> dict[str, Any]:
        return {"temperature": float(self.temperature), "tau_u": float(self.tau_u),
                "tau_c": {k: float(v) for k, v in self.tau_c.items()},
                "consecutive": int(self.consecutive), "memory": int(self.memory),
                "burn_in": int(self.burn_in), "loss_confirm": float(self.loss_confirm)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Calibration:
        default = cls()
        return cls(temperature=float(d.get("temperature", default.temperature)),
                   tau_u=float(d.get("tau_u", default.tau_u)),
                   tau_c={k: float(v) for k, v in d.get("tau_c", default.tau_c).items()},
                   consecutive=int(d.get("consecutive", default.consecutive)),
                   memory=int(d.get("memory", default.memory)),
                   burn_in=int(d.get("burn_in", default.burn_in)),
                   loss_confirm=float(d.get("loss_confirm", default.loss_confirm)))


@dataclass
class RunPredictions:
    """One validation run's streaming predictions.

    Attributes:
        probs: ``(T, K)`` calibrated class probabilities per diagnostic step (head order).
        vacuity: ``(T,)`` vacuity per step.
        label: the run's ground-truth label (e.g. ``"Healthy"``).
    """

    probs: np.ndarray
    vacuity: np.ndarray
    label: str

    @classmethod
    def from_logits(cls, logits: np.ndarray, label: str, temperature: float = 1.0
                    ) -> RunPredictions:
        """Build from raw evidence logits ``(T, K)`` with temperature ``T`` applied."""
        probs, vacuity = evidential_probs(logits, temperature)
        return cls(probs=probs, vacuity=vacuity, label=label)

    def remembered(self, window: int, healthy_index: int = KNOWN_LABELS.index(HEALTHY),
                   sustain: int = 3) -> RunPredictions:
        """The same run as the streaming diagnostician reports it with run memory ``window``
        (:func:`core_models.memory.apply_memory`).

        Example:
            >>> r = RunPredictions(np.array([[0.2, 0.8], [0.9, 0.1]]), np.zeros(2), "Healthy")
            >>> r.remembered(1, sustain=1).probs[:, 1].tolist()
            [0.8, 0.8]
        """
        probs, vacuity = apply_memory(self.probs, self.vacuity, window, healthy_index, sustain)
        return RunPredictions(probs=probs, vacuity=vacuity, label=self.label)


def evidential_probs(logits: np.ndarray, temperature: float = 1.0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Numpy twin of :func:`core_models.edl.evidential_output`: ``(probs, vacuity)``.

    Example:
        >>> p, u = evidential_probs(np.zeros((1, 5)))
        >>> p.round(2).tolist(), round(float(u[0]), 3)
        ([[0.2, 0.2, 0.2, 0.2, 0.2]], 0.591)
    """
    logits = np.asarray(logits, dtype=np.float64)
    alpha = np.logaddexp(0.0, logits / temperature) + 1.0
    strength = alpha.sum(axis=-1, keepdims=True)
    return alpha / strength, logits.shape[-1] / strength[..., 0]


def withhold(logits: np.ndarray, evidence_frames: int) -> np.ndarray:
    """``logits`` ``(T, K)`` of one run's streaming windows with the verdicts before its
    ``evidence_frames``-th frame withheld: those rows become ``-inf`` (zero evidence, so
    uniform probabilities and vacuity exactly 1 after :func:`evidential_probs`).

    Example:
        >>> z = withhold(np.ones((3, 2)), evidence_frames=2)
        >>> z[:, 0].tolist(), evidential_probs(z)[1].round(3).tolist()
        ([-inf, 1.0, 1.0], [1.0, 0.432, 0.432])
    """
    if int(evidence_frames) != evidence_frames or evidence_frames < 1:
        raise ValueError(f"evidence_frames must be an integer >= 1, got {evidence_frames!r}")
    out = np.array(logits, dtype=np.float64, copy=True)
    out[: int(evidence_frames) - 1] = -np.inf
    return out


def has_evidence(logits: np.ndarray) -> np.ndarray:
    """Rows of ``logits`` that carry a verdict (not withheld by :func:`withhold`).

    Example:
        >>> has_evidence(withhold(np.zeros((3, 2)), 3)).tolist()
        [False, False, True]
    """
    return ~np.isneginf(np.asarray(logits, dtype=np.float64)).all(axis=-1)


def fit_temperature(logits: np.ndarray, labels: np.ndarray,
                    bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """Temperature minimising the mean NLL ``−log p_y`` of the Dirichlet mean on validation clips.

    Clips whose label is not a known class index (``< 0`` or ``≥ K``, e.g. Unknown) are ignored.
    The search is over ``log T`` within ``bounds`` (bounded Brent).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> y = rng.integers(0, 3, 400)
        >>> logits = 40.0 * np.eye(3)[y] + rng.normal(0, 30, (400, 3))  # confidently wrong often
        >>> fit_temperature(logits, y) > 1.0     # softened
        True
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    keep = (labels >= 0) & (labels < logits.shape[1])
    if not keep.any():
        warnings.warn("fit_temperature: no known-class clips; keeping T=1", stacklevel=2)
        return 1.0
    z, y = logits[keep], labels[keep].astype(int)

    def nll(log_t: float) -> float:
        probs, _ = evidential_probs(z, math.exp(log_t))
        return float(-np.log(probs[np.arange(len(y)), y]).mean())

    res = minimize_scalar(nll, bounds=(math.log(bounds[0]), math.log(bounds[1])),
                          method="bounded", options={"xatol": 1e-4})
    return float(math.exp(res.x))


def fit_abstention_threshold(vacuity: np.ndarray, correct: np.ndarray | None = None, *,
                             max_risk: float | None = None, min_coverage: float | None = None,
                             default: float = DEFAULT_TAU_U) -> float:
    """Choose ``tau_u`` (abstain when ``u > tau_u``) on validation clips.

    * ``max_risk``: the largest threshold (= highest coverage) whose selective risk, the error
      rate among non-abstained clips, is at most ``max_risk``. Encode clips of unknown/novel
      families as ``correct=False``: answering them with a known class is an error.
    * ``min_coverage``: the smallest threshold keeping at least that fraction of clips.
    * neither: ``default`` (the paper's 0.35).

    Example:
        >>> u = np.array([0.1, 0.2, 0.3, 0.6, 0.8])
        >>> ok = np.array([True, True, True, False, False])
        >>> fit_abstention_threshold(u, ok, max_risk=0.0)
        0.3
        >>> fit_abstention_threshold(u, min_coverage=0.8)
        0.6
    """
    if max_risk is not None and min_coverage is not None:
        raise ValueError("give max_risk or min_coverage, not both")
    if max_risk is None and min_coverage is None:
        return float(default)
    u = np.asarray(vacuity, dtype=np.float64)
    if u.size == 0:
        warnings.warn("fit_abstention_threshold: no clips; using the default", stacklevel=2)
        return float(default)
    order = np.argsort(u, kind="stable")
    u_sorted = u[order]
    if min_coverage is not None:
        idx = max(0, math.ceil(min_coverage * len(u)) - 1)
        return float(u_sorted[min(idx, len(u) - 1)])
    if correct is None:
        raise ValueError("max_risk needs `correct`")
    errors = np.cumsum(~np.asarray(correct, dtype=bool)[order])
    covered = np.arange(1, len(u) + 1)
    last_of_tie = np.r_[u_sorted[1:] != u_sorted[:-1], True]   # thresholds sit on distinct values
    ok = last_of_tie & (errors / covered <= max_risk)
    if not ok.any():
        warnings.warn(f"no threshold reaches selective risk <= {max_risk}; abstaining on all",
                      stacklevel=2)
        return float(np.nextafter(u_sorted[0], -np.inf))
    return float(u_sorted[np.flatnonzero(ok)[-1]])


class ConsecutiveAlert:
    """Streaming alert rule: class ``c`` is confirmed after ``k`` consecutive predictions that
    are not abstained (``u ≤ tau_u``) and have ``p_c ≥ tau_c``.

    An abstained step, or one with ``p_c < tau_c``, resets ``c``'s streak. When several classes
    are confirmed at once (only possible with ``tau_c < 0.5``), the most probable one is
    returned. :meth:`update` returns the confirmed class at this step (it stays confirmed while
    its streak continues), else ``None``.

    Args:
        tau_c: threshold per alert class; classes absent from it never alert.
        tau_u: abstention threshold.
        labels: class names in head order.
        k: consecutive confirmations needed (paper: 3).
    """

    def __init__(self, tau_c: Mapping[str, float], tau_u: float = DEFAULT_TAU_U,
                 labels: Sequence[str] = KNOWN_LABELS, k: int = 3) -> None:
        unknown = set(tau_c) - set(labels)
        if unknown:
            raise ValueError(f"tau_c names classes not in labels: {sorted(unknown)}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.labels, self.tau_u, self.k = tuple(labels), float(tau_u), int(k)
        self._index = [self.labels.index(c) for c in tau_c]
        self._names = list(tau_c)
        self._tau = np.array([tau_c[c] for c in tau_c], dtype=np.float64)
        self.reset()

    def reset(self) -> None:
        """Forget all streaks (new run)."""
        self.streaks = np.zeros(len(self._names), dtype=np.int64)

    def update(self, probs: Sequence[float] | np.ndarray, vacuity: float) -> str | None:
        """Feed one diagnosis; returns the confirmed alert class or ``None``."""
        p = np.asarray(probs, dtype=np.float64)[self._index]
        # Zero evidence (vacuity 1, a withheld diagnosis) never counts, whatever tau_u is.
        counts = vacuity <= self.tau_u and vacuity < 1.0
        hit = (p >= self._tau) if counts else np.zeros(len(p), dtype=bool)
        self.streaks = np.where(hit, self.streaks + 1, 0)
        confirmed = np.flatnonzero(self.streaks >= self.k)
        if confirmed.size == 0:
            return None
        return self._names[int(confirmed[np.argmax(p[confirmed])])]


def first_alert(probs: np.ndarray, vacuity: np.ndarray, tau_c: Mapping[str, float],
                tau_u: float = DEFAULT_TAU_U, labels: Sequence[str] = KNOWN_LABELS, k: int = 3
                ) -> tuple[int, str] | None:
    """Step index and class of the first confirmed alert of one run, or ``None``.

    Example:
        >>> p = np.tile([0.05, 0.05, 0.8, 0.05, 0.05], (5, 1))
        >>> first_alert(p, np.array([0.1, 0.5, 0.1, 0.1, 0.1]), {"Instability": 0.7})
        (4, 'Instability')
    """
    rule = ConsecutiveAlert(tau_c, tau_u, labels, k)
    for t, (p, u) in enumerate(zip(np.asarray(probs), np.asarray(vacuity))):
        alert = rule.update(p, float(u))
        if alert is not None:
            return t, alert
    return None


def run_alert_scores(probs: np.ndarray, vacuity: np.ndarray, tau_u: float = DEFAULT_TAU_U,
                     k: int = 3) -> np.ndarray:
    """For each class, the largest ``tau_c`` at which the run would raise an alert.

    That is ``max over windows of k consecutive non-abstained steps of min p_c`` (``-inf`` when
    the run has no such window): class ``c`` alerts in this run iff ``tau_c ≤ score_c``.

    Example:
        >>> p = np.array([[0.9, 0.1], [0.6, 0.4], [0.8, 0.2], [0.95, 0.05]])
        >>> run_alert_scores(p, np.full(4, 0.1), k=3).tolist()
        [0.6, 0.1]
    """
    p = np.asarray(probs, dtype=np.float64)
    u = np.asarray(vacuity, dtype=np.float64)
    valid = (u <= tau_u) & (u < 1.0)
    if len(p) < k:
        return np.full(p.shape[1], -np.inf)
    q = np.where(valid[:, None], p, -np.inf)
    windows = np.lib.stride_tricks.sliding_window_view(q, k, axis=0)   # (T-k+1, K, k)
    return windows.min(axis=-1).max(axis=0)


def false_alarm_rate(runs: Iterable[RunPredictions], tau_c: Mapping[str, float],
                     tau_u: float = DEFAULT_TAU_U, labels: Sequence[str] = KNOWN_LABELS,
                     k: int = 3, healthy: str = HEALTHY) -> float:
    """Fraction of healthy runs in which any alert class is ever confirmed (NaN if none)."""
    healthy_runs = [r for r in runs if r.label == healthy]
    if not healthy_runs:
        return float("nan")
    alarms = sum(first_alert(r.probs, r.vacuity, tau_c, tau_u, labels, k) is not None
                 for r in healthy_runs)
    return alarms / len(healthy_runs)


def fit_class_thresholds(runs: Sequence[RunPredictions], tau_u: float = DEFAULT_TAU_U,
                         target_far: float = 0.05, labels: Sequence[str] = KNOWN_LABELS,
                         alert_labels: Sequence[str] = ALERT_LABELS, k: int = 3,
                         floor: float = 0.5, default: float = DEFAULT_TAU_C,
                         healthy: str = HEALTHY) -> dict[str, float]:
    """Per-class ``tau_c`` with run-level false-alarm rate ``≤ target_far`` on healthy runs.

    Each class gets the same budget of ``b`` healthy runs it may alarm on (its threshold sits
    just above the ``(b+1)``-th largest :func:`run_alert_scores` value, never below ``floor``);
    ``b`` is the largest budget whose *union* of alarms over all classes stays within
    ``target_far``. Thresholds therefore adapt to how each class behaves on healthy runs
    (class-specific, as in Section 4.3) while the guarantee is on the overall rate. Only
    healthy runs enter; with none, every class gets ``default`` (0.9, Appendix E.1).

    Example:
        >>> calm = RunPredictions(np.tile([0.9, 0.02, 0.04, 0.02, 0.02], (6, 1)), np.full(6, .1),
        ...                       "Healthy")
        >>> noisy = RunPredictions(np.tile([0.3, 0.02, 0.64, 0.02, 0.02], (6, 1)), np.full(6, .1),
        ...                        "Healthy")
        >>> tau = fit_class_thresholds([calm] * 19 + [noisy] * 1, target_far=0.0)
        >>> tau["Instability"] > 0.64, false_alarm_rate([calm] * 19 + [noisy], tau)
        (True, 0.0)
    """
    healthy_runs = [r for r in runs if r.label == healthy]
    if not healthy_runs:
        warnings.warn("fit_class_thresholds: no healthy validation runs; using defaults",
                      stacklevel=2)
        return {c: float(default) for c in alert_labels}
    idx = [list(labels).index(c) for c in alert_labels]
    scores = np.stack([run_alert_scores(r.probs, r.vacuity, tau_u, k)[idx]
                       for r in healthy_runs])                               # (runs, classes)
    n = len(healthy_runs)
    allowed = math.floor(target_far * n + 1e-9)
    ranked = -np.sort(-scores, axis=0)                                       # descending
    for budget in range(n, -1, -1):
        if budget >= n:
            tau = np.full(len(idx), floor)
        else:
            tau = np.maximum(np.nextafter(ranked[budget], np.inf), floor)
        if int((scores >= tau).any(axis=1).sum()) <= allowed:
            return {c: float(min(t, 1.0)) for c, t in zip(alert_labels, tau)}
    raise AssertionError("unreachable: budget 0 never alarms")  # pragma: no cover


def _select_burn_in_and_memory(memory_runs, burn_in_grid, memory_grid, clip_logits,
                               clip_labels, healthy: int, k: int) -> tuple[int, int]:
    """The (burn-in, memory) pair of :func:`calibrate` with ``burn_in_grid``."""
    temperature = fit_temperature(clip_logits, clip_labels)
    best: tuple[float, int, int] | None = None
    for b in sorted({int(b) for b in burn_in_grid}):
        streams = []
        for z, flags in memory_runs:
            p, u = evidential_probs(withhold(z, b), temperature)
            streams.append((p, u, flags))
        for w in memory_grid:
            key = (stream_auprc(streams, int(w), healthy, k), b, -int(w))
            if best is None or key > best:
                best = key
    assert best is not None, "empty burn-in or memory grid"
    return best[1], -best[2]


def calibrate(clip_logits: np.ndarray, clip_labels: np.ndarray,
              runs: Sequence[tuple[np.ndarray, str]], *, target_far: float = 0.05,
              max_risk: float | None = None, min_coverage: float | None = None,
              labels: Sequence[str] = KNOWN_LABELS, k: int = 3,
              memory_runs: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
              memory_grid: Sequence[int] = DEFAULT_MEMORY_GRID, burn_in: int = 0,
              burn_in_grid: Sequence[int] = (),
              budget_groups: Sequence[Sequence[tuple[np.ndarray, str]]] = (),
              tau_u: float | None = None) -> Calibration:
    """Every step in order on validation data.

    With ``burn_in_grid`` (and ``memory_runs`` given un-withheld) the burn-in is chosen together
    with the run memory: the pair with the largest event-time AUPRC of the remembered streams,
    withheld steps scoring 0 (:func:`core_models.memory.stream_auprc`); ties go to the longer
    burn-in, then to the smaller memory. The ``runs`` are then withheld at the chosen burn-in.

    Withheld rows (:func:`withhold`: the burn-in, all ``-inf``) are left out of every fit: they
    carry no verdict, abstain and are never remembered, so leaving them out changes no decision.

    Args:
        clip_logits: ``(N, K)`` evidence logits of validation clips (uncalibrated, ``T=1``).
        clip_labels: ``(N,)`` class indices; ``-1`` (or ``≥ K``) marks Unknown-family clips.
        runs: per validation run, ``(logits (T, K), run label)`` of its streaming diagnoses;
            the healthy ones set the alert thresholds.
        target_far: run-level false-alarm budget on healthy runs.
        max_risk, min_coverage: optional target for ``tau_u`` (else 0.35).
        tau_u: a fixed abstention threshold instead (e.g. one chosen on transfer); the class
            thresholds are then fitted under it.
        memory_runs: per validation run, ``(logits (T, K), anomalous (T,) bool)``: its
            streaming diagnoses and which steps carry a non-Healthy event label. The run
            memory window is chosen on them (:func:`~core_models.memory.select_memory` over
            ``memory_grid``); without them there is no memory (0).
        burn_in: stored in the returned :class:`Calibration` (the streams are expected to be
            withheld accordingly) when ``burn_in_grid`` is empty.
        burn_in_grid: candidate burn-ins (real frames, each ``>= 1``) to choose from.
        budget_groups: further validation sets, each like ``runs`` (e.g. runs of held-out
            factors, or a user-style suite), that must each keep the false-alarm budget on its
            own: every class threshold is the largest one any set (``runs`` or a group) needs.
            A set that mixes many easy runs with a few unlike them would otherwise spend its
            budget on the easy ones.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> z = rng.normal(size=(40, 5)); y = rng.integers(0, 5, 40)
        >>> calm = np.tile([3.0, -3, -3, -3, -3], (6, 1))
        >>> sick = np.vstack([calm[:2], np.tile([-3.0, -3, 3, -3, -3], (4, 1))])
        >>> flag = np.array([0, 0, 1, 1, 1, 1], bool)
        >>> cal = calibrate(z, y, [(calm, "Healthy")],
        ...                 memory_runs=[(calm, np.zeros(6, bool)), (sick, flag)])
        >>> cal.memory, set(cal.tau_c) == set(ALERT_LABELS)   # already perfect: no memory
        (0, True)
    """
    clip_logits = np.asarray(clip_logits, dtype=np.float64)
    clip_labels = np.asarray(clip_labels)
    keep = has_evidence(clip_logits)
    clip_logits, clip_labels = clip_logits[keep], clip_labels[keep]
    memory, healthy = 0, list(labels).index(HEALTHY)
    # Every set that must keep the false-alarm budget on its own; a set without healthy runs has
    # no budget to keep (and would get the defaults).
    groups = [runs, *(g for g in budget_groups if any(lab == HEALTHY for _, lab in g))]
    if burn_in_grid and memory_runs:
        burn_in, memory = _select_burn_in_and_memory(memory_runs, burn_in_grid, memory_grid,
                                                     clip_logits, clip_labels, healthy, k)
        groups = [[(withhold(z, burn_in), lab) for z, lab in g] for g in groups]
        memory_runs = [(withhold(z, burn_in), f) for z, f in memory_runs]
    groups = [[(z[has_evidence(z)], lab) for z, lab in g] for g in groups]
    memory_runs = [(z[has_evidence(z)], np.asarray(f)[has_evidence(z)]) for z, f in memory_runs or ()]
    temperature = fit_temperature(clip_logits, clip_labels)
    probs, vacuity = evidential_probs(clip_logits, temperature)
    correct = probs.argmax(axis=1) == clip_labels            # Unknown clips are never correct
    if tau_u is None:
        tau_u = fit_abstention_threshold(vacuity, correct, max_risk=max_risk,
                                         min_coverage=min_coverage)
    elif max_risk is not None or min_coverage is not None:
        raise ValueError("give tau_u or a target for it (max_risk / min_coverage), not both")
    else:   # refuse a nonsense gate before any threshold is fitted under it
        Calibration(tau_u=tau_u).check()
    if memory_runs and not burn_in_grid:
        memory, _ = select_memory(
            [(evidential_probs(z, temperature)[0], flags) for z, flags in memory_runs],
            memory_grid, healthy, sustain=k)
    tau_c: dict[str, float] = {}
    for group in groups:
        preds = [RunPredictions.from_logits(z, lab, temperature).remembered(memory, healthy, k)
                 for z, lab in group]
        for c, t in fit_class_thresholds(preds, tau_u, target_far, labels, k=k).items():
            tau_c[c] = max(t, tau_c.get(c, t))
    return Calibration(temperature=temperature, tau_u=tau_u, tau_c=tau_c, consecutive=k,
                       memory=memory, burn_in=burn_in)
