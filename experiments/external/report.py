"""The external suite's tables (``docs/results.md``) and figure (``docs/figures/external_*.png``).

For each half and method: event-time AUPRC with a run-level 95 % BCa interval
(:func:`core_models.metrics.bootstrap_ci`), recall of the anomalies that happened, median delay
after the fault (epochs, detections only), false alarms on healthy references and how many of them
fell in the first epoch, and premature alerts (before a mid-run fault began, not detections);
then per scenario and per model family.

Example:
    >>> s = run_outcome(alert=25, onset=20, spe=10, positive=True)
    >>> s.detected, s.delay
    (True, 0.5)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core_models.metrics import (
    ConfidenceInterval,
    bootstrap_ci,
    event_time_auprc,
    paired_bootstrap_ci,
)
from data_factory.store import Run
from experiments.external.methods import MethodScores
from experiments.external.truth import ExternalTruth
from experiments.report import save_figure

__all__ = ["RunOutcome", "external_tables", "plot_runs", "run_outcome", "summarise"]

_KIND_ORDER = ("healthy", "lr_jump", "lr_high", "overfit", "label_noise", "freeze", "stall")


@dataclass(frozen=True)
class RunOutcome:
    """What one method's first alert means for one run.

    Attributes:
        alerted: any alert.
        detected: an anomaly that happened, alerted at or after its onset.
        premature: alerted before a mid-run fault began (not a detection).
        false_alarm: an alert on a healthy reference.
        first_epoch: the alert fell in the run's first epoch.
        delay: epochs from the onset to the alert (detections only).
    """

    alerted: bool
    detected: bool
    premature: bool
    false_alarm: bool
    first_epoch: bool
    delay: float | None


def run_outcome(alert: int | None, onset: int | None, spe: int, positive: bool) -> RunOutcome:
    """Classify one alert step against the run's truth."""
    alerted = alert is not None
    detected = bool(positive and alerted and onset is not None and alert >= onset)
    return RunOutcome(alerted, detected, bool(positive and alerted and not detected),
                      bool(not positive and alerted), bool(alerted and alert < spe),
                      (alert - onset) / spe if detected else None)


def summarise(m: MethodScores, half: str, runs: Sequence[Run],
              truths: Mapping[str, ExternalTruth]) -> pd.DataFrame:
    """One row per counted run: facts, truth and the method's outcome."""
    rows = []
    for r in runs:
        t = truths[r.run_id]
        spe = int(r.meta["steps_per_epoch"])
        o = run_outcome(m.alert_steps[half].get(r.run_id), t.label.onset, spe, t.positive)
        rows.append({"run_id": r.run_id, "family": r.meta["family"], "kind": t.kind,
                     "truth": t.label.label, "positive": t.positive, "reference": t.reference,
                     **o.__dict__})
    return pd.DataFrame(rows)


def alert_counts(df: pd.DataFrame) -> dict[str, Any]:
    """A method's alert outcome over :func:`summarise`'s rows: detections among the positives,
    false alarms (and in epoch 0) among the healthy references, premature alerts, median delay.

    Example:
        >>> df = pd.DataFrame({"positive": [True, True, False], "reference": [False, False, True],
        ...                    "detected": [True, False, False], "false_alarm": [False, False, True],
        ...                    "first_epoch": [False, False, False], "premature": [False, True, False],
        ...                    "delay": [0.5, None, None]})
        >>> alert_counts(df)["detections"], alert_counts(df)["false_alarms"], alert_counts(df)["median_delay"]
        (1, 1, 0.5)
    """
    pos, ref = df[df.positive], df[df.reference]
    delays = pos.delay.dropna()
    return {"detections": int(pos.detected.sum()), "positives": len(pos),
            "false_alarms": int(ref.false_alarm.sum()), "references": len(ref),
            "false_alarms_epoch0": int((ref.false_alarm & ref.first_epoch).sum()),
            "premature": int(pos.premature.sum()),
            "median_delay": float(np.median(delays)) if len(delays) else None}


def _ci(preds: Sequence[Any], n_resamples: int, seed: int) -> ConfidenceInterval | None:
    try:
        return bootstrap_ci(event_time_auprc, list(preds), n_resamples=n_resamples, seed=seed)
    except ValueError:
        return None


def _fmt_ci(ci: ConfidenceInterval | None) -> str:
    if ci is None or not math.isfinite(ci.estimate):
        return "N/A"
    if not (math.isfinite(ci.low) and math.isfinite(ci.high)):
        return f"{ci.estimate:.3f}"
    return f"{ci.estimate:.3f} [{ci.low:.3f}, {ci.high:.3f}]" + ("" if ci.method == "BCa" else "*")


def _frac(k: int, n: int) -> str:
    return f"{k}/{n}" if n else "–"


def _median(x: pd.Series) -> str:
    x = x.dropna()
    return f"{float(np.median(x)):.2f}" if len(x) else "–"


def _md(rows: list[dict[str, Any]]) -> str:
    return pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True) if rows else "_none_"


