"""Why TEViD saved what it saved: what the recordings say each trial did (diverged, overfitted,
alerted) against what Hyperband and Hyperband + TEViD did with it (:func:`diagnose`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from data_factory.datasets import TensorData
from experiments.hpo_benchmark.arms import HYPERBAND, TEVID
from experiments.hpo_benchmark.record import TrialRecording, _nan
from experiments.hpo_benchmark.replay import TrialOutcome


def _trial_facts(rec: TrialRecording, chance: Chance) -> dict[str, Any]:
    """What the recording says a trial did (for the note's reasons).

    * *failed*: a non-finite training loss, or at the end validation accuracy within 2 points of
      chance and a training loss no lower than 95 % of a constant guess's (it predicts the class
      prior: never learned, or diverged and collapsed to a constant);
    * *overfit*: not failed, and the validation loss at the end 25 % above its minimum while the
      training loss kept falling after that minimum;
    * TEViD's first confirmed alert (label, epoch), from the attribute after the last epoch.
    """
    eps = rec.epochs
    nonfinite = any(v is None for v in rec.steps.get("loss", []))
    last_loss = _nan(eps[-1].train_loss)
    stuck = eps[-1].val_acc <= chance.accuracy + 0.02 and not last_loss < 0.95 * chance.loss
    failed = nonfinite or stuck
    vl = np.array([_nan(e.val_loss) for e in eps])
    overfit = False
    if not failed and np.isfinite(vl).any() and math.isfinite(vl[-1]):
        best = int(np.nanargmin(vl))
        overfit = bool(vl[-1] > 1.25 * vl[best] and last_loss < _nan(eps[best].train_loss))
    alerts = (eps[-1].tevid or {}).get("alerts") or {}
    first = min(alerts.values(), key=lambda a: a["step"]) if alerts else None
    return {"failed": failed, "overfit": overfit,
            "alert": first["label"] if first else None,
            "alert_epoch": first["epoch"] if first else None}


@dataclass(frozen=True)
class Chance:
    """What a constant guess achieves on a problem's data.

    Attributes:
        accuracy: the majority class's share of the validation split (not ``1 / num_classes``,
            which is lower on unbalanced splits and would call a stuck trial learning).
        loss: the cross-entropy of always predicting the training split's class prior (its
            entropy): a trial whose training loss stays there predicts a constant, whether it
            never learned or diverged and collapsed (its first epoch's loss says nothing then).

    Example:
        >>> import torch
        >>> y = torch.tensor([0, 0, 0, 1])
        >>> c = Chance.of(TensorData("toy", y, y, y, y, y, y, num_classes=4))
        >>> c.accuracy, round(c.loss, 3)
        (0.75, 0.562)
    """

    accuracy: float
    loss: float

    @classmethod
    def of(cls, data: TensorData) -> Chance:
        """The constant guess's accuracy and loss on ``data``."""
        val = np.bincount(data.y_val.numpy())
        prior = np.bincount(data.y_train.numpy()) / len(data.y_train)
        prior = prior[prior > 0]
        return cls(float(val.max() / val.sum()), float(-(prior * np.log(prior)).sum()))


def trial_kinds(recordings: Mapping[int, Sequence[TrialRecording]], chance: Chance
                ) -> dict[tuple[int, int], str]:
    """What each ``(seed, number)`` trial did: ``"failed"``, ``"overfit"`` or ``"learned"``
    (:func:`_trial_facts`)."""
    out = {}
    for rs in recordings.values():
        for r in rs:
            f = _trial_facts(r, chance)
            out[(r.config.seed, r.config.number)] = ("failed" if f["failed"] else
                                                     "overfit" if f["overfit"] else "learned")
    return out


def diagnose(recordings: Mapping[int, Sequence[TrialRecording]],
             outcomes: Sequence[TrialOutcome], prune_on: Sequence[str],
             chance: Chance) -> dict[str, Any]:
    """Why TEViD saved what it saved (or not): counts over the recordings, for the note;
    ``chance`` is :meth:`Chance.of` the problem's data."""
    recs = [r for rs in recordings.values() for r in rs]
    facts = {(r.config.seed, r.config.number): _trial_facts(r, chance) for r in recs}
    vals = np.array([r.full_value for r in recs])
    top = float(np.quantile(vals, 0.75)) if len(vals) else math.nan
    hb = {(o.seed, o.number): o for o in outcomes if o.strategy == HYPERBAND}
    tv = {(o.seed, o.number): o for o in outcomes if o.strategy == "Hyperband + TEViD"}
    alerted = [k for k, f in facts.items() if f["alert"] in prune_on]
    div = [k for k, f in facts.items() if f["failed"]]
    ovf = [k for k, f in facts.items() if f["overfit"]]
    good = {(r.config.seed, r.config.number) for r in recs if r.full_value >= top}
    saved_on = [k for k in tv if tv[k].stopped_by == TEVID and k in hb]
    return {
        "trials": len(recs),
        "failed": len(div), "failed_alerted": sum(k in alerted for k in div),
        "overfit": len(ovf), "overfit_alerted": sum(k in alerted for k in ovf),
        "alerted": len(alerted),
        "alerted_top_quartile": sum(k in good for k in alerted),
        "median_alert_epoch": float(np.median([facts[k]["alert_epoch"] for k in alerted]))
        if alerted else None,
        "tevid_stops": len(saved_on),
        "epochs_hyperband_on_tevid_stops": int(sum(hb[k].epochs for k in saved_on)),
        "epochs_tevid_on_tevid_stops": int(sum(tv[k].epochs for k in saved_on)),
        "hyperband_already_stopped_by_rung_1": sum(
            hb[k].epochs <= 2 for k in saved_on),
        "top_quartile_val_acc": top,
        "chance": chance.accuracy,
        "chance_loss": chance.loss,
    }
