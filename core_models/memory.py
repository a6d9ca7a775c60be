"""Run memory: what a streaming diagnosis keeps from the diagnoses before it.

TEViD sees only the last ``W`` frames (100 optimisation steps in the CPU profile), but the event
labels of Appendix A are *states*: once a run has overfitted, forgotten its task or learnt a
biased concept, every later step carries that label. A switch of the training data leaves a
transient in the internals and then training looks ordinary again, so a windowed model forgets
what it saw. :class:`RunMemory` gives every diagnostic stream the same small, causal memory:

1. the mean of the last ``window`` diagnoses (class probabilities and vacuity), which damps
   single-step spikes, and
2. a *latch* on the most anomalous level the full-window means have *held* for ``sustain``
   consecutive diagnoses (largest ``1 − p_Healthy``): the diagnosis at step ``t`` is the current mean or, when
   more anomalous, that latched level, so an anomaly once established stays reported.

Why ``sustain``: a latch on single means would turn one early transient (a warm-up spike, one
odd batch) into a permanent verdict, and with it an alert the stream itself never confirmed. A
level held for ``sustain`` = ``k`` consecutive means (the alert rule's own ``k``) is one the
consecutive rule would have seen anyway, so the latch can keep a verdict but never create one.
A diagnosis without any evidence (vacuity exactly 1: the burn-in before the window holds real
frames, see :mod:`core_models.calibration`) passes through and is never remembered.

``window = 0`` switches the memory off (the raw per-step diagnosis). The window is chosen on
validation runs by :func:`select_memory` (largest event-time AUPRC), stored in the checkpoint's
:class:`~core_models.calibration.Calibration` and applied by the streaming
:class:`~tevid_hpo.diagnostician.Diagnostician`; the evaluation gives every method the same
choice (``experiments.evaluate``).

Example:
    >>> import numpy as np
    >>> probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.9, 0.1], [0.9, 0.1]])
    >>> p, u = apply_memory(probs, np.zeros(4), window=2)
    >>> (1 - p[:, 0]).round(2).tolist()          # one spike: averaged over 2 steps, then gone
    [0.1, 0.45, 0.45, 0.1]
    >>> sick = np.array([[0.9, 0.1]] + [[0.2, 0.8]] * 3 + [[0.9, 0.1]] * 2)
    >>> (1 - apply_memory(sick, np.zeros(6), window=1)[0][:, 0]).round(2).tolist()  # held: latched
    [0.1, 0.8, 0.8, 0.8, 0.8, 0.8]
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score

from core_models.metrics import RunPrediction
from data_factory.labels import HEALTHY, KNOWN_LABELS

__all__ = ["DEFAULT_MEMORY_GRID", "RunMemory", "apply_memory", "remember", "select_memory",
           "stream_auprc"]

#: Windows :func:`select_memory` tries by default (0: no memory).
DEFAULT_MEMORY_GRID: tuple[int, ...] = (0, 1, 2, 3, 5, 8, 12)


class RunMemory:
    """Causal memory of one run's diagnoses: the mean of the last ``window`` ones, or the most
    anomalous level such means held for ``sustain`` consecutive diagnoses, if that is higher.

    Args:
        window: diagnoses averaged before latching; ``0`` passes every diagnosis through.
        healthy_index: column of ``Healthy`` in the probability vectors (the anomaly score is
            ``1 − p[healthy_index]``).
        sustain: consecutive full-window means a level must hold before it is latched (the
            alert rule's ``k``; 1 latches every full-window mean).

    Example:
        >>> mem = RunMemory(window=1, sustain=2)
        >>> [round(float(mem.update([1 - a, a], 0.1)[0][1]), 1) for a in (0.2, 0.9, 0.3, 0.7, 0.7, 0.1)]
        [0.2, 0.9, 0.3, 0.7, 0.7, 0.7]
        >>> mem.reset(); float(mem.update([0.9, 0.1], 0.1)[0][1])
        0.1
    """

    def __init__(self, window: int, healthy_index: int = 0, sustain: int = 3) -> None:
        if int(window) != window or window < 0:
            raise ValueError(f"memory window must be a non-negative integer, got {window!r}")
        if int(sustain) != sustain or sustain < 1:
            raise ValueError(f"memory sustain must be an integer >= 1, got {sustain!r}")
        self.window, self.healthy_index = int(window), int(healthy_index)
        self.sustain = int(sustain)
        self.reset()

    def reset(self) -> None:
        """Forget the run (call at the start of a new one)."""
        self._recent: deque[tuple[np.ndarray, float]] = deque(maxlen=max(self.window, 1))
        self._means: deque[tuple[np.ndarray, float, float]] = deque(maxlen=self.sustain)
        self._latched: tuple[np.ndarray, float, float] | None = None

    def state_dict(self) -> dict[str, Any]:
        """What the memory holds of the run, JSON-serialisable (for pausing a trial).

        Example:
            >>> mem = RunMemory(window=2, sustain=1); _ = mem.update([0.3, 0.7], 0.1)
            >>> other = RunMemory(window=2, sustain=1); other.load_state_dict(mem.state_dict())
            >>> [round(float(x), 2) for x in other.update([0.9, 0.1], 0.1)[0]]
            [0.6, 0.4]
        """
        def entry(e: tuple) -> list:
            return [e[0].tolist(), *(float(x) for x in e[1:])]

        return {"recent": [entry(e) for e in self._recent],
                "means": [entry(e) for e in self._means],
                "latched": entry(self._latched) if self._latched is not None else None}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue the run :meth:`state_dict` described."""
        def entry(e: Sequence) -> tuple:
            return (np.asarray(e[0], dtype=np.float64), *(float(x) for x in e[1:]))

        self.reset()
        self._recent.extend(entry(e) for e in state["recent"])
        self._means.extend(entry(e) for e in state["means"])
        self._latched = entry(state["latched"]) if state["latched"] is not None else None

    def update(self, probs: Sequence[float] | np.ndarray, vacuity: float
               ) -> tuple[np.ndarray, float]:
        """Feed one diagnosis; returns the remembered ``(probs, vacuity)`` for this step."""
        p = np.asarray(probs, dtype=np.float64).reshape(-1)
        if self.window == 0 or vacuity >= 1.0:
            return p, float(vacuity)
        self._recent.append((p, float(vacuity)))
        mean_p = np.mean([q for q, _ in self._recent], axis=0)
        mean_u = float(np.mean([u for _, u in self._recent]))
        current = (mean_p, mean_u, 1.0 - float(mean_p[self.healthy_index]))
        # Only means over a full window are latched: a run's first means average fewer
        # diagnoses, so one early spike would weigh more in them than it ever does later.
        if len(self._recent) == self._recent.maxlen:
            self._means.append(current)
        if len(self._means) == self.sustain:
            held = min(self._means, key=lambda m: m[2])     # the level every recent mean reached
            # Strictly greater: on ties the earliest state is kept, so the latch never moves later.
            if self._latched is None or held[2] > self._latched[2]:
                self._latched = held
        out = current if self._latched is None or current[2] > self._latched[2] else self._latched
        return out[0].copy(), out[1]


def apply_memory(probs: np.ndarray, vacuity: np.ndarray, window: int, healthy_index: int = 0,
                 sustain: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A whole run's diagnoses (``probs`` ``(T, K)``, ``vacuity`` ``(T,)``) through one
    :class:`RunMemory`, exactly as the streaming diagnostician sees them.

    Example:
        >>> p, u = apply_memory(np.array([[0.5, 0.5], [0.9, 0.1]]), np.array([0.2, 0.4]), 1,
        ...                     sustain=1)
        >>> p.tolist(), u.tolist()
        ([[0.5, 0.5], [0.5, 0.5]], [0.2, 0.2])
        >>> apply_memory(np.array([[0.5, 0.5], [0.9, 0.1]]), np.array([0.2, 0.4]), 1)[0].tolist()
        [[0.5, 0.5], [0.9, 0.1]]
    """
    probs = np.asarray(probs, dtype=np.float64)
    vacuity = np.asarray(vacuity, dtype=np.float64).reshape(-1)
    if probs.ndim != 2 or probs.shape[0] != vacuity.shape[0]:
        raise ValueError(f"probs must be (T, K) with T = len(vacuity) = {vacuity.shape[0]}, "
                         f"got {probs.shape}")
    if window == 0:
        return probs.copy(), vacuity.copy()
    mem = RunMemory(window, healthy_index, sustain)
    out_p, out_u = np.empty_like(probs), np.empty_like(vacuity)
    for t, (p, u) in enumerate(zip(probs, vacuity)):
        out_p[t], out_u[t] = mem.update(p, float(u))
    return out_p, out_u


def remember(pred: RunPrediction, window: int, sustain: int = 3) -> RunPrediction:
    """A :class:`~core_models.metrics.RunPrediction` with its class probabilities and vacuity
    passed through a :class:`RunMemory` of ``window`` (truth, times and metadata unchanged).

    Example:
        >>> p = np.array([[0.9, 0.05, 0.05, 0, 0], [0.3, 0.6, 0.1, 0, 0], [0.9, 0.1, 0, 0, 0]])
        >>> run = RunPrediction("r", "Overfitting", [0, 1, 2], [0, 1, 2], p, [0.1, 0.3, 0.1],
        ...                     onset_step=1)
        >>> kept = remember(run, 1, sustain=1)
        >>> kept.probs[:, 0].tolist(), kept.vacuity.tolist()
        ([0.9, 0.3, 0.3], [0.1, 0.3, 0.3])
        >>> remember(run, 1).probs[:, 0].tolist()      # one step is a transient, not latched
        [0.9, 0.3, 0.9]
    """
    probs, vacuity = apply_memory(pred.probs, pred.vacuity, window, KNOWN_LABELS.index(HEALTHY),
                                  sustain)
    return dataclasses.replace(pred, probs=probs, vacuity=vacuity)


def select_memory(runs: Iterable[tuple[np.ndarray, np.ndarray]],
                  grid: Sequence[int] = DEFAULT_MEMORY_GRID, healthy_index: int = 0,
                  sustain: int = 3) -> tuple[int, dict[int, float]]:
    """The window with the largest event-time AUPRC on (validation) runs.

    Args:
        runs: per run, ``(probs (T, K), anomalous (T,) bool)``: its diagnoses and which steps
            carry a non-Healthy event label.
        grid: candidate windows; ties go to the smallest (least memory).
        healthy_index: column of ``Healthy``.
        sustain: see :class:`RunMemory`.

    Returns:
        ``(best window, {window: AUPRC})``.

    Raises:
        ValueError: on an empty grid, or when the runs have no anomalous or no healthy step.

    Example:
        >>> p = np.array([[0.9, 0.1]] + [[0.3, 0.7]] * 3 + [[0.8, 0.2], [0.9, 0.1]])
        >>> calm = (np.tile([0.9, 0.1], (6, 1)), np.zeros(6, bool))
        >>> flags = np.array([0, 1, 1, 1, 1, 1], bool)
        >>> best, scores = select_memory([(p, flags), calm], grid=(0, 1))
        >>> best, scores[0] < scores[1]
        (1, True)
    """
    runs = [(np.asarray(p, dtype=np.float64), np.asarray(a, dtype=bool).reshape(-1))
            for p, a in runs]
    for i, (p, a) in enumerate(runs):
        if p.ndim != 2 or p.shape[0] != a.shape[0]:
            raise ValueError(f"select_memory: run {i} has probs {p.shape} but {a.shape[0]} flags")
    if not grid:
        raise ValueError("select_memory: empty grid")
    for w in grid:
        RunMemory(w, sustain=sustain)                  # the same check as the streaming memory
    y = np.concatenate([a for _, a in runs]) if runs else np.zeros(0, bool)
    if y.all() or not y.any():
        raise ValueError("select_memory: needs both anomalous and healthy steps")
    scores = {window: stream_auprc([(p, np.zeros(len(p)), a) for p, a in runs], window,
                                   healthy_index, sustain)
              for window in sorted({int(w) for w in grid})}
    best = max(scores, key=lambda w: (scores[w], -w))
    return best, scores


def stream_auprc(runs: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]], window: int,
                 healthy_index: int = 0, sustain: int = 3) -> float:
    """Event-time AUPRC of remembered streams: every step of every run ranked by ``1 − p_Healthy``
    after a :class:`RunMemory` of ``window``; a withheld step (vacuity 1) scores 0.

    Args:
        runs: per run ``(probs (T, K), vacuity (T,), anomalous (T,) bool)``.

    Example:
        >>> p = np.array([[0.9, 0.1], [0.2, 0.8], [0.2, 0.8]])
        >>> stream_auprc([(p, np.array([1.0, 0.1, 0.1]), np.array([0, 1, 1], bool)),
        ...               (np.tile([0.9, 0.1], (3, 1)), np.zeros(3), np.zeros(3, bool))], 0)
        1.0
    """
    scores, flags = [], []
    for probs, vacuity, anomalous in runs:
        q, u = apply_memory(probs, vacuity, window, healthy_index, sustain)
        scores.append(np.where(u >= 1.0, 0.0, 1.0 - q[:, healthy_index]))
        flags.append(np.asarray(anomalous, dtype=bool).reshape(-1))
    return float(average_precision_score(np.concatenate(flags), np.concatenate(scores)))
