"""TEViDPruner: stop Optuna trials on a confirmed diagnosis, otherwise defer to a usual pruner.

The decision is made from what :class:`~tevid_hpo.monitor.TrialMonitor` stored on the trial
(``trial.user_attrs["tevid"]``), never from in-process state, so the same pruner works with
in-memory, RDB (SQLite, PostgreSQL, MySQL) and journal storages and with any number of workers.

For each ``trial.should_prune()`` call, in order:

1. **Confirmed alert.** The trial's earliest confirmed alert whose label is in ``prune_on``
   (default Instability, Overfitting) and whose confidence is at least ``min_confidence``
   prunes. Alerts come from TEViD's calibrated 3-consecutive rule or from the monitor's
   non-finite-loss rule; they are latched, so an alert confirmed mid-epoch still prunes at the
   epoch's ``should_prune()``.
2. **Cost rule** (only with ``cost=CostModel(...)``). :meth:`CostModel.decide
   <tevid_hpo.cost.CostModel.decide>` on the latest diagnosis with the budget used so far
   (``trial.last_step + 1`` reported steps out of ``max_resource``) stops the trial when
   stopping is expected to be cheaper than continuing. Stopping risks the trial's standing in
   the search (:func:`study_standing`) — the share of the other trials (running, complete and
   pruned) whose best value up to its step its best value so far beats, in the study's
   direction; unknown when none reported by then — so the leader needs a surer diagnosis
   (``c_best``). Off by
   default: with the paper's coefficients a weak early belief suffices, which is only sensible
   with a well-calibrated checkpoint.
   **Leader guard** (``spare_leaders``, default 0.9). A trial whose standing reaches that share
   is not pruned on rules 1 or 2, unless its loss went non-finite
   (:func:`~tevid_hpo.decision.spares`): a wrong diagnosis of a leading trial costs the user's
   best configuration. Its alert stays latched, so it is pruned once others overtake it.
3. **Wrapped pruner.** Otherwise the decision is ``wrapped.prune(study, trial)``: a
   ``HyperbandPruner()`` by default, ``None`` for TEViD alone, or any Optuna pruner.

Trials without a monitor, and trials whose monitor failed (``tevid_error``), are judged by the
wrapped pruner alone, except that an alert confirmed before a monitor failure still counts.

Why a pruning happened is recorded on the trial, as the user attribute ``"tevid_prune_reason"``
(visible in ``study.trials_dataframe()`` and optuna-dashboard) and the system attribute
``"tevid:prune_reason"`` (where Optuna's own pruners keep their state), e.g.::

    {"pruner": "TEViD", "rule": "alert", "label": "Instability", "reason": "diagnosis",
     "step": 30, "epoch": 0, "confidence": 0.8213, "vacuity": 0.2187, "report_step": 0}
    {"pruner": "HyperbandPruner", "rule": "wrapped", "report_step": 3, "value": 0.41}

Read it with :func:`prune_reason`.

**Hyperband's rungs.** Successive halving promotes a trial at a rung when its value is in the
top ``1/reduction_factor`` of the trials that reached that rung. A trial TEViD stops early never
reaches the later rungs, so it would drop out of their comparisons and leave the learning
trials competing only among themselves (more of them cut). So when TEViD prunes a trial under a
``HyperbandPruner`` or ``SuccessiveHalvingPruner``, the trial keeps the rung places it would
have earned had its last value held until the end of its budget, decided by Optuna's own
promotion rule: a dead trial at chance accuracy still counts at the rungs it would have reached,
and nowhere else.

**Median's completed trials.** ``MedianPruner`` (any ``PercentilePruner``) compares a trial
with the *completed* trials at its step. A trial TEViD stops would have completed had the
percentile rule let it run, so without it the percentile is taken over the better trials alone
and creeps up (more learning trials cut). So around a ``PercentilePruner`` the wrapped pruner sees
each trial TEViD stopped as a completed trial whose last value held until the last step any
trial reported (:func:`with_stopped_trials_held`); the study itself is not changed.

**Hyperband and the sampler.** Optuna gives the sampler a per-bracket view of the study (each
bracket samples from its own history) only when ``isinstance(study.pruner, HyperbandPruner)``
(``optuna.pruners._filter_study``). A pruner that merely *holds* a HyperbandPruner would silently
change sampling, so ``TEViDPruner(wrapped=<a HyperbandPruner>)`` — the default — constructs an
instance of a private subclass of both ``TEViDPruner`` and ``HyperbandPruner`` whose bracket
methods delegate to the wrapped pruner (which keeps all bracket state). With ``wrapped=None`` or
another pruner it is a plain ``TEViDPruner``, so ``isinstance(pruner, HyperbandPruner)`` is
true exactly when Hyperband is in charge.

Example:
    >>> import optuna
    >>> optuna.logging.set_verbosity(optuna.logging.WARNING)
    >>> def objective(trial):                        # trials 3-5 carry an alert
    ...     x = trial.suggest_float("x", -1, 1)
    ...     alerted = trial.number >= 3
    ...     trial.set_user_attr("tevid", {"version": 1, "alerts": {"Instability": {
    ...         "label": "Instability", "step": 30, "epoch": 0, "confidence": 0.97,
    ...         "vacuity": 0.1, "reason": "diagnosis"}}} if alerted else {"version": 1})
    ...     trial.report(x + 2.0 if alerted else x, 0)   # minimised: alerted trials trail
    ...     if trial.should_prune():
    ...         raise optuna.TrialPruned()
    ...     return x
    >>> pruner = TEViDPruner()
    >>> isinstance(pruner, optuna.pruners.HyperbandPruner), isinstance(pruner, TEViDPruner)
    (True, True)
    >>> study = optuna.create_study(pruner=pruner, sampler=optuna.samplers.RandomSampler(0))
    >>> study.optimize(objective, n_trials=6)
    >>> [t.state.name for t in study.trials]
    ['COMPLETE', 'COMPLETE', 'COMPLETE', 'PRUNED', 'PRUNED', 'PRUNED']
    >>> prune_reason(study.trials[3])["label"]
    'Instability'

The leader guard: an alerted trial whose best value beats at least 90 % of the others' best
up to its step trains on (unless its loss went non-finite); ``spare_leaders=None`` turns the
guard off.

    >>> def leader(trial):
    ...     trial.set_user_attr("tevid", {"version": 1, "alerts": {"Overfitting": {
    ...         "label": "Overfitting", "step": 30, "epoch": 0, "confidence": 0.9,
    ...         "vacuity": 0.1, "reason": "diagnosis"}}})
    ...     trial.report(-5.0, 0)                      # better than every trial above
    ...     return -5.0 if not trial.should_prune() else float("nan")
    >>> study.optimize(leader, n_trials=1)
    >>> study.trials[-1].value
    -5.0
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Collection, Mapping
from typing import Any, Literal

import optuna
from optuna.pruners import BasePruner, HyperbandPruner, PercentilePruner
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from data_factory.labels import INSTABILITY, OVERFITTING
from tevid_hpo._optuna_private import (
    BracketDelegation,
    check_bracket_hooks,
    hyperband_max_resource,
)
from tevid_hpo.cost import CostModel, standing_so_far
from tevid_hpo.decision import DEFAULT_SPARE_LEADERS, TEVID, StopRules, alert_reason, cost_reason
from tevid_hpo.monitor import ERROR_ATTR, FORMAT_VERSION, USER_ATTR
from tevid_hpo.stopped_trials import (
    REASON_ATTR,
    REASON_SYSTEM_ATTR,
    keep_rung_places,
    prune_reason,
    record_prune_reason,
    with_stopped_trials_held,
)

__all__ = ["REASON_ATTR", "REASON_SYSTEM_ATTR", "TEViDPruner", "keep_rung_places", "prune_reason",
           "record_prune_reason", "study_standing", "with_stopped_trials_held"]

logger = logging.getLogger(__name__)

#: Trials whose values at a step a trial's standing is measured against (not failed/waiting).
_PEER_STATES = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)


def study_standing(study: optuna.study.Study | None, trial: FrozenTrial | optuna.Trial
                   ) -> float | None:
    """A trial's standing in the search at its last reported step
    (:func:`~tevid_hpo.cost.standing_so_far`): the share of the other trials (running, complete
    and pruned) whose best value up to that step its best value so far beats, in the study's
    direction. ``None`` (unknown) without a single-objective Optuna study, a reported value or
    a rival that reported by that step.

    ``trial`` is the ``FrozenTrial`` a pruner gets or the live ``optuna.Trial`` a training
    loop holds (read back from the study by its number). :class:`TEViDPruner`'s cost rule and
    leader guard use it, and so do the integrations that report to an Optuna trial themselves
    (the NAS hook, the LightGBM callback).

    Example:
        >>> optuna.logging.set_verbosity(optuna.logging.WARNING)
        >>> study = optuna.create_study(direction="maximize")
        >>> for curve in ({0: 0.2}, {0: 0.6}, {0: 0.3, 1: 0.7}):
        ...     study.add_trial(optuna.trial.create_trial(value=max(curve.values()),
        ...                                               intermediate_values=curve))
        >>> trial = study.ask()
        >>> trial.report(0.5, step=0)
        >>> round(study_standing(study, trial), 4)   # beats 0.2 and 0.3, not 0.6
        0.6667
        >>> trial.report(0.4, step=1)             # its best, 0.5, vs the best up to step 1
        >>> round(study_standing(study, trial), 4)   # beats 0.2 (stopped at step 0) only
        0.3333
        >>> study_standing(None, trial) is None   # not an Optuna study: unknown
        True
    """
    if not isinstance(study, optuna.study.Study) or len(study.directions) != 1:
        return None
    if not isinstance(trial, FrozenTrial):
        # Trial numbers are the trials' positions in their study.
        trial = study.get_trials(deepcopy=False)[trial.number]
    if not trial.intermediate_values:
        return None
    rivals = [t.intermediate_values for t in study.get_trials(deepcopy=False, states=_PEER_STATES)
              if t.number != trial.number]
    return standing_so_far(trial.intermediate_values, rivals,
                           study.direction == StudyDirection.MAXIMIZE)


class TEViDPruner(BasePruner):
    """Prune on a confirmed TEViD diagnosis (or the cost rule), else defer to ``wrapped``.

    See the module documentation for the decision order, what is recorded, and why the default
    instance is also a :class:`~optuna.pruners.HyperbandPruner`.

    Args:
        wrapped: the pruner to defer to: ``"hyperband"`` (default) for a fresh
            ``HyperbandPruner()``, a configured pruner instance, or ``None`` for TEViD alone.
        prune_on: alert labels that prune (any of ``LABELS`` except Healthy).
        cost: a :class:`~tevid_hpo.cost.CostModel` to also stop when the expected cost of
            stopping is lower; ``None`` (default) prunes on confirmed alerts only.
        min_confidence: ignore alerts whose probability for their label is below this (extra
            conservatism on top of the checkpoint's calibrated thresholds).
        max_resource: the budget in reported steps for the cost rule (and, around a plain
            ``SuccessiveHalvingPruner``, for keeping a pruned trial's rung places); ``None``
            takes the wrapped Hyperband's ``max_resource`` once known (the cost rule waits
            until then).
        spare_leaders: the leader guard (:func:`~tevid_hpo.decision.spares`): a trial whose
            standing in the search (:func:`study_standing`) reaches this share is not pruned
            by TEViD, except for a non-finite loss; the wrapped pruner still judges it.
            Default 0.9 (the top tenth); ``None`` prunes on every confirmed alert.

    Example:
        >>> import optuna
        >>> TEViDPruner(wrapped=None)
        TEViDPruner(wrapped=None, prune_on=('Instability', 'Overfitting'), cost=None)
        >>> p = TEViDPruner(optuna.pruners.MedianPruner())
        >>> isinstance(p, optuna.pruners.HyperbandPruner), p.wrapped.__class__.__name__
        (False, 'MedianPruner')
    """

    _wrapped: BasePruner | None

    def __new__(cls, wrapped: BasePruner | Literal["hyperband"] | None = "hyperband",
                *args: Any, **kwargs: Any) -> TEViDPruner:
        # Around a Hyperband, be one (see the module docstring): the sampler's bracket view
        # depends on an isinstance check we cannot otherwise satisfy.
        hyperband = wrapped == "hyperband" if isinstance(wrapped, str) else isinstance(
            wrapped, HyperbandPruner)
        return super().__new__(_TEViDHyperbandPruner if cls is TEViDPruner and hyperband else cls)

    def __init__(self, wrapped: BasePruner | Literal["hyperband"] | None = "hyperband",
                 prune_on: Collection[str] = (INSTABILITY, OVERFITTING),
                 cost: CostModel | None = None, *, min_confidence: float = 0.0,
                 max_resource: int | None = None,
                 spare_leaders: float | None = DEFAULT_SPARE_LEADERS) -> None:
        if isinstance(wrapped, str):
            if wrapped != "hyperband":
                raise ValueError(f"wrapped must be a BasePruner, None or 'hyperband', "
                                 f"got {wrapped!r}")
            wrapped = HyperbandPruner()
        if wrapped is not None and not isinstance(wrapped, BasePruner):
            raise TypeError(f"wrapped must be an optuna BasePruner or None, got {type(wrapped)}")
        if isinstance(wrapped, TEViDPruner):
            raise TypeError("wrapping a TEViDPruner in a TEViDPruner checks every alert twice")
        rules = StopRules(prune_on, cost, min_confidence, spare_leaders)   # validates all four
        labels, min_confidence = rules.prune_on, rules.min_confidence
        if max_resource is not None and (isinstance(max_resource, bool) or not isinstance(
                max_resource, int) or max_resource < 1):
            raise ValueError(f"max_resource must be None or an int >= 1, got {max_resource!r}")
        if isinstance(self, HyperbandPruner):
            check_bracket_hooks()   # fail here, not with a silently different sampler view
        self._wrapped = wrapped
        self._prune_on = labels
        self._cost = cost
        self._min_confidence = float(min_confidence)
        self._max_resource = max_resource
        self._rules = rules
        self._warned = False
        self._held: dict[int, Any] = {}   # with_stopped_trials_held's replays, by trial

    def __getnewargs_ex__(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        # pickle/deepcopy call __new__ again: pass `wrapped` so it picks the same class.
        return (), {"wrapped": self._wrapped}

    def __repr__(self) -> str:
        wrapped = None if self._wrapped is None else type(self._wrapped).__name__
        return (f"TEViDPruner(wrapped={wrapped}, prune_on={self._prune_on!r}, "
                f"cost={self._cost!r})")

    @property
    def wrapped(self) -> BasePruner | None:
        """The pruner deferred to when TEViD has no reason to prune."""
        return self._wrapped

    @property
    def prune_on(self) -> tuple[str, ...]:
        """Alert labels that prune."""
        return self._prune_on

    def check_study(self, study: optuna.study.Study) -> None:
        """Raise ``ValueError`` if this pruner cannot serve ``study``: a multi-objective one.

        Called on the study's first trial when Optuna lets the pruner see it (around Hyperband,
        the sampler asks the pruner for the trial's bracket as the trial starts), by
        :class:`~tevid_hpo.monitor.TrialMonitor` when it is given such a trial, and by
        :meth:`prune`.

        Example:
            >>> import optuna
            >>> study = optuna.create_study(directions=["minimize", "minimize"])
            >>> TEViDPruner(wrapped=None).check_study(study)
            Traceback (most recent call last):
            ...
            ValueError: TEViDPruner cannot serve a multi-objective study (2 directions): Optuna cannot report intermediate values there (Trial.report and Trial.should_prune raise), so no pruner is ever asked. Use a single-objective study, or drop the pruner and stop runs from the objective with TrialMonitor.alert.
        """
        n = len(study.directions)
        if n > 1:
            raise ValueError(
                f"TEViDPruner cannot serve a multi-objective study ({n} directions): Optuna "
                "cannot report intermediate values there (Trial.report and Trial.should_prune "
                "raise), so no pruner is ever asked. Use a single-objective study, or drop the "
                "pruner and stop runs from the objective with TrialMonitor.alert.")

    def prune(self, study: optuna.study.Study, trial: FrozenTrial) -> bool:
        """Decide for ``trial`` from its stored diagnosis, else ask the wrapped pruner."""
        self.check_study(study)
        # The cost rule and the leader guard both weigh the standing: read the study once.
        standing = functools.cache(lambda: study_standing(study, trial))
        reason = self._tevid_reason(trial, standing)
        if reason is not None and self._rules.spare_leaders is not None \
                and self._rules.spares(reason, standing()):
            reason = None   # a leader: only the wrapped pruner may stop it
        if reason is not None:
            self._record(study, trial, reason)
            keep_rung_places(self._wrapped, study, trial, self._max_resource)
            return True
        view = with_stopped_trials_held(study, self._wrapped, self._held) \
            if isinstance(self._wrapped, PercentilePruner) else study
        if self._wrapped is None or not self._wrapped.prune(view, trial):
            return False
        step = trial.last_step
        value = trial.intermediate_values.get(step) if step is not None else None
        self._record(study, trial, {
            "pruner": type(self._wrapped).__name__, "rule": "wrapped", "report_step": step,
            "value": value if value is not None and math.isfinite(value) else None})
        return True

    # ------------------------------------------------------------------ internals
    def _tevid_reason(self, trial: FrozenTrial, standing: Callable[[], float | None]
                      ) -> dict[str, Any] | None:
        state = trial.user_attrs.get(USER_ATTR)
        if state is None:
            return None   # no monitor in this objective: a plain wrapped pruner
        try:
            if not isinstance(state, Mapping) or state.get("version") != FORMAT_VERSION:
                raise ValueError(f"unknown {USER_ATTR!r} attribute layout")
            reason = self._alert_reason(state)
            if reason is None and self._cost is not None and ERROR_ATTR not in trial.user_attrs:
                reason = self._cost_reason(state, trial, standing)
        except Exception as err:
            # A malformed attribute must not fail the trial: judge it by `wrapped` alone.
            if not self._warned:
                self._warned = True
                logger.warning("TEViDPruner ignores the diagnosis of trial %d (%s: %s); "
                               "deferring to the wrapped pruner", trial.number,
                               type(err).__name__, err)
            return None
        if reason is not None:
            reason["report_step"] = trial.last_step
        return reason

    def _alert_reason(self, state: Mapping[str, Any]) -> dict[str, Any] | None:
        return alert_reason(state.get("alerts", {}), self._prune_on, self._min_confidence)

    def _cost_reason(self, state: Mapping[str, Any], trial: FrozenTrial,
                     standing: Callable[[], float | None]) -> dict[str, Any] | None:
        budget = self._budget()
        if budget is None or trial.last_step is None or self._cost is None:
            return None
        return cost_reason(self._cost, state.get("latest"), trial.last_step + 1, budget,
                           self._prune_on, standing())

    def _budget(self) -> int | None:
        if self._max_resource is not None:
            return self._max_resource
        return hyperband_max_resource(self._wrapped)

    @staticmethod
    def _record(study: optuna.study.Study, trial: FrozenTrial, reason: dict[str, Any]) -> None:
        record_prune_reason(study, trial, reason)
        if reason["pruner"] == TEVID:
            logger.info("Trial %d pruned by TEViD: %s at step %s (epoch %s, %s, confidence %s)",
                        trial.number, reason["label"], reason["step"], reason["epoch"],
                        reason["reason"], reason["confidence"])


class _TEViDHyperbandPruner(TEViDPruner, BracketDelegation, HyperbandPruner):
    """A :class:`TEViDPruner` around a :class:`~optuna.pruners.HyperbandPruner`, itself one.

    Optuna reaches a Hyperband pruner's brackets through two methods only; both are delegated to
    the wrapped instance, which owns every piece of bracket state
    (:class:`~tevid_hpo._optuna_private.BracketDelegation`, checked against the installed Optuna
    at construction). ``HyperbandPruner.__init__`` is deliberately not called: no second, unused
    copy of that state exists. ``prune`` is :meth:`TEViDPruner.prune` (first in the MRO).
    """

    _wrapped: HyperbandPruner

    @property
    def bracket_owner(self) -> HyperbandPruner:
        """The wrapped Hyperband, which keeps the brackets."""
        return self._wrapped