def external_tables(methods: Mapping[str, MethodScores], half: str, runs: Sequence[Run],
                    truths: Mapping[str, ExternalTruth], n_resamples: int = 1000,
                    seed: int = 0) -> tuple[dict[str, str], dict[str, Any]]:
    """Markdown tables of one half (``{"headline", "scenario", "family"}``) and a JSON summary."""
    head, scen, fam, summary = [], [], [], {}
    for name, m in methods.items():
        df = summarise(m, half, runs, truths)
        n = alert_counts(df)
        ci = _ci(m.preds[half], n_resamples, seed)
        head.append({"method": m.display, "kind": m.kind, "event-time AUPRC [95 % BCa]": _fmt_ci(ci),
                     "recall": _frac(n["detections"], n["positives"]),
                     "median delay (epochs)": _median(df[df.positive].delay),
                     "false alarms (healthy)": _frac(n["false_alarms"], n["references"]),
                     "of which in epoch 0": str(n["false_alarms_epoch0"]),
                     "premature": str(n["premature"])})
        row = {"method": m.display}
        for k in _KIND_ORDER:
            sub = df[df.kind == k]
            if k == "healthy":
                r = sub[sub.reference]
                row["healthy: FA (epoch 0)"] = (f"{_frac(int(r.false_alarm.sum()), len(r))} "
                                                f"({int((r.false_alarm & r.first_epoch).sum())})")
            else:
                p = sub[sub.positive]
                row[f"{k}: recall (delay)"] = (f"{_frac(int(p.detected.sum()), len(p))} "
                                               f"({_median(p.delay)})")
        scen.append(row)
        frow = {"method": m.display}
        for f in sorted(df.family.unique()):
            sub = df[df.family == f]
            r, p = sub[sub.reference], sub[sub.positive]
            frow[f] = (f"FA {_frac(int(r.false_alarm.sum()), len(r))} · "
                       f"R {_frac(int(p.detected.sum()), len(p))}")
        fam.append(frow)
        summary[name] = {"auprc": None if ci is None else ci.__dict__,
                         "recall": [n["detections"], n["positives"]],
                         "false_alarms": [n["false_alarms"], n["references"]],
                         "false_alarms_epoch0": n["false_alarms_epoch0"],
                         "median_delay": n["median_delay"],
                         "threshold": m.threshold, "notes": m.notes}
    paired = paired_to_best(methods, half, n_resamples, seed)
    if paired is not None:
        summary["tevid_minus_best"] = paired
    return {"headline": _md(head), "scenario": _md(scen), "family": _md(fam),
            "paired": "" if paired is None else _paired_sentence(paired)}, summary


def paired_to_best(methods: Mapping[str, MethodScores], half: str, n_resamples: int = 1000,
                   seed: int = 0) -> dict[str, Any] | None:
    """TEViD's event-time AUPRC minus that of the best other method on ``half`` (baselines and
    user rules; TEViD's own variants left out), with the paired run-level bootstrap interval
    (:func:`core_models.metrics.paired_bootstrap_ci`: both scored on the same resampled runs).
    ``None`` without TEViD or another method."""
    tevid = methods.get("tevid")
    others = {n: m for n, m in methods.items() if m.kind != "TEViD" and m.preds.get(half)}
    if tevid is None or not tevid.preds.get(half) or not others:
        return None
    point = {n: event_time_auprc(list(m.preds[half])) for n, m in others.items()}
    best = max(point, key=lambda n: (point[n], n))
    ci = paired_bootstrap_ci(event_time_auprc, list(tevid.preds[half]),
                             list(others[best].preds[half]), n_resamples=n_resamples, seed=seed)
    return {"best": best, "display": others[best].display, "estimate": ci.estimate,
            "low": ci.low, "high": ci.high}


def _paired_sentence(p: Mapping[str, Any]) -> str:
    return (f"TEViD's own alert minus the best other method by event-time AUPRC "
            f"({p['display']}), paired run-level bootstrap: **{p['estimate']:+.3f} "
            f"[{p['low']:+.3f}, {p['high']:+.3f}]**.")


def plot_runs(runs: Sequence[Run], truths: Mapping[str, ExternalTruth],
              methods: Mapping[str, MethodScores], half_of: Mapping[str, str], path: Path,
              show: Sequence[str] = ("tevid", "cusum", "lightning_es", "sm_overfit")) -> Path:
    """A few runs over epochs: TEViD's live p(anomalous), validation accuracy, the fault onset and
    each shown method's first alert."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(runs), 1, figsize=(9, 2.3 * len(runs)), squeeze=False)
    colours = dict(zip(show, ("tab:red", "tab:blue", "tab:green", "tab:purple")))
    for ax, r in zip(axes[:, 0], runs):
        spe = float(r.meta["steps_per_epoch"])
        t = truths[r.run_id]
        steps = np.asarray(r.arrays["tevid_steps"])
        probs = np.asarray(r.arrays["tevid_probs"])
        ax.plot(steps / spe, 1 - probs[:, 0], color="tab:red", lw=1.5,
                label="TEViD p(not Healthy)")
        ep = r.epochs
        ax.plot(ep["epoch"] + 1, ep["val_acc"], color="k", ls="--", lw=1, label="val acc")
        if t.label.onset is not None:
            ax.axvline(t.label.onset / spe, color="grey", lw=4, alpha=0.3, label="fault onset")
        for name in show:
            if name in methods:
                a = methods[name].alert_steps[half_of[r.run_id]].get(r.run_id)
                if a is not None:
                    ax.axvline(a / spe, color=colours[name], ls=":", lw=1.5,
                               label=f"{methods[name].display.split(' (')[0]} alert")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{r.meta['family']} on {r.meta['data']}, {t.kind} → truth {t.label.label}",
                     fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.legend(fontsize=6, loc="center right")
    return save_figure(fig, path, dpi=110)
