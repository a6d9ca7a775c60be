"""The private Optuna internals tevid-hpo cannot avoid, in one place, each read through a check.

Everything else in tevid-hpo uses Optuna's public API. What is here has no public equivalent in
Optuna 5 (see the comment at each use for why). Each private is reached through :func:`_get`,
so an Optuna release that renamed or removed one raises :class:`OptunaInternalsError` naming the
attribute and the installed Optuna version — a loud failure at the first use, never a pruner that
quietly stops recording reasons or a sampler that quietly loses Hyperband's bracket view.
``tests/test_pruner.py`` removes each attribute in turn and checks that error.

Example:
    >>> check_bracket_hooks()          # the installed Optuna has what TEViDPruner relies on
    >>> try:
    ...     _get(object(), "_storage", "a demo")
    ... except OptunaInternalsError as err:
    ...     print(str(err).split(" (")[0])
    tevid-hpo needs the Optuna internal object._storage
"""

from __future__ import annotations

import importlib
import types
from datetime import datetime
from typing import Any

import optuna
from optuna.pruners import BasePruner, HyperbandPruner
from optuna.trial import FrozenTrial, TrialState

__all__ = ["BRACKET_METHODS", "BracketDelegation", "OptunaInternalsError", "check_bracket_hooks",
           "fail_trials_without_heartbeat", "hyperband_bracket", "hyperband_max_resource",
           "set_trial_system_attr", "set_trial_user_attr", "trials_without_heartbeat"]

#: The Optuna version these internals were last checked against.
CHECKED_WITH = "5.1.0"

#: The two methods through which Optuna reaches a Hyperband pruner's brackets
#: (``optuna.pruners._filter_study``, called by the sampler for every trial and parameter).
BRACKET_METHODS = ("_get_bracket_id", "_create_bracket_study")


class OptunaInternalsError(RuntimeError):
    """An Optuna internal that tevid-hpo relies on is missing from the installed Optuna.

    Example:
        >>> str(OptunaInternalsError("Study", "_storage", "why"))[:40]
        'tevid-hpo needs the Optuna internal Stud'
    """

    def __init__(self, owner: str, name: str, why: str) -> None:
        self.owner, self.name = owner, name
        super().__init__(
            f"tevid-hpo needs the Optuna internal {owner}.{name} ({why}), which optuna "
            f"{optuna.__version__} does not have. It was checked against optuna {CHECKED_WITH}: "
            f"install that version (pip install 'optuna=={CHECKED_WITH}') or a tevid-hpo "
            f"release that supports optuna {optuna.__version__}.")


def _get(obj: Any, name: str, why: str) -> Any:
    try:
        return getattr(obj, name)
    except AttributeError:
        owner = obj.__name__ if isinstance(obj, (type, types.ModuleType)) else \
            type(obj).__name__
        raise OptunaInternalsError(owner, name, why) from None


# ---------------------------------------------------------------------- trial attributes
# Optuna 5 has no public way to set an attribute on a trial from inside a pruner: the pruner
# gets a FrozenTrial (read-only) and the study, and there is no public system-attribute setter
# at all. Optuna's own pruners write through the storage (optuna/pruners/_successive_halving.py);
# so do these, with the same two privates: the study's storage and the frozen trial's id.

def _storage_and_id(study: optuna.study.Study, trial: FrozenTrial) -> tuple[Any, int]:
    storage = _get(study, "_storage", "the storage a pruner writes trial attributes through")
    trial_id = _get(trial, "_trial_id", "the storage id of the trial a pruner writes to")
    return storage, trial_id


def set_trial_system_attr(study: optuna.study.Study, trial: FrozenTrial, key: str,
                          value: Any) -> None:
    """Set a system attribute of a (running) trial, as Optuna's built-in pruners do.

    Example:
        >>> import optuna
        >>> optuna.logging.set_verbosity(optuna.logging.WARNING)
        >>> study = optuna.create_study()
        >>> number = study.ask().number
        >>> set_trial_system_attr(study, study.get_trials(deepcopy=False)[number], "note", "hi")
        >>> study.trials[number].system_attrs["note"]
        'hi'
    """
    storage, trial_id = _storage_and_id(study, trial)
    _get(storage, "set_trial_system_attr", "the storage's system-attribute setter")(
        trial_id, key, value)


def set_trial_user_attr(study: optuna.study.Study, trial: FrozenTrial, key: str,
                        value: Any) -> None:
    """Set a user attribute of a (running) trial from a pruner (which holds no ``Trial``).

    Example:
        >>> import optuna
        >>> study = optuna.create_study(); running = study.ask()
        >>> frozen = study.get_trials(deepcopy=False)[running.number]
        >>> set_trial_user_attr(study, frozen, "why", "alert"); study.trials[0].user_attrs
        {'why': 'alert'}
    """
    storage, trial_id = _storage_and_id(study, trial)
    _get(storage, "set_trial_user_attr", "the storage's user-attribute setter")(
        trial_id, key, value)


