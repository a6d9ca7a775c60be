"""The early-stopping signals a base pruner/scheduler is combined with, other than TEViD: the cheap
rule (:func:`cheap_rule_stop`) and the LC-PFN-style curve extrapolator (:class:`PFNStopper`).

**One wrapper for every signal.** So that the arms ``X + TEViD``, ``X + cheap rule``,
``X + Curve-TCN`` and ``X + LC-PFN`` differ *only* in the signal, each signal is handed to
exactly the wrapper TEViD uses — ``TEViDPruner(X)`` in Optuna, ``TEViDScheduler(X)`` /
``TEViDHyperband`` in Ray Tune — written in the form the TEViD monitor publishes (an alert in the
trial attribute ``"tevid"``, :func:`as_tevid_state`; the ``tevid_alerts`` result key,
:func:`as_ray_keys`). The wrapper then stops on it, keeps Hyperband's rung places and brackets
as it does for TEViD, and records the reason; the replay renames the stopper to the signal's
name. With ``min_confidence = 0`` and no cost model the wrapper stops on any published alert
in ``prune_on``, so the signal is labelled ``Instability`` (a diverged or dying run) or
``Overfitting`` (a curve predicted not to beat the best so far).

**Cheap rule** — what a user gets for free: PyTorch Lightning's ``EarlyStopping`` with
``check_finite=True`` (stop when the monitored value is NaN or infinite) and
``divergence_threshold`` (stop as soon as the monitored value is worse than the threshold), here
monitoring the epoch's mean *training* loss (the validation metric is what the base pruner
ranks on) and checked at each epoch end, as Lightning does with
``check_on_train_epoch_end=True``; plus a one-sided CUSUM on the per-step training loss
(:class:`core_models.baselines.cusum.CUSUM`, ``sides="up"``: only loss *increases* alarm; alarm
at the textbook ``S >= h``). Lightning's threshold is an absolute number the user chooses; here
it is ``divergence_factor`` times the trial's first finite step loss (≈ ``ln K`` at
initialisation for ``K`` classes), so one setting serves every task.

**LC-PFN** (:class:`PFNStopper`): the rule of Adriaensen et al. (2023) — stop a trial when the
predicted probability that its final validation accuracy exceeds the best value *another* trial
of the search has reported so far falls below ``threshold`` — with
:mod:`core_models.baselines.curve_pfn`'s network. Its prediction depends on the trial's own prefix
only (computed once per recording and epoch, :meth:`PFNStopper.probs`); the decision also depends
on the search's state, so the replay evaluates it at each report.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from omegaconf import DictConfig

from core_models.baselines.curve_pfn import (
    CurvePFN,
    PFNConfig,
    load_or_train,
    observed_last,
    prob_above,
    quantile,
    train,
)
from core_models.baselines.cusum import CUSUM
from data_factory.labels import INSTABILITY, OVERFITTING
from experiments.hpo_benchmark.record import TrialRecording
from tevid_hpo.monitor import FORMAT_VERSION
from tevid_hpo.ray import ALERTS_KEY

CHEAP, PFN = "Cheap rule", "LC-PFN"


@dataclass(frozen=True)
class SignalStop:
    """A signal's decision to stop a trial after epoch ``epoch`` (0-based).

    Attributes:
        epoch: the epoch after whose report the trial stops.
        label: the alert label the wrapper stops on (``Instability`` / ``Overfitting``).
        reason: one line: which rule and the numbers.
        step: the optimisation step the evidence is from (``None``: the epoch end).
        confidence: the rule's number (LC-PFN: 1 − P(final > best)), for the record.
    """

    epoch: int
    label: str
    reason: str
    step: int | None = None
    confidence: float | None = None


def cheap_rule_stop(rec: TrialRecording, divergence_factor: float = 3.0,
                    cusum: CUSUM | None = None) -> SignalStop | None:
    """The first epoch at which Lightning's ``check_finite`` / ``divergence_threshold`` on the
    training loss, or CUSUM on it, fires; ``None`` if none does.

    Example:
        >>> from experiments.hpo_benchmark.record import EpochRecord, TrialRecording
        >>> from experiments.hpo_benchmark.problem import TrialConfig
        >>> ep = lambda e, tl: EpochRecord(e, tl, 0.5, 1.0, 0.5, 1.0, 0.1, 0.0)
        >>> rec = TrialRecording(TrialConfig(0, 0, 0.1, 1e-4, 10), "p", "d", 2, 1,
        ...     [ep(0, 2.3), ep(1, 1.9), ep(2, None)],
        ...     {"step": [0, 1, 2, 3, 4, 5], "epoch": [0, 0, 1, 1, 2, 2],
        ...      "loss": [2.3, 2.2, 1.9, 1.9, None, None], "lr": [0.1] * 6,
        ...      "grad_norm": [1.0] * 6})
        >>> s = cheap_rule_stop(rec)
        >>> s.epoch, s.label, s.reason
        (2, 'Instability', 'check_finite: training loss is not finite')
    """
    if divergence_factor <= 0:
        raise ValueError(f"divergence_factor must be > 0, got {divergence_factor!r}")
    first = next((v for v in rec.steps.get("loss", []) if v is not None and math.isfinite(v)),
                 None)
    threshold = divergence_factor * first if first is not None and first > 0 else math.inf
    alarm = _cusum_alarm_epoch(rec, cusum) if cusum is not None else None
    for ep in rec.epochs:
        if ep.train_loss is None or not math.isfinite(ep.train_loss):
            return SignalStop(ep.epoch, INSTABILITY, "check_finite: training loss is not finite")
        if ep.train_loss > threshold:
            return SignalStop(ep.epoch, INSTABILITY,
                              f"divergence_threshold: training loss {ep.train_loss:.3g} > "
                              f"{threshold:.3g}")
        if alarm is not None and alarm <= ep.epoch:
            return SignalStop(ep.epoch, INSTABILITY, "CUSUM on the training loss: S >= h")
    return None


def _cusum_alarm_epoch(rec: TrialRecording, cusum: CUSUM) -> int | None:
    scores = cusum.score_run(rec.as_run())   # type: ignore[arg-type]
    hit = np.flatnonzero(np.asarray(scores.score) >= 0.5)
    if not len(hit):
        return None
    return int(scores.steps[hit[0]]) // rec.steps_per_epoch


def as_tevid_state(stop: SignalStop | None, epoch: int) -> dict[str, Any]:
    """The ``"tevid"`` trial attribute a monitor would hold after ``epoch`` had ``stop`` been
    its confirmed alert (what ``TEViDPruner`` reads).

    Example:
        >>> s = SignalStop(2, "Instability", "check_finite")
        >>> as_tevid_state(s, 1)["alerts"], list(as_tevid_state(s, 2)["alerts"])
        ({}, ['Instability'])
    """
    alerts = {} if stop is None or stop.epoch > epoch else {stop.label: _alert(stop)}
    return {"version": FORMAT_VERSION, "alerts": alerts, "latest": None}


def as_ray_keys(stop: SignalStop | None, epoch: int) -> dict[str, Any]:
    """The result keys ``TEViDScheduler`` / ``TEViDHyperband`` read, for ``stop`` at ``epoch``.

    Example:
        >>> as_ray_keys(None, 0)["tevid_alert"], as_ray_keys(SignalStop(0, "Instability", "x"),
        ...                                                  0)["tevid_alert"]
        ('', 'Instability')
    """
    alerts = {} if stop is None or stop.epoch > epoch else {stop.label: _alert(stop)}
    return {"tevid_alert": next(iter(alerts), ""), ALERTS_KEY: json.dumps(alerts)}


def _alert(stop: SignalStop) -> dict[str, Any]:
    return {"label": stop.label, "step": stop.step, "epoch": stop.epoch,
            "confidence": stop.confidence, "vacuity": None, "reason": stop.reason}


class PFNStopper:
    """LC-PFN's stop rule on recordings: ``P(final val acc > best of the others) < threshold``.

    Args:
        model: the trained :class:`~core_models.baselines.curve_pfn.CurvePFN`.
        threshold: stop below this probability of improvement (the paper's ``1 - 0.95``).
        min_epochs: never decide on fewer observed epochs than this.

    Example:
        >>> from core_models.baselines.curve_pfn import PFNConfig, train
        >>> net = train(PFNConfig(d_model=8, n_layers=1, n_heads=2, n_bins=10, steps=2,
        ...                       batch=4, t_max=6))
        >>> s = PFNStopper(net, threshold=0.05)
        >>> s.decide([0.1, 0.1], n_epochs=6, best_other=None) is None   # nothing to beat yet
        True
    """

    def __init__(self, model: CurvePFN, threshold: float = 0.05, min_epochs: int = 1) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must lie in (0, 1), got {threshold!r}")
        self.model = model
        self.threshold = float(threshold)
        self.min_epochs = int(min_epochs)
        self._cache: dict[tuple[tuple[float, ...], int], np.ndarray] = {}

    def probs(self, prefix: list[float], n_epochs: int) -> np.ndarray:
        """Predicted bins of the final value given ``prefix`` (cached by prefix)."""
        key = (tuple(round(float(v), 6) for v in prefix), int(n_epochs))
        if key not in self._cache:
            self._cache[key] = self.model.predict(prefix, n_epochs)
        return self._cache[key]

    def decide(self, prefix: list[float], n_epochs: int, best_other: float | None
               ) -> SignalStop | None:
        """Stop after epoch ``len(prefix) - 1`` or not (``best_other``: the best value the
        search's other trials reported so far, ``None`` when there is none)."""
        m = len(prefix)
        if best_other is None or m < self.min_epochs or m >= n_epochs:
            return None
        p = self.probs(prefix, n_epochs)
        last = observed_last(prefix)
        p_improve = prob_above(p, best_other, last)
        if p_improve >= self.threshold:
            return None
        return SignalStop(m - 1, OVERFITTING,
                          f"LC-PFN: P(final > {best_other:.3f}) = {p_improve:.3f} < "
                          f"{self.threshold} (median final {quantile(p, 0.5, last):.3f})",
                          confidence=round(1.0 - p_improve, 4))


def best_of_others(values: Mapping[int, list[float]], number: int) -> float | None:
    """The best finite value reported so far by any trial but ``number``.

    Example:
        >>> best_of_others({0: [0.2, 0.5], 1: [0.9], 2: [float("nan")]}, 1)
        0.5
    """
    best = [v for k, vs in values.items() if k != number for v in vs if math.isfinite(v)]
    return max(best) if best else None


def cheap_signals(cfg: DictConfig, recordings: Mapping[int, Sequence[TrialRecording]]
                  ) -> dict[int, dict[int, SignalStop | None]]:
    """:func:`cheap_rule_stop` of every recording, ``{seed: {trial number: stop or None}}``,
    with the settings of the ``cheap`` block."""
    c = cfg.get("cheap") or {}
    factor = float(c.get("divergence_factor", 3.0))
    cusum = CUSUM(drift=float(c.get("cusum_drift", 1.0)), h=float(c.get("cusum_h", 5.0)),
                  sides="up") if c.get("cusum", True) else None
    return {seed: {r.config.number: cheap_rule_stop(r, factor, cusum) for r in recs}
            for seed, recs in recordings.items()}


def load_pfn(cfg: DictConfig) -> PFNStopper | None:
    """The LC-PFN stopper of the ``pfn`` block: the cached default network (trained on first
    use, minutes), a tiny one in quick mode (``pfn.source: tiny``: exercises the path, measures
    nothing), or ``None`` (``pfn.source: off``, or a metric other than ``val_acc``)."""
    p = cfg.get("pfn") or {}
    source = str(p.get("source", "cached"))
    if source == "off" or str(cfg.metric) != "val_acc" or "pfn" not in [
            str(s) for s in ((cfg.get("arms") or {}).get("signals") or ["pfn"])]:
        return None
    if source == "tiny":
        net = train(PFNConfig(d_model=8, n_layers=1, n_heads=2, n_bins=20, steps=20, batch=8,
                              t_max=10), seed=0)
    elif source == "cached":
        net = load_or_train(PFNConfig(), seed=int(p.get("seed", 0)), log_every=500)
    else:
        raise ValueError(f"pfn.source must be cached, tiny or off, got {source!r}")
    return PFNStopper(net, threshold=float(p.get("threshold", 0.05)),
                      min_epochs=int(p.get("min_epochs", 1)))
