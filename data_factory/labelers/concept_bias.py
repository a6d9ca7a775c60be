"""Concept bias: correctness on a controlled probe set depends on a spurious shortcut (A.2).

The probe set carries, per sample, whether the model classified it correctly
(``bias_correct``), whether the shortcut cue is present (``bias_shortcut``, 0/1) and its true
class (``bias_class``). Concept bias holds when a logistic regression of correctness on the
shortcut indicator plus class dummies (:class:`statsmodels.api.Logit`) has a positive shortcut
coefficient with ``p < 0.01``: the model is right *because* the cue is there.

Sign convention: ``bias_shortcut = 1`` must mark samples whose cue points to their *true* class
(the cue a shortcut-reliant model exploits), so reliance shows as a positive coefficient. For probe
sets that mark *conflicting* cues use ``LabelConfig(bias_alternative="two-sided")``.

Perfect separation (e.g. every cued sample right) makes the MLE diverge and its Wald p-value
meaningless; then the same hypothesis — correctness independent of the cue given the class — is
tested with the Cochran–Mantel–Haenszel test over class strata
(:class:`statsmodels.stats.contingency_tables.StratifiedTable`), which has no such problem.
Classes whose correctness does not vary carry no information about the cue and are dropped first.

Timing: the probe is evaluated once (``arrays["bias_eval_step"]``, else the run's last step), so
that is when the rule fires; onset is the start of the poisoning (``meta["intervention"]
["start_step"]``) or step 0, the earliest time the shortcut could have been learned.

Example:
    >>> import numpy as np, pandas as pd
    >>> from types import SimpleNamespace
    >>> rng = np.random.default_rng(0)
    >>> cls, cue = rng.integers(0, 5, 600), rng.integers(0, 2, 600)
    >>> correct = rng.random(600) < np.where(cue == 1, 0.9, 0.4)  # right mostly when cued
    >>> arrays = {"bias_correct": correct, "bias_shortcut": cue, "bias_class": cls}
    >>> run = SimpleNamespace(meta={}, steps=pd.DataFrame({"step": [0, 99], "epoch": [0, 9]}),
    ...                       epochs=None, arrays=arrays)
    >>> r = concept_bias_rule(run)
    >>> r.fired, r.fire_time, r.evidence["method"]
    (True, 99, 'logit')
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
import statsmodels.api as sm
from statsmodels.stats.contingency_tables import StratifiedTable

from data_factory.labelers.base import RuleResult, RunLike, Timeline, eval_step
from data_factory.labelers.config import LabelConfig
from data_factory.labels import CONCEPT_BIAS

__all__ = ["concept_bias_rule", "shortcut_reliance"]

# |log-odds| above this is a diverging MLE (odds ratio > 3e6), i.e. (quasi-)separation.
_SEPARATION_COEF = 15.0


def _cmh(y: np.ndarray, s: np.ndarray, c: np.ndarray) -> dict[str, Any]:
    """Cochran–Mantel–Haenszel test of correctness vs cue, stratified by class."""
    tables, excess = [], 0.0
    for k in np.unique(c):
        m = c == k
        yk, sk = y[m], s[m]
        if len(np.unique(sk)) < 2:
            continue  # a class seen with only one cue level says nothing about the cue
        t = np.array([[np.sum(sk & yk), np.sum(sk & ~yk)], [np.sum(~sk & yk), np.sum(~sk & ~yk)]],
                     dtype=float)
        tables.append(t)
        # observed minus expected "cued and correct": the direction of the association
        excess += t[0, 0] - t[0].sum() * t[:, 0].sum() / t.sum()
    if not tables:
        return {"method": "cmh", "testable": False}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = StratifiedTable(tables).test_null_odds(correction=True)
    p = float(res.pvalue)
    return {"method": "cmh", "testable": bool(np.isfinite(p)), "p": p,
            "statistic": float(res.statistic), "direction": float(np.sign(excess)),
            "excess_cued_correct": float(excess), "n_strata": len(tables)}


def shortcut_reliance(
    correct: np.ndarray, shortcut: np.ndarray, cls: np.ndarray | None = None
) -> dict[str, Any]:
    """Test whether correctness depends on the shortcut cue given the class.

    Returns a dict with ``method`` (``"logit"`` or the ``"cmh"`` fallback), ``testable``, the
    two-sided ``p`` of the cue effect, its ``direction`` (+1: cued samples are more often right)
    and, for the logit, ``coef``/``se``.

    Example:
        >>> rng = np.random.default_rng(1)
        >>> cue = rng.integers(0, 2, 400)
        >>> r = shortcut_reliance(rng.random(400) < 0.6, cue, rng.integers(0, 4, 400))
        >>> r["method"], r["p"] > 0.01
        ('logit', True)
    """
    y = np.asarray(correct).astype(bool).reshape(-1)
    s = np.asarray(shortcut).astype(bool).reshape(-1)
    c = np.zeros(len(y), int) if cls is None else np.asarray(cls).reshape(-1)
    if not (len(y) == len(s) == len(c)):
        raise ValueError("bias_correct, bias_shortcut and bias_class must have the same length")
    # Classes with constant correctness have an infinite class effect and no cue information.
    keep = pd.Series(y).groupby(c).transform("nunique").to_numpy() > 1
    y, s, c = y[keep], s[keep], c[keep]
    base: dict[str, Any] = {"n": len(y), "n_dropped_constant_class": int((~keep).sum()),
                            "rate_cued": float(y[s].mean()) if s.any() else None,
                            "rate_uncued": float(y[~s].mean()) if (~s).any() else None}
    if len(y) < 3 or s.all() or not s.any():
        return {**base, "method": "logit", "testable": False}
    dummies = pd.get_dummies(pd.Series(c, dtype="category"), drop_first=True, dtype=float)
    X = np.column_stack([np.ones(len(y)), s.astype(float), dummies.to_numpy()])
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fit = sm.Logit(y.astype(float), X).fit(disp=0, maxiter=200)
        coef, se, p = float(fit.params[1]), float(fit.bse[1]), float(fit.pvalues[1])
        separated = (
            not fit.mle_retvals.get("converged", True)
            or not np.isfinite([coef, se, p]).all()
            or abs(coef) > _SEPARATION_COEF
            or any("separation" in str(w.message).lower() for w in caught)
        )
    except (np.linalg.LinAlgError, ValueError, sm.tools.sm_exceptions.PerfectSeparationError):
        separated = True
    if separated:
        return {**base, **_cmh(y, s, c), "logit_failed": True}
    return {**base, "method": "logit", "testable": True, "coef": coef, "se": se, "p": p,
            "direction": float(np.sign(coef))}


def concept_bias_rule(run: RunLike, cfg: LabelConfig | None = None) -> RuleResult:
    """Apply the Appendix-A concept-bias predicate to a run's controlled probe set.

    Args:
        run: a :class:`~data_factory.labelers.base.RunLike` with ``arrays["bias_correct"]``,
            ``arrays["bias_shortcut"]`` and (optionally) ``arrays["bias_class"]``.
        cfg: ``bias_alpha`` and ``bias_alternative``.

    Example:
        >>> from types import SimpleNamespace
        >>> concept_bias_rule(SimpleNamespace(meta={}, arrays={})).applicable
        False
    """
    cfg = cfg or LabelConfig()
    arrays = getattr(run, "arrays", None) or {}
    ev: dict[str, Any] = {"rule": CONCEPT_BIAS, "alpha": cfg.bias_alpha,
                          "alternative": cfg.bias_alternative}
    if "bias_correct" not in arrays or "bias_shortcut" not in arrays:
        return RuleResult(CONCEPT_BIAS, False, applicable=False,
                          evidence={**ev, "reason": "no concept-bias probe arrays"})
    test = shortcut_reliance(arrays["bias_correct"], arrays["bias_shortcut"],
                             arrays.get("bias_class"))
    ev.update(test)
    if not test.get("testable"):
        return RuleResult(CONCEPT_BIAS, False, evidence=ev)
    sided_ok = cfg.bias_alternative == "two-sided" or test["direction"] > 0
    if not (sided_ok and test["p"] < cfg.bias_alpha):
        return RuleResult(CONCEPT_BIAS, False, evidence=ev)
    tl = Timeline.of(run)
    fire = eval_step(run, "bias_eval_step")
    start = (dict(run.meta).get("intervention") or {}).get("start_step")
    use_start = start is not None and (fire is None or int(start) <= fire)
    onset = int(start) if use_start else 0
    ev["onset_source"] = "intervention.start_step" if use_start else "run start"
    return RuleResult(CONCEPT_BIAS, True, onset=onset, fire_time=fire,
                      onset_epoch=tl.epoch_of(onset), fire_epoch=tl.epoch_of(fire), evidence=ev)
