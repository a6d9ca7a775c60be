"""Ground truth of an external run from what actually happened to it.

Read after the fact (privileged, never an input of any method): the per-epoch validation curves,
the training loss, the project's Appendix-A labelers (``data_factory.labelers.label_run`` with
the corpus rules of ``experiments.label``, no performance floor) and the injected fault's step.

================  ==========================================================================
scenario          truth
================  ==========================================================================
healthy           Healthy reference — unless the loss went non-finite or the Appendix-A
                  Instability / Overfitting rule fired (then that class, with its onset), or the
                  run never reached the floor (then Healthy but no reference)
lr_high           Instability from step 0 if the loss went non-finite, the run never reached the
                  floor, or the Appendix-A Instability rule fired; else *no visible effect*
lr_jump           Instability from the fault step if afterwards the loss went non-finite, the
                  validation accuracy fell ≥ 0.10 below its best before the fault, the
                  validation loss rose ≥ 1.5× above its minimum before the fault, or the
                  Appendix-A Instability rule fired after the fault; else *no visible effect*
overfit           Overfitting from the labeler's onset if the Appendix-A rule fired; else from the
                  epoch after the validation-loss minimum if the final validation loss is ≥ 1.25×
                  that minimum (reached ≥ 3 epochs before the end) while the training loss kept
                  falling; else *no visible effect*
novel faults      Unknown from the fault step if afterwards the validation accuracy fell ≥ 0.05
                  below its best before the fault, the final validation loss is ≥ 1.25× its
                  minimum before the fault, or the loss went non-finite; else *no visible effect*
================  ==========================================================================

The floor is ``chance + 0.35 · (1 − chance)`` of validation accuracy. A run with *no visible
effect* is labelled Healthy but is neither a healthy reference (false alarms are not counted on
it) nor a positive — as ``data_factory.labels.sets_operating_points`` treats the factory's runs
whose intervention did not take.

Example:
    >>> import numpy as np, pandas as pd
    >>> from types import SimpleNamespace
    >>> ep = pd.DataFrame({"epoch": range(4), "train_loss": [1, .5, .3, .2],
    ...                    "val_loss": [1, .6, 3.0, 4.0], "val_acc": [.5, .8, .3, .3]})
    >>> st = pd.DataFrame({"step": range(40), "epoch": np.arange(40) // 10, "loss": 1.0})
    >>> run = SimpleNamespace(meta={"scenario": {"kind": "lr_jump", "fault_epoch": 2},
    ...                             "steps_per_epoch": 10, "n_classes": 4}, epochs=ep, steps=st,
    ...                       arrays={})
    >>> t = truth_of(run)
    >>> t.label.label, t.label.onset, t.positive, t.reference
    ('Instability', 20, True, False)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from data_factory.labelers import LabelConfig, RunLabel, label_run
from data_factory.labels import HEALTHY, INSTABILITY, OVERFITTING, UNKNOWN

__all__ = ["ExternalTruth", "truth_of"]


@dataclass(frozen=True)
class ExternalTruth:
    """One run's ground truth.

    Attributes:
        label: the :class:`RunLabel` the metrics consume (onset / firing step, in steps).
        kind: the scenario kind.
        reference: a healthy reference (false alarms are counted on it).
        positive: an anomaly that happened (recall and delay are measured on it).
        why: a short reason.
        appendix_a: the Appendix-A label of the run (for the agreement column).
    """

    label: RunLabel
    kind: str
    reference: bool
    positive: bool
    why: str
    appendix_a: str

    @property
    def counted(self) -> bool:
        """Whether the run takes part in the detection tables (reference or positive)."""
        return self.reference or self.positive


def _appendix_a(run: Any) -> RunLabel:
    from experiments.label import CORPUS_RULES

    view = replace_meta(run, {k: v for k, v in dict(run.meta).items() if k != "novel"})
    cfg = replace(LabelConfig(), floors={}, require_floor=False, **CORPUS_RULES)
    return label_run(view, cfg)


def replace_meta(run: Any, meta: dict[str, Any]) -> Any:
    """A shallow view of ``run`` with other metadata (the labelers read ``meta``)."""
    from types import SimpleNamespace

    return SimpleNamespace(meta=meta, steps=run.steps, epochs=run.epochs,
                           arrays=getattr(run, "arrays", {}))


def _first_nonfinite(run: Any, after: int = 0) -> int | None:
    st = run.steps
    if st is None or len(st) == 0:
        return None
    loss = st["loss"].to_numpy(dtype=float)
    steps = st["step"].to_numpy()
    bad = np.flatnonzero(~np.isfinite(loss) & (steps >= after))
    return int(steps[bad[0]]) if bad.size else None


def truth_of(run: Any) -> ExternalTruth:
    """The ground truth of a recorded external run (see the module table)."""
    meta = dict(run.meta)
    sc = meta["scenario"]
    kind, fault_epoch = sc["kind"], sc.get("fault_epoch")
    spe = int(meta["steps_per_epoch"])
    ep = run.epochs
    val_acc = ep["val_acc"].to_numpy(dtype=float)
    val_loss = ep["val_loss"].to_numpy(dtype=float)
    train_loss = ep["train_loss"].to_numpy(dtype=float)
    chance = 1.0 / float(meta["n_classes"])
    floor = chance + 0.35 * (1 - chance)
    learned = bool(np.nanmax(np.where(np.isfinite(val_acc), val_acc, -1)) >= floor)
    try:
        a = _appendix_a(run)
    except Exception as err:  # noqa: BLE001 - one unreadable run must not hide the others
        a = RunLabel(HEALTHY, None, None, evidence={"reason": f"labeler failed: {err}"})
    a_fired = {c: r for c, r in a.rules.items() if r.fired}

    def lab(label: str, onset: int | None, fire: int | None = None) -> RunLabel:
        if label == HEALTHY:
            return RunLabel(HEALTHY, None, None, evidence={"reason": "healthy"})
        fire = onset if fire is None else max(int(fire), int(onset))
        return RunLabel(label, int(onset), fire, int(onset) // spe, fire // spe,
                        evidence={"reason": kind})

    def out(label: RunLabel, reference: bool, positive: bool, why: str) -> ExternalTruth:
        return ExternalTruth(label, kind, reference, positive, why, a.label)

    none = lab(HEALTHY, None)
    nonfinite = _first_nonfinite(run)
    if kind == "healthy":
        if nonfinite is not None:
            return out(lab(INSTABILITY, nonfinite), False, True, "healthy recipe went non-finite")
        for c in (INSTABILITY, OVERFITTING):
            if c in a_fired and a_fired[c].onset is not None:
                r = a_fired[c]
                return out(lab(c, r.onset, r.fire_time), False, True, f"Appendix-A {c} fired")
        if not learned:
            return out(none, False, False, "never reached the floor")
        return out(none, True, False, "healthy")
    if kind == "lr_high":
        if nonfinite is not None or not learned or INSTABILITY in a_fired:
            why = ("non-finite loss" if nonfinite is not None else
                   "never reached the floor" if not learned else "Appendix-A Instability")
            return out(lab(INSTABILITY, 0, nonfinite), False, True, why)
        return out(none, False, False, "no visible effect")
    if kind == "overfit":
        if OVERFITTING in a_fired and a_fired[OVERFITTING].onset is not None:
            r = a_fired[OVERFITTING]
            return out(lab(OVERFITTING, r.onset, r.fire_time), False, True,
                       "Appendix-A Overfitting")
        if np.all(np.isfinite(val_loss)) and len(val_loss) >= 4:
            e_star = int(np.argmin(val_loss))
            if (e_star <= len(val_loss) - 3 and val_loss[-1] >= 1.25 * val_loss[e_star]
                    and train_loss[-1] < train_loss[e_star]):
                return out(lab(OVERFITTING, (e_star + 1) * spe), False, True,
                           "validation loss ≥ 1.25× its minimum while training loss fell")
        return out(none, False, False, "no visible effect")
    # mid-run faults: lr_jump and the novel families
    start = int(fault_epoch) * spe
    pre, post = slice(0, fault_epoch), slice(fault_epoch, None)
    best_pre = float(np.nanmax(val_acc[pre])) if fault_epoch else float("nan")
    min_pre = float(np.nanmin(val_loss[pre])) if fault_epoch else float("nan")
    nf_after = _first_nonfinite(run, after=start)
    post_acc = np.where(np.isfinite(val_acc[post]), val_acc[post], 0.0)
    post_loss = np.where(np.isfinite(val_loss[post]), val_loss[post], np.inf)
    if kind == "lr_jump":
        inst_after = (INSTABILITY in a_fired and a_fired[INSTABILITY].onset is not None
                      and a_fired[INSTABILITY].onset >= start)
        hit = (nf_after is not None or post_acc.min() <= best_pre - 0.10
               or post_loss.max() >= 1.5 * min_pre or inst_after)
        if hit:
            return out(lab(INSTABILITY, start, nf_after), False, True, "lr jump took effect")
        return out(none, False, False, "no visible effect")
    hit = (nf_after is not None or post_acc[-1] <= best_pre - 0.05
           or post_loss[-1] >= 1.25 * min_pre)
    if hit and math.isfinite(best_pre):
        return out(lab(UNKNOWN, start), False, True, f"{kind} took effect")
    return out(none, False, False, "no visible effect")