# ---------------------------------------------------------------------- Hyperband brackets
# HyperbandPruner exposes neither its brackets nor its resolved max_resource. Replaying its
# promotion rule for a trial TEViD stopped (pruners.keep_rung_places) needs the trial's bracket,
# that bracket's SuccessiveHalvingPruner and study view, and the budget.

def hyperband_max_resource(pruner: BasePruner | None) -> int | None:
    """A ``HyperbandPruner``'s ``max_resource`` once resolved (``"auto"`` becomes an int after
    the first finished trial), else ``None``; ``None`` for any other pruner.

    Example:
        >>> hyperband_max_resource(optuna.pruners.HyperbandPruner(max_resource=9))
        9
        >>> hyperband_max_resource(optuna.pruners.MedianPruner()) is None
        True
    """
    if not isinstance(pruner, HyperbandPruner):
        return None
    value = _get(pruner, "_max_resource", "Hyperband's budget, for the cost rule")
    return value if isinstance(value, int) else None


def hyperband_bracket(pruner: HyperbandPruner, study: optuna.study.Study, trial: FrozenTrial
                      ) -> tuple[BasePruner, optuna.study.Study, int] | None:
    """``(the trial's bracket pruner, that bracket's view of the study, max_resource)``, or
    ``None`` while Hyperband cannot build its brackets yet (``max_resource="auto"`` before the
    first finished trial)."""
    why = "to replay Hyperband's promotion rule for a trial TEViD stopped"
    brackets = _get(pruner, "_pruners", why)
    if not brackets:
        # Hyperband builds them at its own first prune(): a worker process whose first decision
        # is a TEViD stop has not, while the others have. Build them now, or that worker alone
        # would give its stopped trial no rung places (caught by tests/test_postgres.py).
        _get(pruner, "_try_initialization", why)(study)
        brackets = _get(pruner, "_pruners", why)
    max_resource = hyperband_max_resource(pruner)
    if not brackets or max_resource is None:
        return None
    bracket = _get(pruner, "_get_bracket_id", why)(study, trial)
    view = _get(pruner, "_create_bracket_study", why)(study, bracket)
    return brackets[bracket], view, max_resource


def check_bracket_hooks() -> None:
    """Raise :class:`OptunaInternalsError` unless Optuna still reaches a Hyperband pruner's
    brackets through exactly :data:`BRACKET_METHODS`, which :class:`BracketDelegation` delegates.

    If Optuna called something else, a TEViD pruner around Hyperband would hand the sampler the
    whole study instead of the trial's bracket: sampling would change silently.

    Example:
        >>> check_bracket_hooks()
    """
    why = "the sampler's per-bracket view of a study under Hyperband"
    filter_study = _get(optuna.pruners, "_filter_study", why)
    called = set(getattr(getattr(filter_study, "__code__", None), "co_names", ()))
    for name in BRACKET_METHODS:
        _get(HyperbandPruner, name, why)
        if name not in called:
            raise OptunaInternalsError("optuna.pruners._filter_study", f"calling {name}", why)


class BracketDelegation:
    """Mixin for a pruner that *is* a ``HyperbandPruner`` (for the sampler's isinstance check)
    but keeps the bracket state in another instance, :attr:`bracket_owner`.

    Optuna reaches the brackets only through :data:`BRACKET_METHODS` (checked by
    :func:`check_bracket_hooks`); both are delegated. ``check_study(study)`` is called first, so
    the subclass can refuse a study it cannot serve at the first trial (Optuna calls
    ``_get_bracket_id`` when a trial starts, before any ``prune``).
    """

    @property
    def bracket_owner(self) -> HyperbandPruner:
        """The ``HyperbandPruner`` that holds the brackets."""
        raise NotImplementedError

    def check_study(self, study: optuna.study.Study) -> None:
        """Raise if this pruner cannot serve ``study`` (default: every study is fine)."""

    def _get_bracket_id(self, study: optuna.study.Study, trial: FrozenTrial) -> int:
        self.check_study(study)
        return int(_get(self.bracket_owner, "_get_bracket_id", "Hyperband's bracket of a trial")(
            study, trial))

    def _create_bracket_study(self, study: optuna.study.Study, bracket_id: int
                              ) -> optuna.study.Study:
        return _get(self.bracket_owner, "_create_bracket_study",
                    "Hyperband's per-bracket view of the study")(study, bracket_id)


