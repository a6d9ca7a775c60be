"""The stop rules shared by every tevid-hpo integration (Optuna, Ray Tune, SMAC).

Each integration reads a trial's diagnosis from wherever its framework keeps it — Optuna user
attributes, a Ray Tune result dict, the in-process :class:`~tevid_hpo.monitor.TrialMonitor` of a
SMAC target function — and asks the same two questions, in this order:

1. :func:`alert_reason` — does the trial carry a **confirmed alert** whose label is in
   ``prune_on`` (and whose confidence reaches ``min_confidence``)? The earliest such alert wins.
2. :func:`cost_reason` — with a :class:`~tevid_hpo.cost.CostModel`, is stopping now expected to
   be **cheaper than continuing**, given the latest diagnosis, the budget used so far and the
   trial's standing in the search (:func:`~tevid_hpo.cost.standing_so_far`: the share of the
   other trials whose best value up to its step its best so far beats; what a false stop loses;
   ``None`` where the integration sees no rival)?

Then one guard, :func:`spares`: a trial whose standing reaches ``spare_leaders`` (default:
the top tenth, 0.9)
is not stopped by a diagnosis — only by the non-finite-loss rule. Stopping a trial that leads
loses the user's best configuration if the diagnosis is wrong, and out of distribution it
was: on the ``gru_text`` HPO task every seed's best trial was alerted as Overfitting at epoch 5
while it led its seed (docs/hpo_benchmark.md). A spared trial is stopped at its next report
once others have overtaken it, as its alert stays latched.

Both questions return ``None`` (no reason to stop) or a *reason*: a flat, JSON-able dict that every
integration records in the same format, e.g.::

    {"pruner": "TEViD", "rule": "alert", "label": "Instability", "reason": "diagnosis",
     "step": 30, "epoch": 0, "confidence": 0.8213, "vacuity": 0.2187}
    {"pruner": "TEViD", "rule": "cost", "label": "Instability", "reason": "cost", "step": 40,
     "epoch": 1, "confidence": 0.31, "vacuity": 0.4, "p_threshold": 0.12, "cost_stop": 0.58,
     "cost_continue": 2.2, "budget_used": 2, "budget": 9, "standing": 0.5}

(integrations add where in *their* schedule it happened, e.g. ``report_step``).
:func:`describe` turns a reason into the one-line text used in logs and tables.

Example:
    >>> alerts = {"Instability": {"label": "Instability", "step": 30, "epoch": 0,
    ...                           "confidence": 0.97, "vacuity": 0.1, "reason": "diagnosis"}}
    >>> reason = alert_reason(alerts, check_prune_on(("Instability", "Overfitting")))
    >>> reason["rule"], reason["label"], reason["step"]
    ('alert', 'Instability', 30)
    >>> alert_reason(alerts, ("Overfitting",)) is None
    True
    >>> describe(reason)
    'Instability at step 30 (epoch 0, diagnosis, confidence 0.97)'
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from data_factory.labels import HEALTHY, LABELS
from tevid_hpo.cost import DEFAULT_PRUNE_ON, CostModel

__all__ = ["DEFAULT_PRUNE_ON", "DEFAULT_SPARE_LEADERS", "TEVID", "StopRules", "alert_reason",
           "check_options", "check_prune_on", "check_spare_leaders", "cost_reason", "describe",
           "spares"]

#: Name under which TEViD's own decisions are recorded (``reason["pruner"]``).
TEVID = "TEViD"
#: A diagnosis does not stop a trial whose standing in the search reaches this share (the top
#: tenth). The top half spared trials that beat only other failed trials where most failed
#: (the digits demo); the top tenth spared every seed-best trial on gru_text (docs/optuna.md).
DEFAULT_SPARE_LEADERS = 0.9


def check_prune_on(prune_on: Collection[str]) -> tuple[str, ...]:
    """Validate ``prune_on`` (labels from ``LABELS``, not Healthy, at least one) as a tuple.

    Example:
        >>> check_prune_on(["Instability"])
        ('Instability',)
        >>> check_prune_on(["Healthy"])
        Traceback (most recent call last):
        ...
        ValueError: prune_on must name labels from ('Overfitting', 'Instability', 'Forgetting', \
'ConceptBias', 'Unknown') (not Healthy), got ['Healthy']
    """
    if isinstance(prune_on, str):
        # A bare string is a collection of characters: almost certainly a missing tuple.
        prune_on = (prune_on,)
    labels = tuple(prune_on)
    bad = [c for c in labels if c not in LABELS or c == HEALTHY]
    if not labels or bad:
        raise ValueError(f"prune_on must name labels from {LABELS[1:]} (not Healthy), "
                         f"got {list(labels)}")
    return labels


def check_options(cost: CostModel | None, min_confidence: float) -> float:
    """Validate the ``cost`` and ``min_confidence`` arguments; return ``min_confidence``.

    Example:
        >>> check_options(CostModel(), 0.5)
        0.5
        >>> check_options(None, 1.5)
        Traceback (most recent call last):
        ...
        ValueError: min_confidence must lie in [0, 1], got 1.5
    """
    if cost is not None and not isinstance(cost, CostModel):
        raise TypeError(f"cost must be a CostModel or None, got {type(cost)}")
    if not 0.0 <= min_confidence <= 1.0:
        raise ValueError(f"min_confidence must lie in [0, 1], got {min_confidence}")
    return float(min_confidence)


def check_spare_leaders(spare_leaders: float | None) -> float | None:
    """Validate ``spare_leaders``: ``None`` (no guard) or a share in ``(0, 1]``.

    Example:
        >>> check_spare_leaders(0.5), check_spare_leaders(None)
        (0.5, None)
        >>> check_spare_leaders(0)
        Traceback (most recent call last):
        ...
        ValueError: spare_leaders must be None or lie in (0, 1], got 0
    """
    if spare_leaders is None:
        return None
    if isinstance(spare_leaders, bool) or not isinstance(spare_leaders, (int, float)) \
            or not 0.0 < spare_leaders <= 1.0:
        raise ValueError(f"spare_leaders must be None or lie in (0, 1], got {spare_leaders!r}")
    return float(spare_leaders)


def spares(reason: Mapping[str, Any], standing: float | None,
           spare_leaders: float | None) -> bool:
    """Whether the leader guard keeps a trial that ``reason`` would stop.

    True when a guard is set, the trial's ``standing`` (the share of its rivals' values at the
    same step it beats; ``None``: no rival seen) reaches ``spare_leaders``, and the reason is a
    diagnosis or the cost rule — never the non-finite-loss rule: a NaN loss is dead whatever
    its rank.

    Example:
        >>> alert = {"pruner": "TEViD", "rule": "alert", "reason": "diagnosis"}
        >>> spares(alert, 0.9, 0.5), spares(alert, 0.3, 0.5), spares(alert, None, 0.5)
        (True, False, False)
        >>> spares({**alert, "reason": "non-finite loss"}, 1.0, 0.5)
        False
    """
    # Imported here: the monitor (and torch) is not needed to validate settings.
    from tevid_hpo.monitor import NONFINITE_LOSS

    return (spare_leaders is not None and standing is not None and standing >= spare_leaders
            and reason.get("reason") != NONFINITE_LOSS)


def alert_reason(alerts: Mapping[str, Mapping[str, Any]], prune_on: Collection[str],
                 min_confidence: float = 0.0) -> dict[str, Any] | None:
    """The reason to stop on the earliest confirmed alert in ``prune_on``, or ``None``.

    Args:
        alerts: ``{label: {"label", "step", "epoch", "confidence", "vacuity", "reason"}}``, the
            first confirmed alert of each label as :attr:`TrialMonitor.alerts
            <tevid_hpo.monitor.TrialMonitor.alerts>` holds them. ``step`` may be ``None`` when
            only the label is known; such alerts sort last.
        prune_on: labels that stop (validated with :func:`check_prune_on` by the caller).
        min_confidence: ignore alerts whose confidence is lower (a missing one counts as 0).
    """
    hits = [a for label, a in alerts.items()
            if label in prune_on and (a.get("confidence") or 0.0) >= min_confidence]
    if not hits:
        return None
    first = min(hits, key=lambda a: (a.get("step") is None, a.get("step") or 0))
    return {"pruner": TEVID, "rule": "alert", "label": first["label"],
            "reason": first.get("reason", "diagnosis"), "step": first.get("step"),
            "epoch": first.get("epoch"), "confidence": first.get("confidence"),
            "vacuity": first.get("vacuity")}


def cost_reason(cost: CostModel, latest: Mapping[str, Any] | None, done: float, budget: float,
                prune_on: Collection[str], standing: float | None = None
                ) -> dict[str, Any] | None:
    """The reason to stop by :meth:`CostModel.decide <tevid_hpo.cost.CostModel.decide>` or None.

    Args:
        cost: the cost coefficients.
        latest: the latest diagnosis, ``{"step", "epoch", "probs": {label: p}, "vacuity"}``;
            ``None`` before the first diagnosis (never stops).
        done: budget used so far (e.g. epochs or reported steps); clipped to ``budget``.
        budget: the trial's whole budget in the same unit.
        prune_on: labels a stop is meant to catch; the reason names the most probable of them.
        standing: the trial's standing in the search (:func:`~tevid_hpo.cost.standing_so_far`;
            ``None``: unknown, a false stop costs ``c_fa`` alone); recorded, rounded, as
            ``reason["standing"]``.

    Example:
        >>> latest = {"step": 40, "epoch": 1, "vacuity": 0.0,
        ...           "probs": {"Healthy": 0.2, "Instability": 0.8}}
        >>> r = cost_reason(CostModel(), latest, done=2, budget=9, prune_on=("Instability",))
        >>> r["rule"], r["label"], r["budget_used"], r["cost_stop"] < r["cost_continue"]
        ('cost', 'Instability', 2, True)
        >>> weak = {**latest, "probs": {"Healthy": 0.6, "Instability": 0.4}}
        >>> cost_reason(CostModel(), weak, 2, 9, ("Instability",), standing=0.0)["standing"]
        0.0
        >>> cost_reason(CostModel(), weak, 2, 9, ("Instability",), standing=1.0) is None  # leader
        True
    """
    if latest is None:
        return None
    done = min(done, budget)
    decision = cost.decide(latest, done, budget, prune_on, standing)
    if not decision.stop:
        return None
    probs = latest["probs"]
    label = max((c for c in prune_on if c in probs), key=lambda c: probs[c],
                default=next(iter(prune_on)))
    return {"pruner": TEVID, "rule": "cost", "label": label, "reason": "cost",
            "step": latest["step"], "epoch": latest.get("epoch"),
            "confidence": round(decision.p_anomaly, 4), "vacuity": latest.get("vacuity"),
            "p_threshold": round(decision.p_threshold, 4),
            "cost_stop": round(decision.cost_stop, 4),
            "cost_continue": round(decision.cost_continue, 4),
            "budget_used": done, "budget": budget,
            "standing": None if standing is None else round(standing, 4)}


def describe(reason: Mapping[str, Any]) -> str:
    """One line for logs and result tables.

    Example:
        >>> describe({"pruner": "HyperBandScheduler", "rule": "wrapped", "report_step": 3,
        ...           "value": 0.41})
        'HyperBandScheduler at report step 3 (value 0.41)'
        >>> describe({"pruner": "TEViD", "label": "Instability", "step": None,
        ...           "confidence": 0.95})
        'Instability (confidence 0.95)'
    """
    if reason.get("pruner") != TEVID:
        value = reason.get("value")
        shown = f" (value {value:.4g})" if isinstance(value, (int, float)) and math.isfinite(
            value) else ""
        return f"{reason.get('pruner')} at report step {reason.get('report_step')}{shown}"
    where = "" if reason.get("step") is None else f" at step {reason['step']}"
    conf = reason.get("confidence")
    details = [f"epoch {reason['epoch']}" if reason.get("epoch") is not None else "",
               str(reason["reason"]) if reason.get("reason") else "",
               f"confidence {conf:.4g}" if conf is not None else ""]
    shown = ", ".join(d for d in details if d)
    return f"{reason['label']}{where}" + (f" ({shown})" if shown else "")


@dataclass(frozen=True)
class StopRules:
    """An integration's stop settings, validated, and the two questions asked in order.

    Args:
        prune_on: alert labels that stop a trial (:func:`check_prune_on`).
        cost: a :class:`~tevid_hpo.cost.CostModel` for the cost rule, or ``None`` (alerts only).
        min_confidence: alerts whose probability for their label is below this are ignored.
        spare_leaders: the leader guard (:func:`spares`); ``None`` turns it off.

    Example:
        >>> rules = StopRules(("Instability",), cost=CostModel())
        >>> latest = {"step": 40, "epoch": 1, "vacuity": 0.0,
        ...           "probs": {"Healthy": 0.2, "Instability": 0.8}}
        >>> rules.reason({}, latest, done=2, budget=9)["rule"]
        'cost'
        >>> StopRules(("Instability",)).reason({}, latest, done=2, budget=9) is None
        True
        >>> alerts = {"Instability": {"label": "Instability", "step": 30, "confidence": 0.9}}
        >>> StopRules(("Instability",)).reason(alerts, standing=0.95) is None  # leads: spared
        True
        >>> StopRules(("Instability",)).reason(alerts, standing=0.2)["rule"]
        'alert'
    """

    prune_on: tuple[str, ...] = DEFAULT_PRUNE_ON
    cost: CostModel | None = None
    min_confidence: float = 0.0
    spare_leaders: float | None = DEFAULT_SPARE_LEADERS

    def __post_init__(self) -> None:
        object.__setattr__(self, "prune_on", check_prune_on(self.prune_on))
        object.__setattr__(self, "min_confidence", check_options(self.cost, self.min_confidence))
        object.__setattr__(self, "spare_leaders", check_spare_leaders(self.spare_leaders))

    def reason(self, alerts: Mapping[str, Mapping[str, Any]],
               latest: Mapping[str, Any] | None = None, done: float = 0,
               budget: float | None = None, standing: float | None = None
               ) -> dict[str, Any] | None:
        """:func:`alert_reason`, then — with a cost model, a ``latest`` diagnosis and a
        ``budget`` — :func:`cost_reason` at the trial's ``standing``; ``None`` when neither
        says stop or the leader guard :func:`spares` the trial at that ``standing``.

        Pass ``latest=None`` after a monitor failure: its last diagnosis is stale, so only
        alerts confirmed before the failure count.
        """
        reason = alert_reason(alerts, self.prune_on, self.min_confidence)
        if reason is None and self.cost is not None and latest is not None and budget:
            reason = cost_reason(self.cost, latest, done, budget, self.prune_on, standing)
        if reason is not None and self.spares(reason, standing):
            return None
        return reason

    def spares(self, reason: Mapping[str, Any], standing: float | None) -> bool:
        """:func:`spares` with this guard: whether a trial at ``standing`` escapes ``reason``."""
        return spares(reason, standing, self.spare_leaders)
