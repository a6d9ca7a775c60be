"""The per-run record every streaming metric consumes: :class:`RunPrediction`.

One record holds a model's per-capture-step diagnoses on one training run together with that run's
ground truth (label, onset, rule firing time, recorded alert). Metrics take sequences of them, so
:func:`~core_models.metrics.bootstrap_ci` can resample whole runs. Also here: the anomalous known
classes in head order (:data:`ANOMALOUS_KNOWN`) and the input checks the metrics share.

Example:
    >>> import numpy as np
    >>> run = RunPrediction("r", "Overfitting", [0, 10], [0.0, 1.0],
    ...                     np.tile([0.5, 0.5, 0, 0, 0], (2, 1)), [0.1, 0.1], onset_step=10)
    >>> list(run.event_labels), run.is_anomalous
    (['Healthy', 'Overfitting'], True)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from data_factory.labels import HEALTHY, KNOWN_LABELS, LABELS

__all__ = ["ANOMALOUS_KNOWN", "RunPrediction"]

#: Anomalous known classes, in head order (Table 3's "Macro F1 (Known)" averages over these).
ANOMALOUS_KNOWN: tuple[str, ...] = tuple(c for c in KNOWN_LABELS if c != HEALTHY)


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
