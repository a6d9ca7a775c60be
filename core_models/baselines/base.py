"""The common interface of the Table 3 / Appendix L baselines and how their outputs are evaluated.

Every baseline is a :class:`Baseline`: ``fit(train_runs, train_labels, val_runs, val_labels)``
(a no-op, or a validation-only hyper-parameter choice, for the unsupervised detectors; training on
the training runs and early stopping on the validation runs for the supervised ones) and
``score_run(run) -> RunScores``.

A :class:`RunScores` holds one row per *capture step* of the run (the steps of its frames, so each
baseline is evaluated on the same time grid as TEViD) with

* ``score`` — a causal anomaly score in ``[0, 1]`` (higher = more anomalous) computed only from
  data at or before that step, and
* ``probs`` — class probabilities over :data:`~data_factory.labels.KNOWN_LABELS`, or ``None`` for
  detectors that cannot tell classes apart.

:meth:`RunScores.to_prediction` turns it into a :class:`core_models.metrics.RunPrediction`, the
record every streaming metric consumes. For a detector without class probabilities the score
``a`` becomes the anomalous mass, spread evenly over the anomalous known classes::

    probs = [1 - a, a/4, a/4, a/4, a/4]          # Healthy, Overfitting, Instability, ...

so ``anomaly_scores(pred, "not_healthy") == a`` exactly (event-time AUPRC, FAR-matched thresholds
and lead times see the detector's own ranking), while ``"max_anomalous"`` is ``a/4`` (the same
ranking) and argmax-based class metrics (macro-F1) are meaningless: report them as N/A, as the
paper's Table 3 does. Baselines have no evidential output: ``vacuity`` is 0 (never abstain), so
Unknown-vs-known AUROC is undefined for them.

Example:
    >>> import numpy as np
    >>> s = RunScores("demo", "r0", steps=[0, 10, 20], epochs=[0, 0, 1], score=[0.1, 0.2, 0.9])
    >>> pred = s.to_prediction(label="Instability", event_labels=["Healthy", "Healthy",
    ...                                                              "Instability"])
    >>> pred.probs[2].round(3).tolist(), float(pred.vacuity.max())
    ([0.1, 0.225, 0.225, 0.225, 0.225], 0.0)
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from core_models.metrics import RunPrediction, event_time_auprc
from data_factory.labelers.rules import RunLabel, frame_event_labels
from data_factory.labels import HEALTHY, KNOWN_LABELS, LABELS

__all__ = [
    "ANOMALOUS_COLUMNS",
    "Baseline",
    "BaselineBase",
    "BaselineRun",
    "LabelLike",
    "NotFittedError",
    "RunScores",
    "TunableBaseline",
    "anomaly_probs",
    "event_labels_for",
    "label_indices",
    "predict_runs",
    "run_id_of",
    "select_on_validation",
]

logger = logging.getLogger(__name__)

#: Columns of the anomalous known classes in :data:`KNOWN_LABELS` (everything but Healthy).
ANOMALOUS_COLUMNS: tuple[int, ...] = tuple(i for i, c in enumerate(KNOWN_LABELS) if c != HEALTHY)
_HEALTHY = KNOWN_LABELS.index(HEALTHY)

#: A run's ground truth as a baseline accepts it: a :class:`RunLabel` (turned into per-frame
#: event labels with :func:`~data_factory.labelers.frame_event_labels`) or per-frame label names.
LabelLike = RunLabel | Sequence[str] | np.ndarray


class NotFittedError(RuntimeError):
    """A supervised baseline was asked to score before :meth:`Baseline.fit`."""


@runtime_checkable
class BaselineRun(Protocol):
    """What a baseline reads from a run (a :class:`data_factory.store.Run` provides it).

    Attributes:
        meta: run metadata (only ``steps_per_epoch`` is read, to place capture steps in epochs
            when frames carry none).
        steps: per-step scalars; baselines read ``step``, ``epoch``, ``loss`` and, if present,
            ``lr`` and ``grad_norm``. The privileged ``lyapunov`` column is never read.
        frames: a :class:`~data_factory.store.FrameSequence` (``steps``, ``epochs``, ``finite``,
            ``stats``/``stat_names``; ``tensor`` only for Embedding-CPD).

    The per-epoch table (``epochs``: train/val loss and accuracy) is not part of the contract:
    no baseline reads it, so validation curves cannot leak into any score.
    """

    meta: Mapping[str, Any]
    steps: pd.DataFrame
    frames: Any


@dataclass(frozen=True, eq=False)
class RunScores:
    """A baseline's causal output on one run, one row per capture step.

    Args:
        method: the baseline's name (``"bocpd"``, ``"stats_gbdt"``, ...).
        run_id: the run.
        steps: ``[n]`` capture steps (the frame steps), non-decreasing.
        epochs: ``[n]`` epochs of those steps (the frame epochs), non-decreasing.
        score: ``[n]`` anomaly score in ``[0, 1]``; row ``t`` uses data at or before
            ``steps[t]`` only.
        probs: ``[n, K]`` probabilities over :data:`KNOWN_LABELS`, or ``None`` when the method
            cannot tell classes apart.
        extras: per-step diagnostics (raw statistics, per-rule evidence), each ``[n]``.

    Example:
        >>> s = RunScores("x", "r", [0, 10], [0, 0], [0.0, 1.0])
        >>> s.n_steps, s.has_classes
        (2, False)
    """

    method: str
    run_id: str
    steps: np.ndarray
    epochs: np.ndarray
    score: np.ndarray
    probs: np.ndarray | None = None
    extras: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        steps = np.asarray(self.steps, dtype=np.int64).reshape(-1)
        epochs = np.asarray(self.epochs, dtype=np.float64).reshape(-1)
        score = np.asarray(self.score, dtype=np.float64).reshape(-1)
        n = steps.shape[0]
        if epochs.shape[0] != n or score.shape[0] != n:
            raise ValueError(f"{self.method}/{self.run_id}: steps, epochs and score differ in "
                             f"length ({n}, {epochs.shape[0]}, {score.shape[0]})")
        if not np.all(np.isfinite(score)) or np.any(score < 0) or np.any(score > 1):
            raise ValueError(f"{self.method}/{self.run_id}: score must be finite and in [0, 1]")
        if np.any(np.diff(steps) < 0) or np.any(np.diff(epochs) < 0):
            raise ValueError(f"{self.method}/{self.run_id}: steps and epochs must be "
                             "non-decreasing")
        if self.probs is not None:
            probs = np.asarray(self.probs, dtype=np.float64)
            if probs.shape != (n, len(KNOWN_LABELS)):
                raise ValueError(f"{self.method}/{self.run_id}: probs must have shape "
                                 f"({n}, {len(KNOWN_LABELS)}), got {probs.shape}")
            if not np.all(np.isfinite(probs)) or np.any(probs < 0) or np.any(probs > 1):
                raise ValueError(f"{self.method}/{self.run_id}: probs must lie in [0, 1]")
            set_(self, "probs", probs)
        extras = {k: np.asarray(v).reshape(-1) for k, v in dict(self.extras).items()}
        for k, v in extras.items():
            if v.shape[0] != n:
                raise ValueError(f"{self.method}/{self.run_id}: extra {k!r} has length "
                                 f"{v.shape[0]}, expected {n}")
        set_(self, "steps", steps)
        set_(self, "epochs", epochs)
        set_(self, "score", score)
        set_(self, "extras", extras)

    @property
    def n_steps(self) -> int:
        """Number of capture steps."""
        return int(self.steps.shape[0])

    @property
    def has_classes(self) -> bool:
        """Whether the method gives class probabilities (else macro-F1 is N/A)."""
        return self.probs is not None

    def class_probs(self) -> np.ndarray:
        """``[n, K]`` probabilities: the method's own, or :func:`anomaly_probs` of the score.

        Example:
            >>> RunScores("x", "r", [0], [0], [0.4]).class_probs().round(2).tolist()
            [[0.6, 0.1, 0.1, 0.1, 0.1]]
        """
        return self.probs if self.probs is not None else anomaly_probs(self.score)

    def to_prediction(self, truth: RunLabel | None = None, *, label: str | None = None,
                      event_labels: Sequence[str] | np.ndarray | None = None,
                      vacuity: Sequence[float] | np.ndarray | None = None,
                      meta: Mapping[str, Any] | None = None) -> RunPrediction:
        """The :class:`~core_models.metrics.RunPrediction` the streaming metrics consume.

        Args:
            truth: the run's :class:`RunLabel`; its onset/firing times are copied and the
                per-step event labels are ``frame_event_labels(truth, steps)`` (anchored at
                onset, as TEViD's clips are labelled).
            label, event_labels: alternatively the run label and per-step truth directly
                (``label`` defaults to the first non-Healthy event label, else Healthy; the
                onset is the first non-Healthy step).
            vacuity: per-step vacuity; 0 by default (baselines never abstain).
            meta: free-form facts for slicing (architecture, data set, optimizer, ...).

        Example:
            >>> s = RunScores("x", "r", [0, 10, 20], [0, 1, 2], [0.1, 0.8, 0.9])
            >>> p = s.to_prediction(RunLabel("Instability", 10, 20, 1, 2))
            >>> p.event_labels.tolist(), p.fire_epoch
            (['Healthy', 'Instability', 'Instability'], 2.0)
        """
        n = self.n_steps
        vac = np.zeros(n) if vacuity is None else np.asarray(vacuity, dtype=np.float64)
        kw: dict[str, Any] = {}
        if truth is not None:
            ev = frame_event_labels(truth, self.steps).astype(object)
            lab = truth.label
            kw = {"onset_step": truth.onset, "onset_epoch": truth.onset_epoch,
                  "fire_step": truth.fire_time, "fire_epoch": truth.fire_epoch}
        elif event_labels is not None:
            ev = np.asarray(event_labels, dtype=object).reshape(-1)
            if ev.shape[0] != n:
                raise ValueError(f"event_labels has length {ev.shape[0]}, expected {n}")
            anomalous = np.flatnonzero(ev != HEALTHY)
            lab = label or (str(ev[anomalous[0]]) if anomalous.size else HEALTHY)
            if anomalous.size:
                kw = {"onset_step": int(self.steps[anomalous[0]]),
                      "onset_epoch": float(self.epochs[anomalous[0]])}
        else:
            raise ValueError("to_prediction needs truth (a RunLabel) or event_labels")
        return RunPrediction(run_id=self.run_id, label=lab if label is None else label,
                             steps=self.steps, epochs=self.epochs, probs=self.class_probs(),
                             vacuity=vac, event_labels=ev, meta=dict(meta or {}), **kw)


def anomaly_probs(score: Sequence[float] | np.ndarray) -> np.ndarray:
    """Class probabilities for a class-blind detector: ``[1 - a, a/4, a/4, a/4, a/4]``.

    The anomalous mass ``a`` is spread evenly over the anomalous known classes, so
    ``1 - p_Healthy == a`` (the ``"not_healthy"`` score of :mod:`core_models.metrics`).

    Example:
        >>> anomaly_probs([0.0, 1.0]).tolist()
        [[1.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.25, 0.25, 0.25, 0.25]]
    """
    a = np.clip(np.asarray(score, dtype=np.float64).reshape(-1), 0.0, 1.0)
    probs = np.zeros((a.shape[0], len(KNOWN_LABELS)))
    probs[:, _HEALTHY] = 1.0 - a
    probs[:, list(ANOMALOUS_COLUMNS)] = (a / len(ANOMALOUS_COLUMNS))[:, None]
    return probs


def event_labels_for(label: LabelLike, steps: Sequence[int] | np.ndarray) -> np.ndarray:
    """Per-capture-step event labels from a :class:`RunLabel` or a per-frame label array.

    Example:
        >>> event_labels_for(RunLabel("Overfitting", 20, 40), [0, 20, 40]).tolist()
        ['Healthy', 'Overfitting', 'Overfitting']
    """
    steps = np.asarray(steps, dtype=np.int64).reshape(-1)
    if isinstance(label, RunLabel):
        return frame_event_labels(label, steps).astype(object)
    ev = np.asarray(label, dtype=object).reshape(-1)
    if ev.shape[0] != steps.shape[0]:
        raise ValueError(f"{ev.shape[0]} event labels for {steps.shape[0]} capture steps")
    bad = set(map(str, ev.tolist())) - set(LABELS)
    if bad:
        raise ValueError(f"unknown event labels {sorted(bad)}")
    return ev


def label_indices(event_labels: np.ndarray, ignore: int = -100) -> np.ndarray:
    """Column in :data:`KNOWN_LABELS` of each event label; ``ignore`` for ``Unknown``.

    Novel (``Unknown``) steps have no head column: supervised baselines leave them out of
    training, as TEViD's EDL loss does.

    Example:
        >>> label_indices(np.array(["Healthy", "Instability", "Unknown"], dtype=object)).tolist()
        [0, 2, -100]
    """
    lookup = {c: i for i, c in enumerate(KNOWN_LABELS)}
    return np.array([lookup.get(str(c), ignore) for c in event_labels], dtype=np.int64)


def run_id_of(run: Any) -> str:
    """The run's id: ``run.run_id``, else ``run.meta["run_id"]``, else ``""``."""
    rid = getattr(run, "run_id", None)
    if rid is None:
        rid = dict(getattr(run, "meta", {}) or {}).get("run_id", "")
    return str(rid)


class BaselineBase:
    """Shared plumbing: a no-op :meth:`fit`, :meth:`score_runs` and :meth:`predict`.

    Subclasses set :attr:`name` and implement :meth:`score_run`; supervised ones override
    :meth:`fit`.
    """

    #: Short identifier used in reports and :class:`RunScores`.
    name: str = "baseline"
    #: Whether :meth:`fit` learns from training labels (False: no-op or validation tuning only).
    supervised: bool = False

    def fit(self, train_runs: Sequence[BaselineRun], train_labels: Sequence[LabelLike],
            val_runs: Sequence[BaselineRun] | None = None,
            val_labels: Sequence[LabelLike] | None = None) -> BaselineBase:
        """Nothing to learn: return ``self`` (unsupervised detectors)."""
        return self

    def score_run(self, run: BaselineRun) -> RunScores:  # pragma: no cover - abstract
        """Causal per-capture-step scores of one run."""
        raise NotImplementedError

    def score_runs(self, runs: Iterable[BaselineRun]) -> list[RunScores]:
        """:meth:`score_run` over several runs."""
        return [self.score_run(r) for r in runs]

    def predict(self, runs: Sequence[BaselineRun], labels: Sequence[RunLabel | LabelLike]
                ) -> list[RunPrediction]:
        """Score runs and attach their truth: the input of every metric in
        :mod:`core_models.metrics` (see :func:`predict_runs`)."""
        return predict_runs(self, runs, labels)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in sorted(vars(self).items())
                           if not k.startswith("_") and isinstance(v, (int, float, str, tuple)))
        return f"{type(self).__name__}({params})"


