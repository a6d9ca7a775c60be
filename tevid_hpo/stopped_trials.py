"""What a study keeps of the trials a pruner stopped for its own reasons (a TEViD alert, a
Curve-TCN alert), so that the user can read why and the wrapped Optuna pruner still judges the
other trials against a fair field.

* :func:`record_prune_reason` / :func:`prune_reason` — why a trial was stopped, stored as the
  user attribute ``"tevid_prune_reason"`` and the system attribute ``"tevid:prune_reason"``.
* :func:`keep_rung_places` — under successive halving / Hyperband, the stopped trial keeps the
  rung places its last value would have earned, so the others face the same competitors.
* :func:`with_stopped_trials_held` — around a ``PercentilePruner`` (Median), the stopped trial
  counts as completed with its last value held, so the percentile does not creep up.

:class:`~tevid_hpo.pruners.TEViDPruner` uses all three; docs/optuna.md explains why each matters.

Example:
    >>> import optuna
    >>> optuna.logging.set_verbosity(optuna.logging.WARNING)
    >>> study = optuna.create_study()
    >>> t = study.ask(); t.report(1.0, 0)
    >>> record_prune_reason(study, study.trials[t.number], {"pruner": "TEViD", "rule": "alert"})
    >>> prune_reason(study.trials[t.number])["rule"]
    'alert'
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Collection, Mapping
from typing import Any

import optuna
from optuna.pruners import BasePruner, HyperbandPruner, SuccessiveHalvingPruner
from optuna.trial import FrozenTrial, TrialState

from tevid_hpo._optuna_private import (
    OptunaInternalsError,
    hyperband_bracket,
    set_trial_system_attr,
    set_trial_user_attr,
)
from tevid_hpo.decision import TEVID

__all__ = ["REASON_ATTR", "REASON_SYSTEM_ATTR", "keep_rung_places", "prune_reason",
           "record_prune_reason", "with_stopped_trials_held"]

logger = logging.getLogger(__name__)

#: Trial user attribute with the reason of a pruning decision (user-visible).
REASON_ATTR = "tevid_prune_reason"
#: Trial system attribute with the same reason (Optuna's pruner-state namespace).
REASON_SYSTEM_ATTR = "tevid:prune_reason"


def record_prune_reason(study: optuna.study.Study, trial: FrozenTrial, reason: dict[str, Any]
                        ) -> None:
    """Store why a pruner stops ``trial`` where :func:`prune_reason` finds it.

    Written as both a user attribute (visible in dashboards and ``trials_dataframe``) and a
    system attribute. Never raises: a storage that refuses (e.g. the trial already finished) only
    logs at debug level, because a missing reason must not fail the study.

    Example:
        >>> import optuna
        >>> optuna.logging.set_verbosity(optuna.logging.WARNING)
        >>> study = optuna.create_study()
        >>> trial = study.ask()
        >>> running = study.get_trials(deepcopy=False)[trial.number]
        >>> record_prune_reason(study, running, {"pruner": "MyPruner", "rule": "nan"})
        >>> prune_reason(study.trials[trial.number])["rule"]
        'nan'
    """
    try:
        set_trial_system_attr(study, trial, REASON_SYSTEM_ATTR, reason)
        set_trial_user_attr(study, trial, REASON_ATTR, reason)
    except OptunaInternalsError:
        raise   # an Optuna that changed under us: loud, not a quietly missing reason
    except Exception as err:
        logger.debug("could not record the prune reason of trial %d: %s", trial.number, err)


def prune_reason(trial: FrozenTrial) -> dict[str, Any] | None:
    """Why ``trial`` was pruned through a :class:`TEViDPruner`, or ``None``.

    Example:
        >>> import optuna
        >>> prune_reason(optuna.trial.create_trial(value=1.0)) is None
        True
    """
    reason = trial.user_attrs.get(REASON_ATTR)
    if reason is None:
        reason = trial.system_attrs.get(REASON_SYSTEM_ATTR)
    return dict(reason) if isinstance(reason, Mapping) else None


def keep_rung_places(halving: BasePruner | None, study: optuna.study.Study, trial: FrozenTrial,
                     max_resource: int | None = None) -> None:
    """Give a trial stopped early the successive-halving rung places its last value would earn.

    Replays ``halving``'s own promotion rule on a copy of ``trial`` whose last reported value is
    held until the final step, so it writes exactly the ``completed_rung_*`` system attributes
    the trial would have written had it kept training at that value. Call it from a pruner that
    stops a still-running trial for its own reasons (an alert) around a ``HyperbandPruner``, so
    the other trials keep facing the same competitors at every rung. Does nothing for other
    pruners, before Hyperband knows its ``max_resource``, or for a non-finite last value.

    Args:
        halving: a ``HyperbandPruner`` or ``SuccessiveHalvingPruner`` (anything else: no-op).
        study, trial: as passed to ``BasePruner.prune``; the trial must still be running.
        max_resource: the last step + 1 for a plain ``SuccessiveHalvingPruner`` (which does not
            know it); Hyperband's own is used otherwise.

    Example:
        >>> import optuna
        >>> hb = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=9)
        >>> # Hyperband picks a trial's bracket by hashing the study name and trial number;
        >>> # under this name all three trials land in bracket 0, so they compete at its rungs.
        >>> study = optuna.create_study(study_name="demo", direction="maximize", pruner=hb)
        >>> for value in (0.9, 0.8):                      # two finished trials set the rungs
        ...     t = study.ask()
        ...     for step in range(9):
        ...         t.report(value, step); _ = t.should_prune()
        ...     _ = study.tell(t, value)
        >>> t = study.ask(); t.report(0.95, 0); t.report(0.95, 1)   # the best so far, stopped
        >>> keep_rung_places(hb, study, study.get_trials(deepcopy=False)[t.number])
        >>> sorted(study.trials[t.number].system_attrs)[:2]
        ['completed_rung_0', 'completed_rung_1']
    """
    step = trial.last_step
    value = trial.intermediate_values.get(step) if step is not None else None
    if value is None or not math.isfinite(value):
        return
    try:
        if isinstance(halving, HyperbandPruner):
            bracket = hyperband_bracket(halving, study, trial)
            if bracket is None:
                return   # not initialised yet: no trial has been compared at a rung
            rule, view, last_step = bracket[0], bracket[1], bracket[2] - 1
        elif isinstance(halving, SuccessiveHalvingPruner) and max_resource is not None:
            rule, view, last_step = halving, study, max_resource - 1
        else:
            return
        if last_step <= step:
            return
        held = copy.copy(trial)
        held.intermediate_values = {**trial.intermediate_values, last_step: value}
        rule.prune(view, held)
    except OptunaInternalsError:
        raise   # an Optuna that changed under us: loud, not silently different rungs
    except Exception as err:   # bookkeeping for the other trials; never fail this one
        logger.debug("could not keep the rung places of trial %d: %s", trial.number, err)


class _StudyView:
    """A read-only stand-in for a study: all but ``get_trials`` is the study's own."""

    def __init__(self, study: optuna.study.Study) -> None:
        self._study = study

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


