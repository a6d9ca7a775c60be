"""Combining the Appendix-A predicates into one label per run (A.1), plus event-time labels.

:func:`label_run` applies every rule, picks the first that holds in the priority order
``Instability > Forgetting > Concept Bias > Overfitting > Healthy`` (A.1), requires the performance
floor for Healthy and labels held-out ("novel") anomaly families ``Unknown``. Onset and firing
times come from the winning rule. :func:`frame_event_labels` turns a label into per-frame event
labels for event-time metrics, and :func:`truncate_run` gives the run as it was at a given step,
which is how causality of firing times is checked.

Example:
    >>> import numpy as np, pandas as pd
    >>> from types import SimpleNamespace
    >>> loss = np.r_[np.linspace(2, 1, 100), [np.nan] * 5]
    >>> steps = pd.DataFrame({"step": range(105), "epoch": np.arange(105) // 10, "loss": loss})
    >>> run = SimpleNamespace(meta={"dataset": "c100", "steps_per_epoch": 10}, steps=steps,
    ...                       epochs=pd.DataFrame(), arrays={})
    >>> lab = label_run(run)
    >>> lab.label, lab.onset, lab.fire_time, lab.fire_epoch
    ('Instability', 100, 100, 10)
    >>> frame_event_labels(lab, [90, 100, 104]).tolist()
    ['Healthy', 'Instability', 'Instability']
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from data_factory.labelers.base import RuleResult, RunLike, Timeline, eval_step, jsonable
from data_factory.labelers.concept_bias import concept_bias_rule
from data_factory.labelers.config import VARIANTS, LabelConfig
from data_factory.labelers.forgetting import forgetting_rule
from data_factory.labelers.healthy import check_floor
from data_factory.labelers.instability import instability_rule
from data_factory.labelers.overfitting import overfitting_rule
from data_factory.labels import (
    CONCEPT_BIAS,
    FORGETTING,
    HEALTHY,
    INSTABILITY,
    OVERFITTING,
    UNKNOWN,
)

__all__ = [
    "RunLabel",
    "TruncatedRun",
    "frame_event_labels",
    "label_run",
    "label_variants",
    "truncate_run",
]


@dataclass
class RunLabel:
    """The ground-truth label of one run.

    Attributes:
        label: a :mod:`data_factory.labels` constant.
        onset: first step of the anomalous window (``None`` for Healthy).
        fire_time: earliest step at which a causal application of the winning rule fires; lead
            times are measured against it.
        onset_epoch / fire_epoch: the same in epochs.
        evidence: JSON-serialisable summary: ``rule``, ``reason`` (``anomaly``, ``healthy``,
            ``novel``, ``below_floor``, ``no_floor``), ``fired_rules``, floor check and the winning
            rule's statistics under ``detail``.
        rules: every rule's :class:`RuleResult` (also the ones that lost on priority).

    Example:
        >>> RunLabel("Healthy", None, None).to_dict()["label"]
        'Healthy'
    """

    label: str
    onset: int | None
    fire_time: int | None
    onset_epoch: int | None = None
    fire_epoch: int | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    rules: dict[str, RuleResult] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        """Why this label: ``anomaly``, ``healthy``, ``novel``, ``below_floor`` or ``no_floor``."""
        return str(self.evidence.get("reason", ""))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (``json.dumps(..., allow_nan=False)`` works).

        Example:
            >>> import json
            >>> json.dumps(RunLabel("Instability", 3, 5).to_dict(), allow_nan=False)[:24]
            '{"label": "Instability",'
        """
        return jsonable({
            "label": self.label, "onset": self.onset, "fire_time": self.fire_time,
            "onset_epoch": self.onset_epoch, "fire_epoch": self.fire_epoch,
            "evidence": self.evidence,
            "rules": {k: r.to_dict() for k, r in self.rules.items()},
        })


def _merge(over: RuleResult, bias: RuleResult) -> RuleResult:
    """Table 8 merged variant: one Overfitting predicate = Overfitting OR Concept Bias."""
    fired = [r for r in (over, bias) if r.fired]
    if not fired:
        return RuleResult(OVERFITTING, False, applicable=over.applicable or bias.applicable,
                          evidence={"merged_from": [over.rule, bias.rule]})
    first = min(fired, key=lambda r: (r.fire_time if r.fire_time is not None else np.inf))
    return RuleResult(OVERFITTING, True, first.onset, first.fire_time, first.onset_epoch,
                      first.fire_epoch, evidence={**first.evidence, "merged_from": first.rule})