class TunableBaseline(BaselineBase):
    """An unsupervised detector whose hyper-parameters are picked on validation runs only.

    Subclasses list candidate values in :attr:`grid` (``{attribute: values}``); :meth:`fit`
    ignores the training runs and, given validation runs and labels, sets each attribute to the
    candidate with the best validation event-time AUPRC (:func:`select_on_validation`). Without
    validation data the constructor's values stay.
    """

    #: ``{attribute: candidate values}`` searched by :meth:`fit` (empty: no tuning).
    grid: dict[str, Sequence[Any]]
    #: ``[(params, validation AUPRC), ...]`` of the last tuned :meth:`fit`.
    validation_: list[tuple[dict[str, Any], float]]

    def with_params(self, **params: Any) -> TunableBaseline:
        """A copy with some attributes replaced (and no grid of its own).

        Example:
            >>> from core_models.baselines import CUSUM
            >>> CUSUM(drift=0.5).with_params(drift=1.0).drift
            1.0
        """
        other = copy.copy(self)
        other.grid = {}
        other.validation_ = []
        for k, v in params.items():
            if not hasattr(self, k):
                raise AttributeError(f"{type(self).__name__} has no parameter {k!r}")
            current = getattr(self, k)
            setattr(other, k, type(current)(v) if isinstance(current, (int, float)) else v)
        return other

    def fit(self, train_runs: Sequence[BaselineRun], train_labels: Sequence[LabelLike],
            val_runs: Sequence[BaselineRun] | None = None,
            val_labels: Sequence[LabelLike] | None = None) -> TunableBaseline:
        """Tune :attr:`grid` on the validation runs (training runs are not used)."""
        if getattr(self, "grid", None) and val_runs and val_labels is not None:
            best, _, table = select_on_validation(self.with_params, self.grid, val_runs,
                                                  val_labels)
            tuned = self.with_params(**best)
            for k in best:
                setattr(self, k, getattr(tuned, k))
            self.validation_ = table
        return self