class _HeldStudy(_StudyView):
    """The study with TEViD's stopped trials counted as completed (see below)."""

    def __init__(self, study: optuna.study.Study, rule: BasePruner,
                 cache: dict[int, tuple[int, FrozenTrial | None]]) -> None:
        super().__init__(study)
        self._rule, self._cache = rule, cache

    def get_trials(self, deepcopy: bool = True, states: Collection[TrialState] | None = None
                   ) -> list[FrozenTrial]:
        trials = self._study.get_trials(deepcopy=deepcopy)
        last = max((t.last_step for t in trials if t.last_step is not None), default=None)
        view = []
        for t in trials:
            if last is not None and _stopped_by_tevid(t):
                if t.number not in self._cache or self._cache[t.number][0] != last:
                    self._cache[t.number] = last, _held(t, last, self._rule, self._study, trials)
                t = self._cache[t.number][1] or t
            view.append(t)
        return view if states is None else [t for t in view if t.state in states]

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


class _CompletedBefore(_StudyView):
    """The completed trials of a study as they stood at one moment (what a rule saw then)."""

    def __init__(self, study: optuna.study.Study, trials: list[FrozenTrial], moment: Any) -> None:
        super().__init__(study)
        self._complete = [t for t in trials if t.state == TrialState.COMPLETE
                          and (moment is None or t.datetime_complete is None
                               or t.datetime_complete <= moment)]

    def get_trials(self, deepcopy: bool = True, states: Collection[TrialState] | None = None
                   ) -> list[FrozenTrial]:
        return list(self._complete) if states is None or TrialState.COMPLETE in states else []


