"""The evaluation's figures: event-time precision–recall curves and risk–coverage curves of
every method on the test steps, one fixed colour per method.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve

from core_models.metrics import augrc, risk_coverage_curve, selective_predictions
from data_factory.labels import HEALTHY
from experiments.evaluate.context import _Context, _order
from experiments.evaluate.records import _HEALTHY_COL


def _colors(ctx: _Context) -> dict[str, str]:
    """A fixed colour per method, the same in both figures; TEViD variants stand out in dark
    colours, baselines take the lighter tab10 hues (grey is kept for the chance line)."""
    light = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink",
             "tab:olive", "tab:cyan"]
    dark = ["black", "tab:red", "darkgreen", "navy"]
    out, i, j = {}, 0, 0
    for m in _order(ctx):
        if m.is_tevid:
            out[m.name], j = dark[j % len(dark)], j + 1
        else:
            out[m.name], i = light[i % len(light)], i + 1
    return out


def _figure() -> tuple[Any, Any]:
    """A figure and its axes, wide enough for a legend outside the axes."""
    # The object-oriented Figure API needs no pyplot backend or global state (headless-safe).
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10.0, 5.5))
    return fig, fig.subplots()


def _save(fig: Any, ax: Any, path: Path) -> Path:
    """Legend outside the axes (no overlap with the curves), then the PNG at ``path``."""
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def _plot_pr_curves(ctx: _Context, path: Path) -> Path:
    fig, ax = _figure()
    prevalence = None
    colors = _colors(ctx)
    for m in _order(ctx):
        y = np.concatenate([r.event_labels != HEALTHY for r in m.test])
        s = np.concatenate([1.0 - r.probs[:, _HEALTHY_COL] for r in m.test])
        if not y.any() or y.all():
            continue
        prec, rec, _ = precision_recall_curve(y, s)
        ap = average_precision_score(y, s)
        ax.step(rec, prec, where="post", lw=2.2 if m.is_tevid else 1.2, color=colors[m.name],
                label=f"{m.display} (AP {ap:.2f})")
        prevalence = float(y.mean())
    if prevalence is not None:
        ax.axhline(prevalence, color="silver", ls=":", lw=1, label=f"chance ({prevalence:.2f})")
    ax.set(xlabel="recall (anomalous steps)", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
           title="Event-time precision–recall, held-out test split")
    return _save(fig, ax, path)


def _plot_risk_coverage(ctx: _Context, path: Path) -> Path:
    fig, ax = _figure()
    colors = _colors(ctx)
    for m in _order(ctx):
        if not m.has_classes:
            continue
        # TEViD abstains by vacuity; class-probability baselines can only rank by max probability.
        kind = "vacuity" if m.is_tevid else "max_prob"
        ok, conf = selective_predictions(m.test, kind)
        rc = risk_coverage_curve(ok, conf)
        ax.plot(rc.coverage[1:], rc.selective_risk[1:], lw=2.2 if m.is_tevid else 1.2,
                color=colors[m.name],
                label=f"{m.display} ({'1 − vacuity' if m.is_tevid else 'max p'}; "
                      f"AUGRC {augrc(ok, conf):.3f})")
    ax.axvline(0.8, color="grey", ls=":", lw=1)
    ax.set(xlabel="coverage (fraction of test steps answered)",
           ylabel="selective risk (error among answered)", xlim=(0, 1), ylim=(0, 1),
           title="Risk–coverage, all test steps (novel steps are errors unless abstained)")
    return _save(fig, ax, path)
