"""Issue 25's targets, checked per base pruner/scheduler X (:func:`base_targets`), the Pareto
front of all arms (:func:`pareto_front`) and its figure (:func:`plot_pareto`).

For every base X with an ``X + TEViD`` arm:

* ``X + TEViD`` trains ≥ 20 % fewer epochs per trial than X (the point estimate of the paired
  saving; its interval is printed);
* its best validation accuracy is not lower beyond noise: the 95 % interval of the paired
  per-seed difference to X reaches 0 or above;
* 0 false stops *by TEViD* over all seeds (stops by X itself are X's);
* fewer epochs than ``X + Cheap rule`` and ``X + LC-PFN`` at equal accuracy (mean epochs lower,
  and the accuracy difference's interval reaches 0). Where another signal wins, the line says so.
  Either way it says on which trials each signal stopped earlier than the other
  (:func:`earlier_stops`): what the internal state added, and what it missed.

The Pareto front is over (mean epochs per trial ↓, mean best validation accuracy ↑).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from experiments.hpo_benchmark.arms import SIGNAL_NAMES, Strategy
from experiments.hpo_benchmark.replay import TrialOutcome
from experiments.hpo_benchmark.report import _save_figure
from experiments.hpo_benchmark.stats import _paired_delta

SAVING_TARGET = 0.20


def _est(ci: Any) -> float | None:
    if ci is None:
        return None
    return float(ci["estimate"] if isinstance(ci, Mapping) else ci.estimate)


def _bounds(ci: Any) -> tuple[float, float]:
    if isinstance(ci, Mapping):
        return float(ci["low"]), float(ci["high"])
    return float(ci.low), float(ci.high)


def _gap(a: float, b: float) -> float:
    """An error bar's length ``a - b`` (0 when either end is NaN: no interval)."""
    return 0.0 if math.isnan(a) or math.isnan(b) else max(a - b, 0.0)


