"""Run-level bootstrap intervals: :func:`bootstrap_ci`, :func:`paired_bootstrap_ci` (the
difference of two methods on the same runs) and their :class:`ConfidenceInterval`.

The paper's 95 % BCa intervals, resampling whole runs (the independent unit) with
:func:`scipy.stats.bootstrap`, and falling back to percentiles, said in the result, where BCa is
undefined.

Example:
    >>> ConfidenceInterval(0.5, 0.25, 0.75, "BCa").half_width
    0.25
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats

from core_models.metrics.record import RunPrediction, _as_runs

__all__ = ["ConfidenceInterval", "bootstrap_ci", "paired_bootstrap_ci"]


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


def _no_interval(
    estimate: float, confidence: float, n_resamples: int, n_failed: int, note: str
) -> ConfidenceInterval:
    """The result when no interval exists: NaN bounds, method ``"none"``, ``note`` says why."""
    return ConfidenceInterval(
        estimate, float("nan"), float("nan"), "none", confidence, n_resamples, n_failed, note
    )


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
    rs = _check_args(runs, confidence, n_resamples, method, "bootstrap_ci")
    estimate = _safe_metric(metric_fn, rs)

    def statistic(idx: np.ndarray) -> float:
        return _safe_metric(metric_fn, [rs[int(i)] for i in idx])

    return _run_bootstrap(statistic, len(rs), estimate, n_resamples, confidence, method, seed)


def paired_bootstrap_ci(
    metric_fn: Callable[[list[RunPrediction]], float],
    runs_a: Sequence[RunPrediction],
    runs_b: Sequence[RunPrediction],
    n_resamples: int = 2000,
    confidence: float = 0.95,
    method: Literal["BCa", "percentile", "basic"] = "BCa",
    seed: int | np.random.Generator | None = 0,
) -> ConfidenceInterval:
    """Bootstrap interval of ``metric(a) - metric(b)`` for two methods scored on the same runs.

    Each resample draws one multiset of runs and scores both methods on it, so what the two
    have in common (hard runs, easy runs) cancels: the interval is that of the difference, far
    narrower than comparing two separate intervals. ``runs_b`` is matched to ``runs_a`` by
    ``run_id``; both must hold the same runs. Otherwise as :func:`bootstrap_ci`.

    Example:
        >>> import numpy as np
        >>> p = np.tile([1.0, 0, 0, 0, 0], (2, 1))
        >>> a = [RunPrediction(str(i), "Healthy", [0, 1], [0, 1], p, [v, v])
        ...      for i, v in enumerate(np.linspace(0.1, 1, 20))]
        >>> b = [RunPrediction(r.run_id, "Healthy", [0, 1], [0, 1], p, r.vacuity - 0.1) for r in a]
        >>> mean_u = lambda rs: float(np.mean([r.vacuity[0] for r in rs]))
        >>> ci = paired_bootstrap_ci(mean_u, a, b[::-1], n_resamples=200)
        >>> round(ci.estimate, 3), round(ci.low, 3), round(ci.high, 3)   # exactly 0.1 every time
        (0.1, 0.1, 0.1)
    """
    a = _check_args(runs_a, confidence, n_resamples, method, "paired_bootstrap_ci")
    by_id = {r.run_id: r for r in _as_runs(runs_b)}
    if len(by_id) != len(a) or any(r.run_id not in by_id for r in a):
        raise ValueError("paired_bootstrap_ci needs both methods scored on the same runs")
    b = [by_id[r.run_id] for r in a]

    def difference(idx: Sequence[int]) -> float:
        ra, rb = [a[int(i)] for i in idx], [b[int(i)] for i in idx]
        return _safe_metric(metric_fn, ra) - _safe_metric(metric_fn, rb)

    estimate = difference(range(len(a)))
    return _run_bootstrap(difference, len(a), estimate, n_resamples, confidence, method, seed)


def _check_args(runs: Sequence[RunPrediction] | RunPrediction, confidence: float,
                n_resamples: int, method: str, name: str) -> list[RunPrediction]:
    rs = _as_runs(runs)
    if len(rs) < 2:
        raise ValueError(f"{name} needs at least 2 runs, got {len(rs)}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if method not in ("BCa", "percentile", "basic"):
        raise ValueError(f"method must be 'BCa', 'percentile' or 'basic', got {method!r}")
    return rs


def _run_bootstrap(
    statistic: Callable[[np.ndarray], float],
    n: int,
    estimate: float,
    n_resamples: int,
    confidence: float,
    method: str,
    seed: int | np.random.Generator | None,
) -> ConfidenceInterval:
    """scipy's bootstrap of ``statistic`` over run indices ``0..n-1``, with the percentile
    fallback where ``method`` is undefined."""
    if not math.isfinite(estimate):
        return _no_interval(estimate, confidence, 0, 0, "metric undefined on the full set of runs")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    with warnings.catch_warnings():
        # scipy warns when BCa is degenerate; we detect that from the NaN bounds and report it
        # in the result instead of a warning nobody reads in a batch job.
        warnings.simplefilter("ignore", category=RuntimeWarning)
        warnings.simplefilter(
            "ignore", category=getattr(stats, "DegenerateDataWarning", RuntimeWarning)
        )
        res = stats.bootstrap(
            (np.arange(n),),
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
        return _no_interval(
            estimate, confidence, n_resamples, n_failed, "metric undefined on every resample"
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
