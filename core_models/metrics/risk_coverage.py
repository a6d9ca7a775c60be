"""Selective prediction: risk–coverage curves and AUGRC (Traub et al., 2024).

:func:`selective_predictions` turns runs into per-step ``(correct, confidence)`` pairs,
:func:`risk_coverage_curve` builds the curve (a :class:`RiskCoverage`) and :func:`augrc` its
area under the generalized risk. These need only correctness and confidence, so they also serve
samples that are not runs.

Example:
    >>> augrc([True, False, True], [0.9, 0.2, 0.8])   # the one error is the least confident
    0.05555555555555556
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from sklearn.metrics import auc

from core_models.metrics.classification import _step_predictions
from core_models.metrics.record import RunPrediction, _as_runs, _nonempty

__all__ = ["RiskCoverage", "augrc", "risk_coverage_curve", "selective_predictions"]


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
