"""The statistics of the outcomes: bootstrap intervals (:func:`bootstrap`), false stops
(:func:`false_stops`) and the per-strategy summary with paired comparisons (:func:`summarize`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import stats

from core_models.metrics import ConfidenceInterval
from experiments.hpo_benchmark.arms import Strategy
from experiments.hpo_benchmark.replay import TrialOutcome


def bootstrap(statistic: Callable[..., float], *samples: Sequence[float], paired: bool = False,
              n_resamples: int = 2000, method: str = "BCa", seed: int = 0) -> ConfidenceInterval:
    """95 % bootstrap interval of ``statistic(*samples)`` (:func:`scipy.stats.bootstrap`).

    The record is :class:`core_models.metrics.ConfidenceInterval`, with the same fallback as
    :func:`core_models.metrics.bootstrap_ci` (which resamples ``RunPrediction`` records, not
    numbers): where BCa is undefined (a constant or tiny sample) the interval is the percentile
    one and ``note`` says so; with fewer than 2 values there is none.

    Example:
        >>> ci = bootstrap(np.mean, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], n_resamples=500)
        >>> ci.estimate, ci.low < 3.5 < ci.high
        (3.5, True)
    """
    arrays = [np.asarray(s, dtype=np.float64) for s in samples]
    estimate = float(statistic(*arrays))
    n = min(len(a) for a in arrays)
    if n < 2 or not math.isfinite(estimate):
        return ConfidenceInterval(estimate, math.nan, math.nan, "none", 0.95, 0, 0,
                                  "fewer than 2 values" if n < 2 else "undefined")
    if all(np.all(a == a[0]) for a in arrays):
        return ConfidenceInterval(estimate, estimate, estimate, "percentile", 0.95, 0, 0,
                                  "constant sample")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        warnings.simplefilter("ignore", category=getattr(stats, "DegenerateDataWarning",
                                                         RuntimeWarning))
        res = stats.bootstrap(tuple(arrays), statistic, paired=paired, vectorized=False,
                              n_resamples=n_resamples, method=method,
                              rng=np.random.default_rng(seed))
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if math.isfinite(low) and math.isfinite(high):
        return ConfidenceInterval(estimate, low, high, method, 0.95, n_resamples, 0)
    dist = np.asarray(res.bootstrap_distribution, dtype=np.float64)
    dist = dist[np.isfinite(dist)]
    low, high = (float(v) for v in np.quantile(dist, [0.025, 0.975]))
    return ConfidenceInterval(estimate, low, high, "percentile", 0.95, n_resamples, 0,
                              f"{method} undefined; percentile interval")


def false_stops(outcomes: Sequence[TrialOutcome]) -> list[TrialOutcome]:
    """Trials stopped early that would have become their seed's best.

    "Would have become the best": the trial's full-length best validation accuracy (from the
    recording) is the highest of all configurations of its seed, ties included — whichever
    strategy ran them.

    Example:
        >>> o = lambda n, ep, full, by: TrialOutcome("s", 0, n, ep, 9, by, "", 0.5, 0.5, full, 1.0)
        >>> [t.number for t in false_stops([o(0, 3, 0.9, "TEViD"), o(1, 9, 0.8, None),
        ...                                 o(2, 1, 0.7, "Hyperband")])]
        [0]
    """
    best: dict[int, float] = {}
    for o in outcomes:
        best[o.seed] = max(best.get(o.seed, -math.inf), o.full_value)
    return [o for o in outcomes if o.stopped and o.full_value >= best[o.seed]]


def _selected(outcomes: Sequence[TrialOutcome]) -> TrialOutcome:
    """The trial a strategy would deploy: the best of those that trained the full budget."""
    full = [o for o in outcomes if not o.stopped] or list(outcomes)
    return max(full, key=lambda o: (o.value, -o.number))


def summarize(outcomes: Sequence[TrialOutcome], strategies: Sequence[Strategy],
              n_resamples: int = 2000) -> dict[str, dict[str, Any]]:
    """Per strategy: epochs/trial, savings vs its reference, wall time, best val / test acc,
    stops by mechanism and false stops, with bootstrap intervals (JSON-able)."""
    by: dict[str, list[TrialOutcome]] = {}
    for o in outcomes:
        by.setdefault(o.strategy, []).append(o)
    out: dict[str, dict[str, Any]] = {}
    for s in strategies:
        rows = sorted(by.get(s.name, []), key=lambda o: (o.seed, o.number))
        if not rows:
            continue
        seeds = sorted({o.seed for o in rows})
        epochs = [o.epochs for o in rows]
        sel = {seed: _selected([o for o in rows if o.seed == seed]) for seed in seeds}
        best_val = [sel[seed].value for seed in seeds]
        test = [sel[seed].test_acc for seed in seeds]
        stopped: dict[str, int] = {}
        for o in rows:
            if o.stopped:
                stopped[o.stopped_by or "?"] = stopped.get(o.stopped_by or "?", 0) + 1
        fs: dict[str, int] = {}
        for o in false_stops(rows):
            fs[o.stopped_by or "?"] = fs.get(o.stopped_by or "?", 0) + 1
        entry: dict[str, Any] = {
            "framework": s.framework, "n_trials": len(rows), "seeds": seeds,
            "epochs_per_trial": bootstrap(np.mean, epochs, n_resamples=n_resamples),
            "epochs_total": int(sum(epochs)),
            "wall_s": float(sum(o.wall_s for o in rows)),
            "best_val_acc": bootstrap(np.mean, best_val, n_resamples=n_resamples,
                                      method="percentile"),
            "best_val_acc_per_seed": best_val,
            "test_acc": bootstrap(np.mean, test, n_resamples=n_resamples, method="percentile"),
            "selected_trials": {seed: sel[seed].number for seed in seeds},
            "stopped_by": stopped, "false_stops": fs,
        }
        ref = sorted(by.get(s.reference, []), key=lambda o: (o.seed, o.number))
        if ref and s.name != s.reference and [(o.seed, o.number) for o in ref] == \
                [(o.seed, o.number) for o in rows]:
            ref_epochs = [o.epochs for o in ref]
            entry["epochs_saved_vs_reference"] = bootstrap(
                lambda a, b: 1.0 - np.mean(a) / np.mean(b), epochs, ref_epochs, paired=True,
                n_resamples=n_resamples)
            ref_sel = [_selected([o for o in ref if o.seed == seed]).value for seed in seeds]
            entry["best_val_delta_vs_reference"] = bootstrap(
                lambda a, b: np.mean(a - b), best_val, ref_sel, paired=True,
                n_resamples=n_resamples, method="percentile")
            entry["best_val_delta_per_seed"] = [a - b for a, b in zip(best_val, ref_sel)]
        out[s.name] = entry
    return out


def _paired_delta(outcomes: Sequence[TrialOutcome], a: str, b: str, n_resamples: int
                  ) -> tuple[ConfidenceInterval, ConfidenceInterval] | None:
    """(mean epochs/trial of ``a`` minus ``b``, best val acc of ``a`` minus ``b``), paired."""
    ra = sorted((o for o in outcomes if o.strategy == a), key=lambda o: (o.seed, o.number))
    rb = sorted((o for o in outcomes if o.strategy == b), key=lambda o: (o.seed, o.number))
    if not ra or [(o.seed, o.number) for o in ra] != [(o.seed, o.number) for o in rb]:
        return None
    d_ep = bootstrap(lambda x, y: np.mean(x - y), [o.epochs for o in ra], [o.epochs for o in rb],
                     paired=True, n_resamples=n_resamples)
    seeds = sorted({o.seed for o in ra})
    va = [_selected([o for o in ra if o.seed == s]).value for s in seeds]
    vb = [_selected([o for o in rb if o.seed == s]).value for s in seeds]
    d_val = bootstrap(lambda x, y: np.mean(x - y), va, vb, paired=True, n_resamples=n_resamples,
                      method="percentile")
    return d_ep, d_val