def _stopped_by_tevid(trial: FrozenTrial) -> bool:
    if trial.state != TrialState.PRUNED or trial.last_step is None:
        return False
    reason = prune_reason(trial)
    return reason is not None and reason.get("pruner") == TEVID


def _held(trial: FrozenTrial, last_step: int, rule: BasePruner, study: optuna.study.Study,
          trials: list[FrozenTrial]) -> FrozenTrial | None:
    """``trial`` completed with its last value held to ``last_step``, or ``None`` if ``rule``,
    judging against the trials completed when TEViD stopped it, would have pruned it on the
    way (then it stays a pruned trial)."""
    step = trial.last_step
    value = trial.intermediate_values[step]
    then = _CompletedBefore(study, trials, trial.datetime_complete)
    held = copy.copy(trial)
    held.intermediate_values = dict(trial.intermediate_values)
    for later in range(step + 1, last_step + 1):
        held.intermediate_values[later] = value
        if rule.prune(then, held):   # type: ignore[arg-type]   # duck-typed study
            return None
    held.state = TrialState.COMPLETE
    return held


def with_stopped_trials_held(study: optuna.study.Study, rule: BasePruner,
                             cache: dict | None = None) -> optuna.study.Study:
    """The study as a ``PercentilePruner`` ``rule`` should see it beside TEViD: a trial TEViD
    stopped counts as completed with its last reported value held until the last step any trial
    reported — unless ``rule``, judging against the trials completed when TEViD stopped it,
    would have pruned it on the way at that value.

    A read-only view for ``rule.prune(view, trial)``; nothing is written to the study. Trials
    pruned for any other reason, and every other trial, are as stored. ``cache`` (a dict kept
    by the caller across calls) saves replaying ``rule`` for a trial more than once.

    Example:
        >>> optuna.logging.set_verbosity(optuna.logging.WARNING)
        >>> median = optuna.pruners.MedianPruner(n_startup_trials=1)
        >>> study = optuna.create_study(direction="maximize")
        >>> study.add_trial(optuna.trial.create_trial(value=0.45,
        ...                 intermediate_values={0: 0.3, 1: 0.4, 2: 0.45}))
        >>> for last in (0.5, 0.1):                      # two trials TEViD stopped at step 0
        ...     t = study.ask(); t.report(last, 0)
        ...     record_prune_reason(study, study.trials[t.number], {"pruner": "TEViD"})
        ...     _ = study.tell(t, state=optuna.trial.TrialState.PRUNED)
        >>> view = with_stopped_trials_held(study, median)
        >>> [(s.state.name, s.intermediate_values) for s in view.get_trials()][1:]
        [('COMPLETE', {0: 0.5, 1: 0.5, 2: 0.5}), ('PRUNED', {0: 0.1})]
        >>> study.trials[1].state.name           # the study itself is unchanged
        'PRUNED'

    At 0.5 the first would have stayed above the median at every step; at 0.1 the median rule
    would have pruned the second at step 1 anyway, so it does not count as completed.
    """
    return _HeldStudy(study, rule, {} if cache is None else cache)   # type: ignore[return-value]