def pareto_front(summary: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Arms no other arm beats on both mean epochs per trial (fewer) and best val acc (higher).

    Example:
        >>> s = {"a": {"epochs_per_trial": {"estimate": 5}, "best_val_acc": {"estimate": .8}},
        ...      "b": {"epochs_per_trial": {"estimate": 9}, "best_val_acc": {"estimate": .7}},
        ...      "c": {"epochs_per_trial": {"estimate": 2}, "best_val_acc": {"estimate": .6}}}
        >>> pareto_front(s)
        ['a', 'c']
    """
    pts = {n: (_est(s["epochs_per_trial"]), _est(s["best_val_acc"])) for n, s in summary.items()}
    front = []
    for n, (e, a) in pts.items():
        dominated = any(e2 <= e and a2 >= a and (e2 < e or a2 > a)   # type: ignore[operator]
                        for m, (e2, a2) in pts.items() if m != n)
        if not dominated:
            front.append(n)
    return front


_ONE_SEED = "; one seed, no interval: the point estimate decides"


def _not_lower(estimate: float, high: float) -> bool:
    """Not lower beyond noise: the interval's upper end reaches 0; with one seed there is no
    interval, and a lower point estimate is then no evidence of "not lower".

    Example:
        >>> _not_lower(-0.1, 0.02), _not_lower(-0.1, float("nan")), _not_lower(0.0, float("nan"))
        (True, False, True)
    """
    return estimate >= 0.0 if math.isnan(high) else high >= 0.0


def earlier_stops(outcomes: Sequence[TrialOutcome], arm: str, other: str,
                  kinds: Mapping[tuple[int, int], str] | None = None) -> str:
    """On which trials each of two arms of one base stopped earlier *on its own signal* than
    the other arm did: ``arm``'s signal on trials ``other`` let run longer, and the reverse,
    with the epochs it saved there and what the trials did (``kinds``: ``(seed, number)`` →
    e.g. ``"failed"``, ``"overfit"``, ``"learned"``). A trial stopped by the base itself is
    not counted: the base may decide differently only because earlier trials went differently.

    Example:
        >>> from experiments.hpo_benchmark.replay import TrialOutcome
        >>> def o(arm, n, epochs, by):
        ...     return TrialOutcome(arm, 0, n, epochs, 9, by, "", .5, .5, .5, 1.)
        >>> outs = [o("H + TEViD", 0, 2, "TEViD"), o("H + LC-PFN", 0, 9, None),
        ...         o("H + TEViD", 1, 9, None), o("H + LC-PFN", 1, 3, "LC-PFN")]
        >>> earlier_stops(outs, "H + TEViD", "H + LC-PFN", {(0, 0): "overfit", (0, 1): "learned"})
        'TEViD earlier on 1 trial (7 epochs; overfit 1), LC-PFN earlier on 1 (6 epochs; learned 1)'
    """
    by_arm = {name: {(o.seed, o.number): o for o in outcomes if o.strategy == name}
              for name in (arm, other)}

    def tally(first: str, second: str) -> tuple[str, int, str]:
        a, b = by_arm[first], by_arm[second]
        signal = first.rsplit(" + ", 1)[-1]
        keys = sorted(k for k in a if k in b and a[k].stopped_by == signal
                      and a[k].epochs < b[k].epochs)
        saved = sum(b[k].epochs - a[k].epochs for k in keys)
        what = ", ".join(f"{kind} {n}" for kind, n in
                         sorted(Counter((kinds or {}).get(k, "?") for k in keys).items()))
        return signal, len(keys), f"{saved} epochs" + (f"; {what}" if what else "")

    (s1, n1, d1), (s2, n2, d2) = tally(arm, other), tally(other, arm)
    trials = "trial" if n1 == 1 else "trials"
    return f"{s1} earlier on {n1} {trials} ({d1}), {s2} earlier on {n2} ({d2})"


def base_targets(summary: Mapping[str, Mapping[str, Any]], outcomes: Sequence[TrialOutcome],
                 strategies: Sequence[Strategy], n_resamples: int,
                 kinds: Mapping[tuple[int, int], str] | None = None) -> list[str]:
    """One markdown bullet per base X with ``X + TEViD``: each target, measured, met or not;
    ``kinds`` (what each ``(seed, number)`` trial did) details :func:`earlier_stops`."""
    lines = []
    by_name = {s.name: s for s in strategies}
    for s in strategies:
        if s.signal != "tevid" or s.name not in summary or s.base not in summary:
            continue
        x, tv = s.base, summary[s.name]
        saved = tv.get("epochs_saved_vs_reference")
        delta = tv.get("best_val_delta_vs_reference")
        parts = []
        if saved is not None:
            v = _est(saved)
            lo, hi = _bounds(saved)
            parts.append(f"epochs saved {100 * v:+.1f} % [{100 * lo:+.1f}, {100 * hi:+.1f}] "
                         f"({'met' if v >= SAVING_TARGET else 'not met'}: ≥ 20 %)")
        if delta is not None:
            lo, hi = _bounds(delta)
            ok = _not_lower(_est(delta), hi)
            parts.append(f"Δ best val {100 * _est(delta):+.1f} pp [{100 * lo:+.1f}, "
                         f"{100 * hi:+.1f}] ({'met' if ok else 'not met'}: not lower beyond "
                         f"noise{_ONE_SEED if math.isnan(hi) else ''})")
        fs = tv["false_stops"].get(SIGNAL_NAMES["tevid"], 0)
        parts.append(f"false stops by TEViD {fs} ({'met' if fs == 0 else 'not met'})")
        for signal in ("cheap", "pfn"):
            other = f"{x} + {SIGNAL_NAMES[signal]}"
            if other not in summary or other not in by_name:
                continue
            pair = _paired_delta(outcomes, s.name, other, n_resamples)
            if pair is None:
                continue
            d_ep, d_val = pair
            fewer = d_ep.estimate < 0
            equal = _not_lower(d_val.estimate, d_val.high)
            verdict = "met" if fewer and equal else (
                "not met: lower accuracy" if fewer else
                "not met: the same epochs" if d_ep.estimate == 0 else
                f"not met: {SIGNAL_NAMES[signal]} trains fewer epochs")
            parts.append(f"vs {SIGNAL_NAMES[signal]}: Δ epochs/trial {d_ep.estimate:+.2f}, "
                         f"Δ best val {100 * d_val.estimate:+.1f} pp ({verdict}; "
                         f"{earlier_stops(outcomes, s.name, other, kinds)})")
        lines.append(f"* **{s.name} vs {x}:** " + "; ".join(parts) + ".")
    front = pareto_front(summary)
    tevid_arms = [n for n, s in by_name.items() if s.signal == "tevid" and n in summary]
    if tevid_arms:
        best = max(tevid_arms, key=lambda n: (_est(summary[n]["best_val_acc"]),
                                              -_est(summary[n]["epochs_per_trial"])))  # type: ignore[operator]
        lines.append(f"* **Best TEViD arm ({best}) on the Pareto front of all arms:** "
                     f"{'met' if best in front else 'not met'} (front: {', '.join(front)}).")
    return lines


def plot_pareto(summary: Mapping[str, Mapping[str, Any]], strategies: Sequence[Strategy],
                path: Path, title: str = "") -> Path:
    """Mean epochs per trial vs mean best validation accuracy per arm, 95 % intervals as error
    bars, one colour per signal, one marker per base (both in the legend; no per-point text,
    which overlaps where arms tie); the Pareto front joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {None: "C0", "tevid": "C3", "cheap": "C2", "pfn": "C1", "curve": "C4"}
    bases = sorted({s.base for s in strategies})
    markers = dict(zip(bases, "osD^v<>ph*"))
    fig, ax = plt.subplots(figsize=(9, 5))
    for s in strategies:
        if s.name not in summary:
            continue
        e, a = summary[s.name]["epochs_per_trial"], summary[s.name]["best_val_acc"]
        ex, ay = _est(e), 100 * _est(a)   # type: ignore[operator]
        elo, ehi = _bounds(e)
        alo, ahi = _bounds(a)
        xerr = [[_gap(ex, elo)], [_gap(ehi, ex)]]
        yerr = [[_gap(ay, 100 * alo)], [_gap(100 * ahi, ay)]]
        ax.errorbar(ex, ay, xerr=xerr, yerr=yerr, fmt=markers.get(s.base, "o"),
                    color=colours.get(s.signal, "C5"), ms=6, capsize=2, alpha=0.85,
                    mfc="none" if s.framework == "ray" else None)
    front = sorted(pareto_front({k: v for k, v in summary.items()}),
                   key=lambda n: _est(summary[n]["epochs_per_trial"]))   # type: ignore[arg-type,return-value]
    ax.plot([_est(summary[n]["epochs_per_trial"]) for n in front],
            [100 * _est(summary[n]["best_val_acc"]) for n in front],   # type: ignore[operator]
            ":", color="grey", lw=1, label="Pareto front")
    # Arms at the same accuracy overlap, so points carry no text labels: colour names the
    # signal, the marker names the base (hollow: Ray Tune), as the two legend blocks say.
    for sig, c in colours.items():
        ax.plot([], [], "s", color=c, label="base alone" if sig is None else SIGNAL_NAMES[sig])
    for base in bases:
        ax.plot([], [], markers[base], color="black", mfc="none", label=base)
    ax.set(xlabel="epochs per trial (mean, 95 % CI)",
           ylabel="best validation accuracy (%, mean over seeds, 95 % CI)",
           title=title or "Arms: compute vs best trial (hollow: Ray Tune)")
    return _save_figure(fig, ax, path, outside=True)
