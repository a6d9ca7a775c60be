"""Catastrophic forgetting after a task switch (Appendix A.2).

With task-switch epoch ``e_s`` (the first epoch trained on the new task), primary-task accuracy
``A_prim(e)``, ``A_peak = max_{e < e_s} A_prim(e)`` and ``A_post`` the mean of ``A_prim`` over the
``W = 10`` epochs ``e_s .. e_s + W - 1``, forgetting holds when

* ``(A_peak - A_post) / A_peak >= 0.30``, and
* McNemar's exact test on per-sample primary-task correctness before the switch and after
  the window (:func:`statsmodels.stats.contingency_tables.mcnemar`) gives ``p < 0.01``, with
  more samples lost than gained.

The full window is required: the rule can only know ``A_post`` once epoch ``e_s + W - 1`` has
ended, so that is when it fires (or later, if the "after" snapshot was taken later:
``arrays["forget_eval_step"]``). When the run's *planned* schedule has fewer than ``W`` epochs
after the switch (``meta["plan"]["epochs"]`` or ``meta["total_steps"]``), the window is all of
them (at least ``forget_min_window``). Onset is the first step of ``e_s``.

Example:
    >>> import numpy as np, pandas as pd
    >>> from types import SimpleNamespace
    >>> acc = [0.5, 0.7, 0.8, 0.8] + [0.4] * 10
    >>> ep = pd.DataFrame({"epoch": range(14), "primary_acc": acc})
    >>> before = np.r_[np.ones(80, bool), np.zeros(20, bool)]
    >>> after = np.r_[np.ones(40, bool), np.zeros(60, bool)]
    >>> run = SimpleNamespace(meta={"task_switch_epoch": 4, "steps_per_epoch": 10}, steps=None,
    ...     epochs=ep, arrays={"forget_correct_before": before, "forget_correct_after": after})
    >>> r = forgetting_rule(run)
    >>> r.fired, r.onset_epoch, r.fire_epoch, r.fire_time
    (True, 4, 13, 139)
"""

from __future__ import annotations

from typing import Any

import numpy as np
from statsmodels.stats.contingency_tables import mcnemar

from data_factory.labelers.base import RuleResult, RunLike, Timeline, eval_step, planned_epochs
from data_factory.labelers.config import LabelConfig
from data_factory.labels import FORGETTING

__all__ = ["forgetting_rule", "mcnemar_drop"]


def mcnemar_drop(before: np.ndarray, after: np.ndarray) -> dict[str, Any]:
    """Exact McNemar test of paired per-sample correctness ``before`` vs ``after``.

    Returns the 2x2 counts, the exact two-sided p-value and whether more samples went from
    correct to wrong (``lost``) than the other way (``gained``).

    Example:
        >>> r = mcnemar_drop(np.ones(50, bool), np.r_[np.ones(20, bool), np.zeros(30, bool)])
        >>> r["lost"], r["gained"], r["p"] < 1e-6
        (30, 0, True)
    """
    b = np.asarray(before, bool).reshape(-1)
    a = np.asarray(after, bool).reshape(-1)
    if b.shape != a.shape:
        raise ValueError(f"paired arrays differ in length: {b.shape} vs {a.shape}")
    both, lost = int(np.sum(b & a)), int(np.sum(b & ~a))
    gained, neither = int(np.sum(~b & a)), int(np.sum(~b & ~a))
    table = [[both, lost], [gained, neither]]
    p = 1.0 if lost + gained == 0 else float(mcnemar(table, exact=True).pvalue)
    return {"table": table, "lost": lost, "gained": gained, "p": p}


def forgetting_rule(run: RunLike, cfg: LabelConfig | None = None) -> RuleResult:
    """Apply the Appendix-A catastrophic-forgetting predicate to a run.

    Args:
        run: a :class:`~data_factory.labelers.base.RunLike` with ``meta["task_switch_epoch"]``,
            per-epoch ``primary_acc`` and the paired arrays ``forget_correct_before`` (at
            ``e_s - 1``) and ``forget_correct_after`` (after the window).
        cfg: ``forget_threshold``, ``forget_window`` (Table 7 variants) and ``forget_alpha``.

    Returns:
        A :class:`RuleResult`; not applicable for single-task runs or missing signals.

    Example:
        >>> import pandas as pd
        >>> from types import SimpleNamespace
        >>> run = SimpleNamespace(meta={"task_switch_epoch": None}, epochs=pd.DataFrame(),
        ...                       arrays={})
        >>> forgetting_rule(run).applicable
        False
    """
    cfg = cfg or LabelConfig()
    ev: dict[str, Any] = {"rule": FORGETTING, "threshold": cfg.forget_threshold,
                          "window_epochs": cfg.forget_window, "alpha": cfg.forget_alpha}
    es = dict(run.meta).get("task_switch_epoch")
    ep = getattr(run, "epochs", None)
    if es is None:
        return RuleResult(FORGETTING, False, applicable=False,
                          evidence={**ev, "reason": "no task switch"})
    if ep is None or not {"epoch", "primary_acc"} <= set(ep.columns):
        return RuleResult(FORGETTING, False, applicable=False,
                          evidence={**ev, "reason": "needs per-epoch primary_acc"})
    es = int(es)
    ep = ep.sort_values("epoch")
    e = ep["epoch"].to_numpy(int)
    acc = ep["primary_acc"].to_numpy(float)
    pre = acc[(e < es) & np.isfinite(acc)]
    # A schedule with fewer than W epochs after the switch is judged on all of them; the plan is
    # fixed before training, so this stays causal (a truncated run keeps its meta).
    planned = planned_epochs(run.meta)
    window = min(cfg.forget_window, planned - es) if planned else cfg.forget_window
    post_mask = (e >= es) & (e <= es + window - 1)
    ev.update(task_switch_epoch=es, window_used=window)
    if window < cfg.forget_min_window or not len(pre) or post_mask.sum() < window:
        return RuleResult(FORGETTING, False, applicable=False,
                          evidence={**ev, "post_epochs": int(post_mask.sum()),
                                    "reason": "no pre-switch epochs or incomplete post window"})
    peak = float(pre.max())
    post = float(np.nanmean(acc[post_mask])) if np.isfinite(acc[post_mask]).any() else 0.0
    drop = (peak - post) / peak if peak > 0 else 0.0
    ev.update(a_peak=peak, a_post=post, relative_drop=drop)

    arrays = getattr(run, "arrays", None) or {}
    if "forget_correct_before" not in arrays or "forget_correct_after" not in arrays:
        # Without paired predictions the significance half of the rule cannot be checked.
        return RuleResult(FORGETTING, False, applicable=False,
                          evidence={**ev, "reason": "needs forget_correct_before/after"})
    mc = mcnemar_drop(arrays["forget_correct_before"], arrays["forget_correct_after"])
    ev["mcnemar"] = mc
    significant = mc["p"] < cfg.forget_alpha and mc["lost"] > mc["gained"]
    fired = drop >= cfg.forget_threshold and significant
    if not fired:
        return RuleResult(FORGETTING, False, evidence=ev)
    tl = Timeline.of(run)
    end_epoch = es + window - 1
    window_end = tl.epoch_end(end_epoch)
    snap = eval_step(run, "forget_eval_step")
    # The rule needs both the full window and the "after" snapshot.
    known = [s for s in (window_end, snap) if s is not None]
    fire = max(known) if known else None
    return RuleResult(FORGETTING, True, onset=tl.epoch_start(es), fire_time=fire, onset_epoch=es,
                      fire_epoch=tl.epoch_of(fire) if fire is not None else end_epoch, evidence=ev)