# ---------------------------------------------------------------------- heartbeats
# optuna.storages.fail_stale_trials fails a RUNNING trial only when its heartbeat row is older
# than the grace period: RDBStorage._get_stale_trial_ids skips a trial that has no row at all.
# A trial gets its first row from the heartbeat thread that Study.optimize starts *after*
# study.ask() has set it RUNNING. A worker that loses the database in between (a server restart,
# a network cut) fails that first write, and its own tell(FAIL) fails too: the trial stays
# RUNNING with no row, no worker ever fails it, and a loop that waits for running trials waits
# forever (issue 27: three workers idle for 10 minutes). Whether a trial has a heartbeat row has
# no public reader, so it is read here.

def trials_without_heartbeat(study: optuna.study.Study) -> list[int]:
    """Numbers of ``study``'s RUNNING trials that have never recorded a heartbeat; ``[]`` unless
    the storage is an ``RDBStorage`` with a heartbeat.

    Example:
        >>> import warnings
        >>> from optuna.storages import RDBStorage
        >>> warnings.simplefilter("ignore")          # the heartbeat is experimental in Optuna
        >>> storage = RDBStorage("sqlite:///:memory:", heartbeat_interval=1)
        >>> study = optuna.create_study(storage=storage)
        >>> trials_without_heartbeat(study), study.ask().number   # ask() alone records none
        ([], 0)
        >>> trials_without_heartbeat(study)
        [0]
    """
    why = "to find RUNNING trials that never recorded a heartbeat (fail_stale_trials skips them)"
    storage = _get(study, "_storage", why)
    if isinstance(storage, _get(optuna.storages, "_CachedStorage", why)):
        storage = _get(storage, "_backend", why)   # create_study wraps an RDBStorage in it
    if not isinstance(storage, optuna.storages.RDBStorage) or \
            storage.get_heartbeat_interval() is None:
        return []
    running = {_get(t, "_trial_id", why): t.number
               for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    if not running:
        return []
    try:
        models = importlib.import_module("optuna.storages._rdb.models")
    except ImportError:
        raise OptunaInternalsError("optuna.storages", "_rdb.models", why) from None
    heartbeat = _get(models, "TrialHeartbeatModel", why)
    column = _get(heartbeat, "trial_id", why)
    import sqlalchemy

    with _get(storage, "engine", why).connect() as conn:
        beating = set(conn.execute(sqlalchemy.select(column).where(
            column.in_(list(running)))).scalars())
    return sorted(number for trial_id, number in running.items() if trial_id not in beating)


def fail_trials_without_heartbeat(study: optuna.study.Study, grace_period: float) -> list[int]:
    """Fail the RUNNING trials that started over ``grace_period`` seconds ago and never recorded
    a heartbeat, and hand each to the storage's stale-trial callback (a
    ``RetryHeartbeatStaleTrialCallback`` enqueues its rerun), as ``fail_stale_trials`` does for
    trials whose heartbeat stopped; returns their numbers.

    Call it where a worker calls ``optuna.storages.fail_stale_trials``: before each
    ``study.optimize`` and while it waits for running trials. ``grace_period`` must exceed the
    longest a live worker can take from ``study.ask()`` to its first heartbeat (milliseconds
    normally, seconds on a loaded machine): use the storage's ``grace_period``. Two workers
    calling it at once fail and retry a trial once (``study.tell`` refuses the second).

    Example:
        >>> import warnings
        >>> from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
        >>> warnings.simplefilter("ignore")          # the heartbeat is experimental in Optuna
        >>> storage = RDBStorage("sqlite:///:memory:", heartbeat_interval=1, grace_period=2,
        ...     heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1))
        >>> study = optuna.create_study(storage=storage)
        >>> orphan = study.ask()                     # RUNNING, and no heartbeat will come
        >>> fail_trials_without_heartbeat(study, grace_period=60)   # too young to judge
        []
        >>> fail_trials_without_heartbeat(study, grace_period=0)
        [0]
        >>> [t.state.name for t in study.trials]     # failed, and its rerun is waiting
        ['FAIL', 'WAITING']
    """
    now = datetime.now()   # datetime_start is the local time of the worker that asked
    numbers = set(trials_without_heartbeat(study))
    if not numbers:
        return []
    callback = _get(study, "_storage", "the stale-trial callback of the study's storage"
                    ).get_heartbeat_stale_trial_callback()
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        start = trial.datetime_start
        if trial.number not in numbers or start is None or \
                (now - start).total_seconds() <= grace_period:
            continue
        try:
            frozen = study.tell(trial.number, state=TrialState.FAIL)
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
            continue   # finished meanwhile, or failed by another worker: it retries it
        failed.append(trial.number)
        if callback is not None:
            callback(study, frozen)
    return failed