@runtime_checkable
class Baseline(Protocol):
    """The interface every baseline implements (see the module docstring).

    Example:
        >>> from core_models.baselines import NaNRule
        >>> isinstance(NaNRule(), Baseline)
        True
    """

    name: str

    def fit(self, train_runs: Sequence[BaselineRun], train_labels: Sequence[LabelLike],
            val_runs: Sequence[BaselineRun] | None = None,
            val_labels: Sequence[LabelLike] | None = None) -> Any:
        """Learn from training runs; tune thresholds/hyper-parameters on validation runs only."""
        ...

    def score_run(self, run: BaselineRun) -> RunScores:
        """Causal per-capture-step anomaly score (and class probabilities when available)."""
        ...


def predict_runs(baseline: Baseline, runs: Sequence[BaselineRun],
                 labels: Sequence[RunLabel | LabelLike]) -> list[RunPrediction]:
    """Score every run and pair it with its truth as :class:`RunPrediction` records.

    ``labels[i]`` is run ``i``'s :class:`RunLabel` (preferred: onset and firing times are kept for
    lead times) or its per-capture-step event labels. ``meta`` is copied from ``run.meta``.

    Example:
        >>> from core_models.baselines import NaNRule
        >>> from core_models.baselines.toy import toy_run
        >>> preds = predict_runs(NaNRule(), [toy_run()], [RunLabel("Healthy", None, None)])
        >>> preds[0].label, preds[0].n_steps
        ('Healthy', 10)
    """
    if len(runs) != len(labels):
        raise ValueError(f"{len(labels)} labels for {len(runs)} runs")
    out = []
    for run, lab in zip(runs, labels):
        s = baseline.score_run(run)
        meta = dict(getattr(run, "meta", {}) or {})
        if isinstance(lab, RunLabel):
            out.append(s.to_prediction(lab, meta=meta))
        else:
            out.append(s.to_prediction(event_labels=event_labels_for(lab, s.steps), meta=meta))
    return out


