"""Overfitting: diverging loss trends over a look-ahead window (Appendix A.2).

"Overfitting at ``e0``" holds when, over ``[e0, e0 + W - 1]`` (``W = 10`` epochs),

1. validation loss has a significant increasing trend and per-epoch training loss a
   significant decreasing one — each series AR(1) pre-whitened and Mann–Kendall tested on the
   residuals (:func:`pymannkendall.pre_whitening_modification_test`), the p-values
   Benjamini–Yekutieli adjusted across all candidate ``e0``
   (:func:`scipy.stats.false_discovery_control` with ``method="by"``) and compared with 0.05;
2. the generalisation gap ``D(e) = L_val(e) - L_tr(e)`` at the window's end exceeds its
   history: ``D(e0 + W - 1) - median_{e<e0} D(e) > 2 std_{e<e0} D(e)``.

The two trend tests of one candidate are combined as an intersection–union test (the candidate's
p-value is the larger of the two), so "both trends significant" is one p-value per candidate and
BY runs over candidates, as the paper states.

Timing: the window's end is the first moment the rule can know, so ``fire_time`` is the last step
of epoch ``e0 + W - 1`` of the earliest candidate flagged by a *causal* application (BY over the
candidates whose windows had ended by then); ``onset`` is the first step of that ``e0``. Whether the
run is Overfitting at all is decided with full hindsight (BY over every candidate), as in the paper.

Train-only variant (Table 8): no validation curve. A candidate is flagged when the training loss
keeps a significant decreasing trend over the window although the training set was already fitted
at ``e0`` (training accuracy >= ``train_only_saturation``): the optimiser is memorising.

Example:
    >>> import numpy as np, pandas as pd
    >>> from types import SimpleNamespace
    >>> e = np.arange(30)
    >>> tr = 2.0 * np.exp(-e / 8) + 0.05
    >>> val = tr + 0.1 + 0.04 * np.clip(e - 10, 0, None) ** 1.5
    >>> ep = pd.DataFrame({"epoch": e, "train_loss": tr, "val_loss": val})
    >>> run = SimpleNamespace(meta={"steps_per_epoch": 10}, steps=None, epochs=ep, arrays={})
    >>> r = overfitting_rule(run)
    >>> r.fired, r.fire_epoch - r.onset_epoch + 1
    (True, 10)
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pymannkendall as mk
from scipy.stats import false_discovery_control, norm

from data_factory.labelers.base import RuleResult, RunLike, Timeline
from data_factory.labelers.config import LabelConfig
from data_factory.labels import OVERFITTING

__all__ = ["overfitting_rule", "trend_pvalue"]


def _gap_spread(hist: np.ndarray, kind: str) -> float:
    """"Typical historical fluctuation" of the gap.

    ``"std"`` is App. A to the letter: the standard deviation of the gap's past values. When the
    history contains the learning transient (the gap opening from 0 while the model fits, within
    an epoch or two on small data), that std measures the transient, not fluctuation, and hides
    any later divergence. ``"robust_diff"`` measures fluctuation as the robust spread
    (1.4826·MAD) of the epoch-to-epoch changes of the gap, which a one-off transient does not
    inflate.

    Example:
        >>> h = np.array([0.0, 0.8, 0.82, 0.81, 0.83])
        >>> round(_gap_spread(h, "std"), 2), round(_gap_spread(h, "robust_diff"), 3)
        (0.36, 0.022)
    """
    if kind == "std":
        return float(np.std(hist, ddof=1))
    if kind == "robust_diff":
        d = np.diff(hist)
        return float(1.4826 * np.median(np.abs(d - np.median(d)))) if len(d) else 0.0
    raise ValueError(f"overfit_gap_spread must be 'std' or 'robust_diff', got {kind!r}")


def trend_pvalue(x: np.ndarray, direction: int, alternative: str = "two-sided",
                 prewhitening: str = "pw") -> float:
    """p-value of a monotone trend in ``direction`` (+1 up, -1 down) after AR(1) pre-whitening.

    ``prewhitening="pw"``: pymannkendall's Yue–Wang pre-whitening estimates the lag-1
    autocorrelation ``r``, tests the residuals ``x[t] - r x[t-1]`` with Mann–Kendall and returns a
    two-sided p. ``"tfpw"``: the same after removing Sen's slope first (trend-free
    pre-whitening), so a steady trend is not whitened away. With
    ``alternative="two-sided"`` that p counts only when ``z`` has the wanted sign (the literal
    "significant increasing trend"); ``"one-sided"`` uses the directional p. Windows that are
    constant or non-finite cannot show a trend and get ``p = 1``.

    Example:
        >>> round(trend_pvalue(np.arange(10.0), +1), 5) < 0.001
        True
        >>> trend_pvalue(np.arange(10.0), -1)
        1.0
        >>> rise = np.array([2.37, 2.62, 2.64, 2.75, 2.78, 2.86, 2.88, 2.95, 2.96, 2.98])
        >>> trend_pvalue(rise, +1) > 0.01, trend_pvalue(rise, +1, prewhitening="tfpw") < 0.001
        (True, True)
    """
    tests = {"pw": mk.pre_whitening_modification_test,
             "tfpw": mk.trend_free_pre_whitening_modification_test}
    if prewhitening not in tests:
        raise ValueError(f"prewhitening must be 'pw' or 'tfpw', got {prewhitening!r}")
    x = np.asarray(x, dtype=float)
    if len(x) < 4 or not np.all(np.isfinite(x)) or np.ptp(x) == 0:
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = tests[prewhitening](x)
    z = float(res.z)
    if not np.isfinite(z):
        return 1.0
    if alternative == "one-sided":
        return float(norm.sf(direction * z))
    return float(res.p) if np.sign(z) == direction else 1.0


def _candidates(ep: Any, cfg: LabelConfig, train_only: bool) -> list[dict[str, Any]]:
    """Per-candidate trend p-values and the practical-significance check (no multiplicity yet)."""
    W, h = cfg.overfit_window, max(cfg.overfit_min_history, 2)
    tr = ep["train_loss"].to_numpy(float)
    epochs = ep["epoch"].to_numpy(int)
    out: list[dict[str, Any]] = []
    if train_only:
        acc = ep["train_acc"].to_numpy(float)
        # No gap history is needed: the saturation check replaces the gap test.
        start = 0
    else:
        val = ep["val_loss"].to_numpy(float)
        gap = val - tr
        start = h
    for i in range(start, len(ep) - W + 1):
        j = i + W - 1
        c: dict[str, Any] = {"e0": int(epochs[i]), "end": int(epochs[j])}
        c["p_train"] = trend_pvalue(tr[i : j + 1], -1, cfg.mk_alternative, cfg.mk_prewhitening)
        if train_only:
            c["train_acc_e0"] = float(acc[i])
            c["p"] = c["p_train"]
            c["practical"] = bool(np.isfinite(acc[i]) and acc[i] >= cfg.train_only_saturation)
        else:
            c["p_val"] = trend_pvalue(val[i : j + 1], +1, cfg.mk_alternative, cfg.mk_prewhitening)
            # Intersection–union: "both trends significant" <=> the larger p is significant.
            c["p"] = max(c["p_val"], c["p_train"])
            hist = gap[:i][np.isfinite(gap[:i])]
            if len(hist) >= 2 and np.isfinite(gap[j]):
                med, sd = float(np.median(hist)), _gap_spread(hist, cfg.overfit_gap_spread)
                c["gap_end"], c["gap_median"], c["gap_std"] = float(gap[j]), med, sd
                c["practical"] = bool(gap[j] - med > cfg.overfit_gap_k * sd)
            else:
                c["practical"] = False
        out.append(c)
    return out


def _flagged(cands: list[dict[str, Any]], alpha: float) -> tuple[list[int], np.ndarray]:
    """Indices of candidates significant after BY over exactly these candidates."""
    if not cands:
        return [], np.empty(0)
    adj = false_discovery_control(np.array([c["p"] for c in cands]), method="by")
    return [k for k, c in enumerate(cands) if adj[k] < alpha and c["practical"]], adj


def overfitting_rule(run: RunLike, cfg: LabelConfig | None = None) -> RuleResult:
    """Apply the Appendix-A overfitting predicate to a run.

    Args:
        run: a :class:`~data_factory.labelers.base.RunLike` with per-epoch ``train_loss`` and
            ``val_loss`` (train-only variant: ``train_loss`` and ``train_acc``).
        cfg: thresholds; ``cfg.train_only`` selects the Table 8 variant.

    Returns:
        A :class:`RuleResult` with onset/fire in steps and epochs; ``evidence["candidates"]``
        lists every candidate's p-values, gap test and final BY-adjusted p.

    Example:
        >>> import pandas as pd
        >>> from types import SimpleNamespace
        >>> ep = pd.DataFrame({"epoch": range(5), "train_loss": [1.0] * 5, "val_loss": [1.0] * 5})
        >>> overfitting_rule(SimpleNamespace(meta={}, steps=None, epochs=ep, arrays={})).fired
        False
    """
    cfg = cfg or LabelConfig()
    train_only = cfg.train_only
    need = {"epoch", "train_loss"} | ({"train_acc"} if train_only else {"val_loss"})
    ep = getattr(run, "epochs", None)
    if ep is None or not need <= set(ep.columns):
        return RuleResult(OVERFITTING, False, applicable=False,
                          evidence={"rule": OVERFITTING, "reason": f"needs columns {sorted(need)}"})
    ep = ep.sort_values("epoch").reset_index(drop=True)
    cands = _candidates(ep, cfg, train_only)
    evidence: dict[str, Any] = {
        "rule": OVERFITTING,
        "mode": "train_only" if train_only else "validation",
        "window_epochs": cfg.overfit_window,
        "alpha": cfg.overfit_alpha,
        "n_candidates": len(cands),
    }
    if not cands:
        evidence["reason"] = "run shorter than history + look-ahead window"
        return RuleResult(OVERFITTING, False, applicable=False, evidence=evidence)

    # Hindsight (the label): BY across every candidate e0, as in the paper.
    hind, adj_all = _flagged(cands, cfg.overfit_alpha)
    for c, a in zip(cands, adj_all):
        c["p_by_hindsight"] = float(a)
    evidence["hindsight_flagged_e0"] = [cands[k]["e0"] for k in hind]

    # Causal scan: at each epoch end, BY across the candidates whose windows have closed.
    fire_k: int | None = None
    for k, c in enumerate(cands):
        # candidates are in window-end order, so cands[: k + 1] are exactly the closed ones
        flagged, _ = _flagged(cands[: k + 1], cfg.overfit_alpha)
        if flagged:
            fire_k, onset_k = k, min(flagged)
            evidence["n_candidates_at_fire"] = k + 1
            break
    evidence["candidates"] = cands
    if fire_k is None:
        return RuleResult(OVERFITTING, False, evidence=evidence)

    onset_epoch, fire_epoch = cands[onset_k]["e0"], cands[fire_k]["end"]
    evidence.update(causal_onset_epoch=onset_epoch, causal_fire_epoch=fire_epoch,
                    p_onset=cands[onset_k]["p"])
    if not hind:
        # A causal look flagged a window that full-data BY (more candidates) no longer supports:
        # not Overfitting, but the near miss stays in the evidence.
        return RuleResult(OVERFITTING, False, evidence=evidence)
    tl = Timeline.of(run)
    return RuleResult(
        OVERFITTING,
        fired=True,
        onset=tl.epoch_start(onset_epoch),
        fire_time=tl.epoch_end(fire_epoch),
        onset_epoch=onset_epoch,
        fire_epoch=fire_epoch,
        evidence=evidence,
    )