def label_run(run: RunLike, config: LabelConfig | None = None) -> RunLabel:
    """Label a run by the Appendix-A rules.

    Args:
        run: a :class:`~data_factory.labelers.base.RunLike` (a RunStore run).
        config: thresholds and variant switches (default: the paper's rules).

    Returns:
        A :class:`RunLabel`. Novel anomaly families are ``Unknown`` whatever fires (their onset
        is the intervention's start step). Runs where nothing fires are Healthy only if they
        meet their dataset's floor; otherwise they get ``config.below_floor_label``.

    Example:
        >>> import pandas as pd
        >>> from types import SimpleNamespace
        >>> ep = pd.DataFrame({"epoch": [0, 1], "train_loss": [1.0, 0.9], "val_loss": [1.0, 0.95],
        ...                    "val_acc": [0.7, 0.8]})
        >>> run = SimpleNamespace(meta={"dataset": "c100"}, steps=pd.DataFrame(), epochs=ep,
        ...                       arrays={})
        >>> label_run(run, LabelConfig(floors={"c100": 0.78})).label
        'Healthy'
        >>> label_run(run, LabelConfig(floors={"c100": 0.9})).reason
        'below_floor'
    """
    cfg = config or LabelConfig()
    meta = dict(run.meta)
    results: dict[str, RuleResult] = {
        INSTABILITY: instability_rule(run, cfg),
        FORGETTING: forgetting_rule(run, cfg),
        CONCEPT_BIAS: concept_bias_rule(run, cfg),
        OVERFITTING: overfitting_rule(run, cfg),
    }
    priority = list(cfg.priority)
    if cfg.merge_concept_bias:
        results[OVERFITTING] = _merge(results[OVERFITTING], results[CONCEPT_BIAS])
        del results[CONCEPT_BIAS]
        priority = [c for c in priority if c != CONCEPT_BIAS]
    fired = [c for c in priority if c in results and results[c].fired]
    floor_ok, floor_ev = check_floor(run, cfg.floors)
    ev: dict[str, Any] = {"fired_rules": fired, "floor": floor_ev, "priority": priority,
                          "variant": {"train_only": cfg.train_only,
                                      "merge_concept_bias": cfg.merge_concept_bias}}
    tl = Timeline.of(run)

    if meta.get("novel"):
        start = (meta.get("intervention") or {}).get("start_step")
        fires = [results[c].fire_time for c in fired if results[c].fire_time is not None]
        onsets = [results[c].onset for c in fired if results[c].onset is not None]
        onset = int(start) if start is not None else (min(onsets) if onsets else 0)
        fire = min(fires) if fires else None
        ev.update(rule=None, reason="novel")
        return RunLabel(UNKNOWN, onset, fire, tl.epoch_of(onset), tl.epoch_of(fire), ev, results)

    if fired:
        top = results[fired[0]]
        ev.update(rule=fired[0], reason="anomaly", detail=top.evidence)
        return RunLabel(fired[0], top.onset, top.fire_time, top.onset_epoch, top.fire_epoch, ev,
                        results)

    if floor_ok or (floor_ok is None and not cfg.require_floor):
        ev.update(rule=HEALTHY, reason="healthy")
        return RunLabel(HEALTHY, None, None, evidence=ev, rules=results)
    ev.update(rule=None, reason="below_floor" if floor_ok is False else "no_floor")
    return RunLabel(cfg.below_floor_label, None, None, evidence=ev, rules=results)


def label_variants(
    run: RunLike, variants: Mapping[str, LabelConfig] | Iterable[str] = VARIANTS,
    **overrides: Any,
) -> dict[str, RunLabel]:
    """Label one run under several configurations (Tables 7 and 8 sensitivity).

    ``overrides`` (e.g. ``floors=...``) are applied to every variant.

    Example:
        >>> import pandas as pd
        >>> from types import SimpleNamespace
        >>> run = SimpleNamespace(meta={}, steps=pd.DataFrame(), epochs=pd.DataFrame(), arrays={})
        >>> sorted(label_variants(run, ["default", "train_only"]))
        ['default', 'train_only']
    """
    if not isinstance(variants, Mapping):
        variants = {name: VARIANTS[name] for name in variants}
    return {name: label_run(run, cfg.replace(**overrides) if overrides else cfg)
            for name, cfg in variants.items()}