def select_on_validation(
    build: Callable[..., Baseline],
    grid: Mapping[str, Sequence[Any]],
    val_runs: Sequence[BaselineRun],
    val_labels: Sequence[LabelLike],
    metric: Callable[[list[RunPrediction]], float] = event_time_auprc,
) -> tuple[dict[str, Any], float, list[tuple[dict[str, Any], float]]]:
    """Grid search of hyper-parameters on validation runs only (higher ``metric`` is better).

    Args:
        build: ``build(**params)`` returns an unfitted-but-usable baseline (unsupervised).
        grid: ``{param: candidate values}``; the Cartesian product is tried.
        val_runs, val_labels: validation runs and their truth.
        metric: run-level metric of a list of predictions (event-time AUPRC by default).

    Returns:
        ``(best_params, best_value, [(params, value), ...])``; ties keep the first candidate.
        Candidates whose metric is undefined (e.g. no anomalous validation step) score ``nan``;
        if every candidate does, the first one is returned.

    Example:
        >>> from core_models.baselines import CUSUM
        >>> from core_models.baselines.toy import toy_run
        >>> runs = [toy_run(explode_at=None), toy_run(explode_at=50, seed=1)]
        >>> labs = [RunLabel("Healthy", None, None), RunLabel("Instability", 50, 50)]
        >>> best, value, table = select_on_validation(CUSUM, {"drift": [0.5, 1.0]}, runs, labs)
        >>> sorted(best), len(table)
        (['drift'], 2)
    """
    keys = list(grid)
    table: list[tuple[dict[str, Any], float]] = []
    for values in itertools.product(*(grid[k] for k in keys)):
        params = dict(zip(keys, values))
        preds = predict_runs(build(**params), val_runs, val_labels)
        try:
            value = float(metric(preds))
        except ValueError as err:  # e.g. no anomalous validation step
            logger.warning("validation metric undefined for %s: %s", params, err)
            value = float("nan")
        table.append((params, value))
    finite = [(p, v) for p, v in table if math.isfinite(v)]
    if not finite:
        return dict(table[0][0]), float("nan"), table
    best = max(finite, key=lambda pv: pv[1])  # max keeps the first of equal values
    return dict(best[0]), best[1], table
