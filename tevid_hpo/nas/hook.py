"""The pruning hook: :class:`TEViDHook` watches one candidate's training and says when to end it.

It applies :mod:`tevid_hpo.decision`'s rules (TEViD's confirmed alerts, optionally the cost
model), the same ones every integration shares, so a candidate stops here when a
:class:`~tevid_hpo.pruners.TEViDPruner` would stop it as an Optuna trial.

Example:
    >>> import warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")                       # untrained model
    ...     hook = TEViDHook("tiny")
    >>> hook.prune_on, hook.cost is None
    (('Instability', 'Overfitting'), True)
"""

from __future__ import annotations

import functools
import os
from collections.abc import Collection, Sequence
from typing import Any

import optuna
import torch
from torch import nn

from data_factory.labels import INSTABILITY, OVERFITTING
from tevid_hpo.cost import CostModel, standing_so_far
from tevid_hpo.decision import DEFAULT_SPARE_LEADERS, StopRules, alert_reason, cost_reason
from tevid_hpo.diagnostician import Diagnostician
from tevid_hpo.monitor import TrialMonitor
from tevid_hpo.pruners import study_standing

__all__ = ["TEViDHook"]


class TEViDHook:
    """Watches one candidate's training and says when to end it.

    :meth:`monitor` wraps the model in a :class:`~tevid_hpo.monitor.TrialMonitor` (which also
    writes the diagnosis to an Optuna trial when one is given; pass the candidate's optimizer
    for the learning rate a telemetry diagnostician reads); :meth:`check` returns a reason
    to stop — the monitor's earliest confirmed alert among ``prune_on`` (TEViD's calibrated
    3-consecutive rule, or the monitor's non-finite-loss rule) with confidence at least
    ``min_confidence``, else, with ``cost``, a :meth:`CostModel.decide
    <tevid_hpo.cost.CostModel.decide>` stop on the latest diagnosis at the candidate's standing
    (below) — or ``None``. The rules are
    :mod:`tevid_hpo.decision`'s, shared with every integration, so a candidate stops here when
    a :class:`~tevid_hpo.pruners.TEViDPruner` would stop it as an Optuna trial (only sooner: at
    the step, not at the epoch's ``should_prune()``).

    **Standing.** What a stop risks is the candidate's standing in the search
    (:func:`~tevid_hpo.cost.standing_so_far`): the share of the other candidates whose best
    validation accuracy up to its last finished epoch its own best so far beats (a rival that
    stopped earlier counts with what it reached). The hook reads the curves from the Optuna
    study of the monitor's trial (the trainer reports every epoch's accuracy there;
    :func:`~tevid_hpo.pruners.study_standing`), as :class:`~tevid_hpo.pruners.TEViDPruner`
    does. A candidate trained without a trial (a standalone :class:`~tevid_hpo.nas.Bananas`
    search) is weighed against the candidates this hook watched before it: the trainer hands
    :meth:`check` the candidate's curve so far and hands :meth:`record` each finished (or
    stopped) curve. With no curve yet, or no rival seen, the standing is unknown (``None``):
    the cost rule without standing, and no leader guard.

    Args:
        diagnostician: a :class:`~tevid_hpo.diagnostician.Diagnostician`, a checkpoint path or
            profile name for :meth:`Diagnostician.from_pretrained`, or ``None`` for the shipped
            default (``FileNotFoundError`` if it is not installed).
        prune_on: alert labels that end a candidate.
        cost: also stop when the cost model says stopping is cheaper (off by default, as in
            :class:`~tevid_hpo.pruners.TEViDPruner`).
        min_confidence: ignore alerts less confident than this.
        every: capture cadence in steps (``None``: the diagnostician's).
        spare_leaders: the leader guard (:func:`~tevid_hpo.decision.spares`): a candidate whose
            best validation accuracy so far beats at least this share of its rivals'
            (:meth:`standing`) is not stopped, except for a non-finite loss. Default 0.9;
            ``None`` stops on every confirmed alert.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")                       # untrained model
        ...     hook = TEViDHook("tiny", prune_on=("Instability",))
        >>> hook.prune_on
        ('Instability',)
    """

    def __init__(self, diagnostician: Diagnostician | str | os.PathLike[str] | None = None,
                 prune_on: Collection[str] = (INSTABILITY, OVERFITTING),
                 cost: CostModel | None = None, *, min_confidence: float = 0.0,
                 every: int | None = None,
                 spare_leaders: float | None = DEFAULT_SPARE_LEADERS) -> None:
        if diagnostician is None or isinstance(diagnostician, (str, os.PathLike)):
            diagnostician = Diagnostician.from_pretrained(diagnostician, device="cpu")
        self.diagnostician = diagnostician
        #: The validated stop settings (:class:`~tevid_hpo.decision.StopRules`).
        self.rules = StopRules(prune_on, cost, min_confidence, spare_leaders)
        self.prune_on, self.min_confidence = self.rules.prune_on, self.rules.min_confidence
        self.cost = cost
        self.every = every
        self._curves: list[dict[int, float]] = []   # epoch -> accuracy, as standing reads them

    def monitor(self, model: nn.Module, trial: optuna.Trial | None = None,
                optimizer: torch.optim.Optimizer | None = None) -> TrialMonitor:
        """A :class:`TrialMonitor` of ``model`` (use it as a context manager).

        ``optimizer`` (the candidate's) is read only for its learning rate at capture steps:
        a telemetry diagnostician reads it (without it the learning rate is unknown to it).

        Example:
            >>> import warnings
            >>> model = torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(3)])
            >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
            >>> with warnings.catch_warnings():
            ...     warnings.simplefilter("ignore")                       # untrained model
            ...     TEViDHook("tiny").monitor(model, optimizer=opt).optimizer is opt
            True
        """
        return TrialMonitor(model, trial, every=self.every, diagnostician=self.diagnostician,
                            optimizer=optimizer)

    def record(self, curve: Sequence[float]) -> None:
        """Remember a finished (or stopped) candidate's validation accuracies per epoch: a rival
        for the :meth:`standing` of the candidates after it.

        Example:
            >>> import warnings
            >>> with warnings.catch_warnings():
            ...     warnings.simplefilter("ignore")                       # untrained model
            ...     hook = TEViDHook("tiny")
            >>> hook.record([0.3, 0.6]); hook.record([0.5])
            >>> hook.standing([0.4]), hook.standing([0.4, 0.7]), hook.standing([0.1, 0.2, 0.3])
            (0.5, 1.0, 0.0)
        """
        self._curves.append({e: float(v) for e, v in enumerate(curve)})

    def standing(self, curve: Sequence[float]) -> float | None:
        """The standing in the search (:func:`~tevid_hpo.cost.standing_so_far`) of a candidate
        whose accuracies so far are ``curve``: its best against each recorded candidate's best
        up to the same epoch (``None``: unknown)."""
        return standing_so_far(dict(enumerate(curve)),
                               self._curves, maximize=True)

    def check(self, monitor: TrialMonitor, epochs_done: float, epochs_max: float,
              *, use_cost: bool = True, curve: Sequence[float] = ()) -> dict[str, Any] | None:
        """A reason to stop now, or ``None``.

        Args:
            monitor: the candidate's monitor.
            epochs_done: budget used so far (fractional epochs).
            epochs_max: the candidate's full budget.
            use_cost: also consult the cost rule (pass ``False`` between diagnoses: it only
                changes when a new diagnosis arrives). It weighs the candidate's standing in
                the study of ``monitor.trial``, or without one among the candidates given to
                :meth:`record`.
            curve: the candidate's validation accuracies per finished epoch (read without a
                study).
        """
        reason = (alert_reason(monitor.alerts, self.prune_on, self.min_confidence)
                  if monitor.alert is not None else None)

        @functools.cache   # the cost rule and the leader guard both weigh it: compute once
        def rank() -> float | None:
            trial = getattr(monitor, "trial", None)
            study = getattr(trial, "study", None)
            return study_standing(study, trial) if study is not None else self.standing(curve)

        # A monitor that failed has no trustworthy latest diagnosis: alerts only.
        if (reason is None and self.cost is not None and use_cost and monitor.error is None
                and monitor.last is not None):
            reason = cost_reason(self.cost, monitor.last.to_dict(), epochs_done, epochs_max,
                                 self.prune_on, rank())
        if reason is not None and self.rules.spare_leaders is not None \
                and self.rules.spares(reason, rank()):
            return None   # a leading candidate trains on
        return reason