def frame_event_labels(
    run_label: RunLabel,
    frame_steps: Sequence[int] | np.ndarray,
    anchor: Literal["onset", "fire"] = "onset",
) -> np.ndarray:
    """Per-frame event labels: the run's class from ``onset`` (or ``fire_time``) on, Healthy before.

    A Healthy run is Healthy everywhere; an anomalous run without a known time is labelled
    everywhere. These are the ``y_t`` of the event-time AUPRC (Appendix E.2).

    Example:
        >>> frame_event_labels(RunLabel("Overfitting", 20, 50), [0, 10, 20, 60]).tolist()
        ['Healthy', 'Healthy', 'Overfitting', 'Overfitting']
        >>> frame_event_labels(RunLabel("Overfitting", 20, 50), [0, 20, 60], anchor="fire").tolist()
        ['Healthy', 'Healthy', 'Overfitting']
    """
    steps = np.asarray(frame_steps, dtype=np.int64)
    dtype = f"<U{max(len(run_label.label), len(HEALTHY))}"
    if run_label.label == HEALTHY:
        return np.full(steps.shape, HEALTHY, dtype=dtype)
    t0 = run_label.onset if anchor == "onset" else run_label.fire_time
    if t0 is None:
        t0 = run_label.fire_time if anchor == "onset" else run_label.onset
    if t0 is None:
        return np.full(steps.shape, run_label.label, dtype=dtype)
    return np.where(steps >= t0, run_label.label, HEALTHY).astype(dtype)


@dataclass
class TruncatedRun:
    """A run as it stood at some step (see :func:`truncate_run`)."""

    meta: dict[str, Any]
    steps: pd.DataFrame
    epochs: pd.DataFrame
    arrays: dict[str, np.ndarray]


_SNAPSHOTS = {"forget_eval_step": ("forget_correct_before", "forget_correct_after"),
              "bias_eval_step": ("bias_correct", "bias_shortcut", "bias_class")}


def truncate_run(run: RunLike, step: int) -> TruncatedRun:
    """The data a causal labeler would have had at ``step``.

    Keeps steps ``<= step``, epochs that had *ended* by ``step`` and probe snapshots taken by
    ``step`` (snapshot times from ``arrays["*_eval_step"]``, else the run's last step).

    Example:
        >>> import pandas as pd
        >>> from types import SimpleNamespace
        >>> steps = pd.DataFrame({"step": range(30), "epoch": [s // 10 for s in range(30)],
        ...                       "loss": 1.0})
        >>> ep = pd.DataFrame({"epoch": [0, 1, 2], "val_loss": [1.0, 1.0, 1.0]})
        >>> t = truncate_run(SimpleNamespace(meta={}, steps=steps, epochs=ep, arrays={}), 25)
        >>> len(t.steps), t.epochs["epoch"].tolist()
        (26, [0, 1])
    """
    tl = Timeline.of(run)
    steps = run.steps if run.steps is not None else pd.DataFrame()
    if len(steps) and "step" in steps.columns:
        steps = steps[steps["step"] <= step]
    epochs = run.epochs if run.epochs is not None else pd.DataFrame()
    if len(epochs) and "epoch" in epochs.columns:
        ends = epochs["epoch"].map(lambda e: tl.epoch_end(int(e)))
        epochs = epochs[ends.notna() & (ends.fillna(np.inf) <= step)]
    arrays = dict(getattr(run, "arrays", None) or {})
    for key, names in _SNAPSHOTS.items():
        if not any(n in arrays for n in names):
            continue
        when = eval_step(run, key)
        if when is not None and when > step:
            for n in (*names, key):
                arrays.pop(n, None)
        else:
            arrays[key] = np.asarray(when)
    return TruncatedRun(dict(run.meta), steps.reset_index(drop=True),
                        epochs.reset_index(drop=True), arrays)
