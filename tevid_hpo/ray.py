"""Ray Tune: stop diverging trials on a confirmed TEViD diagnosis, let Hyperband do the rest.

Two halves, as with Optuna (:mod:`tevid_hpo.pruners`):

* **Trainable side.** A :class:`~tevid_hpo.monitor.TrialMonitor` runs in the trial's own process
  and the trainable reports its diagnosis with every result: :func:`report` (or
  ``ray.tune.report(metrics(mon) | {...})``) adds the flat ``tevid_*`` keys of
  :meth:`TrialMonitor.metrics <tevid_hpo.monitor.TrialMonitor.metrics>` plus ``tevid_alerts``
  (every confirmed alert, as JSON) to the result. Hyperband *pauses* trials and resumes them from
  their latest checkpoint, so :func:`report` also writes the monitor's state (capture counters,
  the diagnostician's frame window and alert streaks, history) next to the user's training state,
  and :func:`restore` puts it back: a resumed trial keeps diagnosing the same stream.
* **Scheduler side.** :class:`TEViDHyperband` is a
  :class:`~ray.tune.schedulers.HyperBandScheduler` whose ``on_trial_result`` first applies the
  shared stop rules of :mod:`tevid_hpo.decision` to the reported result — a confirmed alert in
  ``prune_on``, then (with ``cost=CostModel(...)``) the cost rule — and returns ``STOP`` with a
  recorded reason; otherwise Hyperband decides as usual. :class:`TEViDScheduler` puts the same
  rules in front of any other scheduler (ASHA, MedianStoppingRule, FIFO).

The scheduler runs in the Tune driver and decides from the result dict alone, so nothing changes
on a cluster: ``ray.init(address=...)`` (or ``ray job submit``) and the same ``tune.Tuner``.

Why a trial stopped is kept in :attr:`TEViDHyperband.decisions` (every STOP and PAUSE with its
reason, in order; it survives ``save``/``restore``), logged by ``tevid_hpo.ray`` (INFO), and
written as ``tevid_stopped_by`` (``"TEViD"``, ``"HyperBandScheduler"``) and ``tevid_stop_reason``
(one line) into the stopped trial's ``Result.metrics`` and — with ``scheduler.callback()`` among
the run's callbacks — into its logged results, hence ``result_grid.get_dataframe()``.

Example:
    >>> import torch
    >>> from ray import tune
    >>> from data_factory.architectures import small_cnn
    >>> from tevid_hpo import Diagnostician, TrialMonitor
    >>> def train(config):
    ...     model = small_cnn(in_channels=1)
    ...     opt = torch.optim.Adam(model.parameters(), lr=config["lr"])
    ...     mon = TrialMonitor(model, optimizer=opt,       # its lr: telemetry models read it
    ...                        diagnostician=Diagnostician.from_pretrained(config["ckpt"]))
    ...     state, start = restore(mon), 0                 # a resumed trial continues its stream
    ...     if state is not None:
    ...         model.load_state_dict(state["model"]); opt.load_state_dict(state["opt"])
    ...         start = state["epoch"] + 1
    ...     with mon:
    ...         for epoch in range(start, 9):
    ...             for _ in range(30):
    ...                 x, y = torch.randn(32, 1, 16, 16), torch.randint(0, 10, (32,))
    ...                 loss = torch.nn.functional.cross_entropy(model(x), y)
    ...                 opt.zero_grad(); loss.backward(); mon.step(loss=loss.item()); opt.step()
    ...             mon.epoch_end(epoch)
    ...             report(mon, {"loss": loss.item()}, state={
    ...                 "model": model.state_dict(), "opt": opt.state_dict(), "epoch": epoch})
    >>> scheduler = TEViDHyperband(metric="loss", mode="min", max_t=9)
    >>> tuner = tune.Tuner(train, param_space={"lr": tune.loguniform(1e-4, 3.0),
    ...                                        "ckpt": "/path/to/checkpoint"},
    ...                    tune_config=tune.TuneConfig(scheduler=scheduler, num_samples=20),
    ...                    run_config=tune.RunConfig(callbacks=[scheduler.callback()])
    ...                    )                                               # doctest: +SKIP
    >>> df = tuner.fit().get_dataframe()                                   # doctest: +SKIP
    >>> df[["config/lr", "tevid_stopped_by", "tevid_stop_reason"]]         # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import tempfile
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
import torch
from ray import cloudpickle, tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import (
    AsyncHyperBandScheduler,
    FIFOScheduler,
    HyperBandScheduler,
    MedianStoppingRule,
    PopulationBasedTraining,
    ResourceChangingScheduler,
    TrialScheduler,
)

from tevid_hpo.cost import CostModel, standing_so_far
from tevid_hpo.decision import DEFAULT_PRUNE_ON, DEFAULT_SPARE_LEADERS, TEVID, StopRules, describe
from tevid_hpo.monitor import TrialMonitor

if TYPE_CHECKING:
    from ray.tune.execution.tune_controller import TuneController

__all__ = ["ALERTS_KEY", "STOPPED_BY_KEY", "STOP_REASON_KEY", "StopReasonCallback",
           "TEViDHyperband", "TEViDScheduler", "load_checkpoint", "metrics", "report", "restore",
           "save_checkpoint"]

logger = logging.getLogger(__name__)

#: Result key holding every confirmed alert as JSON (``{label: {step, epoch, confidence, ...}}``).
ALERTS_KEY = "tevid_alerts"
#: Key stamped on a stopped trial's last result: who stopped it.
STOPPED_BY_KEY = "tevid_stopped_by"
#: Key stamped on a stopped trial's last result: why, in one line.
STOP_REASON_KEY = "tevid_stop_reason"
#: File names inside a checkpoint written by :func:`report` / :func:`save_checkpoint`.
STATE_FILE = "state.pt"
MONITOR_FILE = "tevid_monitor.json"

_PROB_PREFIX = "tevid_p_"


# ============================================================================ trainable side
def metrics(mon: TrialMonitor) -> dict[str, int | float | str]:
    """:meth:`TrialMonitor.metrics` plus ``tevid_alerts``: what a TEViD scheduler reads.

    ``mon.metrics()`` alone carries the *first* alert's label; ``tevid_alerts`` adds every
    confirmed alert with its step, epoch, confidence and reason (as a JSON string, so the key set
    stays fixed and Tune's loggers keep one column), which the scheduler uses for
    ``min_confidence`` and for the recorded reason. Never raises: a failure is reported as
    ``tevid_error``.

    Example:
        >>> import torch, warnings
        >>> from tevid_hpo.diagnostician import Diagnostician
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     diag = Diagnostician.from_pretrained("tiny", device="cpu")   # untrained
        >>> mon = TrialMonitor(torch.nn.Sequential(*[torch.nn.Linear(4, 4)] * 3),
        ...                    diagnostician=diag)
        >>> m = metrics(mon)
        >>> m["tevid_alerts"], m["tevid_alert"], m["tevid_error"]
        ('{}', '', '')
    """
    try:
        out = mon.metrics()
        out[ALERTS_KEY] = json.dumps(mon.alerts, sort_keys=True)
        return out
    except Exception as err:   # monitoring must never fail the trial
        logger.warning("could not read the TEViD monitor's metrics: %r", err)
        return {ALERTS_KEY: "{}", "tevid_error": f"{type(err).__name__}: {err}"}


_monitor_metrics = metrics   # report() takes a `metrics` argument


def save_checkpoint(directory: str | os.PathLike[str], mon: TrialMonitor | None,
                    state: Any) -> Path:
    """Write ``state`` (``torch.save``) and ``mon.state_dict()`` (JSON) into ``directory``.

    The layout :func:`load_checkpoint` reads: ``state.pt`` and ``tevid_monitor.json``. If the
    monitor's state cannot be written, only ``state.pt`` is; the resumed trial then starts a
    new diagnosis stream instead of failing.
    """
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    torch.save(state, path / STATE_FILE)
    if mon is not None:
        try:
            (path / MONITOR_FILE).write_text(json.dumps(mon.state_dict()))
        except Exception as err:
            logger.warning("could not checkpoint the TEViD monitor (%r); a resumed trial starts "
                           "a new diagnosis stream", err)
    return path


def load_checkpoint(directory: str | os.PathLike[str], mon: TrialMonitor | None) -> Any:
    """Read a :func:`save_checkpoint` directory: restore ``mon`` (before ``with mon:``), return
    the saved ``state``.

    A monitor state that cannot be loaded is logged and skipped (the trial keeps training with a
    new diagnosis stream); the user's state is loaded as is and its errors propagate.
    """
    path = Path(directory)
    # Written by this trial's own report() (Ray's checkpoints are pickles too): not untrusted.
    state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
    monitor_file = path / MONITOR_FILE
    if mon is not None and monitor_file.is_file():
        try:
            mon.load_state_dict(json.loads(monitor_file.read_text()))
        except Exception as err:
            logger.warning("could not restore the TEViD monitor from %s (%r); the trial "
                           "continues with a new diagnosis stream", monitor_file, err)
    return state


def report(mon: TrialMonitor, metrics: Mapping[str, Any] | None = None, *,
           state: Any = None) -> None:
    """``ray.tune.report`` with the monitor's diagnosis and, given ``state``, a checkpoint.

    Call it where the trainable would call ``tune.report`` (typically at the end of each epoch,
    after ``mon.epoch_end(epoch)``).

    Args:
        mon: the trial's monitor.
        metrics: the trainable's own metrics (plain numbers/strings); ``tevid_*`` keys are
            reserved.
        state: anything ``torch.save`` can write (model/optimizer ``state_dict()``, the epoch,
            ...). With it, the result carries a checkpoint holding ``state`` and the monitor's
            state, which is what Hyperband resumes a paused trial from; read it back with
            :func:`restore`. Without it no checkpoint is reported.
    """
    payload = {**(metrics or {}), **_monitor_metrics(mon)}
    if state is None:
        tune.report(payload)
        return
    # Tune copies the directory into the trial's storage during report(), so a temporary
    # directory is the documented pattern and leaves nothing behind.
    with tempfile.TemporaryDirectory(prefix="tevid-ckpt-") as tmp:
        save_checkpoint(tmp, mon, state)
        tune.report(payload, checkpoint=tune.Checkpoint.from_directory(tmp))


def restore(mon: TrialMonitor | None, checkpoint: tune.Checkpoint | None = None) -> Any:
    """Resume from the trial's latest checkpoint: restore ``mon``, return the saved ``state``.

    Call it before ``with mon:``. Returns ``None`` on a fresh start (no checkpoint).

    Args:
        mon: the new monitor of the resumed trial (same model layers and diagnostician profile).
        checkpoint: default ``ray.tune.get_checkpoint()``, the checkpoint Tune resumes from.
    """
    if checkpoint is None:
        checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        return load_checkpoint(directory, mon)


# ============================================================================ scheduler side
def _plain(value: Any) -> float | int | None:
    """A JSON-able number for recorded reasons (``None`` for NaN/inf/missing)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return value
    return None


def _alerts_from(result: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    raw = result.get(ALERTS_KEY)
    if raw is not None:
        alerts = json.loads(raw) if isinstance(raw, str) else raw
        if not isinstance(alerts, Mapping):
            raise ValueError(f"{ALERTS_KEY} is not a mapping")
        return dict(alerts)
    # Plain mon.metrics(): only the first alert's label is known; its confidence is read from
    # the latest probabilities and its step is unknown.
    label = result.get("tevid_alert") or ""
    if not label:
        return {}
    return {label: {"label": label, "step": None, "epoch": None, "vacuity": None,
                    "confidence": _plain(result.get(_PROB_PREFIX + label)), "reason": None}}


def _latest_from(result: Mapping[str, Any]) -> dict[str, Any] | None:
    step = result.get("tevid_step", -1)
    if step is None or step < 0:
        return None   # no diagnosis yet: the metrics hold the uniform prior
    probs = {k[len(_PROB_PREFIX):]: float(v) for k, v in result.items()
             if k.startswith(_PROB_PREFIX)}
    epoch = result.get("tevid_epoch")
    return {"step": int(step), "epoch": None if epoch is None or epoch < 0 else int(epoch),
            "probs": probs, "vacuity": float(result["tevid_vacuity"])}


# Ray Tune's schedulers take ``time_attr`` and ``max_t`` in their constructors and expose
# neither. TEViDScheduler needs its base's time axis (the report step it judges) and budget
# (the cost rule's default). They are read here and nowhere else, from the classes whose
# attribute names are known; a Ray release that renamed one fails at construction, naming it,
# rather than judging steps on the wrong axis.
_BASE_TIME_ATTR = ((AsyncHyperBandScheduler, "_time_attr"), (MedianStoppingRule, "_time_attr"))
_BASE_MAX_T = ((AsyncHyperBandScheduler, "_max_t"),)
_BASE_MODE = ((AsyncHyperBandScheduler, "_mode"), (MedianStoppingRule, "_mode"))


def _base_setting(base: TrialScheduler, table: tuple[tuple[type, str], ...], what: str,
                  default: Any) -> Any:
    """``base``'s constructor setting ``what`` (private in Ray), or ``default`` for a scheduler
    not in ``table`` (FIFO has no time axis and no budget)."""
    for cls, name in table:
        if isinstance(base, cls):
            try:
                return getattr(base, name)
            except AttributeError:
                raise RuntimeError(
                    f"tevid-hpo reads {what} of a {cls.__name__} from its private {name}, which "
                    f"ray {ray.__version__} does not have: use a tevid-hpo release that supports "
                    f"this Ray version") from None
    return default


def _time_axis(base: TrialScheduler) -> str:
    return _base_setting(base, _BASE_TIME_ATTR, "the time axis time_attr", "training_iteration")


#: What TEViDScheduler uses of AsyncHyperBandScheduler's internals to keep rung places.
_ASHA_INTERNALS = ("_trial_info", "_metric_op")


def _keep_asha_rung_places(asha: AsyncHyperBandScheduler, trial: Trial,
                           result: Mapping[str, Any], metric: str | None) -> None:
    """Record a trial TEViD stops at the ASHA rungs it would have reached had its last value
    held, by ASHA's own rule (each rung's top ``1/reduction_factor`` goes on).

    A stopped trial that never enters the later rungs leaves their cutoffs to the better
    trials alone, so ASHA then cuts good trials it would have kept: on ``gru_text`` Ray ASHA +
    TEViD lost 3 seed-best trials to ASHA where ASHA alone lost 1 (docs/hpo_benchmark.md). The
    same reasoning as :func:`tevid_hpo.pruners.keep_rung_places` for Optuna's halving pruners.
    """
    bracket = asha._trial_info.get(trial.trial_id)
    value = result.get(metric) if metric else None
    if (bracket is None or isinstance(value, bool) or not isinstance(value, (int, float))
            or math.isnan(value)):
        return
    rungs = getattr(bracket, "_rungs", None)
    if rungs is None or not hasattr(bracket, "on_result"):
        raise RuntimeError(f"tevid-hpo keeps rung places through ASHA's private _Bracket "
                           f"internals, which ray {ray.__version__} does not have: use a "
                           "tevid-hpo release that supports this Ray version")
    signed = asha._metric_op * float(value)
    for milestone in sorted(m for m, _ in rungs):
        # on_result records the value at the lowest rung `milestone` reaches that lacks it.
        if bracket.on_result(trial, milestone, signed) == TrialScheduler.STOP:
            break


#: What TEViDHyperband uses of HyperBandScheduler's internals to keep brackets from stalling.
_HYPERBAND_INTERNALS = ("_trial_info", "_process_bracket", "_get_n0", "_get_r0", "_mode")


class _Rules:
    """The TEViD half shared by both schedulers: judge a result, keep the decision log."""

    def __init__(self, prune_on: Collection[str], cost: CostModel | None, min_confidence: float,
                 max_t: float | None,
                 spare_leaders: float | None = DEFAULT_SPARE_LEADERS) -> None:
        self.rules = StopRules(prune_on, cost, min_confidence, spare_leaders)   # validated
        self.prune_on, self.min_confidence = self.rules.prune_on, self.rules.min_confidence
        if cost is not None and max_t is None:
            raise ValueError("the cost rule needs the trial budget: pass max_t")
        if max_t is not None and not (isinstance(max_t, (int, float)) and max_t > 0):
            raise ValueError(f"max_t must be None or a number > 0, got {max_t!r}")
        self.cost = cost
        self.max_t = max_t
        self.decisions: list[dict[str, Any]] = []
        self.stops: dict[str, dict[str, Any]] = {}    # trial_id -> its STOP decision
        self.warned = False
        self.curves: dict[str, dict[Any, float]] = {}   # trial_id -> time step -> metric

    def standing(self, trial: Trial, result: Mapping[str, Any], time_attr: str,
                 metric: str | None, mode: str | None) -> float | None:
        """Record ``trial``'s metric at its time step; its standing in the search so far
        (:func:`~tevid_hpo.cost.standing_so_far`: its best value against every other seen
        trial's best up to that step; ``None`` without a cost model or leader guard, or
        without a rival)."""
        t, value = result.get(time_attr), result.get(metric) if metric else None
        if ((self.cost is None and self._stop_rules().spare_leaders is None)
                or mode not in ("min", "max") or t is None
                or not isinstance(value, (int, float)) or isinstance(value, bool)):
            return None
        curves = self.__dict__.setdefault("curves", {})   # schedulers saved before lack it
        curves.setdefault(trial.trial_id, {})[t] = float(value)
        return standing_so_far(curves[trial.trial_id],
                               [c for k, c in curves.items() if k != trial.trial_id],
                               mode == "max")

    def judge(self, trial: Trial, result: Mapping[str, Any], time_attr: str,
              standing: float | None = None) -> dict[str, Any] | None:
        """A TEViD stop reason for this result, or ``None``; never raises."""
        if "tevid_alert" not in result and ALERTS_KEY not in result:
            return None   # not a monitored trainable: the wrapped scheduler alone decides
        t = result.get(time_attr)
        try:
            # A failed monitor's latest diagnosis is stale: only alerts confirmed before the
            # failure still count (as in TEViDPruner); without a cost rule it is not read.
            # The rules end with the leader guard.
            stale = t is None or bool(result.get("tevid_error")) or self.cost is None
            reason = self._stop_rules().reason(_alerts_from(result),
                                               None if stale else _latest_from(result),
                                               t or 0, self.max_t, standing)
        except Exception as err:
            # A scheduler exception would end the whole experiment: judge by the wrapped
            # scheduler alone instead, and say so once.
            if not self.warned:
                self.warned = True
                logger.warning("TEViD ignores the diagnosis of trial %s (%s: %s); deferring to "
                               "the wrapped scheduler", trial.trial_id, type(err).__name__, err)
            return None
        if reason is not None:
            reason["report_step"] = _plain(t)
        return reason

    def _stop_rules(self) -> StopRules:
        # Schedulers saved before the leader guard existed restore without these rules: the
        # rules they were built with, no guard.
        if "rules" not in self.__dict__:
            self.rules = StopRules(self.prune_on, self.cost, self.min_confidence, None)
        return self.rules

    def stop_now(self, trial: Trial, result: Mapping[str, Any], time_attr: str,
                 metric: str | None = None, mode: str | None = None) -> bool:
        """Whether TEViD stops ``trial`` on this result (the decision is then recorded); the
        first question of both schedulers' ``on_trial_result``."""
        reason = self.judge(trial, result, time_attr,
                            self.standing(trial, result, time_attr, metric, mode))
        if reason is None:
            return False
        self.record(trial, TrialScheduler.STOP, reason)
        return True

    def record(self, trial: Trial, action: str, reason: Mapping[str, Any]) -> None:
        entry = {"trial_id": trial.trial_id, "action": action, **reason}
        self.decisions.append(entry)
        if action == TrialScheduler.STOP:
            self.stops[trial.trial_id] = entry
        if entry["pruner"] == TEVID:
            logger.info("Trial %s stopped by TEViD: %s", trial.trial_id, describe(entry))
        else:
            logger.debug("Trial %s: %s by %s", trial.trial_id, action, describe(entry))

    def stamp(self, trial: Trial) -> None:
        """Write who stopped ``trial`` and why into its last result (-> the results dataframe)."""
        entry = self.stops.get(trial.trial_id)
        if entry is None:
            return
        try:
            # Tune builds each Result from trial.last_result after the trial ends; scheduler
            # hooks only see flattened copies of results, so this is the one place to add it.
            last = trial.last_result
            last[STOPPED_BY_KEY] = entry["pruner"]
            last[STOP_REASON_KEY] = describe(entry)
        except Exception as err:
            logger.debug("could not stamp the stop reason on trial %s: %r", trial.trial_id, err)

    def summary(self) -> str:
        labels = sorted({d["label"] for d in self.stops.values() if d["pruner"] == TEVID})
        n = sum(d["pruner"] == TEVID for d in self.stops.values())
        return f"TEViD: stopped {n} trial(s){' (' + ', '.join(labels) + ')' if labels else ''}"


class _DecisionsMixin:
    """Read access to the decision log, shared by both schedulers."""

    _tevid: _Rules

    @property
    def prune_on(self) -> tuple[str, ...]:
        """Alert labels that stop a trial."""
        return self._tevid.prune_on

    @property
    def cost(self) -> CostModel | None:
        """The cost model of the cost rule, or ``None``."""
        return self._tevid.cost

    @property
    def decisions(self) -> list[dict[str, Any]]:
        """Every STOP/PAUSE decision in order, each ``{"trial_id", "action", "pruner", "rule",
        ...}`` in :mod:`tevid_hpo.decision`'s reason format (copies)."""
        return [dict(d) for d in self._tevid.decisions]

    def callback(self) -> StopReasonCallback:
        """A Tune callback that puts this scheduler's stop reasons into the logged results
        (``tune.RunConfig(callbacks=[scheduler.callback()])``)."""
        return StopReasonCallback(self)

    def stop_reason(self, trial: Trial | str) -> dict[str, Any] | None:
        """Why ``trial`` (or a trial id) was stopped early, or ``None``."""
        trial_id = trial if isinstance(trial, str) else trial.trial_id
        entry = self._tevid.stops.get(trial_id)
        return dict(entry) if entry is not None else None


class StopReasonCallback(tune.Callback):
    """Writes a TEViD scheduler's stop decision into the result it was made on.

    Ray Tune hands schedulers a flattened *copy* of each result, so a scheduler cannot add to
    what is logged. This callback runs right after the scheduler, before Tune's loggers (user
    callbacks come first), and adds ``tevid_stopped_by`` and ``tevid_stop_reason`` to a trial's
    final result when the scheduler stopped it there: they reach the trial's ``result.json``
    and so ``ResultGrid.get_dataframe()``. Get one from the scheduler's ``callback()``.

    A trial Hyperband halts while it waits PAUSED reports nothing more, so its logged rows do
    not change; its decision is in the scheduler's ``decisions`` and its ``Result.metrics``.

    It also carries the scheduler's decision log across ``Tuner.restore``: Tune saves callback
    state (:meth:`get_state`) with the experiment state but never calls a scheduler's
    ``save``, and restores schedulers as they were when the run started.

    Example:
        >>> s = TEViDHyperband(metric="acc", mode="max", max_t=9)
        >>> run_config = tune.RunConfig(callbacks=[s.callback()])
        >>> s.callback().get_state() is None                 # nothing decided yet
        True
    """

    def __init__(self, scheduler: TEViDHyperband | TEViDScheduler) -> None:
        self.scheduler = scheduler

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial,
                        result: dict[str, Any], **info: Any) -> None:
        entry = self.scheduler._tevid.stops.get(trial.trial_id)
        if entry is not None:   # decided on this result: later ones of a stopped trial are dropped
            result[STOPPED_BY_KEY] = entry["pruner"]
            result[STOP_REASON_KEY] = describe(entry)

    def get_state(self) -> dict[str, Any] | None:
        """The scheduler's decision log, which Tune checkpoints with the experiment."""
        rules = self.scheduler._tevid
        if not rules.decisions:
            return None
        return {"decisions": [dict(d) for d in rules.decisions],
                "stops": {k: dict(v) for k, v in rules.stops.items()}}

    def set_state(self, state: dict[str, Any]) -> None:
        """Put a saved decision log back into the scheduler (``Tuner.restore``)."""
        rules = self.scheduler._tevid
        rules.decisions = [dict(d) for d in state["decisions"]]
        rules.stops = {k: dict(v) for k, v in state["stops"].items()}


class TEViDHyperband(_DecisionsMixin, HyperBandScheduler):
    """Hyperband that first stops trials whose reported diagnosis says they are failing.

    For each result, in order (the rules of :mod:`tevid_hpo.decision`, as in
    :class:`~tevid_hpo.pruners.TEViDPruner`):

    1. **Confirmed alert** in ``prune_on`` (confidence at least ``min_confidence``) in the
       result's ``tevid_alerts`` (or, with plain ``mon.metrics()``, its ``tevid_alert``): STOP.
    2. **Cost rule** (only with ``cost``): :meth:`CostModel.decide
       <tevid_hpo.cost.CostModel.decide>` on the latest diagnosis with ``result[time_attr]`` of
       ``max_t`` used: STOP when stopping is expected to be cheaper. Stopping risks the trial's
       standing in the search (:func:`~tevid_hpo.cost.standing_so_far`: its best ``metric`` so
       far against every other seen trial's best up to the same ``time_attr``, by ``mode``), so
       a leading trial needs a surer diagnosis.
       **Leader guard** (``spare_leaders``): neither rule stops a trial whose standing is in
       the top share, unless its loss went non-finite.
    3. Otherwise :class:`~ray.tune.schedulers.HyperBandScheduler` decides (CONTINUE, PAUSE at a
       rung, STOP when halved).

    A trial TEViD stops leaves its bracket as a failed trial would, so the bracket's successive
    halving goes on among the others; where Ray's Hyperband would then leave the trials waiting
    for it PAUSED forever (a bracket finished or already halved once), this class stops or
    halves them itself. Results without ``tevid_*`` keys (an unmonitored
    trainable) and malformed ones (logged once) are left to Hyperband.

    Args:
        time_attr, metric, mode, max_t, reduction_factor, stop_last_trials: as
            :class:`~ray.tune.schedulers.HyperBandScheduler`.
        prune_on: alert labels that stop a trial.
        cost: a :class:`~tevid_hpo.cost.CostModel` to also stop on the cost rule (budget
            ``max_t`` in ``time_attr`` units); ``None`` (default) stops on confirmed alerts only.
        min_confidence: ignore alerts whose probability for their label is below this.
        spare_leaders: the leader guard (:func:`~tevid_hpo.decision.spares`): a trial whose
            best ``metric`` so far beats at least this share of the other seen trials' best up
            to the same ``time_attr`` is not stopped by TEViD, except for a non-finite loss;
            Hyperband still judges it. Default 0.9 (the top tenth); ``None`` stops on every
            confirmed alert.

    Example:
        >>> s = TEViDHyperband(metric="acc", mode="max", max_t=9, prune_on=("Instability",))
        >>> s.prune_on, s.decisions
        (('Instability',), [])
        >>> isinstance(s, HyperBandScheduler)
        True
    """

    def __init__(self, time_attr: str = "training_iteration", metric: str | None = None,
                 mode: str | None = None, max_t: int = 81, reduction_factor: float = 3,
                 stop_last_trials: bool = True, *,
                 prune_on: Collection[str] = DEFAULT_PRUNE_ON, cost: CostModel | None = None,
                 min_confidence: float = 0.0,
                 spare_leaders: float | None = DEFAULT_SPARE_LEADERS) -> None:
        # Ray checks these with bare asserts (or not at all): say which argument and what is
        # allowed instead.
        if mode not in (None, "min", "max"):
            raise ValueError(f"mode must be 'min', 'max' or None, got {mode!r}")
        if isinstance(max_t, bool) or not isinstance(max_t, int) or max_t < 1:
            raise ValueError(f"max_t must be an int >= 1 (in time_attr units), got {max_t!r}")
        if not (isinstance(reduction_factor, (int, float)) and reduction_factor > 1):
            raise ValueError(f"reduction_factor must be a number > 1, got {reduction_factor!r}")
        super().__init__(time_attr=time_attr, metric=metric, mode=mode, max_t=max_t,
                         reduction_factor=reduction_factor, stop_last_trials=stop_last_trials)
        missing = [name for name in _HYPERBAND_INTERNALS if not hasattr(self, name)]
        if missing:
            raise RuntimeError(f"TEViDHyperband relies on HyperBandScheduler's {missing}, which "
                               f"ray {ray.__version__} does not have: use a tevid-hpo release "
                               "that supports this Ray version")
        # Our own copies: Ray keeps these in private attributes only.
        self._axis = {"time_attr": time_attr, "max_t": max_t,
                      "reduction_factor": reduction_factor}
        self._tevid = _Rules(prune_on, cost, min_confidence, max_t, spare_leaders)
        self._unsticking = False

    def __repr__(self) -> str:
        return (f"TEViDHyperband(metric={self.metric!r}, max_t={self._axis['max_t']}, "
                f"prune_on={self.prune_on!r}, cost={self.cost!r})")

    def on_trial_add(self, tune_controller: TuneController, trial: Trial) -> None:
        # Tuner.restore re-adds every trial of the interrupted run to a scheduler restored as it
        # was when the run began, finished ones too (ResumeConfig's default SKIP re-adds them
        # TERMINATED). In a bracket such a trial never reports again, so its rung never
        # completes and the trials beside it wait PAUSED for good (Ray 2.60): it takes no place.
        if trial.status in (Trial.TERMINATED, Trial.ERROR):
            return
        super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: TuneController, trial: Trial,
                        result: dict[str, Any]) -> str:
        time_attr, max_t = self._axis["time_attr"], self._axis["max_t"]
        if self._tevid.stop_now(trial, result, time_attr, self.metric, self._mode):
            return TrialScheduler.STOP
        action = super().on_trial_result(tune_controller, trial, result)
        t = result.get(time_attr)
        # A STOP at max_t is the trial completing its budget, not a decision about it.
        finished = action == TrialScheduler.STOP and t is not None and t >= max_t
        if action != TrialScheduler.CONTINUE and not finished:
            self._tevid.record(trial, action, self._wrapped_reason(t, result.get(self.metric)))
        return action

    def on_trial_remove(self, tune_controller: TuneController, trial: Trial) -> None:
        # Hyperband stops halved trials that wait PAUSED through tune_controller.stop_trial,
        # which lands here; on_trial_complete (running trials) lands here too.
        # Any removal short of max_t that nobody recorded is Hyperband halting the trial; the
        # trial's status here depends on timing (PAUSED, PENDING or already TERMINATED).
        if trial not in self._trial_info:
            return   # a finished trial re-added by Tuner.restore (see on_trial_add)
        if trial.trial_id not in self._tevid.stops and trial.status != Trial.ERROR:
            last = trial.last_result
            t = last.get(self._axis["time_attr"])
            if t is None or t < self._axis["max_t"]:
                self._tevid.record(trial, TrialScheduler.STOP,
                                   self._wrapped_reason(t, last.get(self.metric)))
        bracket, _ = self._trial_info[trial]
        super().on_trial_remove(tune_controller, trial)
        self._tevid.stamp(trial)
        if not self._unsticking:
            self._unstick(tune_controller, bracket)

    def _unstick(self, tune_controller: TuneController, bracket: Any) -> None:
        """Release a bracket whose every live trial waits PAUSED for the one just removed.

        ``HyperBandScheduler.on_trial_remove`` re-processes a bracket only if it is not finished
        and has never been halved (``is_being_processed`` is set at the first halving and never
        cleared). So when the last trial a rung waits for leaves early — stopped by TEViD, or
        errored — the others stay PAUSED for good and Tune waits forever: at the last rung they
        are never stopped, at a later rung never halved. Early stops make this common, so
        finish the job here: stop the trials of a finished bracket (they completed ``max_t``),
        halve the others.
        """
        live = bracket.current_trials()
        stuck = (live and bracket.cur_iter_done()
                 and all(t.status == Trial.PAUSED and t not in bracket.trials_to_unpause
                         for t in live))
        if not stuck:
            return
        self._unsticking = True   # stop_trial below re-enters on_trial_remove
        try:
            if bracket.finished():
                bracket.cleanup_full(tune_controller)
            else:
                self._process_bracket(tune_controller, bracket)
        finally:
            self._unsticking = False

    def debug_string(self) -> str:
        return f"{super().debug_string()}\n{self._tevid.summary()}"

    def save(self, checkpoint_path: str) -> None:
        """Pickle the bracket state and the TEViD decision log to ``checkpoint_path``."""
        with open(checkpoint_path, "wb") as f:
            cloudpickle.dump(self.__getstate__(), f)

    def restore(self, checkpoint_path: str) -> None:
        """Load what :meth:`save` wrote into this scheduler (any constructor arguments)."""
        with open(checkpoint_path, "rb") as f:
            self.__setstate__(pickle.load(f))

    def __getstate__(self) -> dict[str, Any]:
        # HyperBandScheduler keeps two lambdas closing over self; rebuilt in __setstate__.
        return {k: v for k, v in self.__dict__.items() if k not in ("_get_n0", "_get_r0")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Re-running Hyperband's __init__ recreates its bracket-size helpers bound to *this*
        # object; everything else is then overwritten by the saved state.
        HyperBandScheduler.__init__(self, **state["_axis"])
        self.__dict__.update(state)

    @staticmethod
    def _wrapped_reason(t: Any, value: Any) -> dict[str, Any]:
        return {"pruner": HyperBandScheduler.__name__, "rule": "wrapped",
                "report_step": _plain(t), "value": _plain(value)}


class TEViDScheduler(_DecisionsMixin, TrialScheduler):
    """The TEViD stop rules in front of any Ray Tune scheduler (ASHA, MedianStoppingRule, FIFO).

    ``on_trial_result`` stops a trial exactly as :class:`TEViDHyperband` does and otherwise
    returns ``base``'s decision; every other hook is ``base``'s. A trial TEViD stops leaves
    ``base`` through ``on_trial_remove`` (as a removed, not a completed, trial), so a diverged
    trial's last result never enters the median of MedianStoppingRule. Under ASHA it keeps the
    rung places it would have earned had its last value held (ASHA's own promotion rule), as
    :class:`~tevid_hpo.pruners.TEViDPruner` does under Optuna's halving pruners: otherwise the
    later rungs' cutoffs are set by the better trials alone and ASHA cuts good ones. For
    Hyperband use :class:`TEViDHyperband` (a ``HyperBandScheduler`` that also keeps brackets
    from stalling when trials leave them early); Hyperband bases are rejected.

    Args:
        base: the scheduler to defer to; ``None`` for FIFO (TEViD alone). Population-based
            training and ResourceChangingScheduler are rejected (they act on trials through the
            controller in ways a wrapper would hide), and so is Hyperband (use TEViDHyperband).
        prune_on, cost, min_confidence, spare_leaders: as :class:`TEViDHyperband`.
        max_t: the trial budget in ``time_attr`` units for the cost rule; default ``base``'s
            ``max_t`` where it has one (ASHA).

    Example:
        >>> from ray.tune.schedulers import ASHAScheduler
        >>> s = TEViDScheduler(ASHAScheduler(metric="loss", mode="min", max_t=9),
        ...                    cost=CostModel())
        >>> type(s.base).__name__, s.metric, s.supports_buffered_results
        ('AsyncHyperBandScheduler', 'loss', True)
    """

    def __init__(self, base: TrialScheduler | None = None, *,
                 prune_on: Collection[str] = DEFAULT_PRUNE_ON, cost: CostModel | None = None,
                 min_confidence: float = 0.0, max_t: float | None = None,
                 spare_leaders: float | None = DEFAULT_SPARE_LEADERS) -> None:
        base = FIFOScheduler() if base is None else base
        if not isinstance(base, TrialScheduler):
            raise TypeError(f"base must be a ray.tune TrialScheduler, got {type(base)}")
        if isinstance(base, (TEViDScheduler, TEViDHyperband)):
            raise TypeError("wrapping a TEViD scheduler in another checks every alert twice")
        if isinstance(base, (PopulationBasedTraining, ResourceChangingScheduler)):
            raise TypeError(f"{type(base).__name__} is not supported as a TEViDScheduler base")
        if isinstance(base, HyperBandScheduler):
            raise TypeError("for Hyperband use TEViDHyperband: it also keeps brackets from "
                            "stalling when trials leave them early")
        if isinstance(base, AsyncHyperBandScheduler):
            missing = [a for a in _ASHA_INTERNALS if not hasattr(base, a)]
            if missing:   # fail here, not with silently different rung cutoffs
                raise RuntimeError(f"tevid-hpo keeps a stopped trial's ASHA rung places through "
                                   f"its private {missing}, which ray {ray.__version__} does "
                                   "not have: use a tevid-hpo release that supports it")
        super().__init__()
        self._base = base
        if max_t is None:
            max_t = _base_setting(base, _BASE_MAX_T, "the budget max_t", None)
        self._time_axis = _time_axis(base)
        self._tevid = _Rules(prune_on, cost, min_confidence, max_t, spare_leaders)

    def __repr__(self) -> str:
        return (f"TEViDScheduler(base={type(self._base).__name__}, prune_on={self.prune_on!r}, "
                f"cost={self.cost!r})")

    @property
    def base(self) -> TrialScheduler:
        """The scheduler deferred to."""
        return self._base

    @property
    def metric(self) -> str | None:
        return self._base.metric

    @property
    def supports_buffered_results(self) -> bool:
        return self._base.supports_buffered_results

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return self._base.set_search_properties(metric, mode, **spec)

    def on_trial_add(self, tune_controller: TuneController, trial: Trial) -> None:
        self._base.on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller: TuneController, trial: Trial) -> None:
        self._base.on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller: TuneController, trial: Trial,
                        result: dict[str, Any]) -> str:
        mode = _base_setting(self._base, _BASE_MODE, "the mode", None)
        if self._tevid.stop_now(trial, result, self._time_axis, self.metric, mode):
            if isinstance(self._base, AsyncHyperBandScheduler):
                _keep_asha_rung_places(self._base, trial, result, self.metric)
            return TrialScheduler.STOP
        action = self._base.on_trial_result(tune_controller, trial, result)
        t = result.get(self._time_axis)
        max_t = self._tevid.max_t
        # A STOP at max_t is the trial completing its budget, not a decision about it.
        finished = (action == TrialScheduler.STOP and max_t is not None and t is not None
                    and t >= max_t)
        if action != TrialScheduler.CONTINUE and not finished:
            self._tevid.record(trial, action, {
                "pruner": type(self._base).__name__, "rule": "wrapped", "report_step": _plain(t),
                "value": _plain(result.get(self.metric)) if self.metric else None})
        return action

    def on_trial_complete(self, tune_controller: TuneController, trial: Trial,
                          result: dict[str, Any]) -> None:
        entry = self._tevid.stops.get(trial.trial_id)
        if entry is not None and entry["pruner"] == TEVID:
            self._base.on_trial_remove(tune_controller, trial)
        else:
            self._base.on_trial_complete(tune_controller, trial, result)
        self._tevid.stamp(trial)

    def on_trial_remove(self, tune_controller: TuneController, trial: Trial) -> None:
        self._base.on_trial_remove(tune_controller, trial)
        self._tevid.stamp(trial)

    def choose_trial_to_run(self, tune_controller: TuneController) -> Trial | None:
        return self._base.choose_trial_to_run(tune_controller)

    def debug_string(self) -> str:
        return f"{self._base.debug_string()}\n{self._tevid.summary()}"

    def save(self, checkpoint_path: str) -> None:
        """Pickle ``base`` (whole, with cloudpickle) and the TEViD decision log."""
        with open(checkpoint_path, "wb") as f:
            cloudpickle.dump({"base": self._base, "tevid": self._tevid}, f)

    def restore(self, checkpoint_path: str) -> None:
        """Load what :meth:`save` wrote, replacing ``base`` and the decision log."""
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        self._base, self._tevid = state["base"], state["tevid"]
        self._time_axis = _time_axis(self._base)
